//! Who may use the UI, the API and the CLI: passwords, the one-time setup code, API tokens, login
//! sessions and login throttling.
//!
//! Knows nothing of HTTP (it never names the HTTP library): the web layer (`crate::http`) hands it
//! header values and client addresses and turns its outcomes into responses; the admin commands
//! ([`crate::admin`]: `toru passwd`, `toru token …`) call it directly; startup calls
//! [`ensure_setup_code`]. It calls the store and nothing else of the host.
//!
//! The store only ever sees hashes: SHA-256 of session ids and tokens (random 256-bit values, so a
//! plain hash is enough), argon2id PHC strings of passwords. Never logs a secret except the setup
//! code, which is meant to be read from the log.
//!
//! ## Layout
//! - `password`: argon2id hashing and verifying, only ever through the one-at-a-time [`Kdf`];
//!   password rules; [`set_password`].
//! - `setup_code`: the first-start code and its file in the data dir.
//! - `tokens`: API tokens (create, list, revoke, authenticate a bearer token).
//! - `sessions`: login sessions (create, authenticate a cookie, idle/absolute expiry, end).
//! - `throttle`: per-client attempt counts for login, setup and password change, charged when an
//!   attempt starts.
//! - `login`: [`Auth`], the state the web layer keeps, and the flows that combine the above:
//!   login, first-start setup, password change, authenticating a request.
//!
//! Dependencies inside, one way: `login` → `tokens` → `sessions` (identity types), and `login` →
//! `setup_code`, `password`, `throttle`; all of them → this file's helpers. Nothing imports
//! `login` but the re-exports here.

mod login;
mod password;
mod sessions;
mod setup_code;
mod throttle;
mod tokens;

use std::path::PathBuf;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::store::StoreError;

pub(crate) use crate::role::Role;
pub(crate) use login::{Auth, LoginOutcome};
pub(crate) use password::{Kdf, MIN_PASSWORD_CHARS, set_password};
pub(crate) use sessions::{Identity, SESSION_COOKIE, Unauthenticated, Via};
pub(crate) use setup_code::{ensure_setup_code, remove_setup_code};
pub(crate) use tokens::{create_token, list_tokens, revoke_token};

/// The owner account.
pub(crate) const ADMIN: &str = "admin";

/// Why an auth operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Password shorter than `MIN_PASSWORD_CHARS` or longer than `MAX_PASSWORD_BYTES`.
    #[error(
        "the password must be {} to {} characters long",
        password::MIN_PASSWORD_CHARS,
        password::MAX_PASSWORD_BYTES
    )]
    WeakPassword,
    /// A user or token name that is empty, too long or has odd characters.
    #[error("names are 1 to 64 characters: letters, digits, '.', '_' and '-' (got {0:?})")]
    BadName(String),
    /// A token with this name exists.
    #[error("an API token named {0:?} already exists")]
    NameTaken(String),
    /// The store refused.
    #[error(transparent)]
    Store(StoreError),
    /// The setup-code file could not be written.
    #[error("cannot write the setup code to {path}")]
    SetupFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The OS random source failed.
    #[error("no randomness from the OS")]
    Random(#[source] getrandom::Error),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Kdf(String),
    /// The user disappeared between two steps (only if the store lost it).
    #[error("user {0:?} vanished from the store")]
    UserVanished(String),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken(n) => AuthError::NameTaken(n),
            e => AuthError::Store(e),
        }
    }
}

/// Names of users and tokens: 1–64 of `[A-Za-z0-9._-]`.
fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadName(name.to_string()))
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(AuthError::Random)?;
    Ok(b)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Lowercase hex SHA-256 of a secret (how tokens and session ids are stored).
fn secret_hash(secret: &str) -> String {
    use std::fmt::Write as _;
    let digest = Sha256::digest(secret.as_bytes());
    let mut s = String::with_capacity(64);
    for b in digest.iter() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Test helpers shared by the submodules' tests: a temp data dir and an [`crate::app::App`] on it.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    use crate::app::App;
    use crate::config::Config;
    use crate::store::{Store, StoreOptions};

    /// A fresh directory under the system temp dir, removed on drop.
    #[derive(Debug)]
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        /// `toru-auth-<tag>-<pid>-<n>` (short: sockets may live below it).
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("toru-auth-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("create the temp dir");
            TempDir(path)
        }

        /// The directory.
        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A host state on a store in `dir` (its data dir), with `config` adjusted by the caller.
    pub(crate) fn app(dir: &TempDir, adjust: impl FnOnce(&mut Config)) -> App {
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        adjust(&mut config);
        let store = Store::open(dir.path(), StoreOptions::default()).expect("open the store");
        let supervisor = crate::supervisor::Supervisor::new(config.clone(), store.clone());
        App {
            packages: crate::install::Packages::new(
                config.clone(),
                store.clone(),
                supervisor.clone(),
            ),
            safe_mode: crate::safe_mode::SafeMode::new(&config, store.clone(), supervisor.clone()),
            updates: crate::update::Updates::new(config.clone(), store.clone(), supervisor.clone()),
            mqtt: crate::mqtt::Bridge::disabled(),
            supervisor,
            config,
            store,
            started: std::time::Instant::now(),
            started_at: crate::clock::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_names() {
        assert_eq!(
            secret_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(check_name("ci-token_1.x").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
        assert!(check_name("a b").is_err());
    }
}
