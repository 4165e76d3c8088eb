//! Login sessions: a 256-bit random id in the `toru_session` cookie; the store keeps its SHA-256
//! with the user and the user's password generation. A session ends on logout, after
//! `http.session_idle` unused, `http.session_absolute` after login, and when the user's password
//! changes (generation bump). The last use of each session is kept in memory only (no store write
//! per request), bounded; after a restart a session counts as used at its first request.
//!
//! Idle time is monotonic; the absolute age is wall-clock time since the login (it must survive a
//! restart), so a jump of the wall clock moves it: forward past the limit, sessions end; back, a
//! session created "in the future" ends too, and the next login deletes it (`crate::clock`).
//!
//! Also the request-time identity types ([`Identity`], [`Via`], [`Unauthenticated`]). Called by
//! `login`; reads the `Cookie` header text the web layer hands over, never an HTTP type.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::{AuthError, b64url, random_bytes, secret_hash};
use crate::app::App;
use crate::role::Role;
use crate::store::{SessionRecord, StoreError, UserRecord};

/// The session cookie.
pub(crate) const SESSION_COOKIE: &str = "toru_session";

/// Sessions whose last use is remembered in memory (idle timeout); the stalest are dropped beyond.
const MAX_TRACKED_SESSIONS: usize = 4096;
/// How far in the future a session's creation may lie and still count (a clock slewed or stepped
/// a little by NTP). Further, the wall clock went back since the login: the session's age cannot
/// be known, and it ends (`crate::clock`).
const CREATED_AHEAD_TOLERANCE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// How a request was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Via {
    /// A session cookie; holds the session's hash.
    Session(String),
    /// A bearer token; holds the token's name.
    Token(String),
}

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// User (or token) name; sent to plugins as `X-Toru-User`.
    pub(crate) name: String,
    /// What it may do.
    pub(crate) role: Role,
    /// Session or token.
    pub(crate) via: Via,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unauthenticated {
    /// No credentials.
    Missing,
    /// Unknown or revoked credentials.
    Invalid,
    /// The session expired (idle or absolute timeout, or the password changed).
    Expired,
    /// The store could not be read.
    StoreFailed,
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name && !v.is_empty()).then_some(v)
    })
}

/// Whether a session created at `created` is past `absolute` at wall-clock time `now`: older
/// than that, or created further in the future than [`CREATED_AHEAD_TOLERANCE`] (the clock went
/// back since; the session's real age is unknown, and letting it count from a future creation
/// would stretch its life by the size of the jump).
fn session_too_old(created: DateTime<Utc>, now: DateTime<Utc>, absolute: Duration) -> bool {
    let age = now.signed_duration_since(created);
    match age.to_std() {
        Ok(age) => age > absolute,
        Err(_) => age < -CREATED_AHEAD_TOLERANCE,
    }
}

/// The sessions' last-use times (memory only), by session hash.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    last_used: RefCell<HashMap<String, Instant>>,
}

impl Sessions {
    /// Create a session for `user`; returns its id (the cookie value).
    pub(super) async fn create(&self, app: &App, user: &UserRecord) -> Result<String, AuthError> {
        let id = b64url(&random_bytes::<32>()?);
        let hash = secret_hash(&id);
        let now = crate::clock::now();
        // Housekeeping: sessions past the absolute timeout, or created "in the future" (the clock
        // went back), can go (one write per login at most).
        if let Ok(abs) = chrono::Duration::from_std(app.config.http.session_absolute) {
            let newest = now + CREATED_AHEAD_TOLERANCE;
            let _ = app
                .store
                .delete_sessions_created_outside(now - abs, newest)
                .await;
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

    /// Who the session in a `Cookie` header belongs to, if it is still valid.
    pub(super) fn authenticate(
        &self,
        app: &App,
        cookie: Option<&str>,
    ) -> Result<Identity, Unauthenticated> {
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
        let too_old = session_too_old(rec.created, crate::clock::now(), cfg.session_absolute);
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
            role: user.role,
            via: Via::Session(hash),
        })
    }

    /// End the session `who` came with (logout); nothing for a token.
    pub(super) async fn end(&self, app: &App, who: &Identity) -> Result<(), StoreError> {
        if let Via::Session(hash) = &who.via {
            self.forget(hash);
            app.store.delete_session(hash).await?;
        }
        Ok(())
    }

    /// Forget every last-use time (a password changed: the sessions are gone from the store).
    pub(super) fn forget_all(&self) {
        self.last_used.borrow_mut().clear();
    }

    fn forget(&self, hash: &str) {
        self.last_used.borrow_mut().remove(hash);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sessions measure their absolute age on the wall clock, which can jump. Forward past the
    /// limit, they end. Back, a session created "in the future" used to count as brand new until
    /// the clock caught up with its creation (a year back: a year more of life); it ends too, past
    /// a minute of tolerance for NTP. Neither direction can overflow: chrono's range is ±262 000
    /// years, far beyond anything a clock or the store holds.
    #[test]
    fn a_wall_clock_jump_never_stretches_a_session() {
        let abs = Duration::from_secs(7 * 24 * 3600);
        let login = DateTime::from_timestamp(0, 0).expect("1970"); // an RTC-less board's boot
        let year = chrono::TimeDelta::days(365);
        assert!(!session_too_old(login, login, abs));
        assert!(!session_too_old(
            login,
            login + chrono::TimeDelta::days(6),
            abs
        ));
        assert!(session_too_old(
            login,
            login + chrono::TimeDelta::days(8),
            abs
        ));
        assert!(
            session_too_old(login, login + year, abs),
            "a year forward: ended"
        );
        assert!(
            session_too_old(login, login - year, abs),
            "a year back: ended, not stretched"
        );
        assert!(
            !session_too_old(login, login - chrono::TimeDelta::seconds(30), abs),
            "NTP skew"
        );
        assert!(session_too_old(
            login,
            login - chrono::TimeDelta::seconds(61),
            abs
        ));
        for (created, now) in [
            (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC),
            (DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC),
        ] {
            assert!(session_too_old(created, now, abs));
        }
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        assert_eq!(
            cookie_value("a=1; toru_session=xyz; b=2", SESSION_COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie_value("toru_session=", SESSION_COOKIE), None);
        assert_eq!(cookie_value("xtoru_session=1", SESSION_COOKIE), None);
    }
}
