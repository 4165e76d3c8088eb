//! Passwords: the rules a new password must meet, argon2id hashing and verifying, and setting a
//! user's password in the store.
//!
//! Every argon2id run — hash or verify, from a login, the first-start setup, a password change or
//! `toru passwd` — goes through a [`Kdf`]: a bounded queue in front of one thread of its own, which
//! runs them one after another in one block buffer of [`KDF_MEMORY_KIB`] (OWASP's parameters:
//! 19 MiB, 2 passes). The buffer is a memory mapping of its own (`crate::sys::PageBuffer`), made
//! when a run starts, reused while more runs are queued, and unmapped before the last queued run
//! answers — so an idle host holds none of it, and a burst of logins costs one buffer, not one per
//! request or per thread. (Not the allocator's memory, nor a pool of threads: glibc keeps a freed
//! buffer of this size resident in the arena of the thread that used it, one per thread.) The
//! runtime thread never hashes. The hashing functions are private to this file, so there is no way around
//! the queue. A caller that gives up (client gone, deadline) while its run is queued costs
//! nothing: the run is skipped.
//!
//! Called by `login` (verify, set) and the admin commands ([`set_password`]). Must not log a
//! password or a hash.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::{mpsc, oneshot};

use super::{AuthError, check_name, random_bytes};
use crate::role::Role;
use crate::store::{Store, UserRecord};
use crate::sys::PageBuffer;

/// Shortest password accepted.
pub(crate) const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted (argon2 takes any length; this bounds request work).
pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;
/// argon2id memory per run, KiB (= 1 KiB blocks): OWASP's 19 MiB. Also the most a stored hash
/// may ask for: a hash with more is refused rather than verified with a bigger buffer.
const KDF_MEMORY_KIB: u32 = Params::DEFAULT_M_COST;
/// Runs queued for the KDF thread; further callers wait (cancel-safely) for room.
const KDF_QUEUE_LEN: usize = 16;
/// Salt length of new hashes (the PHC recommendation).
const SALT_BYTES: usize = 16;

/// The parameters of new hashes: argon2id, version 0x13, [`KDF_MEMORY_KIB`], 2 passes, 1 lane.
fn new_hash_params() -> Params {
    Params::default()
}

/// The queue to the one thread that runs argon2id, and the only way to run it. Clones share the
/// queue, the thread and its buffer.
#[derive(Debug, Clone)]
pub(crate) struct Kdf {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Into the KDF thread; `None` until the first run starts the thread (again if it died).
    /// Locked only to clone or replace it, never across an await.
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    stats: Arc<Stats>,
}

/// What the KDF thread did (read by tests).
#[derive(Debug, Default)]
struct Stats {
    /// argon2id runs started.
    runs: AtomicU64,
    /// Runs in progress now.
    running: AtomicUsize,
    /// The most runs ever in progress at once.
    most_running: AtomicUsize,
    /// Bytes of argon2 blocks the thread holds now.
    held_bytes: AtomicUsize,
    /// Buffers allocated so far.
    allocations: AtomicU64,
}

/// Work for the KDF thread, with where its answer goes. (No `Debug`: it holds a password.)
enum Job {
    /// Hash a new password.
    Hash {
        password: String,
        done: oneshot::Sender<Result<String, AuthError>>,
    },
    /// Check a password against a PHC string (`None`: against a dummy hash, always false).
    Verify {
        password: String,
        phc: Option<String>,
        done: oneshot::Sender<bool>,
    },
    /// Keep the thread busy until the sender is dropped (tests: make every run wait).
    #[cfg(test)]
    Hold(std::sync::mpsc::Receiver<()>),
}

impl Kdf {
    /// A queue and thread of its own (tests; the host uses [`Kdf::shared`]).
    fn new() -> Kdf {
        Kdf {
            shared: Arc::new(Shared::default()),
        }
    }

    /// The process-wide one: the web layer and the control socket share it.
    pub(crate) fn shared() -> Kdf {
        static SHARED: LazyLock<Kdf> = LazyLock::new(Kdf::new);
        SHARED.clone()
    }

