//! Access control: bearer tokens, each with a role and a tenant.
//!
//! - **Roles**: `admin` registers machines and locations and signs and ends leases; `operator`
//!   also puts machines into maintenance and back; `viewer` only reads.
//! - **Tenants**: a token is scoped to one client (`--tenant acme`): it sees that client's
//!   locations, machines, leases, their rows in SQL and their events in subscriptions, and
//!   nothing else. The platform's own staff use tenant `*`, which sees the whole fleet.
//! - **Tokens** look like `vf_<id>_<secret>`. The tokens file (JSON Lines, written by
//!   `vendflow token create`) keeps only the id, a SHA-256 of the secret, role and tenant, so
//!   the file leaks no token. A server re-reads the file when it changes, so a token created
//!   while it runs works at once.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

/// Whose data a token sees.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tenant {
    /// The platform's staff: every client.
    All,
    Client(String),
}

impl Tenant {
    pub fn parse(s: &str) -> Result<Tenant, AuthError> {
        match s.trim() {
            "*" => Ok(Tenant::All),
            "" => Err(AuthError::Invalid(
                "a tenant is a client id, or * for the whole fleet".into(),
            )),
            t => Ok(Tenant::Client(t.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Tenant::All => "*",
            Tenant::Client(c) => c,
        }
    }

    /// Whether this tenant may see what belongs to `client`.
    pub fn sees(&self, client: &str) -> bool {
        match self {
            Tenant::All => true,
            Tenant::Client(c) => c == client,
        }
    }
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub role: Role,
    pub tenant: Tenant,
}

impl Principal {
    /// Everything, for servers run without access control and for in-process callers.
    pub fn platform() -> Principal {
        Principal {
            token_id: "-".into(),
            role: Role::Admin,
            tenant: Tenant::All,
        }
    }
}

/// `vendflow token …`: the tokens file, from the command line.
#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token: prints it once; the tokens file keeps only its hash, role and tenant.
    /// A server reading that file (`run --tokens`) accepts the token at once.
    Create {
        /// admin (machines, locations, leases), operator (maintenance), viewer (read only).
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
        /// The client whose machines, leases and rows the token sees, or `*` for the whole
        /// fleet (the platform's staff).
        #[arg(long)]
        tenant: String,
        /// The tokens file (created if missing).
        #[arg(long, default_value = "vendflow-tokens.jsonl")]
        tokens: PathBuf,
        /// What the token is for (kept in the file).
        #[arg(long)]
        note: Option<String>,
    },
}

/// A token just created, to show once.
pub struct Issued {
    pub token: String,
    /// What was created, where: `created a viewer token for tenant acme in FILE`.
    pub notice: String,
}

impl TokenCommand {
    pub fn run(self) -> Result<Issued, AuthError> {
        match self {
            TokenCommand::Create {
                role,
                tenant,
                tokens,
                note,
            } => {
                let role = Role::parse(&role).ok_or_else(|| {
                    AuthError::Invalid(format!("role {role:?}: expected admin, operator or viewer"))
                })?;
                let tenant = Tenant::parse(&tenant)?;
                let token = Tokens::open(&tokens)?.issue(role, tenant.clone(), note.as_deref())?;
                Ok(Issued {
                    token,
                    notice: format!(
                        "created a {} token for tenant {} in {} (shown once):",
                        role.as_str(),
                        tenant.as_str(),
                        tokens.display()
                    ),
                })
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read or write the tokens file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("tokens file {path}, line {line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenLine {
    id: String,
    secret_sha256: String,
    role: String,
    tenant: String,
    created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

struct Entry {
    hash: [u8; 32],
    role: Role,
    tenant: Tenant,
}

#[derive(Default)]
struct Loaded {
    entries: HashMap<String, Entry>,
    modified: Option<(SystemTime, u64)>,
}

/// The tokens a server accepts: those of its file (re-read when it changes) and those issued
/// in process.
pub struct Tokens {
    path: Option<PathBuf>,
    loaded: RwLock<Loaded>,
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn random_hex(bytes: usize) -> Result<String, AuthError> {
    use rand::TryRngCore;
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| AuthError::Invalid(format!("the operating system's random source: {e}")))?;
    Ok(hex::encode(buf))
}

fn read_file(path: &Path) -> Result<HashMap<String, Entry>, AuthError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(AuthError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let mut entries = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| AuthError::Line {
            path: path.display().to_string(),
            line: i + 1,
            message,
        };
        let t: TokenLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&t.secret_sha256, &mut hash)
            .map_err(|e| bad(format!("secretSha256: {e}")))?;
        let role = Role::parse(&t.role).ok_or_else(|| bad(format!("unknown role {:?}", t.role)))?;
        let tenant = Tenant::parse(&t.tenant).map_err(|e| bad(e.to_string()))?;
        entries.insert(t.id, Entry { hash, role, tenant });
    }
    Ok(entries)
}

/// What tells a changed file: its modification time and its length.
fn modified(path: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path)
        .and_then(|m| Ok((m.modified()?, m.len())))
        .ok()
}

impl Tokens {
    /// The tokens in `path` (a missing file is an empty one).
    pub fn open(path: &Path) -> Result<Tokens, AuthError> {
        let entries = read_file(path)?;
        Ok(Tokens {
            path: Some(path.to_owned()),
            loaded: RwLock::new(Loaded {
                entries,
                modified: modified(path),
            }),
        })
    }

    /// Tokens kept only in memory.
    pub fn in_memory() -> Tokens {
        Tokens {
            path: None,
            loaded: RwLock::new(Loaded::default()),
        }
    }

    /// Issues a token with `role` for `tenant`, appending it to the file when there is one.
    /// Returns the token: it is shown once and stored nowhere.
    pub fn issue(
        &self,
        role: Role,
        tenant: Tenant,
        note: Option<&str>,
    ) -> Result<String, AuthError> {
        let id = random_hex(4)?;
        let secret = random_hex(24)?;
        let hash = sha256(&secret);
        if let Some(path) = &self.path {
            append(path, &id, &hash, role, &tenant, note)?;
        }
        let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        loaded
            .entries
            .insert(id.clone(), Entry { hash, role, tenant });
        if let Some(path) = &self.path {
            loaded.modified = modified(path);
        }
        Ok(format!("vf_{id}_{secret}"))
    }

    /// Who `token` belongs to, if anyone.
    pub fn verify(&self, token: &str) -> Option<Principal> {
        let mut parts = token.trim().splitn(3, '_');
        let (Some("vf"), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        self.reload_if_changed();
        let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        let entry = loaded.entries.get(id)?;
        // Both sides are hashes: comparing them leaks nothing useful about the secret.
        (entry.hash == sha256(secret)).then(|| Principal {
            token_id: id.to_owned(),
            role: entry.role,
            tenant: entry.tenant.clone(),
        })
    }

    fn reload_if_changed(&self) {
        let Some(path) = &self.path else { return };
        let now = modified(path);
        let stale = {
            let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
            now != loaded.modified
        };
        if !stale {
            return;
        }
        match read_file(path) {
            Ok(entries) => {
                let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
                loaded.entries = entries;
                loaded.modified = now;
            }
            // Keep serving the tokens we had: a half-written or broken file must not lock
            // everyone out.
            Err(e) => tracing::warn!(error = %e, "tokens file not reloaded"),
        }
    }
}

fn append(
    path: &Path,
    id: &str,
    hash: &[u8; 32],
    role: Role,
    tenant: &Tenant,
    note: Option<&str>,
) -> Result<(), AuthError> {
    let io = |source| AuthError::Io {
        path: path.display().to_string(),
        source,
    };
    let line = TokenLine {
        id: id.to_owned(),
        secret_sha256: hex::encode(hash),
        role: role.as_str().to_owned(),
        tenant: tenant.as_str().to_owned(),
        created_at: vendflow_protocol::Timestamp::now().to_rfc3339(),
        note: note.map(str::to_owned),
    };
    let text = serde_json::to_string(&line).map_err(|e| io(e.into()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    writeln!(file, "{text}").map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("tokens.jsonl");
        let tokens = Tokens::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let admin = tokens
            .issue(Role::Admin, Tenant::All, Some("ops"))
            .unwrap_or_else(|e| panic!("{e}"));
        let p = tokens
            .verify(&admin)
            .unwrap_or_else(|| panic!("admin token"));
        assert_eq!((p.role, p.tenant), (Role::Admin, Tenant::All));
        assert!(tokens.verify(&format!("{admin}x")).is_none());
        assert!(tokens.verify("vf_nope_nope").is_none());
        assert!(tokens.verify("Bearer").is_none());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!text.contains(admin.rsplit('_').next().unwrap_or("?")));

        // A token another process appended to the file is accepted without a restart.
        let other = Tokens::open(&path).unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let viewer = other
            .issue(Role::Viewer, Tenant::Client("acme".into()), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let p = tokens
            .verify(&viewer)
            .unwrap_or_else(|| panic!("viewer token"));
        assert_eq!(
            (p.role, p.tenant),
            (Role::Viewer, Tenant::Client("acme".into()))
        );
    }
}
