//! [`Auth`]: the authentication state the web layer keeps for the host's life (the KDF limit, the
//! throttle, the sessions' last use, whether setup is done or in progress), and the flows that
//! combine the other parts of `auth`: log in, first-start setup, change one's password, log out,
//! and authenticate a request from its `Authorization` / `Cookie` header text.
//!
//! Called by the HTTP router and handlers on the runtime thread (the state is `Cell`/`RefCell`:
//! single thread). Answers with [`LoginOutcome`]s and `Unauthenticated`, which the web layer maps
//! to statuses; it never builds a response itself.
//!
//! Cancel safety: every flow may be dropped at any `.await` (client gone, request deadline). State
//! set before an await is settled by a guard's `Drop` ([`SetupClaim`], the throttle's
//! [`Attempt`]), never by code after it. Attempts are counted by the throttle when they start,
//! before the password hash is awaited (count before you await).

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::time::Duration;

use super::password::{self, Kdf, MAX_PASSWORD_BYTES};
use super::sessions::{Identity, Sessions, Unauthenticated, Via};
use super::setup_code::{remove_setup_code, setup_code_matches};
use super::throttle::{Attempt, Throttle};
use super::{ADMIN, AuthError, check_name, secret_hash, tokens};
use crate::app::App;
use crate::role::Role;

/// Auth state kept by the HTTP server.
#[derive(Debug)]
pub(crate) struct Auth {
    /// Every argon2id run goes through it (shared with the control socket).
    kdf: Kdf,
    /// Login/setup/password-change throttle. Only [`Attempt`] changes it; never borrowed across
    /// an await.
    throttle: RefCell<Throttle>,
    /// Last use of each session (idle timeout).
    sessions: Sessions,
    /// Set once an admin exists (it can never disappear).
    admin_exists: Cell<bool>,
    /// A setup is being processed (two at once must not both win). Only [`SetupClaim`] sets it.
    setup_busy: Cell<bool>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth::with_kdf(Kdf::shared())
    }
}

/// Result of a login, setup or password change attempt.
#[derive(Debug)]
pub(crate) enum LoginOutcome {
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
    /// Setup was already completed, or another setup is in progress (setup only).
    AlreadySetUp,
    /// The new password is not acceptable (setup and password change).
    Weak,
}

/// The right to run the one setup allowed at a time. Dropping it — the setup finished, failed,
/// or its future was dropped mid-hash — lets the next setup in.
struct SetupClaim<'a>(&'a Cell<bool>);

impl<'a> SetupClaim<'a> {
    /// `None` if another setup holds the claim.
    fn take(busy: &'a Cell<bool>) -> Option<SetupClaim<'a>> {
        (!busy.replace(true)).then_some(SetupClaim(busy))
    }
}

impl Drop for SetupClaim<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl Auth {
    /// Auth state whose argon2id runs go through `kdf`.
    fn with_kdf(kdf: Kdf) -> Auth {
        Auth {
            kdf,
            throttle: RefCell::new(Throttle::default()),
            sessions: Sessions::default(),
            admin_exists: Cell::new(false),
            setup_busy: Cell::new(false),
        }
    }

    /// Whether the host still waits for its first admin password. Once an admin exists (set here
    /// or with `toru passwd`), a leftover setup-code file is removed.
    pub(crate) fn setup_needed(&self, app: &App) -> bool {
        if self.admin_exists.get() {
            return false;
        }
        match app.store.user(ADMIN) {
            Ok(Some(_)) => {
                self.admin_exists.set(true);
                remove_setup_code(&app.config.data_dir);
                false
            }
            Ok(None) => true,
            // Unknown: stay locked down rather than open.
            Err(_) => true,
        }
    }

