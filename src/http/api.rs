//! Handlers of `/api/health`, `/metrics` and the authenticated `/api/*` endpoints other than the
//! session ones (documented in `docs/API.md`): system (and leaving safe mode), plugins (list, one, enable/disable/restart,
//! rescan), logs (page and long-poll follow), events, KV, frontend bundles, and forwarding
//! `/api/plugins/route/{route}/{rest}` to plugins.
//!
//! A handler: called by `dispatch` after the router's gate (authentication, CSRF, the route's
//! method and role); calls the supervisor and the store. Uses `router`, `request`, `resp`,
//! `checks` and `metrics`, never another handler.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::json;
use tokio::time::Instant;
use toru_plugin_api::protocol::{BodyEncoding, ErrorCode, KvReply};
use toru_plugin_api::{HttpRequest, KvRequest, LogLevel};

use super::checks;
use super::metrics::{HttpGauges, rss_bytes};
use super::request::{Ctx, read_body, read_json};
use super::resp::{
    ApiError, Body, Resp, bytes_response, method_not_allowed, ok_json, reply_budget_spent,
};
use super::router::{PluginAction, Server, need_admin};
use crate::auth::{Identity, Role};
use crate::safe_mode::LeaveError;
use crate::store::{StoreError, StoreHealth, kv};
use crate::supervisor::{ForwardError, PluginReply, SupervisorError};

/// A log follow request waits at most this long for a new line (then answers with none).
pub(crate) const LONG_POLL: Duration = Duration::from_secs(25);
/// Largest frontend bundle served from `<plugins-dir>/<id>/bundle.js`.
pub(crate) const MAX_BUNDLE_BYTES: u64 = 8 * 1024 * 1024;
/// Log lines per page at most.
const MAX_PAGE_SIZE: usize = 1000;
/// Lines returned by one follow answer at most (the newest).
const MAX_FOLLOW_LINES: usize = 500;
/// Events returned at most.
const MAX_EVENTS: usize = 200;
/// Extra time past `plugin_timeout` before the HTTP layer gives up on the supervisor itself.
const FORWARD_SLACK: Duration = Duration::from_secs(5);
/// Bytes a frame adds around a forwarded request (type, timestamp, request ids), at most.
const FRAME_ENVELOPE_BYTES: usize = 512;

/// Request headers never forwarded to a plugin (credentials, hop-by-hop, and ours).
const DROP_REQUEST_HEADERS: &[&str] = &[
    "cookie",
    "authorization",
    "proxy-authorization",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-toru-user",
    "x-toru-role",
    checks::CSRF_HEADER,
];

/// Plugin response headers never passed on (hop-by-hop; cookies, which could shadow the session).
const DROP_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "transfer-encoding",
    "content-length",
    "keep-alive",
    "upgrade",
    "proxy-connection",
    "te",
    "trailer",
    "set-cookie",
];

/// `GET /api/health` (open: no authentication, answers before setup too).
pub(crate) fn health(ctx: &Ctx) -> Result<Resp, ApiError> {
    if !matches!(ctx.method, Method::GET | Method::HEAD) {
        return Err(method_not_allowed("GET"));
    }
    ok_json(&json!({"status": "ok"}))
}

/// `GET /metrics`: the Prometheus text.
pub(crate) fn metrics(srv: &Server) -> Result<Resp, ApiError> {
    let c = &srv.connections;
    let gauges = HttpGauges {
        connections: c.active(),
        rejected: c.rejected(),
        evicted: c.evicted(),
        reply_bytes: srv.replies.held_bytes(),
        reply_budget: srv.replies.limit(),
        reply_refused: srv.replies.refused(),
    };
    let text = srv.metrics.borrow().render(&srv.app, &gauges);
    Ok(bytes_response(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        text,
    ))
}

/// `GET /api/plugins`: each plugin with its `package` (`null`: an unpackaged `*.binary`).
pub(crate) fn plugins(srv: &Server) -> Result<Resp, ApiError> {
    let mut packages = srv.app.packages.summaries();
    let list: Vec<serde_json::Value> = srv
        .app
        .supervisor
        .plugins()
        .into_iter()
        .map(|p| {
            let package = packages.remove(&p.id).unwrap_or(serde_json::Value::Null);
            with_package(&p, package)
        })
        .collect();
    ok_json(&list)
}