    /// The sending end of the queue, starting the thread if it is not running.
    fn queue(&self) -> Result<mpsc::Sender<Job>, AuthError> {
        let mut queue = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(q) = queue.as_ref().filter(|q| !q.is_closed()) {
            return Ok(q.clone());
        }
        let (tx, rx) = mpsc::channel(KDF_QUEUE_LEN);
        let stats = self.shared.stats.clone();
        std::thread::Builder::new()
            .name("toru-kdf".into())
            .spawn(move || serve(rx, &stats))
            .map_err(|e| AuthError::Kdf(format!("cannot start the hashing thread: {e}")))?;
        *queue = Some(tx.clone());
        Ok(tx)
    }

    /// Queue `job`, waiting for room. Dropping the future while it waits queues nothing.
    async fn submit(&self, job: Job) -> Result<(), AuthError> {
        self.queue()?.send(job).await.map_err(|_| thread_gone())
    }

    /// The argon2id PHC string of `password`.
    pub(crate) async fn hash(&self, password: &str) -> Result<String, AuthError> {
        let (done, answer) = oneshot::channel();
        self.submit(Job::Hash {
            password: password.to_string(),
            done,
        })
        .await?;
        answer.await.map_err(|_| thread_gone())?
    }

    /// Whether `password` matches `phc`. `None` verifies against a dummy hash (an unknown user:
    /// same cost, always false).
    pub(crate) async fn verify(&self, password: &str, phc: Option<String>) -> bool {
        let (done, answer) = oneshot::channel();
        let job = Job::Verify {
            password: password.to_string(),
            phc,
            done,
        };
        if self.submit(job).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// argon2id runs started through this queue.
    #[cfg(test)]
    pub(crate) fn runs(&self) -> u64 {
        self.shared.stats.runs.load(Ordering::SeqCst)
    }

    /// Keep the KDF thread busy until the returned sender is dropped (tests: make every run
    /// wait). Runs queued meanwhile start after it, in order.
    #[cfg(test)]
    pub(crate) fn hold(&self) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel();
        self.queue()
            .expect("the KDF thread starts")
            .try_send(Job::Hold(held))
            .expect("an idle KDF has room in its queue");
        release
    }

    /// A queue and thread of its own (tests).
    #[cfg(test)]
    pub(crate) fn for_test() -> Kdf {
        Kdf::new()
    }
}

fn thread_gone() -> AuthError {
    AuthError::Kdf("the password hashing thread stopped".into())
}

/// The KDF thread: runs the queued jobs one after another in one buffer, and frees the buffer
/// whenever the queue is empty — before sending the answer, so a caller that has its answer
/// knows the memory is back. Returns once every [`Kdf`] clone is gone.
fn serve(mut queue: mpsc::Receiver<Job>, stats: &Stats) {
    let mut memory = Memory::default();
    while let Some(job) = queue.blocking_recv() {
        match job {
            Job::Hash { password, done } if !done.is_closed() => {
                let hashed = stats.run(|| hash_with(&mut memory, &password));
                memory.release_if(queue.is_empty(), stats);
                let _ = done.send(hashed);
            }
            Job::Verify {
                password,
                phc,
                done,
            } if !done.is_closed() => {
                let ok = stats.run(|| match &phc {
                    Some(phc) => verify_with(&mut memory, &password, phc),
                    None => {
                        let dummy = dummy_hash(&mut memory);
                        let _ = verify_with(&mut memory, &password, dummy);
                        false
                    }
                });
                memory.release_if(queue.is_empty(), stats);
                let _ = done.send(ok);
            }
            #[cfg(test)]
            Job::Hold(held) => {
                let _ = held.recv();
            }
            // Its caller is gone: skipped.
            _ => memory.release_if(queue.is_empty(), stats),
        }
    }
}

impl Stats {
    /// Count and run one argon2id run.
    fn run<T>(&self, work: impl FnOnce() -> T) -> T {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        let out = work();
        self.running.fetch_sub(1, Ordering::SeqCst);
        out
    }
}

/// The KDF thread's argon2 blocks: one mapping of [`KDF_MEMORY_KIB`] at most, made for a run and
/// kept until [`Memory::release_if`] unmaps it. A mapping of its own, not the allocator's: glibc
/// kept freed buffers of this size resident in its arena (`crate::sys::PageBuffer`).
#[derive(Debug, Default)]
struct Memory {
    blocks: Option<PageBuffer<Block>>,
    /// Buffers allocated so far.
    allocations: u64,
}

