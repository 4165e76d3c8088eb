//! The web UI and REST API. The only module that names the HTTP library (hyper 1.x, `http1` server).
//!
//! Owns: the listening loop, connection limits and timeouts, routing, authentication, the JSON API
//! (`docs/API.md`), the embedded UI pages and `/metrics`. It never touches plugin processes or the
//! store file directly: it calls [`crate::supervisor::Supervisor`] and [`crate::store::Store`].
//! Called by `main` through [`serve`]. Authentication itself lives in `crate::auth` (no HTTP types).
//!
//! ## Layout
//! - this file: [`serve`], the accept loop and per-connection tasks (limits below);
//! - `conn`: per-connection bookkeeping (busy/idle, deadlines, eviction) and the response body;
//! - `router`: request → checks (Host, setup, CSRF, auth, role) → handler;
//! - `checks`: pure request checks (Host names, same-origin, path traversal, client address);
//! - `api`: handlers of `/api/*` (system, plugins, logs, events, KV, bundle, plugin routes);
//! - `metrics`: counters and the Prometheus text of `/metrics`;
//! - `ui`: the embedded pages (`src/http/ui/`).
//!
//! ## Limits (all from `config.http`)
//! Everything runs on the runtime thread (one `current_thread` runtime, tasks `spawn_local`ed).
//! - At most `max_connections` connections are served. When a new one arrives at the limit, the
//!   connection quiet for longest (no request in flight, quiet for at least 250 ms) is closed to
//!   make room, so idle keep-alive and silent clients cannot lock others out; if there is none, the
//!   newcomer gets a static `503` and is closed.
//! - A client must send a complete request head within `header_timeout` of connecting or of starting
//!   to send it; an idle keep-alive connection is closed after `keepalive_timeout`.
//! - A request head over `max_header_bytes` is answered `431` (hyper's read-buffer cap).
//! - Request bodies are capped (`max_api_body_bytes`, `max_plugin_body_bytes`) → `413`, and must
//!   arrive within [`BODY_READ_TIMEOUT`] → `408`.

mod api;
mod checks;
mod conn;
mod metrics;
mod router;
mod ui;

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::App;

pub use conn::BODY_READ_TIMEOUT;

/// How long in-flight requests may take to finish once shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Pause after an `accept` error such as `EMFILE`, so a full descriptor table does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serve HTTP on `listener` until `shutdown` resolves, then let in-flight requests finish for up to
/// [`SHUTDOWN_GRACE`] and return. Must run inside a `LocalSet` (connections are `spawn_local`ed).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Rc<App>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let server = Rc::new(router::Server::new(app));
    // Owns every connection task: dropping it (when serve returns) aborts any that are left.
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => conn::admit(&server, stream, peer, &mut tasks),
                Err(e) => {
                    log::warn!("http: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
    drop(listener);
    server.connections.close_all();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::info!(
            "http: {} connection(s) still busy after {SHUTDOWN_GRACE:?}; closing them",
            tasks.len()
        );
    }
    Ok(())
}
