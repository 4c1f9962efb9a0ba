//! Device credentials: how a machine proves an envelope is its own.
//!
//! Each machine gets a random secret at registration (it is also the machine's HTTPS token).
//! From it the machine derives an **Ed25519** key pair ([`MachineKey`]) and signs every envelope
//! with it; the platform stores only the **public key** ([`PublicKey`]), so a leaked credentials
//! file lets nobody sign, nor present the token (the token is checked by deriving its public key).
//!
//! A signed envelope carries, beside `machineId` and `events`:
//!
//! ```json
//! {"machineId":"m00001","sentAt":1700000000000,"nonce":"5f0c…","events":[…],
//!  "publicKey":"…","enrol":"…","signature":"ed25519:…"}
//! ```
//!
//! `signature` is the Ed25519 signature over `machineId \n sentAt \n nonce \n <events>`, where
//! `<events>` is the exact text of the `events` array as sent: no re-serialisation on either
//! side, so nothing about JSON formatting can break a signature. `sentAt` (the sender's wall
//! clock, epoch ms) and `nonce` let the receiver refuse replays (see `vendflow-ingest`'s `auth`).
//!
//! **Migration** from the first scheme, where the platform stored `SHA-256(secret)` and that hash
//! was an HMAC key (so whoever read the file could sign): such an entry is a
//! [`StoredKey::Legacy`]. A machine still on the old firmware signs with the hex HMAC and is
//! accepted while the receiver allows legacy credentials. A machine on this firmware also sends
//! its `publicKey` and `enrol`, an HMAC with the old key over `enrol \n publicKey \n <the signed
//! message>`: it proves that the holder of the registered secret chose this key. The receiver
//! then replaces the legacy entry with the public key ([`Signed::enrolled`]), and from then on
//! accepts only Ed25519 signatures for that machine (a downgrade to HMAC is refused).

use std::borrow::Cow;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::event::Envelope;
use crate::units::MachineId;

type HmacSha256 = Hmac<Sha256>;

/// The first scheme's stored form of a machine secret (`SHA-256(secret)`), which was also its HMAC
/// key: kept to verify machines not yet migrated, and their enrolment of a public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretHash(pub [u8; 32]);

/// 64 hex digits as 32 bytes; `what` names the field in the error.
fn hex32(text: &str, what: &str) -> Result<[u8; 32], AuthError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out)
        .map_err(|e| AuthError::Malformed(format!("{what} is not 64 hex digits: {e}")))?;
    Ok(out)
}

/// Equality of two 32-byte values in constant time.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A machine's signing key, derived from its secret (the machine side; never stored by the
/// platform).
#[derive(Clone)]
pub struct MachineKey {
    signing: SigningKey,
    legacy: SecretHash,
}

impl MachineKey {
    /// The key pair of `secret`: the Ed25519 seed is `SHA-256("vendflow machine key v1\n" ‖
    /// secret)`, so a machine provisioned with a secret needs nothing else, and the first
    /// scheme's stored hash (`SHA-256(secret)`) reveals nothing of it.
    pub fn from_secret(secret: &str) -> MachineKey {
        let seed: [u8; 32] = Sha256::new()
            .chain_update(b"vendflow machine key v1\n")
            .chain_update(secret.as_bytes())
            .finalize()
            .into();
        MachineKey {
            signing: SigningKey::from_bytes(&seed),
            legacy: SecretHash::of(secret),
        }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// The first scheme's HMAC key (for enrolment, and for tests of machines not yet migrated).
    pub fn legacy(&self) -> SecretHash {
        self.legacy
    }
}

/// A machine's Ed25519 public key: what the platform stores.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The public key a machine with `secret` signs with.
    pub fn of_secret(secret: &str) -> PublicKey {
        MachineKey::from_secret(secret).public()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Result<PublicKey, AuthError> {
        let out = hex32(text, "public key")?;
        VerifyingKey::from_bytes(&out)
            .map_err(|_| AuthError::Malformed("public key is not an Ed25519 point".into()))?;
        Ok(PublicKey(out))
    }

    /// Whether `token` (a presented secret) is the secret of this key, compared in constant time.
    pub fn matches(&self, token: &str) -> bool {
        same(&PublicKey::of_secret(token).0, &self.0)
    }

    fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        VerifyingKey::from_bytes(&self.0)
            .is_ok_and(|k| k.verify(message, &Signature::from_bytes(signature)).is_ok())
    }
}

