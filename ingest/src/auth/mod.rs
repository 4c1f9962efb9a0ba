//! Device credentials on the receiving side: the credentials file, signature checks and replay
//! refusal, shared by the MQTT bridge and the HTTPS endpoint.
//!
//! The credentials file has one JSON object per line, `{"machineId":"m00001","publicKey":"…"}`:
//! only each machine's Ed25519 public key, derived from its secret (see
//! `vendflow_protocol::auth`), so the file signs nothing. `vendflow device register` issues a
//! secret and writes its line. Lines of the first scheme, `{"machineId","secretSha256"}`, are
//! still read: such a machine is accepted on its old HMAC while legacy credentials are allowed,
//! and its line is replaced by its public key (the file rewritten) as soon as its firmware
//! enrols one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use vendflow_protocol::auth::{
    AuthError, PublicKey, SecretHash, Signed, StoredKey, verify_envelope,
};
use vendflow_protocol::topics::Topic;

/// Default tolerance between a machine's `sentAt` and the receiver's clock.
pub const DEFAULT_MAX_SKEW_MS: i64 = 15 * 60 * 1000;

/// How often a verifier looks at its credentials file for machines added or revoked.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CredentialLine {
    machine_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    /// The first scheme's line (not yet migrated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_sha256: Option<String>,
}

/// The machines' public keys (and the first scheme's hashes, until each machine enrols).
#[derive(Clone, Default)]
pub struct Credentials {
    keys: HashMap<String, StoredKey>,
    /// The file they were loaded from: an enrolment rewrites it.
    path: Option<PathBuf>,
    /// The file's modification time and length when it was read (to see it change).
    stamp: Option<Stamp>,
}

/// What tells a credentials file's versions apart: its modification time and length.
type Stamp = (SystemTime, u64);

fn stamp_of(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} machines)", self.keys.len())
    }
}

/// `vendflow device …`: the machines' keys in a credentials file, from the command line.
#[derive(clap::Subcommand)]
pub enum DeviceCommand {
    /// Issue a secret for a machine: prints it once and stores only its Ed25519 public key
    /// (derived from the secret) in --credentials.
    Register {
        machine_id: String,
        /// Credentials file (created if missing).
        #[arg(long)]
        credentials: PathBuf,
    },
    /// Register a new machine and write its provisioning bundle (its id, a new secret, the
    /// broker and HTTP endpoints, its planogram from --registry) to --out, readable by its
    /// owner only; print the bundle as a QR code (and its text payload) for the installer.
    /// The controller boots from the bundle and starts publishing.
    Provision {
        machine_id: String,
        /// Credentials file (created if missing); the machine's public key is added.
        #[arg(long)]
        credentials: PathBuf,
        /// The MQTT broker the machine publishes to, HOST:PORT.
        #[arg(long)]
        mqtt: String,
        /// Telemetry over HTTP, e.g. https://api.example/api/telemetry.
        #[arg(long)]
        http: Option<String>,
        /// Registry records (JSON Lines, as `registry load` reads): the machine's planogram.
        #[arg(long)]
        registry: Option<PathBuf>,
        /// Where the bundle is written.
        #[arg(long)]
        out: PathBuf,
    },
    /// Take a machine's key out of the credentials file (a decommissioned machine, a leaked
    /// secret): a bridge or server following the file refuses its envelopes within a second.
    /// `DELETE /api/machines/{id}` does the same for a machine deleted through the API.
    Revoke {
        machine_id: String,
        /// Credentials file.
        #[arg(long)]
        credentials: PathBuf,
    },
}

/// What a device command did: a line for whoever ran it, and a secret to show once, or a
/// provisioning bundle's QR code (rendered for a terminal, and its text payload).
pub struct DeviceOutcome {
    pub notice: String,
    pub secret: Option<String>,
    pub qr: Option<(String, String)>,
}

impl DeviceCommand {
    pub fn run(self) -> Result<DeviceOutcome, CredentialsError> {
        match self {
            DeviceCommand::Register {
                machine_id,
                credentials,
            } => {
                vendflow_protocol::MachineId::parse(&machine_id).map_err(|e| {
                    CredentialsError::Invalid(format!("machine id {machine_id:?}: {e}"))
                })?;
                let secret = Credentials::register(&credentials, &machine_id)?;
                Ok(DeviceOutcome {
                    notice: format!(
                        "registered {machine_id}; its secret (shown once, stored only as a hash in {}):",
                        credentials.display()
                    ),
                    secret: Some(secret),
                    qr: None,
                })
            }
            DeviceCommand::Provision {
                machine_id,
                credentials,
                mqtt,
                http,
                registry,
                out,
            } => provision(
                &machine_id,
                &credentials,
                mqtt,
                http,
                registry.as_deref(),
                &out,
            ),
            DeviceCommand::Revoke {
                machine_id,
                credentials,
            } => {
                if !Credentials::revoke(&credentials, &machine_id)? {
                    return Err(CredentialsError::Invalid(format!(
                        "{machine_id} has no credentials in {}; nothing revoked",
                        credentials.display()
                    )));
                }
                Ok(DeviceOutcome {
                    notice: format!(
                        "revoked {machine_id}'s key in {}; its envelopes are refused from now on",
                        credentials.display()
                    ),
                    secret: None,
                    qr: None,
                })
            }
        }
    }
}

