//! Who may use the UI and API: the one-time setup code, passwords (argon2id), login sessions, API
//! tokens, and login throttling. The store only ever sees hashes: SHA-256 of session ids and
//! tokens (random 256-bit values, so a plain hash is enough), argon2id PHC strings of passwords.
//!
//! Called by `router` for every request, and by the CLI (`toru passwd`, `toru token …`) and startup
//! (`ensure_setup_code`) on the runtime thread. Never logs a secret except the setup code, which
//! is meant to be read from the log.
//!
//! Memory: argon2id with OWASP's parameters (19 MiB, 2 passes) runs on the blocking pool, one at a
//! time ([`Auth::kdf`]), so a burst of logins costs 19 MiB, not 19 MiB per request, and never stalls
//! the runtime thread.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::App;
use crate::store::{SessionRecord, Store, StoreError, TokenRecord, UserRecord};

/// The owner account.
pub const ADMIN: &str = "admin";
/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted (argon2 takes any length; this bounds request work).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// File in the data dir holding the setup code until setup completes (mode 0600).
pub const SETUP_CODE_FILE: &str = "setup-code";
/// The session cookie.
pub const SESSION_COOKIE: &str = "toru_session";
/// Prefix of API tokens (helps secret scanners and humans).
pub const TOKEN_PREFIX: &str = "toru_";

/// Setup-code alphabet: no 0/O, 1/I/L, so it is easy to read off a serial console and type.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
const CODE_GROUPS: usize = 3;
const CODE_GROUP_LEN: usize = 4;

/// Failed logins from one client allowed without delay.
const FREE_ATTEMPTS: u32 = 3;
/// Longest wait imposed between attempts (no permanent lockout).
const MAX_THROTTLE_DELAY: Duration = Duration::from_secs(60);
/// A client's failure count is forgotten after this long without failures.
const THROTTLE_FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Clients remembered by the throttle (bounded memory); the stalest are dropped beyond it.
const THROTTLE_MAX_CLIENTS: usize = 4096;
/// Sessions whose last use is remembered in memory (idle timeout); bounded likewise.
const MAX_TRACKED_SESSIONS: usize = 4096;

/// What an account or token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Read only.
    Viewer,
}

impl Role {
    /// `admin` or `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }

    /// Parse `admin` / `viewer`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// Why an auth operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Password shorter than [`MIN_PASSWORD_CHARS`] or longer than [`MAX_PASSWORD_BYTES`].
    #[error("the password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} characters long")]
    WeakPassword,
    /// A user or token name that is empty, too long or has odd characters.
    #[error("names are 1 to 64 characters: letters, digits, '.', '_' and '-' (got {0:?})")]
    BadName(String),
    /// A role other than `admin` or `viewer`.
    #[error("unknown role {0:?} (use admin or viewer)")]
    BadRole(String),
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
    #[error("no randomness from the OS: {0}")]
    Random(String),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Kdf(String),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken(n) => AuthError::NameTaken(n),
            e => AuthError::Store(e),
        }
    }
}

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
    getrandom::fill(&mut b).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(b)
}

/// Lowercase hex SHA-256 of a secret (how tokens and session ids are stored).
pub fn secret_hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut s = String::with_capacity(64);
    for b in digest.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Compare without an early exit (the setup code is short enough that timing could leak it).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------------------------
// Passwords

fn hash_password_blocking(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::PasswordHasher as _;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Kdf(e.to_string()))
}

fn verify_password_blocking(password: &str, phc: &str) -> bool {
    use argon2::password_hash::PasswordVerifier as _;
    match argon2::password_hash::phc::PasswordHash::new(phc) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A PHC string that no password matches, verified against for unknown users so a wrong user name
/// takes as long as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password_blocking("not a password: unknown user")
            .unwrap_or_else(|_| "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into())
    })
}

fn check_password(password: &str) -> Result<(), AuthError> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::WeakPassword);
    }
    Ok(())
}

/// Hash on the blocking pool (argon2id takes ~0.1–1 s on a Pi; the runtime thread keeps serving).
async fn hash_password(password: &str) -> Result<String, AuthError> {
    let pw = password.to_string();
    tokio::task::spawn_blocking(move || hash_password_blocking(&pw))
        .await
        .map_err(|e| AuthError::Kdf(e.to_string()))?
}

