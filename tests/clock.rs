//! Clock jumps against the real host: it starts on 1 January 1970 (a board without an RTC before
//! NTP answers), then its wall clock jumps a year forward, back, and a year before the epoch, while
//! it runs, under libfaketime (`LD_PRELOAD`, the faked time read from a file the test rewrites).
//! Backoff, plugin timeouts, heartbeats and the login throttle run on the monotonic clock and keep
//! working; sessions age on the wall clock (`src/clock.rs`): a jump forward past their limit ends
//! them, and a jump back ends the sessions created "in the future" instead of stretching them.
//!
//! Before, the wall clock read before 1970 panicked the host (`chrono::Utc::now` when it stamped a
//! heartbeat frame or a log line: an abort in release builds), and a session created before a jump
//! back counted as brand new until the clock caught up with it.
//!
//! The second test fakes the monotonic clock too and jumps it a year forward (a VM paused and
//! resumed): every deadline passes at once, and the host carries on. The monotonic clock is never
//! jumped back: Linux guarantees it never goes back, and tokio's timers would rightly wait for it.
//!
//! libfaketime comes from Debian's `faketime` package (stage `cargo` installs it). A static
//! (musl) host cannot be preloaded: under the aarch64 stage these tests are skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_util;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_util::{PASSWORD, get, login, post, setup_admin, wait_state};
use serde_json::{Value, json};
use support::{Host, HostOpts, PluginSrc, built, temp_dir};

/// Where Debian puts libfaketime (the thread-safe build: the host has a store writer thread).
fn libfaketime() -> PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/arm-linux-gnueabihf/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("libfaketime is missing: apt-get install faketime (stage `cargo` does)")
        })
}

/// A host whose clocks libfaketime fakes, reading the time from `<root>/faketime`.
struct FakedHost {
    host: Host,
    time_file: PathBuf,
}

impl FakedHost {
    fn start(start: &str, monotonic_too: bool, config: &str, plugins: Vec<PluginSrc>) -> FakedHost {
        let root = temp_dir("clk");
        std::fs::create_dir_all(&root).unwrap();
        let time_file = root.join("faketime");
        set_time(&time_file, start);
        let mut env = vec![
            ("LD_PRELOAD".into(), libfaketime().display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                time_file.display().to_string(),
            ),
            // Read the file at every clock read, so a rewrite takes effect at once.
            ("FAKETIME_NO_CACHE".into(), "1".into()),
        ];
        if !monotonic_too {
            env.push(("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()));
        }
        let host = Host::start(HostOpts {
            root: Some(root),
            env,
            config: Some(config.into()),
            plugins,
            ..Default::default()
        });
        FakedHost { host, time_file }
    }

    /// Jump the host's clock: `@YYYY-MM-DD hh:mm:ss` starts counting from that moment.
    fn jump(&self, to: &str) {
        set_time(&self.time_file, to);
    }
}

impl Drop for FakedHost {
    /// Stop the host and remove its temp root, unless the test failed (then the root, with
    /// `host.log`, stays for a look).
    fn drop(&mut self) {
        let _ = self.host.child.kill();
        let _ = self.host.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.host.root);
        }
    }
}