/// `vendflow device provision`: the bundle is checked as the controller will read it before
/// the machine is registered, so a bad address or planogram registers nothing.
fn provision(
    machine_id: &str,
    credentials: &Path,
    mqtt: String,
    http: Option<String>,
    registry: Option<&Path>,
    out: &Path,
) -> Result<DeviceOutcome, CredentialsError> {
    use vendflow_protocol::provision::{BUNDLE_VERSION, Bundle, BundleSlot};
    let planogram = match registry {
        None => Vec::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let machine = text
                .lines()
                .filter_map(|l| vendflow_protocol::decode::decode_registry(l.as_bytes()).ok())
                .find_map(|r| match r {
                    vendflow_protocol::RegistryRecord::Machine(m)
                        if m.machine_id.as_str() == machine_id =>
                    {
                        Some(m)
                    }
                    _ => None,
                })
                .ok_or_else(|| {
                    CredentialsError::Invalid(format!(
                        "{machine_id} is not a machine of {}",
                        path.display()
                    ))
                })?;
            machine
                .slots
                .iter()
                .map(|s| BundleSlot {
                    slot_number: s.slot_number,
                    product_id: s.product_id.to_string(),
                    price_cents: s.price.0,
                    capacity: s.max_capacity,
                })
                .collect()
        }
    };
    let placeholder = "0".repeat(64);
    let mut bundle = Bundle {
        version: BUNDLE_VERSION,
        machine_id: machine_id.to_owned(),
        secret: placeholder,
        mqtt,
        http,
        planogram,
    };
    Bundle::from_json(bundle.to_json().as_bytes())
        .map_err(|e| CredentialsError::Invalid(e.to_string()))?;
    if out.exists() {
        return Err(CredentialsError::Invalid(format!(
            "{} exists; a bundle is never overwritten (it holds a machine's secret)",
            out.display()
        )));
    }
    bundle.secret = Credentials::register(credentials, machine_id)?;
    let io = |source| CredentialsError::Io {
        path: out.display().to_string(),
        source,
    };
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(out).map_err(io)?;
        file.write_all(bundle.to_json().as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    let payload = bundle.qr_payload();
    let rendered =
        qrcode::QrCode::with_error_correction_level(payload.as_bytes(), qrcode::EcLevel::L)
            .map(|code| {
                code.render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build()
            })
            .unwrap_or_else(|e| format!("(the payload does not fit a QR code: {e}; use the file)"));
    Ok(DeviceOutcome {
        notice: format!(
            "registered {machine_id} in {}; its bundle (with its secret: keep it private) is {} ({} slots); the QR code holds the same",
            credentials.display(),
            out.display(),
            bundle.planogram.len()
        ),
        secret: None,
        qr: Some((rendered, payload)),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("machine {0:?} already has credentials; revoke them first")]
    Exists(String),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        // Taken before the read: a change made while reading shows as a newer stamp.
        let stamp = stamp_of(path);
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut creds = Credentials::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |message: String| CredentialsError::Line {
                path: path.display().to_string(),
                line: i + 1,
                message,
            };
            let parsed: CredentialLine =
                serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            let key = match (&parsed.public_key, &parsed.secret_sha256) {
                (Some(k), _) => {
                    StoredKey::PublicKey(PublicKey::from_hex(k).map_err(|e| bad(e.to_string()))?)
                }
                (None, Some(h)) => {
                    StoredKey::Legacy(SecretHash::from_hex(h).map_err(|e| bad(e.to_string()))?)
                }
                (None, None) => return Err(bad("neither publicKey nor secretSha256".into())),
            };
            creds.keys.insert(parsed.machine_id, key);
        }
        creds.path = Some(path.to_owned());
        creds.stamp = stamp;
        Ok(creds)
    }

    pub fn insert(&mut self, machine_id: &str, key: StoredKey) {
        self.keys.insert(machine_id.to_owned(), key);
    }

    /// Forgets `machine_id`'s key (in memory); whether it had one.
    pub fn remove(&mut self, machine_id: &str) -> bool {
        self.keys.remove(machine_id).is_some()
    }

    pub fn get(&self, machine_id: &str) -> Option<StoredKey> {
        self.keys.get(machine_id).copied()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Machines still on the first scheme's hash (to migrate).
    pub fn legacy(&self) -> usize {
        self.keys
            .values()
            .filter(|k| matches!(k, StoredKey::Legacy(_)))
            .count()
    }

    /// A legacy machine proved `key` is its own: store it instead of the hash, and in the file
    /// this came from (if any), so the hash is gone from disk too. The file is changed as it is
    /// now, not overwritten with this copy, which may not hold a machine registered a moment ago.
    pub fn enrol(&mut self, machine_id: &str, key: PublicKey) -> Result<(), CredentialsError> {
        let key = StoredKey::PublicKey(key);
        self.keys.insert(machine_id.to_owned(), key);
        match self.path.clone() {
            Some(path) => Credentials::update(&path, |file| {
                file.insert(machine_id, key);
                Ok(true)
            }),
            None => Ok(()),
        }
    }

    /// Changes the file at `path` (created if missing) under an exclusive lock (`<file>.lock`),
    /// as it is on disk: the REST API's process and a bridge both write it, and neither may
    /// lose the other's change. `change` says whether it changed anything (else nothing is
    /// written).
    fn update(
        path: &Path,
        change: impl FnOnce(&mut Credentials) -> Result<bool, CredentialsError>,
    ) -> Result<(), CredentialsError> {
        let io = |source| CredentialsError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut lock_name = path.file_name().unwrap_or_default().to_owned();
        lock_name.push(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.with_file_name(lock_name))
            .map_err(io)?;
        // Released when `lock` is dropped (and by the OS if this process dies).
        lock.lock().map_err(io)?;
        let mut creds = if path.exists() {
            Credentials::load(path)?
        } else {
            Credentials::default()
        };
        if change(&mut creds)? {
            creds.save(path)?;
        }
        Ok(())
    }

    /// Writes every machine's line to `path` (replacing it), via a temporary file.
    pub fn save(&self, path: &Path) -> Result<(), CredentialsError> {
        let io = |source| CredentialsError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        // Beside the file (a rename stays on one file system), named for this process.
        let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        for id in ids {
            let line = match self.keys[id] {
                StoredKey::PublicKey(k) => CredentialLine {
                    machine_id: id.clone(),
                    public_key: Some(k.to_hex()),
                    secret_sha256: None,
                },
                StoredKey::Legacy(h) => CredentialLine {
                    machine_id: id.clone(),
                    public_key: None,
                    secret_sha256: Some(h.to_hex()),
                },
            };
            let text = serde_json::to_string(&line).map_err(|e| io(e.into()))?;
            writeln!(file, "{text}").map_err(io)?;
        }
        file.flush().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Issues a new random secret for `machine_id`, adding its public key to the file at `path`
    /// (created if missing). Returns the secret: it is shown once and stored nowhere.
    pub fn register(path: &Path, machine_id: &str) -> Result<String, CredentialsError> {
        let mut secret = String::new();
        Credentials::update(path, |creds| {
            secret = creds.issue(machine_id)?;
            Ok(true)
        })?;
        Ok(secret)
    }

    /// A new random secret for `machine_id`, its public key kept (in memory); refused if the
    /// machine already has credentials.
    fn issue(&mut self, machine_id: &str) -> Result<String, CredentialsError> {
        if self.get(machine_id).is_some() {
            return Err(CredentialsError::Exists(machine_id.to_owned()));
        }
        let secret = new_secret()?;
        self.insert(
            machine_id,
            StoredKey::PublicKey(PublicKey::of_secret(&secret)),
        );
        Ok(secret)
    }

    /// Removes `machine_id`'s line from the file at `path` (a decommissioned machine, a leaked
    /// secret): from then on its envelopes are refused as an unknown machine's. Whether it had
    /// one; a missing file has none.
    pub fn revoke(path: &Path, machine_id: &str) -> Result<bool, CredentialsError> {
        if !path.exists() {
            return Ok(false);
        }
        let mut revoked = false;
        Credentials::update(path, |creds| {
            revoked = creds.remove(machine_id);
            Ok(revoked)
        })?;
        Ok(revoked)
    }
}

/// Where a running server issues and revokes machines' keys: the credentials file a bridge
/// reads (`run --credentials`), or the credentials an in-process verifier holds (the demo's
/// embedded broker and HTTPS telemetry).
#[derive(Clone, Debug)]
pub enum KeyStore {
    File(PathBuf),
    Shared(SharedCredentials),
}

impl KeyStore {
    /// A new secret for `machine_id`, its public key stored; the secret itself is stored nowhere.
    pub fn issue(&self, machine_id: &str) -> Result<String, CredentialsError> {
        match self {
            KeyStore::File(path) => Credentials::register(path, machine_id),
            KeyStore::Shared(credentials) => credentials
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .issue(machine_id),
        }
    }

    /// Takes `machine_id`'s key away; whether it had one.
    pub fn revoke(&self, machine_id: &str) -> Result<bool, CredentialsError> {
        match self {
            KeyStore::File(path) => Credentials::revoke(path, machine_id),
            KeyStore::Shared(credentials) => Ok(credentials
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(machine_id)),
        }
    }
}

/// 32 random bytes from the OS, as hex.
pub fn new_secret() -> Result<String, CredentialsError> {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| CredentialsError::Random(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// Why an envelope was refused at the door.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("topic {0:?} is not machines/<id>/telemetry")]
    Topic(String),
    #[error("envelope names machine {claimed:?} but arrived for machine {topic:?}")]
    MachineMismatch { topic: String, claimed: String },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(
        "sentAt {sent_at} is {skew_ms} ms away from the receiver's clock (limit {limit_ms} ms)"
    )]
    Stale {
        sent_at: i64,
        skew_ms: i64,
        limit_ms: i64,
    },
    #[error("nonce {nonce:?} of machine {machine:?} was already used with different content")]
    Replay { machine: String, nonce: String },
    #[error("payload of {bytes} bytes is over the limit of {limit} bytes; send smaller batches")]
    TooLarge { bytes: usize, limit: usize },
    #[error(
        "machine {0:?} signs with a legacy shared-key HMAC, which this receiver no longer accepts; update its firmware to Ed25519"
    )]
    Legacy(String),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Topic(_) => "topic",
            Refusal::MachineMismatch { .. } => "machine_mismatch",
            Refusal::Auth(a) => a.code(),
            Refusal::Stale { .. } => "stale",
            Refusal::Replay { .. } => "replay",
            Refusal::TooLarge { .. } => "too_large",
            Refusal::Legacy(_) => "legacy_credentials",
        }
    }
}