/// Set (or create) `user`'s password and role. Bumps the user's generation and drops every session
/// of the user. For `admin`, completes setup (removes the setup-code file in `data_dir`, if given).
pub async fn set_password(
    store: &Store,
    user: &str,
    password: &str,
    role: &str,
) -> Result<(), AuthError> {
    check_name(user)?;
    let role = Role::parse(role).ok_or_else(|| AuthError::BadRole(role.to_string()))?;
    check_password(password)?;
    let hash = hash_password(password).await?;
    let generation = store.user(user)?.map_or(0, |u| u.generation) + 1;
    store
        .put_user(UserRecord {
            name: user.to_string(),
            password_hash: hash,
            role: role.as_str().to_string(),
            generation,
        })
        .await?;
    store.delete_sessions_of(user).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Setup code

fn setup_code_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SETUP_CODE_FILE)
}

fn new_setup_code() -> Result<String, AuthError> {
    let raw = random_bytes::<{ CODE_GROUPS * CODE_GROUP_LEN }>()?;
    let mut code = String::new();
    for (i, b) in raw.iter().enumerate() {
        if i > 0 && i % CODE_GROUP_LEN == 0 {
            code.push('-');
        }
        // 256 % 31 != 0: a slight bias toward the first letters, irrelevant for ~59 bits.
        code.push(char::from(
            CODE_ALPHABET[usize::from(*b) % CODE_ALPHABET.len()],
        ));
    }
    Ok(code)
}

/// Uppercase, without dashes and spaces (what users type varies).
fn normalize_code(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn well_formed_code(s: &str) -> bool {
    let n = normalize_code(s);
    n.len() == CODE_GROUPS * CODE_GROUP_LEN && n.bytes().all(|b| CODE_ALPHABET.contains(&b))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// On start: if there is no `admin` user, make sure a setup code exists in
/// `<data-dir>/setup-code` (mode 0600; an existing one is kept so earlier instructions stay
/// valid), log how to use it, and return it. With an admin, remove a stale code file, return `None`.
pub async fn ensure_setup_code(app: &App) -> Result<Option<String>, AuthError> {
    let path = setup_code_path(&app.config.data_dir);
    if app.store.refuses_writes() {
        // The store's file is not in use: it may well hold an admin. No new setup code (and no
        // setup) until an admin has decided what to do with the file.
        log::warn!("no setup code: the store cannot be used (see the store's health)");
        return Ok(None);
    }
    if app.store.user(ADMIN)?.is_some() {
        let _ = std::fs::remove_file(&path);
        return Ok(None);
    }
    let code = match std::fs::read_to_string(&path) {
        Ok(existing) if well_formed_code(&existing) => existing.trim().to_string(),
        _ => {
            let code = new_setup_code()?;
            write_private(&path, &format!("{code}\n")).map_err(|source| AuthError::SetupFile {
                path: path.clone(),
                source,
            })?;
            code
        }
    };
    let listen = app.config.listen;
    let where_ = if listen.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "this-device".into());
        format!("http://{host}.local:{}/", listen.port())
    } else {
        format!("http://{listen}/")
    };
    log::warn!(
        "No admin account yet. Open {where_} and enter setup code {code} (also in {}), or run `toru passwd`.",
        path.display()
    );
    Ok(Some(code))
}

