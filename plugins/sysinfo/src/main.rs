//! The `sysinfo` plugin: the device's CPU load per core, memory, disk usage per mount, uptime,
//! temperature, network interfaces and, on a Raspberry Pi, its under-voltage and throttling flags,
//! with a short history for the chart its page draws. README.md says where each figure comes from.
//!
//! Layout: `parse` turns the kernel's text into values (pure, unit-tested with fixture text);
//! `collect` reads the files and system calls and assembles a snapshot; `history` holds the
//! settings and the ring of recent points; this file is the plugin — settings from `init` and
//! `config`, the sampling task, the routes.
//!
//! Sampling: a local task takes a sample every `refresh_ms` (the first 0.5 s after start, so the
//! CPU load — a difference between two readings — shows at once). Each sample runs on tokio's
//! blocking pool, so a filesystem that hangs statvfs (a dead NFS server) never delays heartbeats
//! or requests; the next sample waits for it. A settings change wakes the task, which then
//! follows the new interval; a shorter history drops its oldest points at once.
//!
//! Routes (after `/sysinfo`): `GET /` the latest snapshot with the settings in force,
//! `GET /history` the recent points, `GET /bundle.js` the frontend.

mod collect;
mod history;
mod parse;

use std::cell::{Cell, RefCell};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use toru_plugin_api::{
    ErrorCode, HttpRequest, HttpResponse, LogLevel, PluginContext, PluginError, PluginMetadata,
    ToruPlugin,
};

use crate::collect::{Collector, Snapshot};
use crate::history::{History, Point, Settings};

const BUNDLE: &str = include_str!("../bundle.js");
/// The first sample after the baseline taken at `init` (the CPU load needs two readings).
const FIRST_SAMPLE_DELAY: Duration = Duration::from_millis(history::REFRESH_MIN_MS);

/// What the sampling task and the handlers share (one thread: `Rc<RefCell>`).
#[derive(Debug)]
struct State {
    settings: Settings,
    history: History,
    /// The latest sample; `None` before `init`.
    latest: Option<Snapshot>,
    /// Taken while a sample runs on the blocking pool, put back after.
    collector: Option<Collector>,
}

struct SysInfo {
    state: Rc<RefCell<State>>,
    /// Wakes the sampling task after a settings change.
    wake: Rc<Notify>,
    /// Whether the sampling task runs (a legacy host may send `init` more than once).
    started: Cell<bool>,
}

impl SysInfo {
    fn new() -> SysInfo {
        let settings = Settings::default();
        SysInfo {
            state: Rc::new(RefCell::new(State {
                settings,
                history: History::new(settings.history),
                latest: None,
                collector: Some(Collector::system()),
            })),
            wake: Rc::new(Notify::new()),
            started: Cell::new(false),
        }
    }

    /// Put `settings` in force.
    fn apply(&self, settings: Settings) {
        let mut st = self.state.borrow_mut();
        st.settings = settings;
        st.history.set_capacity(settings.history);
    }
}

