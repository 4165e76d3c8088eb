//! Example Toru plugin in Rust. Third parties copy this: it uses only the public SDK.
//!
//! Routes (after the plugin's route `/hello-rust`): `GET /` greeting (the `greeting` setting,
//! default `Hello`), `GET /bundle.js` frontend,
//! `GET|PUT|DELETE /kv/<key>` and `GET /kv?prefix=` on the host's store, `GET|POST /counter`,
//! `/echo…` echoes the request, `GET /sleep?ms=N` answers after N ms (to show concurrency).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use toru_plugin_api::{
    ErrorCode, HttpRequest, HttpResponse, KvError, PluginContext, PluginError, PluginMetadata,
    ToruPlugin,
};

const BUNDLE: &str = include_str!("../bundle.js");
const MAX_SLEEP_MS: u64 = 10_000;
const DEFAULT_GREETING: &str = "Hello";

struct Hello;

impl ToruPlugin for Hello {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata {
            id: "hello-rust".into(),
            name: "Hello World (Rust)".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            author: Some("ToruAI".into()),
            icon: "🦀".into(),
            route: "/hello-rust".into(),
            protocol: None,
        }
    }

    /// The host validated the settings against the package's schema; refuse what it cannot know.
    async fn on_config(&self, _ctx: &PluginContext, config: Value) -> Result<(), PluginError> {
        match config.get("greeting") {
            None => Ok(()),
            Some(Value::String(g)) if !g.trim().is_empty() => Ok(()),
            Some(_) => Err(PluginError::new(
                ErrorCode::BadRequest,
                "greeting must be a non-empty string",
            )),
        }
    }

    async fn handle_http(&self, ctx: &PluginContext, req: HttpRequest) -> HttpResponse {
        let path = req.path_only().to_string();
        let result = match (req.method.as_str(), path.as_str()) {
            ("GET", "/") => Ok(HttpResponse::json(
                200,
                &json!({
                    "message": format!("{} from Hello World (Rust)!", greeting(ctx)),
                    "instance_id": ctx.instance_id,
                }),
            )),
            ("GET", "/bundle.js") => Ok(HttpResponse::text(200, "application/javascript", BUNDLE)),
            ("GET", "/counter") => counter(ctx, false).await,
            ("POST", "/counter") => counter(ctx, true).await,
            ("GET", "/kv") => {
                let prefix = req.query_param("prefix").unwrap_or_default();
                ctx.kv
                    .list(&prefix, None, None)
                    .await
                    .map(|(keys, _)| HttpResponse::json(200, &json!({ "keys": keys })))
            }
            ("GET", "/sleep") => {
                let ms = req
                    .query_param("ms")
                    .and_then(|m| m.parse::<u64>().ok())
                    .unwrap_or(0)
                    .min(MAX_SLEEP_MS);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(HttpResponse::json(200, &json!({ "slept_ms": ms })))
            }
            (_, p) if p.starts_with("/echo") => Ok(HttpResponse::json(
                200,
                &json!({"method": req.method, "path": req.path, "headers": req.headers, "body": req.body}),
            )),
            (method, p) if p.starts_with("/kv/") => kv(ctx, method, &p[4..], &req).await,
            _ => Ok(HttpResponse::json(
                404,
                &json!({"error": "not_found", "path": req.path}),
            )),
        };
        result.unwrap_or_else(|e| {
            HttpResponse::json(502, &json!({"error": "kv", "message": e.to_string()}))
        })
    }
}

/// The `greeting` setting, read at each request: `ctx.config()` follows every change.
fn greeting(ctx: &PluginContext) -> String {
    ctx.config()
        .get("greeting")
        .and_then(Value::as_str)
        .filter(|g| !g.trim().is_empty())
        .unwrap_or(DEFAULT_GREETING)
        .to_string()
}

async fn counter(ctx: &PluginContext, increment: bool) -> Result<HttpResponse, KvError> {
    let current = ctx.kv.get("counter").await?;
    let mut n = current.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    if increment {
        n += 1;
        ctx.kv.set("counter", &n.to_string()).await?;
    }
    Ok(HttpResponse::json(200, &json!({ "counter": n })))
}

async fn kv(
    ctx: &PluginContext,
    method: &str,
    key: &str,
    req: &HttpRequest,
) -> Result<HttpResponse, KvError> {
    let key = toru_plugin_api::protocol::percent_decode(key);
    Ok(match method {
        "GET" => match ctx.kv.get(&key).await? {
            Some(value) => HttpResponse::json(200, &json!({"key": key, "value": value})),
            None => HttpResponse::json(404, &json!({"error": "not_found"})),
        },
        "PUT" | "POST" => {
            let value = req.body.clone().unwrap_or_default();
            ctx.kv.set(&key, &value).await?;
            HttpResponse::json(200, &json!({"key": key, "value": value}))
        }
        "DELETE" => {
            let existed = ctx.kv.delete(&key).await?;
            HttpResponse::json(200, &json!({"key": key, "existed": existed}))
        }
        _ => HttpResponse::json(405, &json!({"error": "method_not_allowed"})),
    })
}

fn main() -> ExitCode {
    toru_plugin_api::run(Hello)
}
