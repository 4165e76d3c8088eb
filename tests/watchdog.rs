//! The systemd watchdog only works if `WATCHDOG=1` comes from the event loop itself: a loop that
//! is stuck must stop pinging, so that systemd restarts the host. A debug-build fault hook
//! (`TORU_FAULT_STALL_FIFO`, src/fault.rs) blocks the event loop's thread on command; while it is
//! blocked no ping may arrive, and once released the pings resume.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::{Host, HostOpts, temp_dir};

/// Watchdog period asked of the host: it pings every half of it (50 ms).
const WATCHDOG_USEC: &str = "100000";

#[test]
fn a_stalled_event_loop_stops_the_watchdog_pings() {
    let root = temp_dir("wd");
    std::fs::create_dir_all(&root).unwrap();
    let fifo = root.join("stall.fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let mut h = Host::start(HostOpts {
        root: Some(root.clone()),
        env: vec![
            ("WATCHDOG_USEC".into(), WATCHDOG_USEC.into()),
            ("TORU_FAULT_STALL_FIFO".into(), fifo.display().to_string()),
        ],
        ..Default::default()
    });
    let pings_until = |h: &mut Host, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        while seen < n {
            if h.recv_notify(deadline).lines().any(|l| l == "WATCHDOG=1") {
                seen += 1;
            }
        }
    };
    pings_until(&mut h, 3);

    // Stall the loop; the host says so just before it blocks.
    let mut cmd = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    cmd.write_all(b"s").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !h.recv_notify(deadline).contains("X_TORU_FAULT=stalled") {}

    // While it is blocked nothing can ping: 20 periods without a datagram.
    h.notify
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let mut buf = [0u8; 4096];
    match h.notify.recv(&mut buf) {
        Ok(n) => panic!(
            "a notification arrived while the event loop was blocked: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }

    // Released, it pings again.
    cmd.write_all(b"r").unwrap();
    pings_until(&mut h, 2);
}
