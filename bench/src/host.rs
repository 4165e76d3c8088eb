//! A Toru host for a benchmark, started through the shared test kit (`toru_test_kit`: temp dirs,
//! plugins installed as `*.binary`, `READY=1` and the bound address from the notify socket, the
//! admin CLI, the HTTP client). What is bench-only lives here: the probe socket the plugins report
//! their `main()` to, the "every plugin ready" check on the `READY=1` status, an admin token, and
//! JSON helpers for the API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
pub use toru_test_kit::Bins;
use toru_test_kit::{Host, HostOpts, PluginSrc, plugins_dir, try_install};

use crate::util::{ProbeSock, Result, TempDir, err, http_once};

/// A plugin to install: the binary and the name it gets (`<name>.binary`).
#[derive(Debug, Clone)]
pub struct PluginFile {
    /// Built binary.
    pub src: PathBuf,
    /// File stem in the plugins dir.
    pub name: String,
}

/// A running host. Killed when dropped (its plugins follow); its temp dir goes with it.
#[derive(Debug)]
pub struct Toru {
    /// The host (fields drop in order: host, probe socket, then the dirs).
    pub host: Host,
    /// Probe reports of the plugins it runs (`<plugins-dir>/probe.sock`).
    pub probe: ProbeSock,
    /// The bound HTTP address.
    pub addr: SocketAddr,
    /// Bearer token (admin), once [`Toru::login`] ran.
    pub token: Option<String>,
    /// How long from spawn to READY=1.
    pub start_to_ready: Duration,
    /// Root temp dir (removed last).
    pub root: TempDir,
}

/// Install `plugins` into `dir`.
pub fn install(dir: &Path, plugins: &[PluginFile]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let bins = Bins::locate()?;
    for p in plugins {
        let src = PluginSrc::File {
            src: p.src.clone(),
            name: p.name.clone(),
        };
        try_install(&bins, dir, &src)?;
    }
    Ok(())
}

impl Toru {
    /// Start a host with `plugins` and an optional config file; returns once READY=1 arrived.
    pub fn start(bins: &Bins, plugins: &[PluginFile], config: Option<&str>) -> Result<Toru> {
        let root = TempDir::new("toru")?;
        install(&plugins_dir(&root.0), plugins)?;
        Toru::start_in(bins, root, config, &[], true)
    }

    /// Like [`Toru::start`], but READY=1 with some plugins not ready is fine (crash-looping ones).
    pub fn start_lenient(
        bins: &Bins,
        plugins: &[PluginFile],
        config: Option<&str>,
    ) -> Result<Toru> {
        let root = TempDir::new("toru")?;
        install(&plugins_dir(&root.0), plugins)?;
        Toru::start_in(bins, root, config, &[], false)
    }

    /// Start a host on the dirs in `root` (reused: second starts; plugins already in
    /// [`plugins_dir`]), with `wrapper` prepended to the command (e.g. valgrind).
    pub fn start_in(
        bins: &Bins,
        root: TempDir,
        config: Option<&str>,
        wrapper: &[String],
        require_ready: bool,
    ) -> Result<Toru> {
        let plugins = plugins_dir(&root.0);
        std::fs::create_dir_all(&plugins)?;
        let probe = ProbeSock::bind(plugins.join("probe.sock"))?;
        let opts = HostOpts {
            root: Some(root.0.clone()),
            config: config.map(str::to_string),
            log_level: Some("warn".into()),
            wrapper: wrapper.to_vec(),
            ..HostOpts::default()
        };
        let host = Host::try_start(bins, &opts)?;
        // STATUS=… says how many plugins are ready: "N plugins: N ready, …".
        let n_plugins = install_count(&plugins);
        if require_ready
            && n_plugins > 0
            && !host.ready_status.contains(&format!("{n_plugins} ready"))
        {
            return Err(err(format!(
                "toru READY but not every plugin is ready: {}",
                host.ready_status
            )));
        }
        Ok(Toru {
            addr: host.addr,
            start_to_ready: host.start_to_ready,
            host,
            probe,
            token: None,
            root,
        })
    }

    /// The host's pid (the wrapper's, when there is one).
    pub fn pid(&self) -> u32 {
        self.host.pid()
    }

    /// Stop the host (SIGTERM, as systemd does) and hand back its dirs (for a second start on the
    /// same store).
    pub fn into_root(self) -> Result<TempDir> {
        let Toru { mut host, root, .. } = self;
        host.try_stop()?;
        drop(host);
        Ok(root)
    }

    /// Run `toru <args>` against this host's dirs; its stdout, or an error with its stderr.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Result<String> {
        let out = self.host.try_cli(args, Some(stdin))?;
        if !out.status.success() {
            return Err(err(format!(
                "toru {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Set the admin password and create an admin API token.
    pub fn login(&mut self) -> Result<()> {
        self.cli(&["passwd"], "bench-password-1234\n")?;
        let out = self.cli(&["token", "create", "bench", "--role", "admin"], "")?;
        let token = out
            .split_whitespace()
            .find(|w| w.starts_with("toru_"))
            .ok_or_else(|| err(format!("no token in {out:?}")))?;
        self.token = Some(token.to_string());
        Ok(())
    }

    /// `Authorization` and CSRF header lines for API requests.
    pub fn auth_headers(&self) -> Vec<String> {
        let mut h = vec![
            "X-Toru-Csrf: 1".to_string(),
            "Content-Type: application/json".to_string(),
        ];
        if let Some(t) = &self.token {
            h.push(format!("Authorization: Bearer {t}"));
        }
        h
    }

    /// `GET path` as JSON.
    pub fn get(&self, path: &str) -> Result<Value> {
        let (status, body) = http_once(self.addr, "GET", path, &self.auth_headers(), b"")?;
        if status != 200 {
            return Err(err(format!(
                "GET {path}: {status} {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Plugin `id`'s newest events (at most 10).
    pub fn events(&self, id: &str) -> Result<Vec<Value>> {
        let events = self.get(&format!("/api/plugins/{id}/events?limit=10"))?;
        Ok(events.as_array().cloned().unwrap_or_default())
    }

    /// The plugin's current pid and state.
    pub fn plugin(&self, id: &str) -> Result<(Option<u32>, String, u64)> {
        let v = self.get(&format!("/api/plugins/{id}"))?;
        Ok((
            v["pid"].as_u64().map(|p| p as u32),
            v["state"].as_str().unwrap_or("").to_string(),
            v["restarts"].as_u64().unwrap_or(0),
        ))
    }

    /// Wait until every plugin in `ids` is ready.
    pub fn wait_ready(&self, ids: &[String], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for id in ids {
            loop {
                if self.plugin(id)?.1 == "ready" {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(err(format!("plugin {id} not ready in time")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

/// Plugins installed in `dir`.
fn install_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".binary"))
                .count()
        })
        .unwrap_or(0)
}

/// The earliest stamp (ns) of an event of `kind` in `list` at or after `t0`.
pub fn first_at(list: &[Value], kind: &str, t0: i128) -> Option<i128> {
    list.iter()
        .filter(|e| e["kind"] == kind)
        .filter_map(|e| e["at"].as_str().and_then(parse_at))
        .filter(|&a| a >= t0)
        .min()
}

/// An RFC 3339 timestamp as unix ns.
pub fn parse_at(at: &str) -> Option<i128> {
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .map(i128::from)
}