/// What to do with an envelope that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// New: forward it, then [`Verifier::forwarded`] once it is durable.
    Forward(Option<Signed>),
    /// The same bytes were already forwarded (a redelivery): acknowledge, do not forward again.
    AlreadyForwarded { nonce: String },
}

/// Credentials shared between verifiers and whatever registers machines while they run (the
/// REST API): a machine registered now is accepted at once.
pub type SharedCredentials = std::sync::Arc<std::sync::RwLock<Credentials>>;

/// Checks envelopes: machine id, signature, freshness, nonce reuse.
pub struct Verifier {
    credentials: Option<SharedCredentials>,
    /// The credentials' file, when they came from one: looked at again every [`RELOAD_EVERY`].
    watch: Option<Watch>,
    follow_every: Duration,
    max_skew_ms: i64,
    /// Whether machines still on the first scheme's HMAC are accepted (the migration window).
    allow_legacy: bool,
    /// (machine, nonce), as a 128-bit digest → digest of the forwarded bytes, while within the
    /// skew window. Fixed-size keys: at 10,000 envelopes/s the window holds 9 M of them, and
    /// two strings per key (kept twice, for expiry) made this the bridge's largest state.
    seen: NonceWindow,
}

/// Width of one bucket of [`NonceWindow`].
const NONCE_BUCKET_MS: i64 = 60_000;

