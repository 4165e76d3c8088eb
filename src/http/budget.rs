//! The reply budget: bytes of response bodies held in memory for clients that have not taken them
//! yet, all connections together, bounded by `config.http.max_buffered_reply_bytes`.
//!
//! A body is charged when its handler has built it ([`ReplyBudget::charge`], called by `dispatch`
//! before the response goes to `conn`) and the [`Charge`] travels with the body's bytes: it is
//! released when the last of them has been written to the socket, or dropped with the connection.
//! The invariant: large bodies held ≤ `max(limit, the one largest body)`, because
//! - a body under [`SMALL_REPLY_BYTES`] is counted but never refused (health checks, errors and
//!   the `503` itself always go out; the connection limit bounds them: 64 × 64 KiB by default);
//! - a large body is admitted if it fits in what is left, or if no other large body is held (so a
//!   reply larger than the whole budget still goes out, alone); otherwise it is refused and counted.
//!
//! Plugin routes also ask [`ReplyBudget::exhausted`] before calling the plugin (count before you
//! await): while the budget is spent, the plugin is not asked for work whose answer would be
//! refused. A leaf of `http`: names no HTTP type; `router` holds it, `dispatch` and `api` use it.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bodies under this size are never refused.
pub(crate) const SMALL_REPLY_BYTES: usize = 64 * 1024;

/// What is held right now. Shared with the [`Charge`]s, which the bytes they travel with require
/// to be `Send` (everything runs on the runtime thread; the atomics are never contended).
#[derive(Debug, Default)]
struct Held {
    /// Bytes of every charged body.
    bytes: AtomicUsize,
    /// Large bodies among them.
    large: AtomicUsize,
}

/// The budget of bytes held for clients.
#[derive(Debug)]
pub(crate) struct ReplyBudget {
    limit: usize,
    held: Arc<Held>,
    /// Large replies refused since start.
    refused: Cell<u64>,
}

/// One charged body; dropping it gives its bytes back.
#[derive(Debug)]
pub(crate) struct Charge {
    held: Arc<Held>,
    bytes: usize,
    large: bool,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.held.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        if self.large {
            self.held.large.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl ReplyBudget {
    /// A budget of `limit` bytes, nothing held.
    pub(crate) fn new(limit: usize) -> ReplyBudget {
        ReplyBudget {
            limit,
            held: Arc::default(),
            refused: Cell::new(0),
        }
    }

    /// Charge a body of `len` bytes; `None` (counted as refused): it does not fit.
    pub(crate) fn charge(&self, len: usize) -> Option<Charge> {
        let large = len >= SMALL_REPLY_BYTES;
        if large {
            let held = self.held.bytes.load(Ordering::Relaxed);
            let alone = self.held.large.load(Ordering::Relaxed) == 0;
            if !alone && held.saturating_add(len) > self.limit {
                self.refuse();
                return None;
            }
            self.held.large.fetch_add(1, Ordering::Relaxed);
        }
        self.held.bytes.fetch_add(len, Ordering::Relaxed);
        Some(Charge {
            held: self.held.clone(),
            bytes: len,
            large,
        })
    }

    /// Whether a large body would be refused whatever its size: the budget is spent by large
    /// bodies held for clients.
    pub(crate) fn exhausted(&self) -> bool {
        self.held.large.load(Ordering::Relaxed) > 0
            && self.held.bytes.load(Ordering::Relaxed) >= self.limit
    }

    /// Count a request refused because the budget is spent.
    pub(crate) fn refuse(&self) {
        self.refused.set(self.refused.get() + 1);
    }

    /// Bytes held now.
    pub(crate) fn held_bytes(&self) -> usize {
        self.held.bytes.load(Ordering::Relaxed)
    }

    /// The budget.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Requests refused since start.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn large_bodies_share_the_budget() {
        let b = ReplyBudget::new(10 * MIB);
        let first = b.charge(6 * MIB).expect("fits");
        assert!(!b.exhausted());
        assert!(b.charge(6 * MIB).is_none(), "6 + 6 > 10");
        assert_eq!(b.refused(), 1);
        let second = b.charge(4 * MIB).expect("6 + 4 fits exactly");
        assert!(b.exhausted());
        assert_eq!(b.held_bytes(), 10 * MIB);
        drop(first);
        assert!(!b.exhausted());
        assert_eq!(b.held_bytes(), 4 * MIB);
        drop(second);
        assert_eq!(b.held_bytes(), 0);
    }

    #[test]
    fn small_bodies_always_go_out_and_a_huge_one_goes_alone() {
        let b = ReplyBudget::new(MIB);
        let huge = b.charge(5 * MIB).expect("alone, though over the budget");
        assert!(b.exhausted());
        assert!(b.charge(SMALL_REPLY_BYTES).is_none());
        let small: Vec<_> = (0..100)
            .map(|_| b.charge(SMALL_REPLY_BYTES - 1).expect("small"))
            .collect();
        assert_eq!(b.refused(), 1);
        drop(huge);
        assert!(!b.exhausted(), "only small bodies held");
        assert!(
            b.charge(2 * MIB).is_some(),
            "no large body held: admitted alone"
        );
        drop(small);
        assert_eq!(b.held_bytes(), 0);
    }
}
