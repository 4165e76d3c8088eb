//! Per-plugin log ring: the last N lines of stdout, stderr and `log` frames, bounded in memory, with
//! a rate limit and a dropped-lines counter. Followers (live view) wait on a `Notify`: no polling.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use tokio::sync::Notify;
use tokio::time::{Duration, Instant};
use toru_plugin_api::LogLevel;

use super::view::{LogLine, LogPage, LogStream};

/// Longest line kept (longer ones are cut, with a marker).
pub const MAX_LINE_BYTES: usize = 4096;

/// The ring of one plugin.
#[derive(Debug)]
pub struct LogRing {
    plugin: String,
    lines: RefCell<VecDeque<LogLine>>,
    capacity: usize,
    next_seq: Cell<u64>,
    dropped: Cell<u64>,
    per_sec: u32,
    window: Cell<(Instant, u32)>,
    /// Woken on every new line.
    pub notify: Notify,
}

impl LogRing {
    /// A ring of `capacity` lines accepting at most `per_sec` lines a second.
    pub fn new(plugin: &str, capacity: usize, per_sec: u32) -> LogRing {
        LogRing {
            plugin: plugin.to_string(),
            lines: RefCell::new(VecDeque::with_capacity(capacity.min(64))),
            capacity,
            next_seq: Cell::new(1),
            dropped: Cell::new(0),
            per_sec,
            window: Cell::new((Instant::now(), 0)),
            notify: Notify::new(),
        }
    }

    /// Lines dropped so far (ring overflow does not count: old lines age out; the rate limit does).
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Add a line (rate-limited); also written to the host log at debug level or its own level.
    pub fn push(&self, stream: LogStream, level: LogLevel, message: &str) {
        let now = Instant::now();
        let (start, count) = self.window.get();
        let (start, count) = if now.duration_since(start) >= Duration::from_secs(1) {
            (now, 0)
        } else {
            (start, count)
        };
        if count >= self.per_sec {
            self.dropped.set(self.dropped.get() + 1);
            self.window.set((start, count));
            return;
        }
        self.window.set((start, count + 1));
        let mut message = message.trim_end_matches(['\r', '\n']).to_string();
        if message.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" …[cut]");
        }
        let host_level = match level {
            LogLevel::Error => log::Level::Warn,
            LogLevel::Warn | LogLevel::Info => log::Level::Info,
            LogLevel::Debug => log::Level::Debug,
            LogLevel::Trace => log::Level::Trace,
        };
        log::log!(target: "plugin", host_level, "[{}] {}", self.plugin, message);
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        let mut lines = self.lines.borrow_mut();
        if lines.len() >= self.capacity {
            lines.pop_front();
        }
        lines.push_back(LogLine {
            seq,
            at: crate::clock::now(),
            level,
            stream,
            message,
        });
        drop(lines);
        self.notify.notify_waiters();
    }

    /// The last `n` lines of stderr (for crash events).
    pub fn stderr_tail(&self, n: usize) -> Vec<String> {
        self.stderr_tail_after(n, 0)
    }

    /// The sequence number of the newest line so far (0: none yet); lines pushed later have
    /// greater ones.
    pub fn last_seq(&self) -> u64 {
        self.next_seq.get() - 1
    }

    /// The last `n` lines of stderr among those with `seq > after`.
    pub fn stderr_tail_after(&self, n: usize, after: u64) -> Vec<String> {
        let lines = self.lines.borrow();
        let mut tail: Vec<String> = lines
            .iter()
            .rev()
            .take_while(|l| l.seq > after)
            .filter(|l| l.stream == LogStream::Stderr)
            .take(n)
            .map(|l| l.message.clone())
            .collect();
        tail.reverse();
        tail
    }

    /// A page (1 = newest) of lines at `level` or more severe, oldest first within the page.
    pub fn page(&self, page: usize, page_size: usize, level: Option<LogLevel>) -> LogPage {
        let page = page.max(1);
        let page_size = page_size.clamp(1, 1000);
        let lines = self.lines.borrow();
        let matching: Vec<&LogLine> = lines
            .iter()
            .filter(|l| level.is_none_or(|min| l.level <= min))
            .collect();
        let total = matching.len();
        let end = total.saturating_sub((page - 1) * page_size);
        let start = end.saturating_sub(page_size);
        LogPage {
            lines: matching[start..end].iter().map(|l| (*l).clone()).collect(),
            total,
            page,
            page_size,
            dropped: self.dropped.get(),
        }
    }

    /// Lines with `seq > after`.
    pub fn since(&self, after: u64) -> Vec<LogLine> {
        self.lines
            .borrow()
            .iter()
            .filter(|l| l.seq > after)
            .cloned()
            .collect()
    }
}