fn set_time(file: &Path, at: &str) {
    // Written whole and renamed: the host never reads half a line.
    let tmp = file.with_extension("new");
    std::fs::write(&tmp, format!("{at}\n")).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// `(status, error code)` of `GET /api/auth/me` with `cookie`.
fn me(h: &Host, cookie: &str) -> (u16, Option<String>) {
    let r = get(h, "/api/auth/me", cookie);
    let code = (r.status != 200).then(|| r.json()["error"].as_str().unwrap_or("").to_string());
    (r.status, code)
}

fn plugin(h: &Host, cookie: &str, id: &str) -> Value {
    let r = get(h, &format!("/api/plugins/{id}"), cookie);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Poll until `f` answers, for at most a minute.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const EPOCH: &str = "@1970-01-01 00:00:00";
const YEAR_LATER: &str = "@1971-01-01 00:00:00";
const YEAR_BEFORE: &str = "@1969-01-01 00:00:00";

/// A slow plugin route (answers after 4 s) under a 1 s plugin timeout, a plugin that crashes at
/// every start (backoff of 100 ms units: its ten starts take about 10 s), and hello-rust pinged
/// every second.
const CONFIG: &str = "[http]\nplugin_timeout_ms = 1000\n\
    [supervisor]\nbackoff_base_ms = 100\nheartbeat_interval_ms = 1000\nheartbeat_misses = 3\n";

fn plugins() -> Vec<PluginSrc> {
    let stress = |mode: &str| PluginSrc::Built {
        bin: "stress",
        as_name: format!("stress-{mode}"),
    };
    vec![
        built("hello-rust"),
        stress("slow-4000"),
        stress("crash-start"),
    ]
}

/// A request to the slow plugin's route while the clock jumps to `to`: the plugin timeout
/// (monotonic) still answers `504`, neither never nor with a wall-clock error.
fn timeout_across_a_jump(fh: &FakedHost, cookie: &str, to: &str) {
    let addr = fh.host.addr;
    let cookie = format!("toru_session={cookie}");
    let req = std::thread::spawn(move || {
        support::http(
            addr,
            "GET",
            "/api/plugins/route/stress-slow-4000/",
            &[("Cookie", cookie.as_str())],
            None,
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    fh.jump(to);
    let r = req.join().unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
}

#[test]
#[cfg_attr(
    target_env = "musl",
    ignore = "a static host cannot be preloaded with libfaketime"
)]
fn wall_clock_jumps_leave_backoff_timeouts_heartbeats_and_throttles_working() {
    let fh = FakedHost::start(EPOCH, false, CONFIG, plugins());
    let h = &fh.host;
    let c1970 = setup_admin(h);
    assert_eq!(me(h, &c1970), (200, None));
    let system = get(h, "/api/system", &c1970).json();
    assert!(
        system["started_at"]
            .as_str()
            .unwrap()
            .starts_with("1970-01-01"),
        "the host runs on the faked clock: {system}"
    );

    // A year forward: sessions older than `session_absolute` (7 days) end — documented.
    fh.jump(YEAR_LATER);
    assert_eq!(me(h, &c1970), (401, Some("session_expired".into())));
    let c1971 = login(h, "admin", PASSWORD);
    assert_eq!(me(h, &c1971), (200, None));
    timeout_across_a_jump(&fh, &c1971, YEAR_LATER);

    // Back a year: the 1971 session was created "in the future" — it ends, it is not stretched.
    fh.jump(EPOCH);
    assert_eq!(me(h, &c1971), (401, Some("session_expired".into())));
    let c1970b = login(h, "admin", PASSWORD);
    assert_eq!(me(h, &c1970b), (200, None));
    // That login swept the sessions from the future out of the store: forward again, the 1971
    // session does not come back; it is unknown.
    fh.jump(YEAR_LATER);
    assert_eq!(me(h, &c1971), (401, Some("unauthorized".into())));
    fh.jump(EPOCH);
    assert_eq!(me(h, &c1970b), (200, None));
    timeout_across_a_jump(&fh, &c1970b, EPOCH);

    // The throttle counts on the monotonic clock: a jump forward does not forgive the failures
    // (the fourth attempt right after three waits), a jump back does not lock the client out for
    // a year (after the `Retry-After` it asked for, the right password works).
    let bad = json!({"username": "admin", "password": "wrong password"});
    for _ in 0..3 {
        assert_eq!(post(h, "/api/auth/login", None, &bad).status, 401);
    }
    fh.jump(YEAR_LATER);
    let r = post(h, "/api/auth/login", None, &bad);
    assert_eq!(r.status, 429, "{}", r.text());
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(wait <= 60, "Retry-After {wait}");
    fh.jump(EPOCH);
    std::thread::sleep(Duration::from_millis(wait * 1000 + 100));
    let c = login(h, "admin", PASSWORD);

    // A year before the epoch (Linux refuses to set that; libfaketime can): nothing panics,
    // logins, events and plugin requests carry on with 1969 timestamps.
    fh.jump(YEAR_BEFORE);
    assert_eq!(
        me(h, &c),
        (401, Some("session_expired".into())),
        "from the future"
    );
    // (The failures above are still counted — a success uncounts only itself — so this login may
    // be asked to wait its `Retry-After` first.)
    let c1969 = login_after_any_wait(h);
    assert_eq!(me(h, &c1969), (200, None));
    let r = get(h, "/api/plugins/route/hello-rust/", &c1969);
    assert_eq!(r.status, 200, "{}", r.text());
    timeout_across_a_jump(&fh, &c1969, YEAR_BEFORE);
    let events = get(h, "/api/events", &c1969);
    assert_eq!(events.status, 200, "{}", events.text());

    // Backoff (monotonic) went on through every jump: the crashing plugin was started ten times
    // and is disabled. Heartbeats never missed: hello-rust is ready and was never restarted.
    let crash = wait_state(h, &c1969, "stress-crash-start", "disabled");
    assert!(crash["auto_disabled"].is_string(), "{crash}");
    let hello = plugin(h, &c1969, "hello-rust");
    assert_eq!(
        (hello["state"].as_str(), hello["restarts"].as_u64()),
        (Some("ready"), Some(0)),
        "{hello}"
    );
    // Events written now carry 1969 timestamps.
    let r = post(
        h,
        "/api/plugins/hello-rust/restart",
        Some(&c1969),
        &json!({}),
    );
    assert!((200..300).contains(&r.status), "{}", r.text());
    eventually("a 1969 event", || {
        let events = get(h, "/api/events?limit=200", &c1969).json();
        let list = events
            .as_array()
            .or_else(|| events["events"].as_array())
            .cloned()?;
        list.iter()
            .any(|e| e["at"].as_str().is_some_and(|t| t.starts_with("1969-")))
            .then_some(())
    });
    assert!(!h.log().contains("panicked"), "{}", h.log());
}

#[test]
#[cfg_attr(
    target_env = "musl",
    ignore = "a static host cannot be preloaded with libfaketime"
)]
fn a_monotonic_jump_forward_passes_every_deadline_and_the_host_carries_on() {
    let fh = FakedHost::start(EPOCH, true, CONFIG, vec![built("hello-rust")]);
    let h = &fh.host;
    let c = setup_admin(h);
    let bad = json!({"username": "admin", "password": "wrong password"});
    for _ in 0..3 {
        assert_eq!(post(h, "/api/auth/login", None, &bad).status, 401);
    }
    assert_eq!(post(h, "/api/auth/login", None, &bad).status, 429);

    // A year passes at once for every clock (a VM paused and resumed).
    fh.jump(YEAR_LATER);
    // Idle and absolute limits both passed: the session ended.
    assert_eq!(me(h, &c), (401, Some("session_expired".into())));
    // The throttle's window passed too: the client may try again at once.
    let c = login(h, "admin", PASSWORD);
    // At most one heartbeat was missed (the one in flight): hello-rust is still ready.
    let r = get(h, "/api/plugins/route/hello-rust/", &c);
    assert_eq!(r.status, 200, "{}", r.text());
    let hello = wait_state(h, &c, "hello-rust", "ready");
    assert_eq!(hello["restarts"].as_u64(), Some(0), "{hello}");
    assert!(!h.log().contains("panicked"), "{}", h.log());
}

/// Log in as admin, waiting once for the `Retry-After` of a `429` (the throttle's own answer).
fn login_after_any_wait(h: &Host) -> String {
    let body = json!({"username": "admin", "password": PASSWORD});
    let r = post(h, "/api/auth/login", None, &body);
    if r.status == 429 {
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(wait <= 60, "Retry-After {wait}");
        std::thread::sleep(Duration::from_millis(wait * 1000 + 100));
    } else {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    login(h, "admin", PASSWORD)
}
