//! One request from head to response: Host check (421) → static UI or `/api/health` → setup gate →
//! login/setup → authentication (401) → CSRF for state-changing requests (403) → role (403) →
//! the handler in `api`. Adds the security headers to every response and counts it in `metrics`.
//! Errors are JSON `{error, message}`.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use super::auth::{self, Auth, Identity, LoginOutcome, Role, Unauthenticated, Via};
use super::checks::{self, HostNames};
use super::conn::{Body, Connections};
use super::metrics::Metrics;
use super::{api, ui};
use crate::App;

/// A response on its way out.
pub type Resp = Response<Body>;

/// The server state shared by every connection (runtime thread only).
#[derive(Debug)]
pub struct Server {
    /// The host.
    pub app: Rc<App>,
    /// Live connections and their counters.
    pub connections: Connections,
    /// Auth state.
    pub auth: Auth,
    /// Request counters.
    pub metrics: RefCell<Metrics>,
    /// Names accepted in `Host`.
    hosts: HostNames,
}

/// What a handler needs to know about the request besides its body.
#[derive(Debug)]
pub struct Ctx {
    /// The method.
    pub method: Method,
    /// The raw path (still percent-encoded).
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The client's address (see `checks::client_ip`).
    pub client: IpAddr,
    /// The peer is a trusted proxy (its `X-Forwarded-*` headers are believed).
    pub via_proxy: bool,
}

impl Ctx {
    /// A header as text.
    pub fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The decoded query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        toru_plugin_api::protocol::parse_query(q)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Whether the request may change state.
    pub fn is_unsafe(&self) -> bool {
        !matches!(self.method, Method::GET | Method::HEAD | Method::OPTIONS)
    }
}

/// An error answer: status, machine-readable code, human sentence.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code (`not_found`, `unauthorized`, …).
    pub error: &'static str,
    /// One human sentence.
    pub message: String,
    /// Extra headers (`Retry-After`, `Allow`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// `400 bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// `403 forbidden` for viewers.
    pub fn read_only() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this account is read-only (viewer)",
        )
    }

    /// `500 internal` (details are logged, not sent).
    pub fn internal(what: &str, e: &dyn std::error::Error) -> ApiError {
        log::error!("http: {what}: {}", error_chain(e));
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what} failed; see the host log"),
        )
    }

    /// Add a header.
    pub fn with_header(mut self, name: HeaderName, value: &str) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    /// The JSON response.
    pub fn into_response(self) -> Resp {
        let mut r = json_response(
            self.status,
            &json!({"error": self.error, "message": self.message}),
        );
        for (k, v) in self.headers {
            r.headers_mut().insert(k, v);
        }
        r
    }
}

/// An error and its sources, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &impl Serialize) -> Resp {
    let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    let mut r = Response::new(Body::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `200` with JSON.
pub fn ok_json(value: &impl Serialize) -> Result<Resp, ApiError> {
    Ok(json_response(StatusCode::OK, value))
}

/// Largest login, setup or password-change body (a name, a password ≤ 1 KiB and a code fit).
const AUTH_BODY_BYTES: usize = 8 * 1024;

/// Content-Security-Policy of every response. Scripts only from this origin (plugin bundles are
/// served from here too); inline styles are allowed because plugin bundles use them.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'";

fn add_security_headers(h: &mut HeaderMap, api: bool) {
    let set = |h: &mut HeaderMap, k: HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(
        h,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        h,
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    if api {
        set(h, header::CACHE_CONTROL, "no-store");
    } else if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-cache");
    }
}

/// Route classes for metrics.
fn class_of(path: &str) -> &'static str {
    if path.starts_with("/api/plugins/route/") {
        "plugin"
    } else if path.starts_with("/api/auth/") {
        "auth"
    } else if path.starts_with("/api/") {
        "api"
    } else if path == "/metrics" {
        "metrics"
    } else {
        "ui"
    }
}

impl Server {
    /// The server state for `app`.
    pub fn new(app: Rc<App>) -> Server {
        let hosts = HostNames::from_system(&app.config.http.allowed_hosts);
        Server {
            app,
            connections: Connections::default(),
            auth: Auth::default(),
            metrics: RefCell::new(Metrics::default()),
            hosts,
        }
    }

