//! The router: the server's state ([`Server`]), the route table (path → [`Route`]) and the gate
//! every request passes before a handler sees it, in this order:
//!
//! Host check (`400` missing or repeated, `421` not ours) → open routes (UI files, `/api/health`,
//! `/api/auth/setup`) → setup gate (`403 setup_required`) → `/api/auth/login` → authentication
//! (`401`) → CSRF for state-changing cookie requests (`403`) → the route's method (`405`) → its
//! role (`403`).
//!
//! It decides *which* handler and *whether*; it never answers a route itself and imports no
//! handler (`dispatch`, above the handlers, maps an [`Admitted`] request to its handler).
//! Uses `conn` (the connection registry it holds for the handlers), `request`, `resp`, `checks`,
//! `metrics`, `budget` (the reply budget it holds), and `crate::auth`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use hyper::header;
use hyper::http::request::Parts;
use hyper::{Method, StatusCode};

use super::budget::ReplyBudget;
use super::checks::{self, HostNames};
use super::conn::Connections;
use super::metrics::Metrics;
use super::request::Ctx;
use super::resp::{ApiError, clear_cookie, method_not_allowed};
use crate::app::App;
use crate::auth::{Auth, Identity, Role, Unauthenticated, Via};

/// The server state shared by every connection (runtime thread only).
#[derive(Debug)]
pub(crate) struct Server {
    /// The host.
    pub(crate) app: Rc<App>,
    /// Live connections and their counters (shared with the accept loop).
    pub(crate) connections: Rc<Connections>,
    /// Auth state.
    pub(crate) auth: Auth,
    /// Request counters.
    pub(crate) metrics: RefCell<Metrics>,
    /// Bytes of replies held for clients (`config.http.max_buffered_reply_bytes`).
    pub(crate) replies: ReplyBudget,
    /// Names accepted in `Host`.
    hosts: HostNames,
}

/// Routes answered without authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenRoute {
    /// Anything outside `/api/` and `/metrics`: the embedded UI (its own 404).
    Ui,
    /// `/api/health`.
    Health,
    /// `/api/auth/setup`.
    Setup,
    /// `/api/auth/login` (only once setup is done).
    Login,
}

/// Routes that need an authenticated user. Ids are the raw path segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRoute {
    /// `/metrics`.
    Metrics,
    /// `/api/auth/me`.
    Me,
    /// `/api/auth/logout`.
    Logout,
    /// `/api/auth/password`.
    Password,
    /// `/api/system`.
    System,
    /// `/api/system/safe-mode/leave`.
    SafeModeLeave,
    /// `/api/events`.
    Events,
    /// `/api/plugins`.
    Plugins,
    /// `/api/plugins/rescan`.
    Rescan,
    /// `/api/plugins/{id}`.
    Plugin(String),
    /// `/api/plugins/{id}/{enable|disable|restart}`.
    PluginAction(String, PluginAction),
    /// `/api/plugins/{id}/logs`.
    Logs(String),
    /// `/api/plugins/{id}/logs/follow`.
    FollowLogs(String),
    /// `/api/plugins/{id}/events`.
    PluginEvents(String),
    /// `/api/plugins/{id}/kv`.
    Kv(String),
    /// `/api/plugins/{id}/bundle.js`.
    Bundle(String),
    /// `/api/plugins/route/{route}/{rest}`: what follows `route/`, forwarded to a plugin.
    Forward(String),
    /// `/api/packages/upload`.
    PackageUpload,
    /// `/api/packages/upload/{token}/confirm`.
    PackageConfirm(String),
    /// `/api/packages/upload/{token}` (DELETE cancels).
    PackageCancel(String),
    /// `/api/plugins/{id}/versions`.
    Versions(String),
    /// `/api/plugins/{id}/rollback`.
    Rollback(String),
    /// `/api/plugins/{id}/remove`.
    Remove(String),
    /// `/api/plugins/{id}/settings` (GET, PUT).
    Settings(String),
    /// `/api/plugins/{id}/security` (GET, PUT).
    Security(String),
    /// `/api/trust` (GET, POST).
    Trust,
    /// `/api/trust/{key_id}` (DELETE).
    TrustKey(String),
    /// `/api/licenses` (GET, POST).
    Licenses,
    /// `/api/licenses/{plugin}` (DELETE).
    License(String),
    /// `/api/system/update` (GET).
    SystemUpdate,
    /// `/api/system/update/upload` (POST).
    UpdateUpload,
    /// `/api/system/update/upload/{token}/install` (POST).
    UpdateInstall(String),
    /// `/api/system/update/upload/{token}` (DELETE cancels).
    UpdateCancel(String),
    /// `/api/system/reboot` (POST).
    Reboot,
    /// Any other `/api/` path (`404` once authenticated).
    Unknown,
}

