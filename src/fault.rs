//! Fault injection for tests, compiled into debug builds only (never into a release build).
//!
//! `TORU_FAULT_STALL_FIFO=<path of a FIFO>`: a task reads commands from the FIFO. On `s` it sends
//! `X_TORU_FAULT=stalled` to the notify socket and then blocks the event loop's thread in a
//! blocking read of the same FIFO until the next byte arrives — what a stuck handler or a blocking
//! call on the runtime thread would do. The watchdog test uses it to check that `WATCHDOG=1` pings
//! come from the event loop itself and stop while it is stalled.

use std::io::Read;
use std::path::PathBuf;
use std::rc::Rc;

use crate::notify::Notifier;

/// Start the hooks that `env` asks for (reads `TORU_FAULT_STALL_FIFO`).
pub(crate) fn spawn_from_env(env: &dyn Fn(&str) -> Option<String>, notifier: Rc<Notifier>) {
    let Some(path) = env("TORU_FAULT_STALL_FIFO").map(PathBuf::from) else {
        return;
    };
    log::warn!(
        "fault injection: the event loop stalls on command from {}",
        path.display()
    );
    tokio::task::spawn_local(async move {
        let opened = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path);
        let blocking = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path);
        let (Ok(commands), Ok(mut blocking)) = (opened, blocking) else {
            log::error!("fault injection: cannot open {}", path.display());
            return;
        };
        let mut byte = [0u8; 1];
        loop {
            if commands.readable().await.is_err() {
                return;
            }
            match commands.try_read(&mut byte) {
                Ok(1) if byte[0] == b's' => {
                    notifier.send("X_TORU_FAULT=stalled");
                    // Deliberately blocks the runtime thread (that is the fault).
                    let _ = blocking.read(&mut byte);
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    });
}

/// `TORU_FAULT_PACKAGE_STEP=<step>`: abort the process (no destructors, no flush — as `kill -9`
/// would stop it) when a package transaction reaches `step` (`moved`, `held`, `switched`,
/// `probation`, `finished`, `rolling-back`; see `install`).
pub(crate) fn package_step(step: &str) {
    if std::env::var("TORU_FAULT_PACKAGE_STEP").is_ok_and(|s| s == step) {
        log::warn!("fault injection: aborting at package step {step}");
        std::process::abort();
    }
}