/// The nonces forwarded within the skew window, in buckets by the minute their window ends.
///
/// One table of every nonce (with a heap of expiries beside it) doubled its capacity when the
/// window's count crossed a power of two: a 30-minute soak at twice the live rate saw the
/// bridge hold 328 MiB for ten minutes and step to 525 MiB. A minute's bucket is sized from the
/// one before it, and a bucket whose minute has passed is dropped whole: memory follows the
/// rate, flat while the rate is, with no expiry heap. A nonce is kept until the end of its
/// window's minute, at most a minute longer than its window: an envelope that old is refused as
/// stale before its nonce is looked at.
#[derive(Default)]
struct NonceWindow {
    /// (minute, nonces whose window ends in that minute), oldest first.
    buckets: std::collections::VecDeque<(i64, NonceMap)>,
}

type NonceMap = HashMap<NonceKey, [u8; 32], foldhash::fast::RandomState>;

impl NonceWindow {
    fn get(&self, key: &NonceKey) -> Option<&[u8; 32]> {
        self.buckets.iter().rev().find_map(|(_, m)| m.get(key))
    }

    /// Records `key` until `until_ms` (a key already recorded in that minute keeps its value).
    fn insert(&mut self, key: NonceKey, digest: [u8; 32], until_ms: i64) {
        let minute = until_ms.div_euclid(NONCE_BUCKET_MS);
        let at = match self.buckets.binary_search_by_key(&minute, |(m, _)| *m) {
            Ok(at) => at,
            Err(at) => {
                // As large as the newest minute so far: the rate changes slowly.
                let size = self.buckets.back().map_or(0, |(_, m)| m.len());
                let map = NonceMap::with_capacity_and_hasher(size, Default::default());
                self.buckets.insert(at, (minute, map));
                at
            }
        };
        if let Some((_, map)) = self.buckets.get_mut(at) {
            map.entry(key).or_insert(digest);
        }
    }