/// A plugin's view with its `package` summary (`null`: unpackaged).
fn with_package(
    p: &crate::supervisor::PluginView,
    package: serde_json::Value,
) -> serde_json::Value {
    let mut v = serde_json::to_value(p).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("package".into(), package);
    }
    v
}

/// `POST /api/plugins/rescan` (admin).
pub(crate) async fn rescan(srv: &Server) -> Result<Resp, ApiError> {
    let report = srv.app.supervisor.rescan().await;
    ok_json(&report)
}

/// `GET /api/plugins/{id}`.
pub(crate) fn plugin(srv: &Server, id: &str) -> Result<Resp, ApiError> {
    let p = srv.app.supervisor.plugin(id).ok_or_else(|| no_plugin(id))?;
    ok_json(&with_package(&p, srv.app.packages.summary(id)))
}

/// `POST /api/plugins/{id}/{enable|disable|restart}` (admin).
pub(crate) async fn plugin_action(
    srv: &Server,
    id: &str,
    action: PluginAction,
) -> Result<Resp, ApiError> {
    let sup = &srv.app.supervisor;
    let r = match action {
        PluginAction::Enable => sup.enable(id).await,
        PluginAction::Disable => sup.disable(id).await,
        PluginAction::Restart => sup.restart(id).await,
    };
    match r {
        Ok(view) => ok_json(&view),
        Err(SupervisorError::NotFound(_)) => Err(no_plugin(id)),
        Err(SupervisorError::ShuttingDown) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the host is shutting down",
        )),
        Err(e) => Err(ApiError::internal(action.as_str(), &e)),
    }
}

/// `GET` (anyone) and `PUT` (admin) `/api/plugins/{id}/security`: what the plugin gets and
/// what protects it; a change of limits or grants restarts it.
pub(crate) async fn security(
    srv: &Server,
    ctx: &Ctx,
    who: &Identity,
    id: &str,
    body: Incoming,
) -> Result<Resp, ApiError> {
    let sup = &srv.app.supervisor;
    let r = match ctx.method {
        Method::GET | Method::HEAD => sup.security(id).await,
        Method::PUT => {
            need_admin(who)?;
            let change: crate::supervisor::SecurityChange =
                read_json(body, srv.app.config.http.max_api_body_bytes).await?;
            sup.set_security(id, change).await
        }
        _ => return Err(method_not_allowed("GET, PUT")),
    };
    match r {
        Ok(v) => ok_json(&v),
        Err(SupervisorError::NotFound(_)) => Err(no_plugin(id)),
        Err(SupervisorError::InvalidLimit(m)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_limit", m))
        }
        Err(SupervisorError::ShuttingDown) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the host is shutting down",
        )),
        Err(e) => Err(ApiError::internal("the security change", &e)),
    }
}

/// `GET /api/plugins/{id}/events`.
pub(crate) fn plugin_events(srv: &Server, ctx: &Ctx, id: &str) -> Result<Resp, ApiError> {
    srv.app.supervisor.plugin(id).ok_or_else(|| no_plugin(id))?;
    events(srv, ctx, Some(id))
}

/// Any other `/api/` path.
pub(crate) fn unknown(ctx: &Ctx) -> Result<Resp, ApiError> {
    Err(ApiError::not_found(format!("no endpoint {}", ctx.path)))
}

fn no_plugin(id: &str) -> ApiError {
    ApiError::not_found(format!("no plugin {id:?}"))
}

/// `GET /api/system`.
pub(crate) fn system(srv: &Server) -> Result<Resp, ApiError> {
    ok_json(&system_json(srv))
}

/// `POST /api/system/safe-mode/leave` (admin): leave safe mode now; the held plugins start.
/// `409 not_in_safe_mode` when the host is not in it.
pub(crate) async fn leave_safe_mode(srv: &Server) -> Result<Resp, ApiError> {
    match srv.app.safe_mode.leave().await {
        Ok(status) => ok_json(&status),
        Err(LeaveError::NotActive) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_in_safe_mode",
            "the host is not in safe mode",
        )),
        Err(LeaveError::Store(e)) => Err(ApiError::store("leaving safe mode", e)),
    }
}