/// What `POST /api/plugins/{id}/{action}` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginAction {
    /// Enable.
    Enable,
    /// Disable.
    Disable,
    /// Restart.
    Restart,
}

impl PluginAction {
    /// The path segment, also the operation's name in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginAction::Enable => "enable",
            PluginAction::Disable => "disable",
            PluginAction::Restart => "restart",
        }
    }
}

/// A route of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// No authentication.
    Open(OpenRoute),
    /// Authentication, then the route's method and role.
    Api(ApiRoute),
}

impl Route {
    /// The route table: which route a (raw) path names. The method is not looked at here.
    pub fn of(path: &str) -> Route {
        if path == "/metrics" {
            return Route::Api(ApiRoute::Metrics);
        }
        let Some(rest) = path.strip_prefix("/api/") else {
            return Route::Open(OpenRoute::Ui);
        };
        match rest {
            "health" => return Route::Open(OpenRoute::Health),
            "auth/setup" => return Route::Open(OpenRoute::Setup),
            "auth/login" => return Route::Open(OpenRoute::Login),
            _ => {}
        }
        if let Some(after) = rest.strip_prefix("plugins/route/") {
            return Route::Api(ApiRoute::Forward(after.to_string()));
        }
        let segs: Vec<&str> = rest.split('/').collect();
        let id = |s: &str| s.to_string();
        Route::Api(match segs.as_slice() {
            ["auth", "me"] => ApiRoute::Me,
            ["auth", "logout"] => ApiRoute::Logout,
            ["auth", "password"] => ApiRoute::Password,
            ["system"] => ApiRoute::System,
            ["system", "safe-mode", "leave"] => ApiRoute::SafeModeLeave,
            ["events"] => ApiRoute::Events,
            ["plugins"] => ApiRoute::Plugins,
            ["plugins", "rescan"] => ApiRoute::Rescan,
            ["plugins", p] => ApiRoute::Plugin(id(p)),
            ["plugins", p, "enable"] => ApiRoute::PluginAction(id(p), PluginAction::Enable),
            ["plugins", p, "disable"] => ApiRoute::PluginAction(id(p), PluginAction::Disable),
            ["plugins", p, "restart"] => ApiRoute::PluginAction(id(p), PluginAction::Restart),
            ["plugins", p, "logs"] => ApiRoute::Logs(id(p)),
            ["plugins", p, "logs", "follow"] => ApiRoute::FollowLogs(id(p)),
            ["plugins", p, "events"] => ApiRoute::PluginEvents(id(p)),
            ["plugins", p, "kv"] => ApiRoute::Kv(id(p)),
            ["plugins", p, "bundle.js"] => ApiRoute::Bundle(id(p)),
            ["plugins", p, "versions"] => ApiRoute::Versions(id(p)),
            ["plugins", p, "rollback"] => ApiRoute::Rollback(id(p)),
            ["plugins", p, "remove"] => ApiRoute::Remove(id(p)),
            ["plugins", p, "settings"] => ApiRoute::Settings(id(p)),
            ["plugins", p, "security"] => ApiRoute::Security(id(p)),
            ["packages", "upload"] => ApiRoute::PackageUpload,
            ["packages", "upload", t, "confirm"] => ApiRoute::PackageConfirm(id(t)),
            ["packages", "upload", t] => ApiRoute::PackageCancel(id(t)),
            ["trust"] => ApiRoute::Trust,
            ["trust", k] => ApiRoute::TrustKey(id(k)),
            ["licenses"] => ApiRoute::Licenses,
            ["licenses", p] => ApiRoute::License(id(p)),
            ["system", "update"] => ApiRoute::SystemUpdate,
            ["system", "update", "upload"] => ApiRoute::UpdateUpload,
            ["system", "update", "upload", t, "install"] => ApiRoute::UpdateInstall(id(t)),
            ["system", "update", "upload", t] => ApiRoute::UpdateCancel(id(t)),
            ["system", "reboot"] => ApiRoute::Reboot,
            _ => ApiRoute::Unknown,
        })
    }
}