    /// (nonces held, bytes of their tables' slots), for the bridge's `/metrics`.
    fn size(&self) -> (usize, usize) {
        let slot = std::mem::size_of::<(NonceKey, [u8; 32])>() + 1;
        self.buckets.iter().fold((0, 0), |(n, b), (_, m)| {
            (n + m.len(), b + m.capacity() * slot)
        })
    }

    /// Drops the buckets whose minute has ended by `now_ms`.
    fn expire(&mut self, now_ms: i64) {
        while let Some(&(minute, _)) = self.buckets.front() {
            if (minute + 1).saturating_mul(NONCE_BUCKET_MS) > now_ms {
                break;
            }
            self.buckets.pop_front();
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.iter().map(|(_, m)| m.len()).sum()
    }
}

/// A (machine, nonce) pair as the first 128 bits of its SHA-256: no allocation per envelope,
/// and a collision (two pairs, one key) would take ~2^64 envelopes.
type NonceKey = u128;

/// A credentials file a verifier follows.
struct Watch {
    path: PathBuf,
    /// The version it holds.
    stamp: Option<Stamp>,
    next_look: Instant,
}

fn nonce_key(machine: &str, nonce: &str) -> NonceKey {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update((machine.len() as u64).to_le_bytes());
    h.update(machine.as_bytes());
    h.update(nonce.as_bytes());
    let d: [u8; 32] = h.finalize().into();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    u128::from_le_bytes(k)
}

impl Verifier {
    /// `credentials: None` turns signature checks off (only for trusted networks and tests of
    /// other parts; the CLI says so loudly).
    pub fn new(credentials: Option<Credentials>, max_skew_ms: i64) -> Verifier {
        Verifier::shared(
            credentials.map(|c| std::sync::Arc::new(std::sync::RwLock::new(c))),
            max_skew_ms,
        )
    }

    /// A verifier over credentials that may grow while it runs.
    pub fn shared(credentials: Option<SharedCredentials>, max_skew_ms: i64) -> Verifier {
        // Credentials read from a file are followed: machines added and revoked there (by the
        // REST API of `run --credentials`, or `vendflow device`) take effect without a restart.
        let watch = credentials.as_ref().and_then(|c| {
            let c = c.read().unwrap_or_else(|e| e.into_inner());
            Some(Watch {
                path: c.path.clone()?,
                stamp: c.stamp,
                next_look: Instant::now() + RELOAD_EVERY,
            })
        });
        Verifier {
            credentials,
            watch,
            follow_every: RELOAD_EVERY,
            max_skew_ms,
            allow_legacy: true,
            seen: NonceWindow::default(),
        }
    }

    /// Looks at the credentials file this often instead of every [`RELOAD_EVERY`].
    pub fn follow_every(mut self, every: Duration) -> Verifier {
        self.follow_every = every;
        if let Some(w) = &mut self.watch {
            w.next_look = Instant::now() + every;
        }
        self
    }

    /// Refuses machines that still sign with the first scheme's HMAC (once the fleet has
    /// migrated: from then on a leaked hash file signs nothing).
    pub fn refuse_legacy(mut self) -> Verifier {
        self.allow_legacy = false;
        self
    }

    /// Reads the credentials file again if it changed since it was read (looked at once per
    /// [`RELOAD_EVERY`], or now with `now`). A file that cannot be read or parsed keeps the
    /// machines read before, and says why; whether the credentials changed.
    fn follow(&mut self, now: bool) -> bool {
        let (Some(watch), Some(credentials)) = (&mut self.watch, &self.credentials) else {
            return false;
        };
        let at = Instant::now();
        if !now && at < watch.next_look {
            return false;
        }
        watch.next_look = at + self.follow_every;
        let stamp = stamp_of(&watch.path);
        if stamp == watch.stamp {
            return false;
        }
        watch.stamp = stamp;
        match Credentials::load(&watch.path) {
            Ok(fresh) => {
                let mut held = credentials.write().unwrap_or_else(|e| e.into_inner());
                let added = fresh
                    .keys
                    .keys()
                    .filter(|m| !held.keys.contains_key(*m))
                    .count();
                let revoked = held
                    .keys
                    .keys()
                    .filter(|m| !fresh.keys.contains_key(*m))
                    .count();
                tracing::info!(path = %watch.path.display(), machines = fresh.len(), added, revoked, "credentials file reloaded");
                *held = fresh;
                true
            }
            Err(e) => {
                tracing::warn!(path = %watch.path.display(), error = %e, "cannot reload the credentials file; keeping the machines read before");
                false
            }
        }
    }