    /// Check a user name and password; on success create a session.
    pub(crate) async fn login(
        &self,
        app: &App,
        client: IpAddr,
        username: &str,
        password: &str,
    ) -> Result<LoginOutcome, AuthError> {
        let attempt = match Attempt::start(&self.throttle, client) {
            Ok(attempt) => attempt,
            Err(wait) => return Ok(LoginOutcome::Throttled(wait)),
        };
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
        let ok = self.kdf.verify(pw, phc).await && user.is_some();
        match (ok, user) {
            (true, Some(user)) => {
                attempt.succeeded();
                let session = self.sessions.create(app, &user).await?;
                Ok(LoginOutcome::Ok {
                    identity: Identity {
                        name: user.name.clone(),
                        role: user.role,
                        via: Via::Session(secret_hash(&session)),
                    },
                    session,
                })
            }
            _ => {
                drop(attempt); // counted as a failure
                log::info!("http: failed login for {username:?} from {client}");
                Ok(LoginOutcome::Refused)
            }
        }
    }

    /// First-start setup: check the setup code, set the admin password, log in.
    pub(crate) async fn setup(
        &self,
        app: &App,
        client: IpAddr,
        code: &str,
        password: &str,
    ) -> Result<LoginOutcome, AuthError> {
        if !self.setup_needed(app) {
            return Ok(LoginOutcome::AlreadySetUp);
        }
        let attempt = match Attempt::start(&self.throttle, client) {
            Ok(attempt) => attempt,
            Err(wait) => return Ok(LoginOutcome::Throttled(wait)),
        };
        if !setup_code_matches(&app.config.data_dir, code) {
            drop(attempt); // counted as a failure
            log::info!("http: wrong setup code from {client}");
            return Ok(LoginOutcome::Refused);
        }
        attempt.succeeded();
        if password::check_password(password).is_err() {
            return Ok(LoginOutcome::Weak);
        }
        let Some(_claim) = SetupClaim::take(&self.setup_busy) else {
            return Ok(LoginOutcome::AlreadySetUp);
        };
        password::set_password(&self.kdf, &app.store, ADMIN, password, Role::Admin).await?;
        remove_setup_code(&app.config.data_dir);
        self.admin_exists.set(true);
        let user = app
            .store
            .user(ADMIN)?
            .ok_or_else(|| AuthError::UserVanished(ADMIN.into()))?;
        let session = self.sessions.create(app, &user).await?;
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

    /// Authenticate a request from its `Authorization` header (a bearer token wins) or its
    /// session cookie (`Cookie` header text).
    pub(crate) fn authenticate(
        &self,
        app: &App,
        authorization: Option<&str>,
        cookie: Option<&str>,
    ) -> Result<Identity, Unauthenticated> {
        match authorization {
            Some(auth) => tokens::authenticate_bearer(&app.store, auth),
            None => self.sessions.authenticate(app, cookie),
        }
    }

    /// Log out: delete the session server-side (nothing for a token).
    pub(crate) async fn logout(&self, app: &App, who: &Identity) -> Result<(), AuthError> {
        Ok(self.sessions.end(app, who).await?)
    }

    /// Change the caller's own password after checking the current one; drops every session of
    /// the user and returns a fresh one for the caller.
    pub(crate) async fn change_password(
        &self,
        app: &App,
        client: IpAddr,
        who: &Identity,
        current: &str,
        new: &str,
    ) -> Result<LoginOutcome, AuthError> {
        let attempt = match Attempt::start(&self.throttle, client) {
            Ok(attempt) => attempt,
            Err(wait) => return Ok(LoginOutcome::Throttled(wait)),
        };
        let Some(user) = app.store.user(&who.name)? else {
            return Ok(LoginOutcome::Refused);
        };
        if !self
            .kdf
            .verify(current, Some(user.password_hash.clone()))
            .await
        {
            return Ok(LoginOutcome::Refused);
        }
        attempt.succeeded();
        if password::check_password(new).is_err() {
            return Ok(LoginOutcome::Weak);
        }
        password::set_password(&self.kdf, &app.store, &user.name, new, user.role).await?;
        self.sessions.forget_all();
        let user = app
            .store
            .user(&who.name)?
            .ok_or_else(|| AuthError::UserVanished(who.name.clone()))?;
        let session = self.sessions.create(app, &user).await?;
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::Context;

    use super::super::testing::{TempDir, app};
    use super::super::{SESSION_COOKIE, create_token, ensure_setup_code, revoke_token};
    use super::*;
    use crate::store::SessionRecord;

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
        let dir = TempDir::new("sess");
        let app = app(&dir, |c| {
            c.http.session_idle = Duration::from_millis(400);
            c.http.session_absolute = Duration::from_secs(3600);
        });
        let kdf = Kdf::for_test();
        password::set_password(&kdf, &app.store, ADMIN, "password123", Role::Admin)
            .await
            .unwrap();
        let auth = Auth::with_kdf(kdf.clone());
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
                    created: crate::clock::now() - chrono::Duration::hours(2),
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
        password::set_password(&kdf, &app.store, ADMIN, "password456", Role::Admin)
            .await
            .unwrap();
        assert!(check(&cookie).is_err());

        // Tokens: valid until revoked.
        let token = create_token(&app.store, "ci", Role::Viewer).await.unwrap();
        let who = auth
            .authenticate(&app, Some(&format!("Bearer {token}")), None)
            .unwrap();
        assert_eq!((who.name.as_str(), who.role), ("ci", Role::Viewer));
        assert!(matches!(
            create_token(&app.store, "ci", Role::Admin).await,
            Err(AuthError::NameTaken(_))
        ));
        assert!(revoke_token(&app.store, "ci").await.unwrap());
        assert_eq!(
            auth.authenticate(&app, Some(&format!("Bearer {token}")), None)
                .map(|i| i.name),
            Err(Unauthenticated::Invalid)
        );
        app.store.close();
    }

    /// Regression: setup set its "busy" flag before hashing the password and cleared it with code
    /// after the await. A setup whose future was dropped there (client gone, request deadline)
    /// left the flag set, and every later setup answered `already_set_up` until a restart — with
    /// no admin password set. The flag is now a guard cleared on drop.
    #[tokio::test]
    async fn a_setup_dropped_mid_hash_does_not_block_the_next_one() {
        let dir = TempDir::new("setup");
        let app = app(&dir, |_| {});
        let code = ensure_setup_code(&app)
            .await
            .unwrap()
            .expect("no admin yet");
        let kdf = Kdf::for_test();
        let auth = Auth::with_kdf(kdf.clone());
        let ip: IpAddr = "10.1.1.2".parse().unwrap();

        // The first setup gets as far as the password hash (the KDF permit is held) …
        let held = kdf.hold();
        {
            let mut first = pin!(auth.setup(&app, ip, &code, "password123"));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(first.as_mut().poll(&mut cx).is_pending());
            assert!(auth.setup_busy.get(), "the first setup is in progress");
        } // … and is dropped there.
        drop(held);
        assert!(!auth.setup_busy.get(), "dropping it released the claim");
        assert!(auth.setup_needed(&app), "no admin password was set");

        match auth.setup(&app, ip, &code, "password456").await.unwrap() {
            LoginOutcome::Ok { identity, .. } => assert_eq!(identity.role, Role::Admin),
            other => panic!("the next setup must succeed, got {other:?}"),
        }
        assert!(!auth.setup_busy.get());
        assert!(matches!(
            auth.login(&app, ip, ADMIN, "password456").await.unwrap(),
            LoginOutcome::Ok { .. }
        ));
        assert!(matches!(
            auth.setup(&app, ip, &code, "password789").await.unwrap(),
            LoginOutcome::AlreadySetUp
        ));
        app.store.close();
    }

    /// Two setups at once: the second is turned away while the first holds the claim.
    #[tokio::test]
    async fn concurrent_setups_do_not_both_win() {
        let dir = TempDir::new("setup2");
        let app = app(&dir, |_| {});
        let code = ensure_setup_code(&app)
            .await
            .unwrap()
            .expect("no admin yet");
        let kdf = Kdf::for_test();
        let auth = Auth::with_kdf(kdf.clone());
        let ip: IpAddr = "10.1.1.3".parse().unwrap();
        let held = kdf.hold();
        let mut first = pin!(auth.setup(&app, ip, &code, "password123"));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(matches!(
            auth.setup(&app, ip, &code, "password456").await.unwrap(),
            LoginOutcome::AlreadySetUp
        ));
        drop(held);
        assert!(matches!(first.await.unwrap(), LoginOutcome::Ok { .. }));
        assert!(matches!(
            auth.login(&app, ip, ADMIN, "password123").await.unwrap(),
            LoginOutcome::Ok { .. }
        ));
        app.store.close();
    }

    /// Regression (issue 10, defect 2): logins were counted by the throttle only after their
    /// password hash, so logins waiting for the KDF all passed the check. Now each is counted when
    /// it starts: with the first ones still waiting for their hash, the next is throttled — the
    /// right password too — and the waiting ones, dropped (client gone), stay counted.
    #[tokio::test]
    async fn logins_waiting_for_their_hash_are_already_counted() {
        let dir = TempDir::new("burst");
        let app = app(&dir, |_| {});
        let kdf = Kdf::for_test();
        password::set_password(&kdf, &app.store, ADMIN, "password123", Role::Admin)
            .await
            .unwrap();
        let auth = Auth::with_kdf(kdf.clone());
        let ip: IpAddr = "10.1.1.5".parse().unwrap();
        let held = kdf.hold();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let mut login = Box::pin(auth.login(&app, ip, ADMIN, "wrong password"));
            assert!(
                login.as_mut().poll(&mut cx).is_pending(),
                "waits for the KDF"
            );
            waiting.push(login);
        }
        // Answered at once, without waiting for the KDF.
        let mut right = pin!(auth.login(&app, ip, ADMIN, "password123"));
        match right.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(LoginOutcome::Throttled(_))) => {}
            other => panic!("the right password must be throttled at once, got {other:?}"),
        }
        drop(waiting);
        drop(held);
        assert!(matches!(
            auth.login(&app, ip, ADMIN, "password123").await.unwrap(),
            LoginOutcome::Throttled(_)
        ));
        app.store.close();
    }

    /// Every argon2id run of the login flows goes through the KDF limit.
    #[tokio::test]
    async fn login_flows_hash_through_the_kdf_limit() {
        let dir = TempDir::new("kdfflows");
        let app = app(&dir, |_| {});
        let code = ensure_setup_code(&app)
            .await
            .unwrap()
            .expect("no admin yet");
        let kdf = Kdf::for_test();
        let auth = Auth::with_kdf(kdf.clone());
        let ip: IpAddr = "10.1.1.4".parse().unwrap();
        let LoginOutcome::Ok { identity, .. } =
            auth.setup(&app, ip, &code, "password123").await.unwrap()
        else {
            panic!("setup failed");
        };
        assert_eq!(kdf.runs(), 1, "setup: one hash");
        assert!(matches!(
            auth.login(&app, ip, ADMIN, "password123").await.unwrap(),
            LoginOutcome::Ok { .. }
        ));
        assert!(matches!(
            auth.login(&app, ip, "nobody", "password123").await.unwrap(),
            LoginOutcome::Refused
        ));
        assert_eq!(kdf.runs(), 3, "login: one verify each, unknown users too");
        assert!(matches!(
            auth.change_password(&app, ip, &identity, "password123", "password456")
                .await
                .unwrap(),
            LoginOutcome::Ok { .. }
        ));
        assert_eq!(kdf.runs(), 5, "password change: a verify and a hash");
        app.store.close();
    }
}