/// What the platform keeps to check one machine.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum StoredKey {
    PublicKey(PublicKey),
    /// Registered under the first scheme and not yet migrated.
    Legacy(SecretHash),
}

impl StoredKey {
    /// Whether `token` is the machine's secret.
    pub fn matches(&self, token: &str) -> bool {
        match self {
            StoredKey::PublicKey(k) => k.matches(token),
            StoredKey::Legacy(h) => h.matches(token),
        }
    }
}

impl SecretHash {
    pub fn of(secret: &str) -> SecretHash {
        SecretHash(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Result<SecretHash, AuthError> {
        hex32(text, "secret hash").map(SecretHash)
    }

    /// Constant-time check of a presented token (the secret) against this hash.
    pub fn matches(&self, token: &str) -> bool {
        same(&SecretHash::of(token).0, &self.0)
    }
}

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHash(…)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed signed envelope: {0}")]
    Malformed(String),
    #[error("envelope is not signed (needs sentAt, nonce and signature)")]
    Unsigned,
    #[error("unknown machine {0:?}: no credentials registered")]
    UnknownMachine(String),
    #[error("bad signature for machine {0:?}")]
    BadSignature(String),
}

impl AuthError {
    /// A short, stable reason code (for counters and the rejected topic).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Malformed(_) => "malformed",
            AuthError::Unsigned => "unsigned",
            AuthError::UnknownMachine(_) => "unknown_machine",
            AuthError::BadSignature(_) => "bad_signature",
        }
    }
}

/// The longest nonce an envelope may carry (the receiver keeps each while its envelope is
/// fresh, so their length is memory an outsider controls).
pub const MAX_NONCE_LEN: usize = 64;

/// What a valid signature vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub machine_id: MachineId,
    pub sent_at: i64,
    pub nonce: String,
    /// Signed with the first scheme's HMAC (a machine not yet on Ed25519 firmware).
    pub legacy: bool,
    /// A legacy machine proved this public key is its own: store it in place of the hash.
    pub enrolled: Option<PublicKey>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSigned<'a> {
    #[serde(borrow)]
    machine_id: Cow<'a, str>,
    sent_at: Option<i64>,
    #[serde(borrow)]
    nonce: Option<Cow<'a, str>>,
    #[serde(borrow)]
    events: &'a RawValue,
    #[serde(borrow)]
    signature: Option<Cow<'a, str>>,
    #[serde(borrow)]
    public_key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    enrol: Option<Cow<'a, str>>,
}

/// The bytes a signature covers.
fn message(machine_id: &str, sent_at: i64, nonce: &str, events: &str) -> Vec<u8> {
    format!("{machine_id}\n{sent_at}\n{nonce}\n{events}").into_bytes()
}

/// The enrolment proof: the first scheme's HMAC over the new public key and the signed message.
fn enrol_mac(key: &SecretHash, public_key: &str, message: &[u8]) -> HmacSha256 {
    let mut mac = match HmacSha256::new_from_slice(&key.0) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes a key of any length"),
    };
    mac.update(b"enrol\n");
    mac.update(public_key.as_bytes());
    mac.update(b"\n");
    mac.update(message);
    mac
}

fn mac(key: &SecretHash, machine_id: &str, sent_at: i64, nonce: &str, events: &str) -> HmacSha256 {
    // HMAC accepts keys of any length; 32 bytes cannot fail.
    let mut mac = match HmacSha256::new_from_slice(&key.0) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes a key of any length"),
    };
    mac.update(machine_id.as_bytes());
    mac.update(b"\n");
    mac.update(sent_at.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(nonce.as_bytes());
    mac.update(b"\n");
    mac.update(events.as_bytes());
    mac
}