fn system_json(srv: &Server) -> serde_json::Value {
    let app = &srv.app;
    let health = app.store.health();
    let mut store = serde_json::to_value(&health).unwrap_or_else(|_| json!({}));
    if let Some(o) = store.as_object_mut() {
        o.insert("file_bytes".into(), json!(app.store.file_bytes()));
        o.insert("commits".into(), json!(app.store.commits()));
    }
    let plugins = app.supervisor.plugins();
    let auto_disabled: Vec<_> = plugins
        .iter()
        .filter(|p| p.auto_disabled.is_some() && !p.enabled)
        .map(|p| json!({"id": p.id, "name": p.name, "reason": p.auto_disabled}))
        .collect();
    let (rss, peak) = rss_bytes();
    json!({
        "version": crate::app::VERSION,
        "instance_id": app.store.instance_id(),
        "licensing_id": crate::license::gate::instance(&app.store).map(|i| i.licensing_id),
        "uptime_secs": app.started.elapsed().as_secs(),
        "started_at": app.started_at,
        "pid": std::process::id(),
        "memory": {"rss_bytes": rss, "peak_rss_bytes": peak},
        "store": store,
        "degraded": health != StoreHealth::Ok,
        "plugins": {
            "total": plugins.len(),
            "enabled": plugins.iter().filter(|p| p.enabled).count(),
            "ready": plugins.iter().filter(|p| p.state == crate::supervisor::PluginState::Ready).count(),
            "auto_disabled": auto_disabled,
        },
        "invalid_plugins": app.supervisor.invalid(),
        "safe_mode": app.safe_mode.status(),
        "mqtt": app.mqtt.status(),
        "packages": {
            "allow_unsigned": app.packages.allow_unsigned(),
            "max_package_bytes": app.config.packages.max_package_bytes,
            "probation_secs": app.config.packages.probation.as_secs(),
        },
        "http": {
            "connections": srv.connections.active(),
            "max_connections": app.config.http.max_connections,
            "reply_buffered_bytes": srv.replies.held_bytes(),
            "max_buffered_reply_bytes": srv.replies.limit(),
        },
    })
}

/// `GET /api/events` (`plugin` `None`) and the per-plugin list.
pub(crate) fn events(srv: &Server, ctx: &Ctx, plugin: Option<&str>) -> Result<Resp, ApiError> {
    let limit = ctx
        .query_param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, MAX_EVENTS);
    let evs = srv
        .app
        .store
        .events(plugin, limit)
        .map_err(|e| ApiError::internal("reading events", &e))?;
    ok_json(&evs)
}

fn parse_level(s: &str) -> Result<LogLevel, ApiError> {
    serde_json::from_value(json!(s.to_ascii_lowercase()))
        .map_err(|_| ApiError::bad_request("level must be one of error, warn, info, debug, trace"))
}

/// `GET /api/plugins/{id}/logs`: one page.
pub(crate) fn logs(srv: &Server, ctx: &Ctx, id: &str) -> Result<Resp, ApiError> {
    let num = |name: &str, default: usize| -> Result<usize, ApiError> {
        match ctx.query_param(name) {
            None => Ok(default),
            Some(v) if v.is_empty() => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("{name} must be a number"))),
        }
    };
    let page = num("page", 1)?.max(1);
    let page_size = num("page_size", 100)?.clamp(1, MAX_PAGE_SIZE);
    let level = match ctx.query_param("level") {
        Some(l) if !l.is_empty() && l != "all" => Some(parse_level(&l)?),
        _ => None,
    };
    let page = srv
        .app
        .supervisor
        .logs(id, page, page_size, level)
        .ok_or_else(|| no_plugin(id))?;
    ok_json(&page)
}

