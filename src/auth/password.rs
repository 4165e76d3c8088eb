//! Passwords: the rules a new password must meet, argon2id hashing and verifying, and setting a
//! user's password in the store.
//!
//! Every argon2id run — hash or verify, from a login, the first-start setup, a password change or
//! `toru passwd` — goes through a [`Kdf`], which runs one at a time on the blocking pool: a burst
//! of logins costs 19 MiB (OWASP's parameters: 19 MiB, 2 passes), not 19 MiB per request, and
//! never stalls the runtime thread. The blocking functions are private to this file, so there is
//! no way around the limit. The permit travels into the blocking task: a caller that gives up
//! (client gone, deadline) does not free it while its hash still runs.
//!
//! Called by `login` (verify, set) and the admin commands ([`set_password`]). Must not log a
//! password or a hash.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use tokio::sync::Semaphore;

use super::{AuthError, check_name};
use crate::role::Role;
use crate::store::{Store, UserRecord};

/// Shortest password accepted.
pub(crate) const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted (argon2 takes any length; this bounds request work).
pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;

/// The one-at-a-time limit on argon2id runs, and the only way to run one. Clones share the limit.
#[derive(Debug, Clone)]
pub(crate) struct Kdf {
    permits: Arc<Semaphore>,
    /// Runs started (each under the permit).
    runs: Arc<AtomicU64>,
}

impl Kdf {
    /// A limit of its own (tests; the host uses [`Kdf::shared`]).
    fn new() -> Kdf {
        Kdf {
            permits: Arc::new(Semaphore::new(1)),
            runs: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The process-wide limit: the web layer and the control socket share it.
    pub(crate) fn shared() -> Kdf {
        static SHARED: LazyLock<Kdf> = LazyLock::new(Kdf::new);
        SHARED.clone()
    }

    /// Run `work` on the blocking pool once the permit is ours; the permit is released when
    /// `work` returns, even if our caller stopped waiting for it.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| AuthError::Kdf(e.to_string()))?;
        let runs = self.runs.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            runs.fetch_add(1, Ordering::Relaxed);
            work()
        })
        .await
        .map_err(|e| AuthError::Kdf(e.to_string()))
    }

    /// The argon2id PHC string of `password`.
    pub(crate) async fn hash(&self, password: &str) -> Result<String, AuthError> {
        let password = password.to_string();
        self.run(move || hash_blocking(&password)).await?
    }

    /// Whether `password` matches `phc`. `None` verifies against a dummy hash (an unknown user:
    /// same cost, always false).
    pub(crate) async fn verify(&self, password: &str, phc: Option<String>) -> bool {
        let password = password.to_string();
        self.run(move || match phc {
            Some(phc) => verify_blocking(&password, &phc),
            None => {
                let _ = verify_blocking(&password, dummy_hash());
                false
            }
        })
        .await
        .unwrap_or(false)
    }

    /// argon2id runs started through this limit.
    #[cfg(test)]
    pub(crate) fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Hold the only permit (tests: make every run wait).
    #[cfg(test)]
    pub(crate) fn hold(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.permits
            .clone()
            .try_acquire_owned()
            .expect("the test holds the only permit")
    }

    /// A limit of its own (tests).
    #[cfg(test)]
    pub(crate) fn for_test() -> Kdf {
        Kdf::new()
    }
}

fn hash_blocking(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::PasswordHasher as _;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Kdf(e.to_string()))
}

fn verify_blocking(password: &str, phc: &str) -> bool {
    use argon2::password_hash::PasswordVerifier as _;
    match argon2::password_hash::phc::PasswordHash::new(phc) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A PHC string that no password matches, verified against for unknown users so a wrong user name
/// takes as long as a wrong password. Computed once, inside the first verify's permit.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_blocking("not a password: unknown user")
            .unwrap_or_else(|_| "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into())
    })
}

/// `Ok` if `password` may be set: [`MIN_PASSWORD_CHARS`] characters to [`MAX_PASSWORD_BYTES`] bytes.
pub(crate) fn check_password(password: &str) -> Result<(), AuthError> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::WeakPassword);
    }
    Ok(())
}

/// Set (or create) `user`'s password and role, hashing through `kdf`. Bumps the user's generation
/// and drops every session of the user. Does not touch the setup code (callers that set the
/// admin password remove it: [`super::remove_setup_code`]).
pub(crate) async fn set_password(
    kdf: &Kdf,
    store: &Store,
    user: &str,
    password: &str,
    role: Role,
) -> Result<(), AuthError> {
    check_name(user)?;
    check_password(password)?;
    let hash = kdf.hash(password).await?;
    let generation = store.user(user)?.map_or(0, |u| u.generation) + 1;
    store
        .put_user(UserRecord {
            name: user.to_string(),
            password_hash: hash,
            role,
            generation,
        })
        .await?;
    store.delete_sessions_of(user).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::Context;

    use super::*;

    #[test]
    fn passwords_round_trip() {
        let h = hash_blocking("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_blocking("correct horse", &h));
        assert!(!verify_blocking("wrong horse", &h));
        assert!(!verify_blocking("x", "not a phc string"));
        assert!(!verify_blocking("x", dummy_hash()));
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password("ééééééé").is_err(), "counted in characters");
    }

    /// Polls `fut` once: `true` if it is still pending.
    fn pending_after_one_poll<F: Future>(fut: std::pin::Pin<&mut F>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        fut.poll(&mut cx).is_pending()
    }

    /// Regression: `set_password` (first-start setup, password change, `toru passwd`) hashed on
    /// the blocking pool without taking the KDF permit, so any number of 19 MiB argon2id runs
    /// could overlap. Now it waits for the permit like a login does, and its run is counted by
    /// the limit it went through.
    #[tokio::test]
    async fn set_password_waits_for_the_kdf_permit() {
        let dir = super::super::testing::TempDir::new("kdf");
        let store = Store::open(dir.path(), crate::store::StoreOptions::default()).unwrap();
        let kdf = Kdf::for_test();
        let held = kdf.hold();
        let mut setting = pin!(set_password(
            &kdf,
            &store,
            "bob",
            "password123",
            Role::Viewer
        ));
        assert!(pending_after_one_poll(setting.as_mut()));
        assert_eq!(kdf.runs(), 0, "no argon2id run while the permit is held");
        drop(held);
        setting.await.unwrap();
        assert_eq!(kdf.runs(), 1, "the hash ran through the limit");
        let user = store.user("bob").unwrap().unwrap();
        assert_eq!(user.role, Role::Viewer);
        assert!(kdf.verify("password123", Some(user.password_hash)).await);
        assert!(!kdf.verify("password123", None).await, "unknown user");
        assert_eq!(kdf.runs(), 3, "verifying is limited too");
        store.close();
    }
}
