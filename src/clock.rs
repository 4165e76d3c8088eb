//! Which clock answers what. A leaf: imports nothing from the crate; called wherever the wall
//! clock is read.
//!
//! - **Monotonic** (`tokio::time::Instant`): every wait and every length of time — restart backoff,
//!   socket/ready/heartbeat/shutdown timeouts, HTTP deadlines, the login throttle's windows, a
//!   session's idle time, uptime. The wall clock jumping (an NTP step, a board without an RTC
//!   that boots in 1970 and learns the date later, `date -s`) never moves it; unit tests pause and
//!   advance it.
//! - **Wall clock** ([`now`]): only what is shown to people or must mean something after a
//!   restart — event and log timestamps, `started_at`, protocol frame timestamps, when a session
//!   or token was created.
//!
//! A session's absolute age is therefore wall-clock time. A jump forward past
//! `http.session_absolute` ends the sessions (their users log in again); a jump back leaves
//! sessions created "in the future", whose age cannot be known: they are refused too
//! (`auth::sessions`), so a clock set back never makes a session outlive its limit.
//!
//! `chrono::Utc::now` panics when the clock reads before 1970: it is disallowed (`clippy.toml`)
//! in favour of [`now`], which cannot. Linux refuses to set its clock before 1970
//! (`settimeofday`: `EINVAL`), so only a faked clock gets there (`tests/clock.rs` does, with
//! libfaketime). hyper's `Date` header would panic there too, but only when its per-thread date
//! cache is first filled (the first connection) before 1970; once filled it just stops updating.

use std::time::SystemTime;

use chrono::{DateTime, Utc};

/// The wall clock, UTC. Never panics: times before 1970 are negative timestamps.
pub(crate) fn now() -> DateTime<Utc> {
    DateTime::from(SystemTime::now())
}
