//! Login throttling: per-client attempt counts for login, setup and password change, in memory
//! only (no store write per attempt, so a password-guessing client cannot wear out the SD card).
//!
//! An attempt is counted when it starts, before anything is awaited, so attempts sent in parallel
//! cannot all pass the check while the first password hashes run. Three attempts are free, then
//! the client waits 1 s, 2 s, 4 s … up to a minute after its last failure; an attempt refused for
//! waiting counts too (the wait grows, but starts no later, so there is no permanent lockout). A
//! success uncounts only itself; 15 minutes without attempts forget the client. Bounded memory.
//!
//! [`Throttle`] is pure state with no clock of its own (callers pass `now`). [`Attempt`] is the
//! guard the flows in `login` hold while an attempt runs: it settles the attempt when dropped, at
//! the (tokio) clock's `now`. Called by `login`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Attempts from one client allowed without delay.
const FREE_ATTEMPTS: u32 = 3;
/// Longest wait imposed between attempts (no permanent lockout).
const MAX_THROTTLE_DELAY: Duration = Duration::from_secs(60);
/// A client's count is forgotten after this long without attempts.
const THROTTLE_FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Clients remembered by the throttle (bounded memory); the stalest are dropped beyond it.
const THROTTLE_MAX_CLIENTS: usize = 4096;

/// What the throttle remembers of one client.
#[derive(Debug, Clone, Copy)]
struct Client {
    /// Attempts counted since the client was last forgotten: finished, running and refused.
    attempts: u32,
    /// When the last attempt that was let through started or failed: the wait runs from here.
    last: Instant,
}

/// Per-client attempt counts.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    clients: HashMap<IpAddr, Client>,
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

    /// The wait after `attempts` counted attempts.
    fn delay(attempts: u32) -> Duration {
        if attempts < FREE_ATTEMPTS {
            return Duration::ZERO;
        }
        let exp = (attempts - FREE_ATTEMPTS).min(16);
        Duration::from_secs(1u64 << exp).min(MAX_THROTTLE_DELAY)
    }

    /// Count an attempt by `ip` starting at `now`. `Ok` if it may go ahead; `Err(wait)` if the
    /// client must wait that long first (the refused attempt is counted: the wait grows, but it
    /// still runs from the client's last failure).
    pub(crate) fn charge(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = Throttle::key(ip);
        if let Some(c) = self.clients.get_mut(&key) {
            if now.saturating_duration_since(c.last) < THROTTLE_FORGET_AFTER {
                let allowed_at = c.last + Throttle::delay(c.attempts);
                c.attempts = c.attempts.saturating_add(1);
                if now < allowed_at {
                    return Err(c.last + Throttle::delay(c.attempts) - now);
                }
                c.last = now;
                return Ok(());
            }
            self.clients.remove(&key);
        }
        self.make_room(now);
        self.clients.insert(
            key,
            Client {
                attempts: 1,
                last: now,
            },
        );
        Ok(())
    }

    /// Keep the map under [`THROTTLE_MAX_CLIENTS`]: drop forgotten clients, then the stalest.
    fn make_room(&mut self, now: Instant) {
        if self.clients.len() < THROTTLE_MAX_CLIENTS {
            return;
        }
        self.clients
            .retain(|_, c| now.saturating_duration_since(c.last) < THROTTLE_FORGET_AFTER);
        if self.clients.len() >= THROTTLE_MAX_CLIENTS {
            let stalest = self
                .clients
                .iter()
                .min_by_key(|(_, c)| c.last)
                .map(|(k, _)| *k);
            if let Some(stalest) = stalest {
                self.clients.remove(&stalest);
            }
        }
    }

    /// An attempt let through by [`Throttle::charge`] failed at `now` (it is already counted):
    /// the wait runs from now. Nothing if a success forgot the client meanwhile.
    fn failed(&mut self, ip: IpAddr, now: Instant) {
        if let Some(c) = self.clients.get_mut(&Throttle::key(ip)) {
            c.last = c.last.max(now);
        }
    }

    /// A successful attempt uncounts itself, and only itself: the client's failures stay counted
    /// until it has made no attempt for [`THROTTLE_FORGET_AFTER`]. (Forgetting the client on any
    /// success let someone who knows one account's password — a viewer's — log into it between
    /// guesses at another and never wait.)
    fn succeeded(&mut self, ip: IpAddr) {
        let key = Throttle::key(ip);
        if let Some(c) = self.clients.get_mut(&key) {
            c.attempts = c.attempts.saturating_sub(1);
            if c.attempts == 0 {
                self.clients.remove(&key);
            }
        }
    }
}

