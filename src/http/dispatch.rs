//! The top of the request path: [`Server`] answers requests for `conn` ([`Handler`]). Each request
//! passes the router's gate, then goes to the handler of its route — this file is the one map from
//! routes to handlers — and every response body is charged to the reply budget (`budget`; a large
//! one that does not fit becomes `503 busy`), gets the security headers and is counted in
//! `metrics`.
//!
//! Above the handlers (`api`, `session`, `ui`), which never import each other or this file.
//! Called by `conn` for every request head; `http::serve` wires it in.

use std::net::SocketAddr;

use hyper::Request;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::conn::Handler;
use super::resp::{ApiError, Resp, add_security_headers, reply_budget_spent};
use super::router::{Admitted, ApiRoute, OpenRoute, Server, class_of};
use super::{api, packages, session, ui, update};

impl Handler for Server {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Resp {
        let started = Instant::now();
        let path = req.uri().path();
        let class = class_of(path);
        let api = path.starts_with("/api/") || path == "/metrics";
        let resp = match self.answer(req, peer).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        let mut resp = self.charge_reply(resp);
        add_security_headers(resp.headers_mut(), api);
        self.metrics
            .borrow_mut()
            .request(class, resp.status().as_u16(), started.elapsed());
        resp
    }
}

impl Server {
    /// Charge the body to the reply budget until its last byte has left; if it does not fit, the
    /// answer is `503 busy` instead.
    fn charge_reply(&self, resp: Resp) -> Resp {
        match self.replies.charge(resp.body().len()) {
            Some(charge) => resp.map(|body| body.tied_to(charge)),
            None => reply_budget_spent().into_response(),
        }
    }

    /// The gate, then the handler of the route.
    async fn answer(&self, req: Request<Incoming>, peer: SocketAddr) -> Result<Resp, ApiError> {
        let (parts, body) = req.into_parts();
        let (ctx, admitted) = self.admit(parts, peer)?;
        let (who, route) = match admitted {
            Admitted::Open(route) => {
                return match route {
                    OpenRoute::Ui => ui::serve(&ctx),
                    OpenRoute::Health => api::health(&ctx),
                    OpenRoute::Setup => session::setup(self, &ctx, body).await,
                    OpenRoute::Login => session::login(self, &ctx, body).await,
                };
            }
            Admitted::Api(who, route) => (who, route),
        };
        match route {
            ApiRoute::Metrics => api::metrics(self),
            ApiRoute::Me => session::me(&who),
            ApiRoute::Logout => session::logout(self, &who).await,
            ApiRoute::Password => session::change_password(self, &ctx, &who, body).await,
            ApiRoute::System => api::system(self),
            ApiRoute::SafeModeLeave => api::leave_safe_mode(self).await,
            ApiRoute::Events => api::events(self, &ctx, None),
            ApiRoute::Plugins => api::plugins(self),
            ApiRoute::Rescan => api::rescan(self).await,
            ApiRoute::Plugin(id) => api::plugin(self, &id),
            ApiRoute::PluginAction(id, action) => api::plugin_action(self, &id, action).await,
            ApiRoute::Logs(id) => api::logs(self, &ctx, &id),
            ApiRoute::FollowLogs(id) => api::follow(self, &ctx, &id).await,
            ApiRoute::PluginEvents(id) => api::plugin_events(self, &ctx, &id),
            ApiRoute::Kv(id) => api::kv(self, &who, &id, body).await,
            ApiRoute::Bundle(id) => api::bundle(self, &who, &id).await,
            ApiRoute::Forward(after) => api::forward(self, &ctx, &who, &after, body).await,
            ApiRoute::PackageUpload => packages::upload(self, &ctx, &who, body).await,
            ApiRoute::PackageConfirm(t) => packages::confirm(self, &who, &t, body).await,
            ApiRoute::PackageCancel(t) => packages::cancel(self, &who, &t),
            ApiRoute::Versions(id) => packages::versions(self, &id),
            ApiRoute::Rollback(id) => packages::rollback(self, &who, &id).await,
            ApiRoute::Remove(id) => packages::remove(self, &who, &id, body).await,
            ApiRoute::Settings(id) => packages::settings(self, &ctx, &who, &id, body).await,
            ApiRoute::Security(id) => api::security(self, &ctx, &who, &id, body).await,
            ApiRoute::Trust => packages::trust(self, &ctx, &who, body).await,
            ApiRoute::TrustKey(k) => packages::distrust(self, &who, &k).await,
            ApiRoute::Licenses => packages::licenses(self, &ctx, &who, body).await,
            ApiRoute::License(p) => packages::remove_license(self, &who, &p).await,
            ApiRoute::SystemUpdate => update::status(self).await,
            ApiRoute::UpdateUpload => update::upload(self, &who, body).await,
            ApiRoute::UpdateInstall(t) => update::install(self, &who, &t).await,
            ApiRoute::UpdateCancel(t) => update::cancel(self, &who, &t),
            ApiRoute::Reboot => update::reboot(self, &who).await,
            ApiRoute::Unknown => api::unknown(&ctx),
        }
    }
}