/// Encodes `envelope` signed with the machine's `key`.
pub fn sign_envelope(envelope: &Envelope, key: &MachineKey, sent_at: i64, nonce: &str) -> String {
    let events: Vec<serde_json::Value> = envelope
        .events
        .iter()
        .map(crate::Event::body_json)
        .collect();
    let events = serde_json::Value::Array(events).to_string();
    sign_raw(envelope.machine_id.as_str(), &events, key, sent_at, nonce)
}

/// Signs an envelope whose `events` array is given as JSON text, exactly as it will be sent
/// (the signature covers these bytes; any JSON, even events this protocol would refuse). The
/// envelope also carries the public key and its enrolment proof, for a platform that still
/// holds this machine's first-scheme hash.
pub fn sign_raw(
    machine_id: &str,
    events: &str,
    key: &MachineKey,
    sent_at: i64,
    nonce: &str,
) -> String {
    let signed = message(machine_id, sent_at, nonce, events);
    let signature = hex::encode(key.signing.sign(&signed).to_bytes());
    let public_key = key.public().to_hex();
    let enrol = hex::encode(
        enrol_mac(&key.legacy, &public_key, &signed)
            .finalize()
            .into_bytes(),
    );
    format!(
        "{{\"machineId\":{},\"sentAt\":{sent_at},\"nonce\":{},\"events\":{events},\"publicKey\":\"{public_key}\",\"enrol\":\"{enrol}\",\"signature\":\"ed25519:{signature}\"}}",
        serde_json::Value::from(machine_id),
        serde_json::Value::from(nonce),
    )
}

/// Signs as the first scheme's firmware did (hex HMAC keyed by `SHA-256(secret)`): for tests of
/// machines not yet migrated.
pub fn sign_raw_legacy(
    machine_id: &str,
    events: &str,
    key: &SecretHash,
    sent_at: i64,
    nonce: &str,
) -> String {
    let signature = hex::encode(
        mac(key, machine_id, sent_at, nonce, events)
            .finalize()
            .into_bytes(),
    );
    format!(
        "{{\"machineId\":{},\"sentAt\":{sent_at},\"nonce\":{},\"events\":{events},\"signature\":\"{signature}\"}}",
        serde_json::Value::from(machine_id),
        serde_json::Value::from(nonce),
    )
}

/// The machine a (possibly signed) envelope claims to come from, without checking anything else.
pub fn claimed_machine(bytes: &[u8]) -> Result<String, AuthError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Claim<'a> {
        #[serde(borrow)]
        machine_id: Cow<'a, str>,
    }
    serde_json::from_slice::<Claim>(bytes)
        .map(|c| c.machine_id.into_owned())
        .map_err(|e| AuthError::Malformed(e.to_string()))
}

