//! systemd notification (`sd_notify`) without libsystemd: `READY=1`, `WATCHDOG=1`, `STATUS=`,
//! `STOPPING=1` as datagrams to `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
//! Silently does nothing when the host is not run by systemd. Called by `main` (which reads the
//! environment) and `run` (which sends); it never changes the environment.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go, read once at start.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Read `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` through `env` (the process
    /// environment in `main`). The environment is not changed: every child the host starts (plugins
    /// and their `--metadata` runs, `supervisor::process`) starts with a cleared environment, so none
    /// inherits these.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Notifier {
        let path = env("NOTIFY_SOCKET").filter(|p| !p.is_empty());
        let usec = env("WATCHDOG_USEC").and_then(|v| v.parse::<u64>().ok());
        let pid_ok = env("WATCHDOG_PID")
            .and_then(|v| v.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let socket = path.and_then(|p| UnixDatagram::unbound().ok().map(|s| (s, p)));
        let watchdog = usec.filter(|u| *u > 0 && pid_ok).map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// The ping period: half of `WATCHDOG_USEC`, if systemd asked for pings.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Send one notification (newline-separated assignments).
    pub fn send(&self, msg: &str) {
        let Some((sock, path)) = &self.socket else {
            return;
        };
        let result = if let Some(name) = path.strip_prefix('@') {
            send_abstract(sock, name, msg)
        } else {
            sock.send_to(msg.as_bytes(), path).map(|_| ())
        };
        if let Err(e) = result {
            log::debug!("sd_notify to {path} failed: {e}");
        }
    }
}

fn send_abstract(sock: &UnixDatagram, name: &str, msg: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    sock.send_to_addr(msg.as_bytes(), &addr).map(|_| ())
}
