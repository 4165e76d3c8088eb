//! The web UI and REST API. The only module that names the HTTP library (hyper 1.x, `http1` server).
//!
//! Owns: the listening loop, connection limits and timeouts, routing, the JSON API (`docs/API.md`),
//! the embedded UI pages and `/metrics`. It never touches plugin processes or the store file
//! directly: it calls [`crate::supervisor::Supervisor`] and [`crate::store::Store`]; who may do
//! what is decided by `crate::auth`, which knows nothing of HTTP. Called by `lib::run` through
//! [`serve`].
//!
//! ## Layers
//! Each module imports only modules on lower rows (and nothing above `http`'s callers):
//!
//! ```text
//! mod.rs    serve(): builds the connection registry and the Server, runs conn::serve
//! dispatch  Server as conn's Handler: gate → the handler of the route; security headers, metrics
//! api · session · packages · update · ui
//!           handlers: one request → Result<Resp, ApiError>; they never import each other
//! router    Server (state), the route table (path → Route), the gate (Host, setup, auth, CSRF,
//!           method, role)
//! request · conn
//!           Ctx and body reading · connections: accept loop, limits, deadlines, eviction, generic
//!           over a Handler (knows nothing of routes)
//! resp      Resp, Body, ApiError, builders, cookies, security headers
//! checks · metrics · budget
//!           leaves: pure request checks · counters and the Prometheus text · the reply budget
//! ```
//!
//! A request flows upward: `conn` reads it, `dispatch` runs the `router`'s gate and calls the
//! handler, the response flows back down through `conn`.
//!
//! ## Limits (all from `config.http`)
//! Everything runs on the runtime thread (one `current_thread` runtime, tasks `spawn_local`ed).
//! - At most `max_connections` connections are served. When a new one arrives at the limit, the
//!   connection quiet for longest among those with no request in flight (and already read once)
//!   is closed to make room, however young, so idle keep-alive, silent and slowloris clients cannot
//!   lock others out; only when every connection has a request in flight does the newcomer get a
//!   static `503` and is closed.
//! - A client must send a complete request head within `header_timeout` of connecting or of starting
//!   to send it; an idle keep-alive connection is closed after `keepalive_timeout`.
//! - A request head over `max_header_bytes` is answered `431` (hyper's read-buffer cap).
//! - Request bodies are capped (`max_api_body_bytes`, `max_plugin_body_bytes`) → `413`, and must
//!   arrive within 30 s (`request::BODY_READ_TIMEOUT`) → `408`. Streamed uploads (packages,
//!   update bundles) are limited by size instead, and each chunk must follow the last within 30 s
//!   (`request::UPLOAD_IDLE_TIMEOUT`). A plugin request must also fit
//!   in one protocol frame (`max_frame_len`) once encoded → `413`.
//! - Response bodies held for clients that have not taken them yet share
//!   `max_buffered_reply_bytes` (32 MiB), from when the handler returns until the last byte is
//!   written; a body of 64 KiB or more that does not fit is answered `503 busy` instead (`budget`).
//!   Small bodies always go out; one large body goes out alone even if over the budget.
//! - Once shutdown begins, requests in flight get 3 s (`conn::SHUTDOWN_GRACE`) to finish.

mod api;
mod budget;
pub(crate) mod checks;
mod conn;
mod dispatch;
mod metrics;
mod packages;
mod request;
mod resp;
pub(crate) mod router;
mod session;
mod ui;
mod update;

use std::future::Future;
use std::rc::Rc;

use crate::app::App;

/// Serve HTTP on `listener` until `shutdown` resolves, then let in-flight requests finish for up to
/// 3 s and return. Must run inside a `LocalSet` (connections are `spawn_local`ed).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Rc<App>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let connections = Rc::new(conn::Connections::new(conn::Limits::from(&app.config.http)));
    let server = Rc::new(router::Server::new(app, connections.clone()));
    conn::serve(listener, connections, server, shutdown).await
}