/// Whether `given` is the current setup code in `data_dir`.
fn setup_code_matches(data_dir: &Path, given: &str) -> bool {
    match std::fs::read_to_string(setup_code_path(data_dir)) {
        Ok(code) if well_formed_code(&code) => constant_time_eq(
            normalize_code(&code).as_bytes(),
            normalize_code(given).as_bytes(),
        ),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

/// Create an API token called `name` with `role`; returns the token text (shown once; only its
/// hash is stored).
pub async fn create_token(store: &Store, name: &str, role: &str) -> Result<String, AuthError> {
    check_name(name)?;
    let role = Role::parse(role).ok_or_else(|| AuthError::BadRole(role.to_string()))?;
    let token = format!("{TOKEN_PREFIX}{}", b64url(&random_bytes::<32>()?));
    store
        .put_token(
            &secret_hash(&token),
            TokenRecord {
                name: name.to_string(),
                role: role.as_str().to_string(),
                created: Utc::now(),
            },
        )
        .await?;
    Ok(token)
}

/// Every API token (name, role, creation time; never the secret).
pub fn list_tokens(store: &Store) -> Result<Vec<TokenRecord>, AuthError> {
    Ok(store.tokens()?)
}

/// Delete the token called `name`; `true` if it existed.
pub async fn revoke_token(store: &Store, name: &str) -> Result<bool, AuthError> {
    Ok(store.revoke_token(name).await?)
}

// ---------------------------------------------------------------------------------------------
// Request-time state (used by the router)

/// How a request was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A session cookie; holds the session's hash.
    Session(String),
    /// A bearer token; holds the token's name.
    Token(String),
}

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct Identity {
    /// User (or token) name; sent to plugins as `X-Toru-User`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Session or token.
    pub via: Via,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    /// No credentials.
    Missing,
    /// Unknown or revoked credentials.
    Invalid,
    /// The session expired (idle or absolute timeout, or the password changed).
    Expired,
    /// The store could not be read.
    StoreFailed,
}

/// Per-client failure counts for login and setup (memory only: no SD write per failure).
#[derive(Debug, Default)]
pub struct Throttle {
    clients: HashMap<IpAddr, (u32, Instant)>,
}

impl Throttle {
    /// The key for a client: the address, or its /64 for IPv6 (one host has many).
    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        }
    }

    fn delay(failures: u32) -> Duration {
        if failures < FREE_ATTEMPTS {
            return Duration::ZERO;
        }
        let exp = (failures - FREE_ATTEMPTS).min(16);
        Duration::from_secs(1u64 << exp).min(MAX_THROTTLE_DELAY)
    }

    /// `Err(wait)` if this client must wait before trying again.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = Throttle::key(ip);
        let Some(&(failures, last)) = self.clients.get(&key) else {
            return Ok(());
        };
        if now.saturating_duration_since(last) >= THROTTLE_FORGET_AFTER {
            self.clients.remove(&key);
            return Ok(());
        }
        let allowed_at = last + Throttle::delay(failures);
        if now < allowed_at {
            Err(allowed_at - now)
        } else {
            Ok(())
        }
    }

    /// Count a failed attempt.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if self.clients.len() >= THROTTLE_MAX_CLIENTS {
            self.clients.retain(|_, (_, last)| {
                now.saturating_duration_since(*last) < THROTTLE_FORGET_AFTER
            });
            let stalest = (self.clients.len() >= THROTTLE_MAX_CLIENTS)
                .then(|| {
                    self.clients
                        .iter()
                        .min_by_key(|(_, (_, last))| *last)
                        .map(|(k, _)| *k)
                })
                .flatten();
            if let Some(stalest) = stalest {
                self.clients.remove(&stalest);
            }
        }
        let e = self.clients.entry(Throttle::key(ip)).or_insert((0, now));
        e.0 = e.0.saturating_add(1);
        e.1 = now;
    }

    /// Forget a client after a successful login.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.clients.remove(&Throttle::key(ip));
    }
}

/// Auth state kept by the HTTP server.
#[derive(Debug)]
pub struct Auth {
    /// One password hash at a time (memory bound: 19 MiB per argon2id run).
    pub kdf: Semaphore,
    /// Login/setup throttle.
    pub throttle: RefCell<Throttle>,
    /// Last use of each session (idle timeout), by session hash; memory only.
    last_used: RefCell<HashMap<String, Instant>>,
    /// Set once an admin exists (it can never disappear).
    admin_exists: Cell<bool>,
    /// A setup is being processed (two at once must not both win).
    setup_busy: Cell<bool>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            kdf: Semaphore::new(1),
            throttle: RefCell::new(Throttle::default()),
            last_used: RefCell::new(HashMap::new()),
            admin_exists: Cell::new(false),
            setup_busy: Cell::new(false),
        }
    }
}