impl Memory {
    /// `params.block_count()` blocks, allocating them if this buffer is smaller.
    fn blocks(&mut self, params: &Params) -> Result<&mut [Block], AuthError> {
        let count = params.block_count();
        if count > KDF_MEMORY_KIB as usize {
            return Err(AuthError::Kdf(format!(
                "a hash asking for {count} KiB of argon2 memory (at most {KDF_MEMORY_KIB})"
            )));
        }
        if self.blocks.as_ref().is_none_or(|b| b.len() < count) {
            self.blocks = None; // one buffer at a time: the old one goes first
            self.allocations += 1;
            let fresh = PageBuffer::new(count, Block::new())
                .map_err(|e| AuthError::Kdf(format!("no memory for argon2: {e}")))?;
            self.blocks = Some(fresh);
        }
        self.blocks
            .as_mut()
            .and_then(|b| b.as_mut_slice().get_mut(..count))
            .ok_or_else(|| AuthError::Kdf("argon2 buffer too small".into()))
    }

    /// Unmap the buffer if `idle` (nothing more queued): its memory goes back to the OS.
    fn release_if(&mut self, idle: bool, stats: &Stats) {
        if idle {
            self.blocks = None;
        }
        stats.held_bytes.store(
            self.blocks.as_ref().map_or(0, PageBuffer::bytes),
            Ordering::SeqCst,
        );
        stats.allocations.store(self.allocations, Ordering::SeqCst);
    }
}

fn kdf_error(e: impl std::fmt::Display) -> AuthError {
    AuthError::Kdf(e.to_string())
}