/// `GET /api/plugins/{id}/logs/follow`: lines after `after`, waiting up to [`LONG_POLL`].
pub(crate) async fn follow(srv: &Server, ctx: &Ctx, id: &str) -> Result<Resp, ApiError> {
    let after = ctx
        .query_param("after")
        .map(|a| a.parse::<u64>())
        .transpose()
        .map_err(|_| ApiError::bad_request("after must be a number"))?
        .unwrap_or(0);
    let level = match ctx.query_param("level") {
        Some(l) if !l.is_empty() && l != "all" => Some(parse_level(&l)?),
        _ => None,
    };
    srv.app.supervisor.plugin(id).ok_or_else(|| no_plugin(id))?;
    let lines =
        match tokio::time::timeout(LONG_POLL, srv.app.supervisor.follow_logs(id, after)).await {
            Ok(Some(lines)) => lines,
            Ok(None) => return Err(no_plugin(id)),
            Err(_) => Vec::new(),
        };
    let next = lines.iter().map(|l| l.seq).max().unwrap_or(after);
    let mut lines: Vec<_> = lines
        .into_iter()
        .filter(|l| level.is_none_or(|lv| l.level <= lv))
        .collect();
    if lines.len() > MAX_FOLLOW_LINES {
        lines.drain(..lines.len() - MAX_FOLLOW_LINES);
    }
    ok_json(&json!({"lines": lines, "next": next}))
}

/// `POST /api/plugins/{id}/kv`: the plugin's KV namespace (writes: admin).
pub(crate) async fn kv(
    srv: &Server,
    who: &Identity,
    id: &str,
    body: Incoming,
) -> Result<Resp, ApiError> {
    srv.app.supervisor.plugin(id).ok_or_else(|| no_plugin(id))?;
    // The same request shape as the plugin protocol's `kv` messages, served by the same function.
    let req: KvRequest = read_json(body, srv.app.config.http.max_api_body_bytes).await?;
    if matches!(req, KvRequest::Set { .. } | KvRequest::Delete { .. }) {
        need_admin(who)?;
    }
    let reply = kv::serve(&srv.app.store, id, req).await.map_err(kv_error)?;
    ok_json(&match reply {
        KvReply::Get { key, value } => json!({"key": key, "value": value}),
        KvReply::List { keys, truncated } => json!({"keys": keys, "truncated": truncated}),
        KvReply::Set { key } => json!({"key": key, "ok": true}),
        KvReply::Delete { key, existed } => json!({"key": key, "existed": existed}),
    })
}

/// The status for the protocol code [`kv::error_code`] gives (the plugin socket sends the code).
fn kv_error(e: StoreError) -> ApiError {
    if matches!(e, StoreError::DiskFull(_)) {
        // `unavailable` to a plugin; over HTTP the more telling `507 storage_full`.
        return ApiError::store("KV", e);
    }
    let code = kv::error_code(&e);
    let status = match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::QuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => return ApiError::internal("KV", &e),
    };
    ApiError::new(status, code.as_str(), e.to_string())
}

/// `GET /api/plugins/{id}/bundle.js`: from the plugins dir, else from the plugin.
pub(crate) async fn bundle(srv: &Server, who: &Identity, id: &str) -> Result<Resp, ApiError> {
    let view = srv.app.supervisor.plugin(id).ok_or_else(|| no_plugin(id))?;
    let path = srv.app.packages.frontend(&view.id).unwrap_or_else(|| {
        srv.app
            .supervisor
            .plugins_dir()
            .join(&view.id)
            .join("bundle.js")
    });
    let from_file = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() <= MAX_BUNDLE_BYTES => std::fs::read(&path).map(Some),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(|e| ApiError::internal("reading the bundle", &e))?
    .map_err(|e| ApiError::internal("reading the bundle", &e))?;
    let js = "application/javascript; charset=utf-8";
    if let Some(bytes) = from_file {
        return Ok(bytes_response(StatusCode::OK, js, bytes));
    }
    reply_room(srv)?;
    let req = HttpRequest {
        method: "GET".into(),
        path: "/bundle.js".into(),
        headers: BTreeMap::from([("X-Toru-User".to_string(), who.name.clone())]),
        body: None,
        body_encoding: BodyEncoding::Utf8,
    };
    let resp = call_plugin(srv, &view.id, req).await?;
    if resp.status() != StatusCode::OK {
        return Err(ApiError::not_found(format!(
            "plugin {id:?} has no frontend bundle"
        )));
    }
    let mut resp = resp;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(js));
    Ok(resp)
}