impl ApiRoute {
    /// The one method the route answers (`GET` admits `HEAD`); `None`: the handler decides.
    fn method(&self) -> Option<Method> {
        use ApiRoute::*;
        match self {
            Metrics | Me | System | Events | Plugins | Plugin(_) | Logs(_) | FollowLogs(_)
            | PluginEvents(_) | Bundle(_) | Versions(_) | SystemUpdate => Some(Method::GET),
            Logout | Password | Rescan | PluginAction(..) | Kv(_) | PackageUpload
            | PackageConfirm(_) | Rollback(_) | Remove(_) | SafeModeLeave | UpdateUpload
            | UpdateInstall(_) | Reboot => Some(Method::POST),
            PackageCancel(_) | TrustKey(_) | License(_) | UpdateCancel(_) => Some(Method::DELETE),
            Forward(_) | Unknown | Settings(_) | Security(_) | Trust | Licenses => None,
        }
    }

    /// Only an admin may use the route at all (other routes check roles per operation).
    fn admin_only(&self) -> bool {
        matches!(
            self,
            ApiRoute::Rescan
                | ApiRoute::SafeModeLeave
                | ApiRoute::PluginAction(..)
                | ApiRoute::PackageUpload
                | ApiRoute::PackageConfirm(_)
                | ApiRoute::PackageCancel(_)
                | ApiRoute::Rollback(_)
                | ApiRoute::Remove(_)
                | ApiRoute::TrustKey(_)
                | ApiRoute::License(_)
                | ApiRoute::UpdateUpload
                | ApiRoute::UpdateInstall(_)
                | ApiRoute::UpdateCancel(_)
                | ApiRoute::Reboot
        )
    }
}

/// The route class a path is counted under in `/metrics`.
pub fn class_of(path: &str) -> &'static str {
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

/// A request through the gate: what it may reach.
#[derive(Debug)]
pub(crate) enum Admitted {
    /// An open route (its handler still checks the method, and CSRF for setup and login).
    Open(OpenRoute),
    /// An API route, with who asks; method and role already checked.
    Api(Identity, ApiRoute),
}

/// `Ok` if `ctx`'s method is `m` (`GET` also admits `HEAD`), else `405`.
pub(crate) fn need(ctx: &Ctx, m: &Method) -> Result<(), ApiError> {
    if ctx.method == *m || (*m == Method::GET && ctx.method == Method::HEAD) {
        Ok(())
    } else {
        Err(method_not_allowed(m.as_str()))
    }
}

/// `Ok` for an admin, else `403 forbidden`.
pub(crate) fn need_admin(who: &Identity) -> Result<(), ApiError> {
    if who.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::read_only())
    }
}

impl Server {
    /// The server state for `app`, serving on `connections`.
    pub(crate) fn new(app: Rc<App>, connections: Rc<Connections>) -> Server {
        let hosts = HostNames::from_system(&app.config.http.allowed_hosts);
        let replies = ReplyBudget::new(app.config.http.max_buffered_reply_bytes);
        Server {
            app,
            connections,
            auth: Auth::default(),
            metrics: RefCell::new(Metrics::default()),
            replies,
            hosts,
        }
    }