    /// Whether `token` is `machine`'s secret (always true without credentials).
    pub fn token_matches(&mut self, machine: &str, token: Option<&str>) -> bool {
        self.follow(false);
        if self.verify_token(machine, token) {
            return true;
        }
        // A machine registered a moment ago: look at the file now rather than in a second.
        self.follow(true) && self.verify_token(machine, token)
    }

    fn verify_token(&self, machine: &str, token: Option<&str>) -> bool {
        match &self.credentials {
            None => true,
            Some(creds) => token
                .zip(creds.read().unwrap_or_else(|e| e.into_inner()).get(machine))
                .is_some_and(|(token, key)| key.matches(token)),
        }
    }

    pub fn checks_signatures(&self) -> bool {
        self.credentials.is_some()
    }

    /// Checks an envelope that arrived for `machine` (from the topic or a header) at `now_ms`.
    pub fn check(
        &mut self,
        machine: &str,
        bytes: &[u8],
        now_ms: i64,
    ) -> Result<Admission, Refusal> {
        let claimed = vendflow_protocol::auth::claimed_machine(bytes)?;
        if claimed != machine {
            return Err(Refusal::MachineMismatch {
                topic: machine.to_owned(),
                claimed,
            });
        }
        // The shared handle (a reference count), so the file can be followed meanwhile.
        let Some(creds) = self.credentials.clone() else {
            return Ok(Admission::Forward(None));
        };
        let verify = || {
            let held = creds.read().unwrap_or_else(|e| e.into_inner());
            verify_envelope(bytes, |m| held.get(m))
        };
        self.follow(false);
        let signed = match verify() {
            // A machine registered a moment ago: look at the file now rather than in a second.
            Err(AuthError::UnknownMachine(_)) if self.follow(true) => verify()?,
            result => result?,
        };
        if signed.legacy && !self.allow_legacy {
            return Err(Refusal::Legacy(machine.to_owned()));
        }
        if let Some(key) = signed.enrolled {
            let mut creds = creds.write().unwrap_or_else(|e| e.into_inner());
            match creds.enrol(machine, key) {
                Ok(()) => {
                    tracing::info!(machine_id = %machine, "machine enrolled its public key; its legacy secret hash is gone")
                }
                Err(e) => {
                    tracing::error!(machine_id = %machine, error = %e, "enrolled a public key but cannot rewrite the credentials file")
                }
            }
        }
        let skew_ms = (now_ms - signed.sent_at).abs();
        if skew_ms > self.max_skew_ms {
            return Err(Refusal::Stale {
                sent_at: signed.sent_at,
                skew_ms,
                limit_ms: self.max_skew_ms,
            });
        }
        self.expire(now_ms);
        match self.seen.get(&nonce_key(machine, &signed.nonce)) {
            Some(digest) if *digest == digest_of(bytes) => Ok(Admission::AlreadyForwarded {
                nonce: signed.nonce,
            }),
            Some(_) => Err(Refusal::Replay {
                machine: machine.to_owned(),
                nonce: signed.nonce,
            }),
            None => Ok(Admission::Forward(Some(signed))),
        }
    }

    /// Records a forwarded envelope's nonce, so a redelivery is recognised and a replay refused.
    pub fn forwarded(&mut self, signed: &Signed, bytes: &[u8]) {
        let key = nonce_key(signed.machine_id.as_str(), &signed.nonce);
        let until = signed.sent_at.saturating_add(self.max_skew_ms);
        self.seen.insert(key, digest_of(bytes), until);
    }

    fn expire(&mut self, now_ms: i64) {
        self.seen.expire(now_ms);
    }