/// `/api/plugins/route/{route}/{rest}` → the plugin whose route is `/{route}`.
pub(crate) async fn forward(
    srv: &Server,
    ctx: &Ctx,
    who: &Identity,
    after: &str,
    body: Incoming,
) -> Result<Resp, ApiError> {
    let Some((route, path)) = checks::plugin_target(after, ctx.query.as_deref()) else {
        return Err(ApiError::bad_request(
            "bad plugin route: traversal, empty segments, encodings that are not UTF-8, encoded \
             separators, NUL and backslashes are refused",
        ));
    };
    let id = srv
        .app
        .supervisor
        .plugin_id_for_route(route)
        .ok_or_else(|| ApiError::not_found(format!("no plugin has the route /{route}")))?;
    if ctx.is_unsafe() && who.role != Role::Admin {
        return Err(ApiError::read_only());
    }
    reply_room(srv)?;
    let bytes = read_body(body, srv.app.config.http.max_plugin_body_bytes).await?;
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &ctx.headers {
        if DROP_REQUEST_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(checks::title_case(name.as_str()))
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    headers.insert("X-Toru-User".into(), who.name.clone());
    headers.insert("X-Toru-Role".into(), who.role.as_str().into());
    let (body, body_encoding) = if bytes.is_empty() {
        (None, BodyEncoding::Utf8)
    } else {
        match std::str::from_utf8(&bytes) {
            Ok(s) => (Some(s.to_string()), BodyEncoding::Utf8),
            Err(_) => (
                Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
                BodyEncoding::Base64,
            ),
        }
    };
    let req = HttpRequest {
        method: ctx.method.as_str().to_string(),
        path,
        headers,
        body,
        body_encoding,
    };
    let max_frame_len = srv.app.config.max_frame_len;
    if !fits_in_frame(&req, max_frame_len) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the request, encoded for the plugin, is over the {max_frame_len}-byte frame limit"
            ),
        ));
    }
    call_plugin(srv, &id, req).await
}

/// Whether `req` fits in one protocol frame of `max_frame_len` bytes: its JSON is counted, not
/// built (a body at `max_plugin_body_bytes` can be over the frame limit once escaped or base64).
fn fits_in_frame(req: &HttpRequest, max_frame_len: usize) -> bool {
    /// A writer that only counts.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    serde_json::to_writer(&mut n, req).is_ok()
        && n.0.saturating_add(FRAME_ENVELOPE_BYTES) <= max_frame_len
}

/// `503 busy` (counted) while replies held for slow clients have spent the reply budget: the
/// plugin is not asked for a reply that would be refused.
fn reply_room(srv: &Server) -> Result<(), ApiError> {
    if srv.replies.exhausted() {
        srv.replies.refuse();
        return Err(reply_budget_spent());
    }
    Ok(())
}

/// Forward to plugin `id`, count it, and turn its reply (or failure) into a response.
async fn call_plugin(srv: &Server, id: &str, req: HttpRequest) -> Result<Resp, ApiError> {
    let started = Instant::now();
    let deadline = srv.app.config.http.plugin_timeout + FORWARD_SLACK;
    let result =
        match tokio::time::timeout(deadline, srv.app.supervisor.forward_http(id, req)).await {
            Ok(r) => r,
            Err(_) => Err(ForwardError::Timeout(id.to_string())),
        };
    let out = match result {
        Ok(reply) => Ok(plugin_response(reply)),
        Err(e) => Err(forward_error(e)),
    };
    let status = match &out {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status.as_u16(),
    };
    srv.metrics
        .borrow_mut()
        .plugin_request(id, status, started.elapsed());
    out
}

fn forward_error(e: ForwardError) -> ApiError {
    let msg = e.to_string();
    match e {
        ForwardError::NotFound(_) => ApiError::not_found(msg),
        ForwardError::Disabled(_) => ApiError::new(StatusCode::NOT_FOUND, "plugin_disabled", msg),
        ForwardError::Unavailable { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "plugin_unavailable", msg)
        }
        ForwardError::BadReply { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "plugin_bad_reply", msg)
        }
        ForwardError::Timeout(_) => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "plugin_timeout", msg)
        }
        ForwardError::BadRequest(_) => ApiError::bad_request(msg),
    }
}

