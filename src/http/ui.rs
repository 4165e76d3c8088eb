//! The embedded web UI: a handful of static files compiled into the binary (no CDN, no build step,
//! works offline). `GET /` is the single page; it routes on the URL fragment (`#/plugins/x`), so
//! the server only knows these paths. Served without authentication: they hold no data; the data
//! comes from the API, which checks the session.
//!
//! A handler: called by `dispatch` for every path outside `/api/` and `/metrics`; uses only
//! `request` and `resp`.

use hyper::{Method, StatusCode};

use super::request::Ctx;
use super::resp::{ApiError, Resp, bytes_response, method_not_allowed};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const DOM_JS: &str = include_str!("ui/dom.js");
const SETTINGS_JS: &str = include_str!("ui/settings.js");
const SECURITY_JS: &str = include_str!("ui/security.js");
const UPDATE_JS: &str = include_str!("ui/update.js");
const APP_CSS: &str = include_str!("ui/app.css");
const ICON_SVG: &str = include_str!("ui/icon.svg");

/// Answer `GET` for a UI path.
pub(crate) fn serve(ctx: &Ctx) -> Result<Resp, ApiError> {
    let (content_type, body) = match ctx.path.as_str() {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX_HTML),
        "/ui/app.js" => ("application/javascript; charset=utf-8", APP_JS),
        "/ui/dom.js" => ("application/javascript; charset=utf-8", DOM_JS),
        "/ui/settings.js" => ("application/javascript; charset=utf-8", SETTINGS_JS),
        "/ui/security.js" => ("application/javascript; charset=utf-8", SECURITY_JS),
        "/ui/update.js" => ("application/javascript; charset=utf-8", UPDATE_JS),
        "/ui/app.css" => ("text/css; charset=utf-8", APP_CSS),
        "/ui/icon.svg" | "/favicon.ico" => ("image/svg+xml", ICON_SVG),
        _ => return Err(ApiError::not_found(format!("no page {}", ctx.path))),
    };
    if !matches!(ctx.method, Method::GET | Method::HEAD) {
        return Err(method_not_allowed("GET"));
    }
    Ok(bytes_response(StatusCode::OK, content_type, body))
}