    /// (nonces held for the skew window, bytes of their tables' slots): the bridge's one state
    /// with a horizon, flat once a window's worth of envelopes has passed.
    pub fn nonce_window_size(&self) -> (usize, usize) {
        self.seen.size()
    }
}

fn digest_of(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// The machine id in a `machines/<id>/<leaf>` topic.
pub fn machine_of_topic(topic: &str, kind: Topic) -> Result<&str, Refusal> {
    kind.machine(topic)
        .ok_or_else(|| Refusal::Topic(topic.to_owned()))
}

#[cfg(test)]
mod tests {
    use vendflow_protocol::auth::{MachineKey, sign_envelope, sign_raw_legacy};
    use vendflow_protocol::{Envelope, MachineId};

    use super::*;

    fn signed(machine: &str, secret: &str, sent_at: i64, nonce: &str) -> String {
        let env = Envelope {
            machine_id: MachineId::parse(machine).unwrap_or_else(|e| panic!("{e}")),
            events: vec![],
        };
        sign_envelope(&env, &MachineKey::from_secret(secret), sent_at, nonce)
    }

    fn verifier() -> Verifier {
        let mut creds = Credentials::default();
        creds.insert("m1", StoredKey::PublicKey(PublicKey::of_secret("a")));
        creds.insert("m2", StoredKey::PublicKey(PublicKey::of_secret("b")));
        Verifier::new(Some(creds), 60_000)
    }

    /// The file is the one copy a server and a bridge share: a verifier started before a machine
    /// was registered accepts it at once, stops accepting one revoked, and keeps what it had
    /// when the file is broken.
    #[test]
    fn a_verifier_follows_machines_added_and_revoked_in_its_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("credentials.jsonl");
        let store = KeyStore::File(path.clone());
        let first = store.issue("m1").unwrap_or_else(|e| panic!("{e}"));
        let creds = Credentials::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut v = Verifier::new(Some(creds), 60_000).follow_every(Duration::ZERO);
        let mut nonce = 0;
        let mut send = |v: &mut Verifier, machine: &str, secret: &str| {
            nonce += 1;
            v.check(
                machine,
                signed(machine, secret, 1_000, &format!("n{nonce}")).as_bytes(),
                1_000,
            )
        };
        assert!(matches!(
            send(&mut v, "m1", &first),
            Ok(Admission::Forward(Some(_)))
        ));

        // Registered after the verifier started (POST /api/machines on `run --credentials`).
        let second = store.issue("m2").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            send(&mut v, "m2", &second),
            Ok(Admission::Forward(Some(_)))
        ));
        assert!(matches!(
            store.issue("m2"),
            Err(CredentialsError::Exists(m)) if m == "m2"
        ));