    /// The gate: check a request head and decide what it may reach.
    pub(crate) fn admit(
        &self,
        parts: Parts,
        peer: SocketAddr,
    ) -> Result<(Ctx, Admitted), ApiError> {
        // One Host only: with two, we and a proxy in front could each judge a different one.
        let mut host_headers = parts.headers.get_all(header::HOST).iter();
        let first_host = host_headers.next();
        if host_headers.next().is_some() {
            return Err(ApiError::bad_request(
                "the request has more than one Host header",
            ));
        }
        // DNS rebinding: the name the browser used must be one of ours.
        let host = first_host
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
        let trusted = &self.app.config.http.trusted_proxies;
        let client = checks::client_ip(
            peer,
            parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok()),
            trusted,
        );
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
        let route = match Route::of(&ctx.path) {
            Route::Open(r @ (OpenRoute::Ui | OpenRoute::Health | OpenRoute::Setup)) => {
                return Ok((ctx, Admitted::Open(r)));
            }
            Route::Open(OpenRoute::Login) => None,
            Route::Api(r) => Some(r),
        };
        if self.auth.setup_needed(&self.app) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "setup_required",
                "finish setup first: open the web UI and enter the setup code from the host log",
            ));
        }
        let Some(route) = route else {
            return Ok((ctx, Admitted::Open(OpenRoute::Login)));
        };
        let who = self.authenticate(&ctx)?;
        if ctx.is_unsafe() && matches!(who.via, Via::Session(_)) {
            // Bearer tokens are not sent by browsers on their own; cookies are: check the origin.
            self.csrf(&ctx)?;
        }
        if let Some(m) = route.method() {
            need(&ctx, &m)?;
        }
        if route.admin_only() {
            need_admin(&who)?;
        }
        Ok((ctx, Admitted::Api(who, route)))
    }

    /// The CSRF rules (`docs/API.md`): `403 csrf` if the request looks cross-site.
    pub(crate) fn csrf(&self, ctx: &Ctx) -> Result<(), ApiError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table names what the old `match` on path segments did, including its edge cases.
    #[test]
    fn route_table() {
        let api = |p| match Route::of(p) {
            Route::Api(r) => r,
            open => panic!("{p}: {open:?}"),
        };
        let open = |p| match Route::of(p) {
            Route::Open(r) => r,
            api => panic!("{p}: {api:?}"),
        };
        assert_eq!(open("/"), OpenRoute::Ui);
        assert_eq!(open("/ui/app.js"), OpenRoute::Ui);
        assert_eq!(
            open("/api"),
            OpenRoute::Ui,
            "no trailing slash: not the API"
        );
        assert_eq!(open("/api/health"), OpenRoute::Health);
        assert_eq!(open("/api/auth/setup"), OpenRoute::Setup);
        assert_eq!(open("/api/auth/login"), OpenRoute::Login);
        assert_eq!(api("/metrics"), ApiRoute::Metrics);
        assert_eq!(api("/api/auth/me"), ApiRoute::Me);
        assert_eq!(api("/api/plugins/rescan"), ApiRoute::Rescan);
        assert_eq!(api("/api/system/safe-mode/leave"), ApiRoute::SafeModeLeave);
        assert_eq!(api("/api/system/safe-mode"), ApiRoute::Unknown);
        assert!(ApiRoute::SafeModeLeave.admin_only());
        assert_eq!(ApiRoute::SafeModeLeave.method(), Some(Method::POST));
        assert_eq!(api("/api/plugins/x"), ApiRoute::Plugin("x".into()));
        assert_eq!(api("/api/plugins/"), ApiRoute::Plugin("".into()));
        assert_eq!(
            api("/api/plugins/route"),
            ApiRoute::Plugin("route".into()),
            "a plugin called route"
        );
        assert_eq!(
            api("/api/plugins/route/hello/a/b"),
            ApiRoute::Forward("hello/a/b".into())
        );
        assert_eq!(
            api("/api/plugins/x/restart"),
            ApiRoute::PluginAction("x".into(), PluginAction::Restart)
        );
        assert_eq!(
            api("/api/plugins/x/logs/follow"),
            ApiRoute::FollowLogs("x".into())
        );
        assert_eq!(api("/api/plugins/x/kv"), ApiRoute::Kv("x".into()));
        assert_eq!(
            api("/api/plugins/x/bundle.js"),
            ApiRoute::Bundle("x".into())
        );
        assert_eq!(api("/api/system/update"), ApiRoute::SystemUpdate);
        assert_eq!(
            api("/api/system/update/upload/t1/install"),
            ApiRoute::UpdateInstall("t1".into())
        );
        assert_eq!(
            api("/api/system/update/upload/t1"),
            ApiRoute::UpdateCancel("t1".into())
        );
        assert!(ApiRoute::Reboot.admin_only() && !ApiRoute::SystemUpdate.admin_only());
        assert_eq!(api("/api/auth/other"), ApiRoute::Unknown);
        assert_eq!(api("/api/health/x"), ApiRoute::Unknown);
        assert_eq!(api("/api/"), ApiRoute::Unknown);
        assert_eq!(ApiRoute::Kv("x".into()).method(), Some(Method::POST));
        assert_eq!(ApiRoute::Forward("x".into()).method(), None);
        assert!(ApiRoute::Rescan.admin_only());
        assert!(!ApiRoute::Kv("x".into()).admin_only(), "per operation");
    }

    #[test]
    fn route_classes() {
        assert_eq!(class_of("/api/plugins/route/x/y"), "plugin");
        assert_eq!(class_of("/api/auth/login"), "auth");
        assert_eq!(class_of("/api/plugins"), "api");
        assert_eq!(class_of("/metrics"), "metrics");
        assert_eq!(class_of("/"), "ui");
    }
}
