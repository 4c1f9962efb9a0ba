//! Device credentials: how a machine proves an envelope is its own.
//!
//! Each machine gets a random secret at registration. The platform stores only
//! `SHA-256(secret)` (hex), which is also the HMAC key: a machine signs with the hash of its
//! secret, the platform verifies with the stored hash, and the secret itself — the machine's
//! HTTPS token as well — is never stored. (As with any shared-key MAC, whoever reads the stored
//! hashes can sign; they cannot present the token.)
//!
//! A signed envelope carries three more fields beside `machineId` and `events`:
//!
//! ```json
//! {"machineId":"m00001","sentAt":1700000000000,"nonce":"5f0c…","events":[…],"signature":"9a1e…"}
//! ```
//!
//! `signature` is hex HMAC-SHA256 over `machineId \n sentAt \n nonce \n <events>` where
//! `<events>` is the exact text of the `events` array as sent: no re-serialisation on either
//! side, so nothing about JSON formatting can break a signature. `sentAt` (the sender's wall
//! clock, epoch ms) and `nonce` let the receiver refuse replays (see `vendflow-ingest`'s `auth`).

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::event::Envelope;
use crate::units::MachineId;

type HmacSha256 = Hmac<Sha256>;

/// The stored form of a machine secret, and its signing key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    pub fn of(secret: &str) -> SecretHash {
        SecretHash(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Result<SecretHash, AuthError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out)
            .map_err(|e| AuthError::Malformed(format!("secret hash is not 64 hex digits: {e}")))?;
        Ok(SecretHash(out))
    }

    /// Constant-time check of a presented token (the secret) against this hash.
    pub fn matches(&self, token: &str) -> bool {
        let presented = SecretHash::of(token).0;
        presented
            .iter()
            .zip(self.0)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
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

/// Encodes `envelope` signed with `key` (the machine's [`SecretHash`]).
pub fn sign_envelope(envelope: &Envelope, key: &SecretHash, sent_at: i64, nonce: &str) -> String {
    let events: Vec<serde_json::Value> = envelope
        .events
        .iter()
        .map(crate::Event::body_json)
        .collect();
    let events = serde_json::Value::Array(events).to_string();
    sign_raw(envelope.machine_id.as_str(), &events, key, sent_at, nonce)
}

/// Signs an envelope whose `events` array is given as JSON text, exactly as it will be sent
/// (the signature covers these bytes; any JSON, even events this protocol would refuse).
pub fn sign_raw(
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
    lookup: impl FnOnce(&str) -> Option<SecretHash>,
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
    let machine_id = MachineId::parse(&raw.machine_id).map_err(AuthError::Malformed)?;
    let key = lookup(machine_id.as_str())
        .ok_or_else(|| AuthError::UnknownMachine(machine_id.as_str().to_owned()))?;
    let mut presented = [0u8; 32];
    hex::decode_to_slice(signature.as_ref(), &mut presented)
        .map_err(|_| AuthError::BadSignature(machine_id.as_str().to_owned()))?;
    mac(&key, machine_id.as_str(), sent_at, &nonce, raw.events.get())
        .verify_slice(&presented)
        .map_err(|_| AuthError::BadSignature(machine_id.as_str().to_owned()))?;
    Ok(Signed {
        machine_id,
        sent_at,
        nonce: nonce.into_owned(),
    })
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

    #[test]
    fn a_signed_envelope_verifies_and_still_decodes() {
        let key = SecretHash::of("s3cret");
        let text = sign_envelope(&envelope("m1"), &key, 1_000, "n1");
        let signed = verify_envelope(text.as_bytes(), |m| (m == "m1").then_some(key));
        assert_eq!(
            signed.map(|s| (s.machine_id.as_str().to_owned(), s.sent_at, s.nonce)),
            Ok(("m1".to_owned(), 1_000, "n1".to_owned()))
        );
        let events = decode_envelope(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.len(), 1);
        assert!(events[0].is_ok());
    }

    #[test]
    fn tampering_wrong_key_and_missing_fields_are_refused() {
        let key = SecretHash::of("s3cret");
        let text = sign_envelope(&envelope("m1"), &key, 1_000, "n1");
        let tampered = text.replace("\"seq\":41", "\"seq\":42");
        assert!(matches!(
            verify_envelope(tampered.as_bytes(), |_| Some(key)),
            Err(AuthError::BadSignature(_))
        ));
        let other = SecretHash::of("other");
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
            verify_envelope(unsigned.as_bytes(), |_| Some(key)),
            Err(AuthError::Unsigned)
        );
        assert!(matches!(
            verify_envelope(b"{not json", |_| Some(key)),
            Err(AuthError::Malformed(_))
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