        // Revoked (DELETE /api/machines/m1, `vendflow device revoke`).
        assert!(store.revoke("m1").unwrap_or_else(|e| panic!("{e}")));
        assert!(!store.revoke("m1").unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(
            send(&mut v, "m1", &first),
            Err(Refusal::Auth(AuthError::UnknownMachine("m1".into())))
        );
        assert!(!v.token_matches("m1", Some(&first)));
        assert!(v.token_matches("m2", Some(&second)));

        // A broken file (a half-written edit by hand) keeps the machines read before.
        std::fs::write(&path, "{not json\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            send(&mut v, "m2", &second),
            Ok(Admission::Forward(Some(_)))
        ));
        assert!(send(&mut v, "m1", &first).is_err());
    }

    /// The demo's machines live in memory: issuing and revoking act on the verifier at once.
    #[test]
    fn shared_credentials_are_issued_and_revoked_in_place() {
        let shared: SharedCredentials = Default::default();
        let mut v = Verifier::shared(Some(shared.clone()), 60_000);
        let store = KeyStore::Shared(shared);
        let secret = store.issue("m1").unwrap_or_else(|e| panic!("{e}"));
        let envelope = signed("m1", &secret, 1_000, "n1");
        assert!(matches!(
            v.check("m1", envelope.as_bytes(), 1_000),
            Ok(Admission::Forward(Some(_)))
        ));
        assert!(store.revoke("m1").unwrap_or_else(|e| panic!("{e}")));
        let again = signed("m1", &secret, 1_000, "n2");
        assert_eq!(
            v.check("m1", again.as_bytes(), 1_000),
            Err(Refusal::Auth(AuthError::UnknownMachine("m1".into())))
        );
    }

    /// A file of the first scheme: its machine is accepted on the old HMAC (or refused, once
    /// legacy credentials are turned off), and new firmware enrols its public key, which
    /// replaces the hash in the file itself.
    #[test]
    fn a_legacy_credentials_file_migrates_to_public_keys() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("credentials.jsonl");
        let hash = SecretHash::of("old");
        std::fs::write(
            &path,
            format!(
                "{{\"machineId\":\"m1\",\"secretSha256\":\"{}\"}}\n",
                hash.to_hex()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let creds = Credentials::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(creds.legacy(), 1);
        let shared = std::sync::Arc::new(std::sync::RwLock::new(creds));
        let old = sign_raw_legacy("m1", "[]", &hash, 1_000, "a");
        let mut strict = Verifier::shared(Some(shared.clone()), 60_000).refuse_legacy();
        assert_eq!(
            strict
                .check("m1", old.as_bytes(), 1_000)
                .map_err(|r| r.code()),
            Err("legacy_credentials")
        );
        let mut v = Verifier::shared(Some(shared.clone()), 60_000);
        assert!(matches!(
            v.check("m1", old.as_bytes(), 1_000),
            Ok(Admission::Forward(Some(_)))
        ));
        // Another process (the REST API) registers a machine the verifier has not reloaded yet:
        // the enrolment below changes the file as it is, so that machine stays in it.
        Credentials::register(&path, "m9").unwrap_or_else(|e| panic!("{e}"));
        let new = signed("m1", "old", 1_000, "b");
        assert!(matches!(
            v.check("m1", new.as_bytes(), 1_000),
            Ok(Admission::Forward(Some(_)))
        ));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            text.contains("\"m9\""),
            "the enrolment kept the machine registered meanwhile: {text}"
        );
        assert!(
            text.contains(&PublicKey::of_secret("old").to_hex()) && !text.contains(&hash.to_hex()),
            "the file holds the public key, not the hash: {text}"
        );
        // From now on the old HMAC is refused for this machine.
        let again = sign_raw_legacy("m1", "[]", &hash, 1_000, "c");
        assert_eq!(
            v.check("m1", again.as_bytes(), 1_000).map_err(|r| r.code()),
            Err("bad_signature")
        );
        let reloaded = Credentials::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reloaded.legacy(), 0);
        assert!(reloaded.get("m1").is_some_and(|k| k.matches("old")));
    }

    #[test]
    fn a_machine_cannot_publish_as_another() {
        let mut v = verifier();
        // m1's envelope, signed with m1's key, on m2's topic.
        let m1 = signed("m1", "a", 1_000, "n");
        assert!(matches!(
            v.check("m2", m1.as_bytes(), 1_000),
            Err(Refusal::MachineMismatch { .. })
        ));
        // Claims m2 but signed with m1's key.
        let forged = signed("m2", "a", 1_000, "n");
        assert_eq!(
            v.check("m2", forged.as_bytes(), 1_000)
                .map_err(|r| r.code()),
            Err("bad_signature")
        );
        assert!(matches!(
            v.check("m1", m1.as_bytes(), 1_000),
            Ok(Admission::Forward(Some(_)))
        ));
    }

    #[test]
    fn redelivery_is_recognised_replay_and_stale_are_refused() {
        let mut v = verifier();
        let first = signed("m1", "a", 1_000, "n1");
        let Ok(Admission::Forward(Some(s))) = v.check("m1", first.as_bytes(), 2_000) else {
            panic!("fresh envelope refused");
        };
        v.forwarded(&s, first.as_bytes());
        assert_eq!(
            v.check("m1", first.as_bytes(), 3_000),
            Ok(Admission::AlreadyForwarded { nonce: "n1".into() })
        );
        let reused = first.replace("\"events\":[]", "\"events\":[ ]");
        assert!(v.check("m1", reused.as_bytes(), 3_000).is_err());
        assert_eq!(
            v.check("m1", first.as_bytes(), 100_000)
                .map_err(|r| r.code()),
            Err("stale")
        );
        // Past the window the nonce is forgotten (and the envelope is stale anyway).
        v.expire(1_000_000);
        assert!(v.seen.is_empty());
    }

    /// The nonce window keeps each nonce to the end of its window's minute, in a bucket sized
    /// from the minute before (no table of the whole window that doubles), and drops a minute's
    /// bucket whole.
    #[test]
    fn nonces_leave_by_the_minute_and_a_minute_is_sized_by_the_one_before() {
        let mut w = NonceWindow::default();
        let minute = NONCE_BUCKET_MS;
        for i in 0..10_000u128 {
            w.insert(i, [1; 32], 5 * minute + 10);
        }
        w.insert(7, [2; 32], 5 * minute + 20);
        assert_eq!(w.get(&7), Some(&[1; 32]), "recorded once per minute");
        w.insert(20_000, [3; 32], 6 * minute);
        let (_, next) = &w.buckets[1];
        assert!(next.capacity() >= 10_000, "sized from the minute before");
        // Out of order: a window ending in an earlier minute goes in its own bucket.
        w.insert(30_000, [4; 32], 4 * minute + 1);
        assert_eq!(
            w.buckets.iter().map(|(m, _)| *m).collect::<Vec<_>>(),
            vec![4, 5, 6]
        );
        assert_eq!(w.len(), 10_002);
        let (held, bytes) = w.size();
        assert_eq!(held, 10_002, "the gauge counts every bucket's nonces");
        assert!(
            bytes >= 10_002 * 48,
            "each held nonce has a 48-byte slot at least"
        );
        w.expire(6 * minute - 1);
        assert_eq!(w.get(&30_000), None, "its minute is over");
        assert_eq!(w.get(&7), Some(&[1; 32]), "kept to the end of its minute");
        w.expire(6 * minute);
        assert_eq!(w.get(&7), None);
        assert_eq!(w.get(&20_000), Some(&[3; 32]));
        w.expire(7 * minute);
        assert!(w.is_empty());
    }

    #[test]
    fn topics_name_the_machine() {
        assert_eq!(
            machine_of_topic("machines/m1/telemetry", Topic::Telemetry),
            Ok("m1")
        );
        assert!(machine_of_topic("machines//telemetry", Topic::Telemetry).is_err());
        assert!(machine_of_topic("machines/m1/acks", Topic::Telemetry).is_err());
        assert!(machine_of_topic("machines/m1/telemetry/x", Topic::Telemetry).is_err());
    }
}