/// Checks an envelope's signature with the key `lookup` gives for its machine.
pub fn verify_envelope(
    bytes: &[u8],
    lookup: impl FnOnce(&str) -> Option<StoredKey>,
) -> Result<Signed, AuthError> {
    let raw: RawSigned =
        serde_json::from_slice(bytes).map_err(|e| AuthError::Malformed(e.to_string()))?;
    let (Some(sent_at), Some(nonce), Some(signature)) = (raw.sent_at, raw.nonce, raw.signature)
    else {
        return Err(AuthError::Unsigned);
    };
    if nonce.len() > MAX_NONCE_LEN {
        return Err(AuthError::Malformed(format!(
            "nonce is {} bytes long; at most {MAX_NONCE_LEN}",
            nonce.len()
        )));
    }
    // The id is checked, but interned only once the machine is known: an unknown sender must
    // not grow the process's table of machine ids.
    MachineId::check(&raw.machine_id).map_err(|e| AuthError::Malformed(e.into()))?;
    let stored = lookup(&raw.machine_id)
        .ok_or_else(|| AuthError::UnknownMachine(raw.machine_id.to_string()))?;
    let machine_id =
        MachineId::parse(&raw.machine_id).map_err(|e| AuthError::Malformed(e.into()))?;
    let bad = || AuthError::BadSignature(machine_id.as_str().to_owned());
    let events = raw.events.get();
    let signed = |legacy, enrolled| Signed {
        machine_id: machine_id.clone(),
        sent_at,
        nonce: nonce.to_string(),
        legacy,
        enrolled,
    };
    match (stored, signature.strip_prefix("ed25519:")) {
        (StoredKey::PublicKey(key), Some(sig)) => {
            let mut presented = [0u8; 64];
            hex::decode_to_slice(sig, &mut presented).map_err(|_| bad())?;
            let signed_bytes = message(machine_id.as_str(), sent_at, &nonce, events);
            if !key.verify(&signed_bytes, &presented) {
                return Err(bad());
            }
            Ok(signed(false, None))
        }
        // A machine that has a public key never signs with the old HMAC again.
        (StoredKey::PublicKey(_), None) => Err(bad()),
        (StoredKey::Legacy(hash), None) => {
            let mut presented = [0u8; 32];
            hex::decode_to_slice(signature.as_ref(), &mut presented).map_err(|_| bad())?;
            mac(&hash, machine_id.as_str(), sent_at, &nonce, events)
                .verify_slice(&presented)
                .map_err(|_| bad())?;
            Ok(signed(true, None))
        }
        (StoredKey::Legacy(hash), Some(sig)) => {
            // Enrolment: the old secret vouches for the new key, the new key signs.
            let (Some(public_key), Some(enrol)) = (raw.public_key, raw.enrol) else {
                return Err(bad());
            };
            let key = PublicKey::from_hex(&public_key)?;
            let signed_bytes = message(machine_id.as_str(), sent_at, &nonce, events);
            let mut proof = [0u8; 32];
            hex::decode_to_slice(enrol.as_ref(), &mut proof).map_err(|_| bad())?;
            enrol_mac(&hash, &public_key, &signed_bytes)
                .verify_slice(&proof)
                .map_err(|_| bad())?;
            let mut presented = [0u8; 64];
            hex::decode_to_slice(sig, &mut presented).map_err(|_| bad())?;
            if !key.verify(&signed_bytes, &presented) {
                return Err(bad());
            }
            Ok(signed(false, Some(key)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_envelope;
    use crate::{Event, EventKind, Heartbeat, Timestamp};

    fn envelope(machine: &str) -> Envelope {
        let machine_id = MachineId::parse(machine).unwrap_or_else(|e| panic!("{e}"));
        Envelope {
            machine_id: machine_id.clone(),
            events: vec![Event {
                machine_id,
                timestamp: Timestamp(1_705_312_095_000),
                seq: Some(41),
                kind: EventKind::Heartbeat(Heartbeat::default()),
            }],
        }
    }

    fn events_of(machine: &str) -> String {
        let events: Vec<serde_json::Value> = envelope(machine)
            .events
            .iter()
            .map(Event::body_json)
            .collect();
        serde_json::Value::Array(events).to_string()
    }

    #[test]
    fn a_signed_envelope_verifies_and_still_decodes() {
        let key = MachineKey::from_secret("s3cret");
        let stored = StoredKey::PublicKey(PublicKey::of_secret("s3cret"));
        let text = sign_envelope(&envelope("m1"), &key, 1_000, "n1");
        let signed = verify_envelope(text.as_bytes(), |m| (m == "m1").then_some(stored));
        assert_eq!(
            signed.map(|s| (
                s.machine_id.as_str().to_owned(),
                s.sent_at,
                s.nonce,
                s.legacy,
                s.enrolled
            )),
            Ok(("m1".to_owned(), 1_000, "n1".to_owned(), false, None))
        );
        let events = decode_envelope(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.len(), 1);
        assert!(events[0].is_ok());
    }

    #[test]
    fn tampering_wrong_key_and_missing_fields_are_refused() {
        let key = MachineKey::from_secret("s3cret");
        let stored = StoredKey::PublicKey(key.public());
        let text = sign_envelope(&envelope("m1"), &key, 1_000, "n1");
        let tampered = text.replace("\"seq\":41", "\"seq\":42");
        assert!(matches!(
            verify_envelope(tampered.as_bytes(), |_| Some(stored)),
            Err(AuthError::BadSignature(_))
        ));
        let other = StoredKey::PublicKey(PublicKey::of_secret("other"));
        assert!(matches!(
            verify_envelope(text.as_bytes(), |_| Some(other)),
            Err(AuthError::BadSignature(_))
        ));
        assert!(matches!(
            verify_envelope(text.as_bytes(), |_| None),
            Err(AuthError::UnknownMachine(_))
        ));
        let unsigned = envelope("m1").to_json();
        assert_eq!(
            verify_envelope(unsigned.as_bytes(), |_| Some(stored)),
            Err(AuthError::Unsigned)
        );
        assert!(matches!(
            verify_envelope(b"{not json", |_| Some(stored)),
            Err(AuthError::Malformed(_))
        ));
        let long = sign_raw("m1", "[]", &key, 1_000, &"n".repeat(MAX_NONCE_LEN + 1));
        assert!(matches!(
            verify_envelope(long.as_bytes(), |_| Some(stored)),
            Err(AuthError::Malformed(_))
        ));
    }

    /// What issue 12 found: the stored hash was the HMAC key, so a leaked credentials file
    /// signed for every machine. The file now holds public keys: nothing in it signs.
    #[test]
    fn a_leaked_credentials_file_cannot_sign() {
        let secret = "s3cret";
        let stored = PublicKey::of_secret(secret);
        // Everything an attacker reading the file has: the public key, and (for machines not yet
        // migrated) the old hash. Neither makes a signature the platform accepts.
        let as_seed = MachineKey {
            signing: SigningKey::from_bytes(&stored.0),
            legacy: SecretHash(stored.0),
        };
        let forged = sign_raw("m1", &events_of("m1"), &as_seed, 1_000, "n1");
        assert!(matches!(
            verify_envelope(forged.as_bytes(), |_| Some(StoredKey::PublicKey(stored))),
            Err(AuthError::BadSignature(_))
        ));
        let hmac_with_hash =
            sign_raw_legacy("m1", &events_of("m1"), &SecretHash::of(secret), 1_000, "n2");
        assert!(
            matches!(
                verify_envelope(hmac_with_hash.as_bytes(), |_| Some(StoredKey::PublicKey(
                    stored
                ))),
                Err(AuthError::BadSignature(_))
            ),
            "a migrated machine never accepts the old HMAC"
        );
        // The token still works for the machine, checked by deriving its key.
        assert!(StoredKey::PublicKey(stored).matches(secret));
        assert!(!StoredKey::PublicKey(stored).matches("guess"));
    }

    /// A machine registered under the first scheme: old firmware is accepted as legacy; new
    /// firmware enrols its public key, proven by the old secret; an enrolment with a key the
    /// secret did not vouch for is refused.
    #[test]
    fn legacy_machines_are_accepted_and_enrol_their_public_key() {
        let secret = "old-secret";
        let legacy = StoredKey::Legacy(SecretHash::of(secret));
        let old = sign_raw_legacy("m1", &events_of("m1"), &SecretHash::of(secret), 1_000, "a");
        let signed = verify_envelope(old.as_bytes(), |_| Some(legacy));
        assert_eq!(signed.map(|s| (s.legacy, s.enrolled)), Ok((true, None)));
        let key = MachineKey::from_secret(secret);
        let new = sign_raw("m1", &events_of("m1"), &key, 1_000, "b");
        let signed = verify_envelope(new.as_bytes(), |_| Some(legacy));
        assert_eq!(
            signed.map(|s| (s.legacy, s.enrolled)),
            Ok((false, Some(PublicKey::of_secret(secret))))
        );
        // Someone else's key, with a proof made by another secret: refused.
        let intruder = sign_raw(
            "m1",
            &events_of("m1"),
            &MachineKey::from_secret("x"),
            1_000,
            "c",
        );
        assert!(matches!(
            verify_envelope(intruder.as_bytes(), |_| Some(legacy)),
            Err(AuthError::BadSignature(_))
        ));
    }

    #[test]
    fn tokens_are_checked_against_the_stored_hash() {
        let stored = SecretHash::of("tok");
        assert!(stored.matches("tok"));
        assert!(!stored.matches("tok2"));
        assert_eq!(
            SecretHash::from_hex(&stored.to_hex()).map(|h| h == stored),
            Ok(true)
        );
    }
}