/// An attempt in progress, counted when it started ([`Attempt::start`]). It ends as a success
/// only through [`Attempt::succeeded`]; dropped otherwise — wrong credentials, an error, or the
/// request's future dropped mid-hash (client gone, deadline) — it stays counted as a failure.
#[derive(Debug)]
#[must_use = "dropping the attempt counts it as a failure at once"]
pub(crate) struct Attempt<'a> {
    throttle: &'a RefCell<Throttle>,
    client: IpAddr,
    succeeded: bool,
}

impl<'a> Attempt<'a> {
    /// Count an attempt by `client`; `Err(wait)` if it must wait first.
    pub(crate) fn start(
        throttle: &'a RefCell<Throttle>,
        client: IpAddr,
    ) -> Result<Attempt<'a>, Duration> {
        throttle.borrow_mut().charge(client, Instant::now())?;
        Ok(Attempt {
            throttle,
            client,
            succeeded: false,
        })
    }

    /// The credentials were right: forget the client's count.
    pub(crate) fn succeeded(mut self) {
        self.succeeded = true;
        self.throttle.borrow_mut().succeeded(self.client);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.succeeded {
            return;
        }
        // The throttle is only borrowed inside non-async calls, never across an await, so it is
        // free here; if it were not, the attempt would still be counted, from its start.
        if let Ok(mut t) = self.throttle.try_borrow_mut() {
            t.failed(self.client, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_backs_off_exponentially_and_forgets() {
        let mut t = Throttle::default();
        let ip_ = ip("192.168.1.9");
        for _ in 0..FREE_ATTEMPTS {
            assert!(t.charge(ip_, Instant::now()).is_ok());
            t.failed(ip_, Instant::now());
        }
        assert!(
            t.charge(ip("192.168.1.10"), Instant::now()).is_ok(),
            "per client"
        );
        // The fourth attempt waits; being refused counts, so the wait has grown.
        assert_eq!(t.charge(ip_, Instant::now()), Err(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(t.charge(ip_, Instant::now()).is_ok());
        t.failed(ip_, Instant::now());
        assert_eq!(t.charge(ip_, Instant::now()), Err(Duration::from_secs(8)));
        for _ in 0..20 {
            let _ = t.charge(ip_, Instant::now());
        }
        assert_eq!(
            t.charge(ip_, Instant::now()),
            Err(MAX_THROTTLE_DELAY),
            "capped"
        );
        tokio::time::advance(MAX_THROTTLE_DELAY).await;
        assert!(
            t.charge(ip_, Instant::now()).is_ok(),
            "no permanent lockout, however many attempts were refused"
        );
        tokio::time::advance(THROTTLE_FORGET_AFTER).await;
        assert!(t.charge(ip_, Instant::now()).is_ok());
        assert_eq!(t.clients[&ip_].attempts, 1, "forgotten, then counted anew");
        // IPv6: one /64 is one client.
        let (a, b) = (ip("2001:db8::1"), ip("2001:db8::2"));
        for _ in 0..FREE_ATTEMPTS {
            assert!(t.charge(a, Instant::now()).is_ok());
        }
        assert!(
            t.charge(b, Instant::now()).is_err(),
            "the /64 shares the count"
        );
        assert!(
            t.charge(ip("2001:db8:0:1::1"), Instant::now()).is_ok(),
            "another /64 does not"
        );
    }

    /// Regression (issue 10, defect 2): the count went up only when a failure was known, after the
    /// password hash, so attempts started together all passed. Counted at the start, parallel
    /// attempts beyond the free ones are refused, and every one of them is counted.
    #[tokio::test(start_paused = true)]
    async fn parallel_attempts_are_all_counted() {
        let throttle = RefCell::new(Throttle::default());
        let client = ip("10.0.0.7");
        let burst: Vec<_> = (0..20).map(|_| Attempt::start(&throttle, client)).collect();
        let running = burst.iter().filter(|a| a.is_ok()).count();
        assert_eq!(running, FREE_ATTEMPTS as usize, "only the free ones run");
        assert_eq!(throttle.borrow().clients[&client].attempts, 20);
        drop(burst); // they all fail
        let err = Attempt::start(&throttle, client).map(|_| ()).unwrap_err();
        assert_eq!(err, MAX_THROTTLE_DELAY, "the right password now waits too");
    }

    /// An attempt whose future is dropped before it settles (client gone mid-hash) stays counted;
    /// only a success uncounts, and only itself.
    #[tokio::test(start_paused = true)]
    async fn only_a_success_uncounts() {
        let throttle = RefCell::new(Throttle::default());
        let client = ip("10.0.0.8");
        for _ in 0..FREE_ATTEMPTS {
            drop(Attempt::start(&throttle, client).unwrap()); // dropped mid-flight
        }
        assert!(Attempt::start(&throttle, client).is_err());
        tokio::time::advance(Duration::from_secs(2)).await;
        let failing = Attempt::start(&throttle, client).unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        let right = Attempt::start(&throttle, client).unwrap();
        let before = throttle.borrow().clients[&client].attempts;
        right.succeeded();
        assert_eq!(
            throttle.borrow().clients[&client].attempts,
            before - 1,
            "a success uncounts only itself"
        );
        drop(failing);
        throttle.borrow_mut().clients.clear();

        // A failure settles later than it started: the wait runs from the settling.
        for _ in 0..FREE_ATTEMPTS - 1 {
            drop(Attempt::start(&throttle, client).unwrap());
        }
        let slow = Attempt::start(&throttle, client).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(slow);
        assert_eq!(
            Attempt::start(&throttle, client).map(|_| ()),
            Err(Duration::from_secs(2))
        );
    }

    /// Found in review of defect 2: a success forgot the client, so someone who knows a viewer's
    /// password could log into it between guesses at the admin's and never wait. A success now
    /// uncounts only itself; a client that only ever succeeds is never throttled.
    #[tokio::test(start_paused = true)]
    async fn a_success_does_not_reset_the_wait_for_guesses() {
        let throttle = RefCell::new(Throttle::default());
        let client = ip("10.0.0.9");
        for _ in 0..FREE_ATTEMPTS {
            drop(Attempt::start(&throttle, client).unwrap()); // wrong guesses
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        Attempt::start(&throttle, client).unwrap().succeeded(); // the known viewer password
        assert!(
            Attempt::start(&throttle, client).is_err(),
            "the next guess still waits"
        );
        let honest = ip("10.0.0.10");
        for _ in 0..10 {
            Attempt::start(&throttle, honest).unwrap().succeeded();
        }
        assert!(!throttle.borrow().clients.contains_key(&honest));
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_memory_is_bounded() {
        let mut t = Throttle::default();
        for i in 0..(THROTTLE_MAX_CLIENTS as u32 + 100) {
            assert!(t.charge(IpAddr::V4(i.into()), Instant::now()).is_ok());
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(t.clients.len() <= THROTTLE_MAX_CLIENTS);
    }
}
