//! Handlers of the session endpoints (`docs/API.md`, Authentication): `GET|POST /api/auth/setup`,
//! `POST /api/auth/login`, `GET /api/auth/me`, `POST /api/auth/logout`, `POST /api/auth/password`.
//! They read the small auth bodies, call `crate::auth` ([`crate::auth::Auth`] on the [`Server`]),
//! and turn its outcomes into responses and session cookies.
//!
//! A handler: called by `dispatch` after the router's gate (setup and login are open routes, so
//! they check the method and CSRF themselves). Uses `router`, `request` and `resp`.

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, StatusCode};
use serde_json::json;

use super::request::{Ctx, read_json};
use super::resp::{
    ApiError, Resp, clear_cookie, json_response, method_not_allowed, ok_json, session_cookie,
};
use super::router::Server;
use crate::auth::{self, Identity, LoginOutcome, Role, Via};

/// Largest login, setup or password-change body (a name, a password ≤ 1 KiB and a code fit).
const AUTH_BODY_BYTES: usize = 8 * 1024;

/// Cap of login, setup and password bodies: they are read before anyone is authenticated, so
/// they get far less than other API bodies.
fn auth_body_limit(srv: &Server) -> usize {
    AUTH_BODY_BYTES.min(srv.app.config.http.max_api_body_bytes)
}

/// `GET /api/auth/setup` (whether setup is needed) and `POST /api/auth/setup` (do it).
pub(crate) async fn setup(srv: &Server, ctx: &Ctx, body: Incoming) -> Result<Resp, ApiError> {
    match ctx.method {
        Method::GET | Method::HEAD => {
            return ok_json(&json!({"required": srv.auth.setup_needed(&srv.app)}));
        }
        Method::POST => {}
        _ => return Err(method_not_allowed("GET, POST")),
    }
    srv.csrf(ctx)?;
    if srv.app.store.refuses_writes() {
        // An admin created now would be gone at the next start.
        return Err(ApiError::store("setup", crate::store::StoreError::Degraded));
    }
    #[derive(serde::Deserialize)]
    struct Setup {
        code: String,
        password: String,
    }
    let s: Setup = read_json(body, auth_body_limit(srv)).await?;
    let outcome = srv
        .auth
        .setup(&srv.app, ctx.client, &s.code, &s.password)
        .await
        .map_err(|e| match e {
            crate::auth::AuthError::Store(e) => ApiError::store("setup", e),
            e => ApiError::internal("setup", &e),
        })?;
    login_response(srv, ctx, outcome)
}

/// `POST /api/auth/login`.
pub(crate) async fn login(srv: &Server, ctx: &Ctx, body: Incoming) -> Result<Resp, ApiError> {
    if ctx.method != Method::POST {
        return Err(method_not_allowed("POST"));
    }
    srv.csrf(ctx)?;
    #[derive(serde::Deserialize)]
    struct Login {
        username: String,
        password: String,
    }
    let l: Login = read_json(body, auth_body_limit(srv)).await?;
    let outcome = srv
        .auth
        .login(&srv.app, ctx.client, &l.username, &l.password)
        .await
        .map_err(|e| match e {
            crate::auth::AuthError::Store(e) => ApiError::store("login", e),
            e => ApiError::internal("login", &e),
        })?;
    login_response(srv, ctx, outcome)
}

/// `GET /api/auth/me`.
pub(crate) fn me(who: &Identity) -> Result<Resp, ApiError> {
    ok_json(&me_json(who))
}

/// `POST /api/auth/logout`: ends the session server-side and clears the cookie.
pub(crate) async fn logout(srv: &Server, who: &Identity) -> Result<Resp, ApiError> {
    srv.auth
        .logout(&srv.app, who)
        .await
        .map_err(|e| ApiError::internal("logout", &e))?;
    let mut r = json_response(StatusCode::OK, &json!({"ok": true}));
    if let Ok(v) = HeaderValue::from_str(&clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// `POST /api/auth/password` (session only): change one's own password.
pub(crate) async fn change_password(
    srv: &Server,
    ctx: &Ctx,
    who: &Identity,
    body: Incoming,
) -> Result<Resp, ApiError> {
    #[derive(serde::Deserialize)]
    struct Change {
        current: String,
        new: String,
    }
    let c: Change = read_json(body, auth_body_limit(srv)).await?;
    if !matches!(who.via, Via::Session(_)) {
        return Err(ApiError::bad_request(
            "change passwords from a browser session or with `toru passwd`",
        ));
    }
    let outcome = srv
        .auth
        .change_password(&srv.app, ctx.client, who, &c.current, &c.new)
        .await
        .map_err(|e| ApiError::internal("password change", &e))?;
    login_response(srv, ctx, outcome)
}

/// The answer to login, setup and password change.
fn login_response(srv: &Server, ctx: &Ctx, outcome: LoginOutcome) -> Result<Resp, ApiError> {
    match outcome {
        LoginOutcome::Ok { session, identity } => {
            let mut r = json_response(StatusCode::OK, &me_json(&identity));
            let cookie = session_cookie(
                &session,
                srv.app.config.http.session_absolute.as_secs(),
                ctx.secure(),
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
            // Rounded up: a client that waits `Retry-After` seconds must not be refused again.
            let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
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

/// `/api/auth/me` body.
fn me_json(who: &Identity) -> serde_json::Value {
    json!({
        "user": who.name,
        "role": who.role,
        "via": match who.via { Via::Session(_) => "session", Via::Token(_) => "token" },
        "admin": who.role == Role::Admin,
    })
}