/// Guess a level for a free-text line: a leading level word wins, else stderr is `warn` and stdout
/// `info`.
pub fn guess_level(stream: LogStream, line: &str) -> LogLevel {
    let head: String = line
        .trim_start_matches(|c: char| c == '[' || c.is_whitespace())
        .chars()
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    for (word, level) in [
        ("error", LogLevel::Error),
        ("warn", LogLevel::Warn),
        ("info", LogLevel::Info),
        ("debug", LogLevel::Debug),
        ("trace", LogLevel::Trace),
    ] {
        if head.starts_with(word) {
            return level;
        }
    }
    match stream {
        LogStream::Stderr => LogLevel::Warn,
        _ => LogLevel::Info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ring_is_bounded_and_rate_limited() {
        let ring = LogRing::new("p", 5, 8);
        for i in 0..10 {
            ring.push(LogStream::Stdout, LogLevel::Info, &format!("line {i}"));
        }
        // 8 accepted this second, 2 dropped; ring keeps the last 5 accepted.
        assert_eq!(ring.dropped(), 2);
        let p = ring.page(1, 100, None);
        assert_eq!(p.total, 5);
        assert_eq!(p.lines.first().unwrap().message, "line 3");
        assert_eq!(p.lines.last().unwrap().message, "line 7");
        tokio::time::advance(Duration::from_secs(1)).await;
        ring.push(LogStream::Stderr, LogLevel::Error, "boom");
        assert_eq!(ring.page(1, 2, Some(LogLevel::Error)).lines.len(), 1);
        assert_eq!(ring.stderr_tail(3), vec!["boom".to_string()]);
        // Page 2 of size 2 = the two lines before the newest two.
        let p2 = ring.page(2, 2, None);
        assert_eq!(
            p2.lines
                .iter()
                .map(|l| l.message.as_str())
                .collect::<Vec<_>>(),
            ["line 5", "line 6"]
        );
        assert_eq!(ring.since(7).len(), 2);
    }

    /// The stderr tail of a version on probation is its own: lines from before a mark (the
    /// previous version's) are left out, even when the new version wrote fewer lines than asked.
    #[test]
    fn the_stderr_tail_after_a_mark_leaves_out_older_lines() {
        let ring = LogRing::new("p", 100, 100);
        assert_eq!(ring.last_seq(), 0);
        ring.push(LogStream::Stderr, LogLevel::Warn, "old version");
        ring.push(LogStream::Stdout, LogLevel::Info, "old stdout");
        let mark = ring.last_seq();
        assert_eq!(mark, 2);
        assert!(ring.stderr_tail_after(5, mark).is_empty());
        ring.push(LogStream::Stderr, LogLevel::Warn, "new version");
        ring.push(LogStream::Stdout, LogLevel::Info, "new stdout");
        assert_eq!(ring.stderr_tail_after(5, mark), ["new version"]);
        assert_eq!(ring.stderr_tail(5), ["old version", "new version"]);
    }

    #[test]
    fn levels_from_text() {
        assert_eq!(guess_level(LogStream::Stdout, "ERROR: x"), LogLevel::Error);
        assert_eq!(guess_level(LogStream::Stdout, "[warn] x"), LogLevel::Warn);
        assert_eq!(guess_level(LogStream::Stderr, "plain"), LogLevel::Warn);
        assert_eq!(guess_level(LogStream::Stdout, "plain"), LogLevel::Info);
    }
}
