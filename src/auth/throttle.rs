//! Login throttling: per-client failure counts for login, setup and password change, in memory
//! only (no store write per failure, so a password-guessing client cannot wear out the SD card).
//! Three failures are free, then each attempt waits 1 s, 2 s, 4 s … up to a minute after the last
//! failure; a success, or 15 minutes without failures, forgets the client. Bounded memory.
//!
//! Pure state, no I/O and no clock of its own (callers pass `now`). Called by `login`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Failed logins from one client allowed without delay.
const FREE_ATTEMPTS: u32 = 3;
/// Longest wait imposed between attempts (no permanent lockout).
const MAX_THROTTLE_DELAY: Duration = Duration::from_secs(60);
/// A client's failure count is forgotten after this long without failures.
const THROTTLE_FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Clients remembered by the throttle (bounded memory); the stalest are dropped beyond it.
const THROTTLE_MAX_CLIENTS: usize = 4096;

/// Per-client failure counts.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
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
    pub(crate) fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
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
    pub(crate) fn failed(&mut self, ip: IpAddr, now: Instant) {
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
    pub(crate) fn succeeded(&mut self, ip: IpAddr) {
        self.clients.remove(&Throttle::key(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