/// The response for a plugin's reply (checked by the supervisor: status 200–599, body decoded).
fn plugin_response(reply: PluginReply) -> Resp {
    let (status, headers, body) = reply.into_parts();
    let status = StatusCode::from_u16(status).expect("the supervisor checked 200..=599");
    let looks_json = matches!(body.first(), Some(b'{' | b'['));
    let mut resp = Response::new(Body::new(body));
    *resp.status_mut() = status;
    for (k, v) in &headers {
        let lk = k.to_ascii_lowercase();
        if DROP_RESPONSE_HEADERS.contains(&lk.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(lk.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    if !resp.headers().contains_key(header::CONTENT_TYPE) {
        let ct = if looks_json {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_errors_map_to_statuses() {
        let s = |e| forward_error(e).status.as_u16();
        assert_eq!(s(ForwardError::NotFound("x".into())), 404);
        assert_eq!(s(ForwardError::Disabled("x".into())), 404);
        assert_eq!(
            s(ForwardError::Unavailable {
                id: "x".into(),
                reason: "down".into()
            }),
            502
        );
        assert_eq!(
            s(ForwardError::BadReply {
                id: "x".into(),
                reason: "junk".into()
            }),
            502
        );
        assert_eq!(s(ForwardError::Timeout("x".into())), 504);
        assert_eq!(s(ForwardError::BadRequest("binary".into())), 400);
    }

    #[test]
    fn requests_are_measured_as_framed() {
        let req = |body: &str| HttpRequest {
            method: "POST".into(),
            path: "/x".into(),
            headers: BTreeMap::new(),
            body: Some(body.into()),
            body_encoding: BodyEncoding::Utf8,
        };
        let max = 64 * 1024;
        assert!(fits_in_frame(&req(&"a".repeat(60 * 1024)), max));
        assert!(!fits_in_frame(&req(&"a".repeat(max)), max), "the envelope");
        // Escaping counts: 16 KiB of control characters are 96 KiB of JSON.
        assert!(!fits_in_frame(&req(&"\u{1}".repeat(16 * 1024)), max));
        // The count is the frame's: a frame built from it is within the envelope allowance.
        let frame = toru_plugin_api::protocol::Frame::new(
            Some(uuid::Uuid::new_v4().to_string()),
            toru_plugin_api::protocol::HostMessage::Http(req("hi")),
        )
        .encode();
        let json = serde_json::to_vec(&req("hi")).unwrap();
        assert!(
            frame.len() <= json.len() + FRAME_ENVELOPE_BYTES,
            "{}",
            frame.len()
        );
    }

    #[test]
    fn plugin_replies_are_cleaned() {
        let mut reply = toru_plugin_api::HttpResponse::new(201);
        reply
            .headers
            .insert("Content-Type".into(), "application/json".into());
        reply.headers.insert("Connection".into(), "close".into());
        reply
            .headers
            .insert("Transfer-Encoding".into(), "chunked".into());
        reply
            .headers
            .insert("Set-Cookie".into(), "toru_session=evil".into());
        reply.headers.insert("X-Custom".into(), "yes".into());
        reply.body = Some("{}".into());
        let r = plugin_response(PluginReply::from_wire(reply).unwrap());
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.headers()["x-custom"], "yes");
        for gone in ["connection", "transfer-encoding", "set-cookie"] {
            assert!(!r.headers().contains_key(gone), "{gone}");
        }
        let mut bin = toru_plugin_api::HttpResponse::new(200);
        bin.body = Some("AAEC".into());
        bin.body_encoding = BodyEncoding::Base64;
        let bin = plugin_response(PluginReply::from_wire(bin).unwrap());
        assert_eq!(bin.body().len(), 3);
        // Broken replies (bad status, bad base64) never get here: the supervisor refuses them
        // (supervisor::link tests) and they become 502 plugin_bad_reply (forward_error above).
    }
}