impl ToruPlugin for SysInfo {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata {
            id: "sysinfo".into(),
            name: "System Info".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            author: Some("ToruAI".into()),
            icon: "📊".into(),
            route: "/sysinfo".into(),
            protocol: None,
        }
    }

    async fn init(&self, ctx: &PluginContext) -> Result<(), PluginError> {
        let settings = Settings::from_config(&ctx.config()).unwrap_or_else(|e| {
            ctx.log(
                LogLevel::Warn,
                format!("{e}; using the defaults until the settings change"),
            );
            Settings::default()
        });
        self.apply(settings);
        if self.started.replace(true) {
            return Ok(());
        }
        // The baseline: every figure but the CPU load, which needs a second reading.
        sample(&self.state, false).await;
        tokio::task::spawn_local(run_sampler(self.state.clone(), self.wake.clone()));
        ctx.log(
            LogLevel::Info,
            format!(
                "sampling every {} ms, keeping {} points",
                settings.refresh_ms, settings.history
            ),
        );
        Ok(())
    }

    /// The host validated the settings against the manifest's schema; this refuses only what it
    /// could not know about.
    async fn on_config(&self, ctx: &PluginContext, config: Value) -> Result<(), PluginError> {
        let settings = Settings::from_config(&config)
            .map_err(|m| PluginError::new(ErrorCode::BadRequest, m))?;
        self.apply(settings);
        self.wake.notify_one();
        ctx.log(
            LogLevel::Info,
            format!(
                "settings changed: sampling every {} ms, keeping {} points",
                settings.refresh_ms, settings.history
            ),
        );
        Ok(())
    }

    async fn handle_http(&self, _ctx: &PluginContext, req: HttpRequest) -> HttpResponse {
        let path = req.path_only().to_string();
        match (req.method.as_str(), path.as_str()) {
            ("GET", "/") => {
                let st = self.state.borrow();
                match &st.latest {
                    Some(snapshot) => HttpResponse::json(
                        200,
                        &Current {
                            settings: st.settings,
                            snapshot,
                        },
                    ),
                    None => HttpResponse::json(
                        503,
                        &json!({"error": "starting", "message": "no sample yet"}),
                    ),
                }
            }
            ("GET", "/history") => {
                let st = self.state.borrow();
                HttpResponse::json(
                    200,
                    &HistoryPage {
                        refresh_ms: st.settings.refresh_ms,
                        capacity: st.history.capacity(),
                        points: st.history.points().collect(),
                    },
                )
            }
            ("GET", "/bundle.js") => HttpResponse::text(200, "application/javascript", BUNDLE),
            (_, "/" | "/history" | "/bundle.js") => HttpResponse::json(
                405,
                &json!({"error": "method_not_allowed", "allowed": "GET"}),
            ),
            _ => HttpResponse::json(404, &json!({"error": "not_found", "path": req.path})),
        }
    }
}

/// `GET /`: the settings in force and the latest snapshot's fields.
#[derive(Serialize)]
struct Current<'a> {
    settings: Settings,
    #[serde(flatten)]
    snapshot: &'a Snapshot,
}

/// `GET /history`.
#[derive(Serialize)]
struct HistoryPage<'a> {
    refresh_ms: u64,
    capacity: usize,
    points: Vec<&'a Point>,
}

/// Take samples forever: one [`FIRST_SAMPLE_DELAY`] after start, then every `refresh_ms`
/// (measured from the start of one sample to the start of the next). A settings change wakes it
/// to recompute the wait with the new interval.
async fn run_sampler(state: Rc<RefCell<State>>, wake: Rc<Notify>) {
    let mut last = Instant::now();
    let mut first = true;
    loop {
        let every = Duration::from_millis(state.borrow().settings.refresh_ms);
        let wait = if first {
            FIRST_SAMPLE_DELAY.min(every)
        } else {
            every
        };
        tokio::select! {
            () = tokio::time::sleep_until(last + wait) => {}
            () = wake.notified() => continue,
        }
        first = false;
        last = Instant::now();
        sample(&state, true).await;
    }
}

/// Take one sample on the blocking pool; keep it as the latest and, when `record`, add it to the
/// history. Returns when it is done.
async fn sample(state: &Rc<RefCell<State>>, record: bool) {
    let Some(mut collector) = state.borrow_mut().collector.take() else {
        return;
    };
    let time_ms = now_ms();
    let taken = tokio::task::spawn_blocking(move || {
        let snapshot = collector.sample(time_ms);
        (collector, snapshot)
    })
    .await;
    let mut st = state.borrow_mut();
    match taken {
        Ok((collector, snapshot)) => {
            st.collector = Some(collector);
            if record {
                st.history.push(Point::of(&snapshot));
            }
            st.latest = Some(snapshot);
        }
        // The sample panicked (with `panic = "abort"`, as in release builds, it cannot): start
        // again from a fresh collector.
        Err(_) => st.collector = Some(Collector::system()),
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn main() -> ExitCode {
    toru_plugin_api::run(SysInfo::new())
}