/// Hash `password` with new random salt in `memory`: a PHC string.
fn hash_with(memory: &mut Memory, password: &str) -> Result<String, AuthError> {
    let params = new_hash_params();
    let salt: [u8; SALT_BYTES] = random_bytes()?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let blocks = memory.blocks(&params)?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks)
        .map_err(kdf_error)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(kdf_error)?,
        salt: Some(Salt::new(&salt).map_err(kdf_error)?),
        hash: Some(Output::new(&out).map_err(kdf_error)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc`, computed in `memory`. A string that is not an
/// argon2 hash, or asks for more than [`KDF_MEMORY_KIB`], matches nothing.
fn verify_with(memory: &mut Memory, password: &str, phc: &str) -> bool {
    match try_verify(memory, password, phc) {
        Ok(matches) => matches,
        Err(e) => {
            log::warn!("auth: a stored password hash cannot be checked: {e}");
            false
        }
    }
}

fn try_verify(memory: &mut Memory, password: &str, phc: &str) -> Result<bool, AuthError> {
    let parsed = PasswordHash::new(phc).map_err(kdf_error)?;
    let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).map_err(kdf_error)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(kdf_error)?
        .unwrap_or_default();
    let params = Params::try_from(&parsed).map_err(kdf_error)?;
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Err(AuthError::Kdf("no salt or no hash".into()));
    };
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = out
        .get_mut(..expected.len())
        .ok_or_else(|| AuthError::Kdf("hash too long".into()))?;
    let blocks = memory.blocks(&params)?;
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, out, blocks)
        .map_err(kdf_error)?;
    // `Output`'s equality is constant-time.
    Ok(Output::new(out).map_err(kdf_error)? == *expected)
}

/// A PHC string that no password matches, verified against for unknown users so a wrong user name
/// takes as long as a wrong password. Computed once, on the KDF thread.
fn dummy_hash(memory: &mut Memory) -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_with(memory, "not a password: unknown user")
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
        let mut memory = Memory::default();
        let h = hash_with(&mut memory, "correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_with(&mut memory, "correct horse", &h));
        assert!(!verify_with(&mut memory, "wrong horse", &h));
        assert!(!verify_with(&mut memory, "x", "not a phc string"));
        let dummy = dummy_hash(&mut memory);
        assert!(!verify_with(&mut memory, "x", dummy));
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password("ééééééé").is_err(), "counted in characters");
    }

    /// Hashes made by the argon2 crate's own API (what earlier versions stored) still verify, and
    /// ours verify with it: same algorithm, parameters and encoding.
    #[test]
    fn compatible_with_the_argon2_crate() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let mut memory = Memory::default();
        let theirs = Argon2::default()
            .hash_password(b"correct horse")
            .unwrap()
            .to_string();
        assert!(verify_with(&mut memory, "correct horse", &theirs));
        assert!(!verify_with(&mut memory, "wrong horse", &theirs));
        let ours = hash_with(&mut memory, "correct horse").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        // A hash asking for more memory than the KDF's buffer is refused, not computed.
        let greedy = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(KDF_MEMORY_KIB * 2, 1, 1, None).unwrap(),
        )
        .hash_password(b"correct horse")
        .unwrap()
        .to_string();
        assert!(!verify_with(&mut memory, "correct horse", &greedy));
    }

    /// Polls `fut` once: `true` if it is still pending.
    fn pending_after_one_poll<F: Future + ?Sized>(fut: std::pin::Pin<&mut F>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        fut.poll(&mut cx).is_pending()
    }

    /// Regression: `set_password` (first-start setup, password change, `toru passwd`) hashed on
    /// the blocking pool without going through the KDF limit, so any number of 19 MiB argon2id
    /// runs could overlap. Now it queues for the KDF thread like a login does, and its run is
    /// counted there.
    #[tokio::test]
    async fn set_password_waits_for_the_kdf() {
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
        assert_eq!(kdf.runs(), 0, "no argon2id run while the KDF is held");
        drop(held);
        setting.await.unwrap();
        assert_eq!(kdf.runs(), 1, "the hash ran through the KDF");
        let user = store.user("bob").unwrap().unwrap();
        assert_eq!(user.role, Role::Viewer);
        assert!(kdf.verify("password123", Some(user.password_hash)).await);
        assert!(!kdf.verify("password123", None).await, "unknown user");
        assert_eq!(kdf.runs(), 3, "verifying goes through the KDF too");
        store.close();
    }

    /// Regression (issue 10, defect 3): each argon2id run went to whichever blocking-pool thread
    /// was free, and each thread's allocator arena kept its 19 MiB after the run: 117 MiB after
    /// six logins. Now every run — hashes and verifies alike, from any number of callers at
    /// once — runs on the one KDF thread, one at a time, in one buffer that is reused while runs
    /// are queued and freed once nothing more is.
    #[tokio::test]
    async fn one_run_at_a_time_in_one_buffer_freed_when_idle() {
        let kdf = Kdf::for_test();
        let stats = kdf.shared.stats.clone();
        let phc = kdf.hash("password123").await.unwrap();
        assert_eq!(stats.allocations.load(Ordering::SeqCst), 1);
        assert_eq!(
            stats.held_bytes.load(Ordering::SeqCst),
            0,
            "freed when nothing more is queued"
        );

        // Twelve callers, through clones of the KDF, all queued while the thread is busy.
        let held = kdf.hold();
        let mut callers: Vec<std::pin::Pin<Box<dyn Future<Output = bool>>>> = Vec::new();
        for i in 0..12 {
            let (kdf, phc) = (kdf.clone(), phc.clone());
            let mut caller: std::pin::Pin<Box<dyn Future<Output = bool>>> = match i % 3 {
                0 => Box::pin(async move { kdf.verify("password123", Some(phc)).await }),
                1 => Box::pin(async move { !kdf.verify("wrong password", None).await }),
                _ => Box::pin(async move { kdf.hash("another password").await.is_ok() }),
            };
            assert!(pending_after_one_poll(caller.as_mut()), "queued");
            callers.push(caller);
        }
        drop(held);
        for caller in callers {
            assert!(caller.await, "every run gave the right answer");
        }
        assert_eq!(stats.runs.load(Ordering::SeqCst), 1 + 12);
        assert_eq!(
            stats.most_running.load(Ordering::SeqCst),
            1,
            "never two runs at once"
        );
        assert_eq!(
            stats.allocations.load(Ordering::SeqCst),
            2,
            "one buffer for the whole burst"
        );
        assert_eq!(
            stats.held_bytes.load(Ordering::SeqCst),
            0,
            "the buffer is freed once the queue is empty"
        );
    }

    /// A caller that gives up while its run is queued costs no run.
    #[tokio::test]
    async fn a_run_whose_caller_left_is_skipped() {
        let kdf = Kdf::for_test();
        let held = kdf.hold();
        {
            let mut gone = pin!(kdf.verify("password123", None));
            assert!(pending_after_one_poll(gone.as_mut()));
        }
        drop(held);
        assert!(kdf.hash("password123").await.is_ok());
        assert_eq!(kdf.runs(), 1, "only the hash ran");
    }
}