/// Result of a login or setup attempt.
#[derive(Debug)]
pub enum LoginOutcome {
    /// Logged in: the cookie value to set and who.
    Ok {
        /// The session id (cookie value).
        session: String,
        /// The user.
        identity: Identity,
    },
    /// Wrong name, password or code.
    Refused,
    /// Too many failures; wait this long.
    Throttled(Duration),
    /// Setup was already completed (setup only).
    AlreadySetUp,
    /// The new password is not acceptable (setup only).
    Weak,
}

impl Auth {
    /// Whether the host still waits for its first admin password. Once an admin exists (set here
    /// or with `toru passwd`), a leftover setup-code file is removed.
    pub fn setup_needed(&self, app: &App) -> bool {
        if self.admin_exists.get() {
            return false;
        }
        match app.store.user(ADMIN) {
            Ok(Some(_)) => {
                self.admin_exists.set(true);
                let _ = std::fs::remove_file(setup_code_path(&app.config.data_dir));
                false
            }
            Ok(None) => true,
            // Unknown: stay locked down rather than open.
            Err(_) => true,
        }
    }

    /// Verify on the blocking pool, one at a time; `None` verifies against a dummy hash (unknown
    /// user: same cost, always false).
    async fn verify(&self, password: String, phc: Option<String>) -> bool {
        let Ok(_permit) = self.kdf.acquire().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || match phc {
            Some(phc) => verify_password_blocking(&password, &phc),
            None => {
                let _ = verify_password_blocking(&password, dummy_hash());
                false
            }
        })
        .await
        .unwrap_or(false)
    }

    async fn new_session(&self, app: &App, user: &UserRecord) -> Result<String, StoreError> {
        let id = b64url(&random_bytes::<32>().map_err(|_| StoreError::Closed)?);
        let hash = secret_hash(&id);
        let now = Utc::now();
        // Housekeeping: sessions past the absolute timeout can go (one write per login at most).
        if let Ok(abs) = chrono::Duration::from_std(app.config.http.session_absolute) {
            let _ = app.store.delete_sessions_created_before(now - abs).await;
        }
        app.store
            .put_session(
                &hash,
                SessionRecord {
                    user: user.name.clone(),
                    generation: user.generation,
                    created: now,
                },
            )
            .await?;
        self.touch(&hash, app.config.http.session_idle);
        Ok(id)
    }

    fn touch(&self, hash: &str, idle: Duration) {
        let now = Instant::now();
        let mut m = self.last_used.borrow_mut();
        if m.len() >= MAX_TRACKED_SESSIONS && !m.contains_key(hash) {
            m.retain(|_, t| now.saturating_duration_since(*t) < idle);
            let stalest = (m.len() >= MAX_TRACKED_SESSIONS)
                .then(|| m.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()))
                .flatten();
            if let Some(stalest) = stalest {
                m.remove(&stalest);
            }
        }
        m.insert(hash.to_string(), now);
    }

    /// Check a user name and password; on success create a session.
    pub async fn login(
        &self,
        app: &App,
        client: IpAddr,
        username: &str,
        password: &str,
    ) -> Result<LoginOutcome, StoreError> {
        if let Err(wait) = self.throttle.borrow_mut().check(client, Instant::now()) {
            return Ok(LoginOutcome::Throttled(wait));
        }
        let user = if check_name(username).is_ok() {
            app.store.user(username)?
        } else {
            None
        };
        let phc = user.as_ref().map(|u| u.password_hash.clone());
        let pw = if password.len() <= MAX_PASSWORD_BYTES {
            password
        } else {
            ""
        };
        let ok = self.verify(pw.to_string(), phc).await && user.is_some();
        match (ok, user) {
            (true, Some(user)) => {
                self.throttle.borrow_mut().succeeded(client);
                let session = self.new_session(app, &user).await?;
                Ok(LoginOutcome::Ok {
                    identity: Identity {
                        name: user.name.clone(),
                        role: Role::parse(&user.role).unwrap_or(Role::Viewer),
                        via: Via::Session(secret_hash(&session)),
                    },
                    session,
                })
            }
            _ => {
                self.throttle.borrow_mut().failed(client, Instant::now());
                log::info!("http: failed login for {username:?} from {client}");
                Ok(LoginOutcome::Refused)
            }
        }
    }

    /// First-start setup: check the setup code, set the admin password, log in.
    pub async fn setup(
        &self,
        app: &App,
        client: IpAddr,
        code: &str,
        password: &str,
    ) -> Result<LoginOutcome, AuthError> {
        if !self.setup_needed(app) {
            return Ok(LoginOutcome::AlreadySetUp);
        }
        if let Err(wait) = self.throttle.borrow_mut().check(client, Instant::now()) {
            return Ok(LoginOutcome::Throttled(wait));
        }
        if !setup_code_matches(&app.config.data_dir, code) {
            self.throttle.borrow_mut().failed(client, Instant::now());
            log::info!("http: wrong setup code from {client}");
            return Ok(LoginOutcome::Refused);
        }
        if check_password(password).is_err() {
            return Ok(LoginOutcome::Weak);
        }
        if self.setup_busy.replace(true) {
            return Ok(LoginOutcome::AlreadySetUp);
        }
        let result = async {
            set_password(&app.store, ADMIN, password, "admin").await?;
            let _ = std::fs::remove_file(setup_code_path(&app.config.data_dir));
            self.admin_exists.set(true);
            self.throttle.borrow_mut().succeeded(client);
            let user = app
                .store
                .user(ADMIN)?
                .ok_or(AuthError::Store(StoreError::Closed))?;
            let session = self.new_session(app, &user).await?;
            log::info!("http: setup completed from {client}; the admin password is set");
            Ok(LoginOutcome::Ok {
                identity: Identity {
                    name: ADMIN.into(),
                    role: Role::Admin,
                    via: Via::Session(secret_hash(&session)),
                },
                session,
            })
        }
        .await;
        self.setup_busy.set(false);
        result
    }

    /// Authenticate a request from its `Authorization` header or session cookie.
    pub fn authenticate(
        &self,
        app: &App,
        authorization: Option<&str>,
        cookie: Option<&str>,
    ) -> Result<Identity, Unauthenticated> {
        if let Some(auth) = authorization {
            let token = auth
                .strip_prefix("Bearer ")
                .or_else(|| auth.strip_prefix("bearer "))
                .map(str::trim)
                .ok_or(Unauthenticated::Invalid)?;
            let rec = app
                .store
                .token(&secret_hash(token))
                .map_err(|_| Unauthenticated::StoreFailed)?
                .ok_or(Unauthenticated::Invalid)?;
            return Ok(Identity {
                role: Role::parse(&rec.role).unwrap_or(Role::Viewer),
                via: Via::Token(rec.name.clone()),
                name: rec.name,
            });
        }
        let id = cookie
            .and_then(|c| cookie_value(c, SESSION_COOKIE))
            .ok_or(Unauthenticated::Missing)?;
        let hash = secret_hash(id);
        let rec = app
            .store
            .session(&hash)
            .map_err(|_| Unauthenticated::StoreFailed)?
            .ok_or(Unauthenticated::Invalid)?;
        let cfg = &app.config.http;
        let age = Utc::now().signed_duration_since(rec.created);
        let too_old = age.to_std().is_ok_and(|a| a > cfg.session_absolute);
        let now = Instant::now();
        let idle_for = self
            .last_used
            .borrow()
            .get(&hash)
            .map(|t| now.saturating_duration_since(*t));
        // A session not in memory (the host restarted) counts as used now.
        if too_old || idle_for.is_some_and(|d| d > cfg.session_idle) {
            self.forget(&hash);
            return Err(Unauthenticated::Expired);
        }
        let user = app
            .store
            .user(&rec.user)
            .map_err(|_| Unauthenticated::StoreFailed)?
            .ok_or(Unauthenticated::Invalid)?;
        if user.generation != rec.generation {
            self.forget(&hash);
            return Err(Unauthenticated::Expired);
        }
        self.touch(&hash, cfg.session_idle);
        Ok(Identity {
            name: user.name,
            role: Role::parse(&user.role).unwrap_or(Role::Viewer),
            via: Via::Session(hash),
        })
    }

    /// Forget a session's last-use time (it is gone or expired).
    pub fn forget(&self, hash: &str) {
        self.last_used.borrow_mut().remove(hash);
    }

    /// Log out: delete the session server-side.
    pub async fn logout(&self, app: &App, who: &Identity) -> Result<(), StoreError> {
        if let Via::Session(hash) = &who.via {
            self.forget(hash);
            app.store.delete_session(hash).await?;
        }
        Ok(())
    }

    /// Change the caller's own password after checking the current one; drops every session of
    /// the user and returns a fresh one for the caller.
    pub async fn change_password(
        &self,
        app: &App,
        client: IpAddr,
        who: &Identity,
        current: &str,
        new: &str,
    ) -> Result<LoginOutcome, AuthError> {
        if let Err(wait) = self.throttle.borrow_mut().check(client, Instant::now()) {
            return Ok(LoginOutcome::Throttled(wait));
        }
        let Some(user) = app.store.user(&who.name)? else {
            return Ok(LoginOutcome::Refused);
        };
        if !self
            .verify(current.to_string(), Some(user.password_hash.clone()))
            .await
        {
            self.throttle.borrow_mut().failed(client, Instant::now());
            return Ok(LoginOutcome::Refused);
        }
        if check_password(new).is_err() {
            return Ok(LoginOutcome::Weak);
        }
        set_password(&app.store, &user.name, new, &user.role).await?;
        self.last_used.borrow_mut().clear();
        let user = app
            .store
            .user(&who.name)?
            .ok_or(AuthError::Store(StoreError::Closed))?;
        let session = self.new_session(app, &user).await?;
        Ok(LoginOutcome::Ok {
            identity: Identity {
                name: user.name.clone(),
                role: who.role,
                via: Via::Session(secret_hash(&session)),
            },
            session,
        })
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name && !v.is_empty()).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_codes_are_easy_to_type() {
        let c = new_setup_code().unwrap();
        assert_eq!(c.len(), 14, "{c}");
        assert_eq!(c.split('-').count(), 3);
        assert!(well_formed_code(&c));
        assert!(!c.contains(['0', 'O', '1', 'I', 'L']));
        assert!(well_formed_code(&c.to_lowercase().replace('-', " ")));
        assert!(!well_formed_code("ABCD-EFGH"));
        assert!(!well_formed_code("ABCD-EFGH-IJK0"));
    }

    #[test]
    fn setup_code_file_is_private_and_matches_loosely() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("toru-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = setup_code_path(&dir);
        write_private(&path, "ABCD-EFGH-JKMN\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(setup_code_matches(&dir, "abcd efgh jkmn"));
        assert!(setup_code_matches(&dir, "ABCDEFGHJKMN"));
        assert!(!setup_code_matches(&dir, "ABCD-EFGH-JKMP"));
        assert!(!setup_code_matches(&dir, ""));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            !setup_code_matches(&dir, "ABCD-EFGH-JKMN"),
            "no file, no setup"
        );
    }

    #[test]
    fn hashes_and_tokens() {
        assert_eq!(
            secret_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            cookie_value("a=1; toru_session=xyz; b=2", SESSION_COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie_value("toru_session=", SESSION_COOKIE), None);
        assert_eq!(cookie_value("xtoru_session=1", SESSION_COOKIE), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn passwords_round_trip() {
        let h = hash_password_blocking("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password_blocking("correct horse", &h));
        assert!(!verify_password_blocking("wrong horse", &h));
        assert!(!verify_password_blocking("x", "not a phc string"));
        assert!(!verify_password_blocking("x", dummy_hash()));
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password("ééééééé").is_err(), "counted in characters");
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_backs_off_exponentially_and_forgets() {
        let mut t = Throttle::default();
        let ip: IpAddr = "192.168.1.9".parse().unwrap();
        let other: IpAddr = "192.168.1.10".parse().unwrap();
        for _ in 0..FREE_ATTEMPTS {
            assert!(t.check(ip, Instant::now()).is_ok());
            t.failed(ip, Instant::now());
        }
        assert_eq!(t.check(ip, Instant::now()), Err(Duration::from_secs(1)));
        assert!(t.check(other, Instant::now()).is_ok(), "per client");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(t.check(ip, Instant::now()).is_ok());
        t.failed(ip, Instant::now());
        assert_eq!(t.check(ip, Instant::now()), Err(Duration::from_secs(2)));
        for _ in 0..20 {
            t.failed(ip, Instant::now());
        }
        assert_eq!(
            t.check(ip, Instant::now()),
            Err(MAX_THROTTLE_DELAY),
            "capped"
        );
        tokio::time::advance(MAX_THROTTLE_DELAY).await;
        assert!(t.check(ip, Instant::now()).is_ok(), "no permanent lockout");
        tokio::time::advance(THROTTLE_FORGET_AFTER).await;
        assert!(t.check(ip, Instant::now()).is_ok());
        assert!(t.clients.is_empty(), "forgotten");
        // IPv6: one /64 is one client.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..FREE_ATTEMPTS {
            t.failed(a, Instant::now());
        }
        assert!(t.check(b, Instant::now()).is_err());
        t.succeeded(b);
        assert!(t.check(a, Instant::now()).is_ok());
    }

    async fn login_cookie(auth: &Auth, app: &App, ip: IpAddr) -> String {
        match auth.login(app, ip, ADMIN, "password123").await.unwrap() {
            LoginOutcome::Ok { session, .. } => format!("{SESSION_COOKIE}={session}"),
            other => panic!("{other:?}"),
        }
    }

    /// Sessions end after `session_idle` without use and `session_absolute` after login, used or
    /// not; tokens do not expire. Real (short) durations: the store has a writer thread.
    #[tokio::test]
    async fn sessions_expire_when_idle_or_too_old() {
        use crate::config::Config;
        use crate::store::StoreOptions;
        let dir = std::env::temp_dir().join(format!("toru-sess-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = Config {
            data_dir: dir.clone(),
            ..Config::default()
        };
        config.http.session_idle = Duration::from_millis(400);
        config.http.session_absolute = Duration::from_secs(3600);
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        let app = App {
            supervisor: crate::supervisor::Supervisor::new(config.clone(), store.clone()),
            config,
            store,
            started: std::time::Instant::now(),
            started_at: Utc::now(),
        };
        set_password(&app.store, ADMIN, "password123", "admin")
            .await
            .unwrap();
        let auth = Auth::default();
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        let cookie = login_cookie(&auth, &app, ip).await;
        let check = |c: &str| auth.authenticate(&app, None, Some(c)).map(|i| i.name);
        assert_eq!(check(&cookie), Ok(ADMIN.to_string()));
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert!(check(&cookie).is_ok(), "use keeps it alive");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            check(&cookie),
            Err(Unauthenticated::Expired),
            "idle too long"
        );

        // Absolute timeout: a session created long ago is refused even if just used.
        let old = "old-session-id";
        app.store
            .put_session(
                &secret_hash(old),
                SessionRecord {
                    user: ADMIN.into(),
                    generation: app.store.user(ADMIN).unwrap().unwrap().generation,
                    created: Utc::now() - chrono::Duration::hours(2),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            check(&format!("{SESSION_COOKIE}={old}")),
            Err(Unauthenticated::Expired)
        );

        // A password change ends every session of the user.
        let cookie = login_cookie(&auth, &app, ip).await;
        assert!(check(&cookie).is_ok());
        set_password(&app.store, ADMIN, "password456", "admin")
            .await
            .unwrap();
        assert!(check(&cookie).is_err());

        // Tokens: valid until revoked.
        let token = create_token(&app.store, "ci", "viewer").await.unwrap();
        let who = auth
            .authenticate(&app, Some(&format!("Bearer {token}")), None)
            .unwrap();
        assert_eq!((who.name.as_str(), who.role), ("ci", Role::Viewer));
        assert!(matches!(
            create_token(&app.store, "ci", "admin").await,
            Err(AuthError::NameTaken(_))
        ));
        assert!(revoke_token(&app.store, "ci").await.unwrap());
        assert_eq!(
            auth.authenticate(&app, Some(&format!("Bearer {token}")), None)
                .map(|i| i.name),
            Err(Unauthenticated::Invalid)
        );
        app.store.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_memory_is_bounded() {
        let mut t = Throttle::default();
        for i in 0..(THROTTLE_MAX_CLIENTS as u32 + 100) {
            t.failed(IpAddr::V4(i.into()), Instant::now());
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(t.clients.len() <= THROTTLE_MAX_CLIENTS);
    }
}