    /// Answer one request (never fails: errors become JSON responses).
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Resp {
        let started = Instant::now();
        let path = req.uri().path().to_string();
        let class = class_of(&path);
        let api = path.starts_with("/api/") || path == "/metrics";
        let mut resp = match self.route(req, peer).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        add_security_headers(resp.headers_mut(), api);
        self.metrics
            .borrow_mut()
            .request(class, resp.status().as_u16(), started.elapsed());
        resp
    }

    async fn route(&self, req: Request<Incoming>, peer: SocketAddr) -> Result<Resp, ApiError> {
        let (parts, body) = req.into_parts();
        // DNS rebinding: the name the browser used must be one of ours.
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()));
        let Some(host) = host else {
            return Err(ApiError::bad_request("the Host header is missing"));
        };
        if !self.hosts.allows(&host)
            || parts
                .uri
                .authority()
                .is_some_and(|a| !self.hosts.allows(a.as_str()))
        {
            return Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "unknown_host",
                "this device does not answer to that name (add it to http.allowed_hosts)",
            ));
        }
        let client = checks::client_ip(
            peer,
            parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok()),
            &self.app.config.http.trusted_proxies,
        );
        let trusted = &self.app.config.http.trusted_proxies;
        let via_proxy = trusted
            .iter()
            .any(|t| checks::canonical(*t) == checks::canonical(peer.ip()));
        let ctx = Ctx {
            via_proxy,
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers,
            client,
        };
        if !ctx.path.starts_with("/api/") && ctx.path != "/metrics" {
            return ui::serve(&ctx);
        }
        let get = matches!(ctx.method, Method::GET | Method::HEAD);
        if ctx.path == "/api/health" {
            return if get {
                ok_json(&json!({"status": "ok"}))
            } else {
                Err(method_not_allowed("GET"))
            };
        }
        let setup_needed = self.auth.setup_needed(&self.app);
        match ctx.path.as_str() {
            "/api/auth/setup" => return self.setup(&ctx, body, setup_needed).await,
            _ if setup_needed => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "setup_required",
                    "finish setup first: open the web UI and enter the setup code from the host log",
                ));
            }
            "/api/auth/login" => return self.login(&ctx, body).await,
            _ => {}
        }
        let who = self.authenticate(&ctx)?;
        if ctx.is_unsafe() && matches!(who.via, Via::Session(_)) {
            // Bearer tokens are not sent by browsers on their own; cookies are: check the origin.
            self.csrf(&ctx)?;
        }
        api::dispatch(self, &ctx, &who, body).await
    }

    fn csrf(&self, ctx: &Ctx) -> Result<(), ApiError> {
        checks::csrf_check(
            ctx.header(header::HOST).unwrap_or(""),
            ctx.header(header::ORIGIN),
            ctx.header("sec-fetch-site"),
            ctx.header(header::CONTENT_TYPE),
            ctx.headers.contains_key(checks::CSRF_HEADER),
        )
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "csrf", e.message()))
    }

    fn authenticate(&self, ctx: &Ctx) -> Result<Identity, ApiError> {
        let cookies = ctx
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("; ");
        self.auth
            .authenticate(
                &self.app,
                ctx.header(header::AUTHORIZATION),
                (!cookies.is_empty()).then_some(cookies.as_str()),
            )
            .map_err(|e| {
                let (code, msg) = match e {
                    Unauthenticated::Missing => ("unauthorized", "log in first"),
                    Unauthenticated::Invalid => ("unauthorized", "unknown or revoked credentials"),
                    Unauthenticated::Expired => {
                        ("session_expired", "the session expired; log in again")
                    }
                    Unauthenticated::StoreFailed => {
                        ("unauthorized", "credentials could not be checked")
                    }
                };
                let mut err = ApiError::new(StatusCode::UNAUTHORIZED, code, msg);
                if e == Unauthenticated::Expired {
                    err = err.with_header(header::SET_COOKIE, &clear_cookie());
                }
                err
            })
    }

    async fn login(&self, ctx: &Ctx, body: Incoming) -> Result<Resp, ApiError> {
        if ctx.method != Method::POST {
            return Err(method_not_allowed("POST"));
        }
        self.csrf(ctx)?;
        #[derive(serde::Deserialize)]
        struct Login {
            username: String,
            password: String,
        }
        let l: Login = api::read_json(body, self.auth_body_limit()).await?;
        let outcome = self
            .auth
            .login(&self.app, ctx.client, &l.username, &l.password)
            .await
            .map_err(|e| api::store_error("login", e))?;
        self.login_response(ctx, outcome)
    }

    async fn setup(&self, ctx: &Ctx, body: Incoming, needed: bool) -> Result<Resp, ApiError> {
        match ctx.method {
            Method::GET | Method::HEAD => return ok_json(&json!({"required": needed})),
            Method::POST => {}
            _ => return Err(method_not_allowed("GET, POST")),
        }
        self.csrf(ctx)?;
        if self.app.store.refuses_writes() {
            // An admin created now would be gone at the next start.
            return Err(api::store_error(
                "setup",
                crate::store::StoreError::Degraded,
            ));
        }
        #[derive(serde::Deserialize)]
        struct Setup {
            code: String,
            password: String,
        }
        let s: Setup = api::read_json(body, self.auth_body_limit()).await?;
        let outcome = self
            .auth
            .setup(&self.app, ctx.client, &s.code, &s.password)
            .await
            .map_err(|e| match e {
                auth::AuthError::Store(e) => api::store_error("setup", e),
                e => ApiError::internal("setup", &e),
            })?;
        self.login_response(ctx, outcome)
    }

    /// Cap of login, setup and password bodies: they are read before anyone is authenticated, so
    /// they get far less than other API bodies.
    pub fn auth_body_limit(&self) -> usize {
        AUTH_BODY_BYTES.min(self.app.config.http.max_api_body_bytes)
    }

    /// The answer to login, setup and password change.
    pub fn login_response(&self, ctx: &Ctx, outcome: LoginOutcome) -> Result<Resp, ApiError> {
        match outcome {
            LoginOutcome::Ok { session, identity } => {
                let mut r = json_response(StatusCode::OK, &me_json(&identity));
                let cookie = session_cookie(
                    &session,
                    self.app.config.http.session_absolute.as_secs(),
                    self.secure(ctx),
                );
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                Ok(r)
            }
            LoginOutcome::Refused => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_credentials",
                "wrong user name, password or setup code",
            )),
            LoginOutcome::Throttled(wait) => {
                let secs = wait.as_secs().max(1);
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "throttled",
                    format!("too many failed attempts; try again in {secs} s"),
                )
                .with_header(header::RETRY_AFTER, &secs.to_string()))
            }
            LoginOutcome::AlreadySetUp => Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_set_up",
                "setup is already complete; log in instead",
            )),
            LoginOutcome::Weak => Err(ApiError::bad_request(format!(
                "the password must be at least {} characters long",
                auth::MIN_PASSWORD_CHARS
            ))),
        }
    }

    /// Whether the browser reached us over TLS (only a trusted proxy can say so).
    fn secure(&self, ctx: &Ctx) -> bool {
        ctx.via_proxy
            && ctx
                .header("x-forwarded-proto")
                .is_some_and(|p| p.eq_ignore_ascii_case("https"))
    }
}

/// `/api/auth/me` body.
pub fn me_json(who: &Identity) -> serde_json::Value {
    json!({
        "user": who.name,
        "role": who.role,
        "via": match who.via { Via::Session(_) => "session", Via::Token(_) => "token" },
        "admin": who.role == Role::Admin,
    })
}

/// The `Set-Cookie` value for a new session.
pub fn session_cookie(id: &str, max_age_secs: u64, secure: bool) -> String {
    format!(
        "{}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}{}",
        auth::SESSION_COOKIE,
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        auth::SESSION_COOKIE
    )
}

/// `405` with `Allow`.
pub fn method_not_allowed(allow: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("use {allow}"),
    )
    .with_header(header::ALLOW, allow)
}

/// A response with a body and content type.
pub fn bytes_response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Body::new(body));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}
