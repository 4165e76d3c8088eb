//! Administrative subcommands (`toru token …`, `toru passwd`, `toru plugins`, `toru events`).
//!
//! They work whether the daemon runs or not: while it runs it holds the store, so the CLI sends the
//! request over the daemon's control socket (`<runtime-dir>/control.sock`, `0600` inside a `0700`
//! directory; one length-prefixed JSON frame each way); otherwise the CLI opens the store itself.
//! The daemon records the socket's path in `<data-dir>/control.addr` while it runs, so a command
//! given only `--data-dir` finds a daemon started with another `--runtime-dir`.
//! Both paths call [`execute`], so they behave the same.

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::{UnixListener, UnixStream};
use toru_plugin_api::codec::tokio_codec;

use crate::App;
use crate::config::Config;
use crate::store::Store;
use crate::supervisor::Supervisor;

/// Largest control frame.
const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// One administrative request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Create an API token; the reply carries it once.
    TokenCreate {
        /// Unique name.
        name: String,
        /// `admin` or `viewer`.
        role: String,
    },
    /// List tokens (names, roles, dates; never the tokens).
    TokenList,
    /// Revoke a token by name.
    TokenRevoke {
        /// The name.
        name: String,
    },
    /// Set a user's password.
    Passwd {
        /// The user (`admin` by default).
        user: String,
        /// The new password.
        password: String,
        /// `admin` or `viewer`.
        role: String,
    },
    /// List plugins with their state.
    Plugins,
    /// Enable a plugin (daemon only).
    Enable {
        /// Plugin id.
        id: String,
    },
    /// Disable a plugin (daemon only).
    Disable {
        /// Plugin id.
        id: String,
    },
    /// Restart a plugin (daemon only).
    Restart {
        /// Plugin id.
        id: String,
    },
    /// Rescan the plugins dir (daemon only).
    Rescan,
    /// Recent events, optionally of one plugin.
    Events {
        /// The plugin, or all.
        plugin: Option<String>,
        /// How many.
        limit: usize,
    },
}

/// Run a request against a store (and the supervisor, when the daemon runs).
pub async fn execute(
    store: &Store,
    supervisor: Option<&Supervisor>,
    data_dir: &std::path::Path,
    req: Request,
) -> Result<Value, String> {
    let req_copy = req.clone();
    match req {
        Request::TokenCreate { name, role } => {
            check_role(&role)?;
            let token = crate::http::auth::create_token(store, &name, &role)
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({ "name": name, "role": role, "token": token }))
        }
        Request::TokenList => {
            let tokens = store.tokens().map_err(|e| e.to_string())?;
            Ok(serde_json::to_value(tokens).map_err(|e| e.to_string())?)
        }
        Request::TokenRevoke { name } => {
            let existed = store.revoke_token(&name).await.map_err(|e| e.to_string())?;
            if existed {
                Ok(json!({ "revoked": name }))
            } else {
                Err(format!("no token named {name:?}"))
            }
        }
        Request::Passwd {
            user,
            password,
            role,
        } => {
            check_role(&role)?;
            crate::http::auth::set_password(store, &user, &password, &role)
                .await
                .map_err(|e| e.to_string())?;
            if user == "admin" {
                // Setup is complete: the one-time code is no longer valid anywhere.
                let _ = std::fs::remove_file(data_dir.join(crate::http::auth::SETUP_CODE_FILE));
            }
            Ok(json!({ "user": user, "role": role }))
        }
        Request::Plugins => match supervisor {
            Some(s) => Ok(serde_json::to_value(s.plugins()).map_err(|e| e.to_string())?),
            None => {
                let records = store.plugin_records().map_err(|e| e.to_string())?;
                let list: Vec<Value> = records
                    .into_iter()
                    .map(|(id, r)| {
                        json!({
                            "id": id,
                            "enabled": r.enabled,
                            "state": if r.enabled { "stopped" } else { "disabled" },
                            "auto_disabled": r.auto_disabled,
                        })
                    })
                    .collect();
                Ok(Value::Array(list))
            }
        },
        Request::Enable { id } | Request::Disable { id } | Request::Restart { id } => {
            let Some(s) = supervisor else {
                return Err("toru is not running: start it, or the change will apply at its next start only through the web UI".into());
            };
            let result = match &req_copy {
                Request::Enable { .. } => s.enable(&id).await,
                Request::Disable { .. } => s.disable(&id).await,
                _ => s.restart(&id).await,
            };
            let view = result.map_err(|e| e.to_string())?;
            Ok(serde_json::to_value(view).map_err(|e| e.to_string())?)
        }
        Request::Rescan => {
            let Some(s) = supervisor else {
                return Err("toru is not running; it scans the plugins dir when it starts".into());
            };
            Ok(serde_json::to_value(s.rescan().await).map_err(|e| e.to_string())?)
        }
        Request::Events { plugin, limit } => {
            let events = store
                .events(plugin.as_deref(), limit.clamp(1, 10_000))
                .map_err(|e| e.to_string())?;
            Ok(serde_json::to_value(events).map_err(|e| e.to_string())?)
        }
    }
}

fn check_role(role: &str) -> Result<(), String> {
    match role {
        "admin" | "viewer" => Ok(()),
        other => Err(format!("unknown role {other:?} (use admin or viewer)")),
    }
}

/// The file in the data dir that names the running daemon's control socket.
const CONTROL_RECORD: &str = "control.addr";

/// Where the control socket of a daemon started with `runtime_dir` lives.
fn control_path(runtime_dir: &std::path::Path) -> std::path::PathBuf {
    runtime_dir.join("control.sock")
}

/// Bind the control socket (`0600`), replacing a stale socket file, and record its path in the
/// data dir.
pub fn bind_control(app: &App) -> std::io::Result<UnixListener> {
    let path = control_path(&app.config.runtime_dir);
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(&path);
        }
    }
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let record = app.config.data_dir.join(CONTROL_RECORD);
    let line = [path.as_os_str().as_encoded_bytes(), b"\n"].concat();
    if let Err(e) = std::fs::write(&record, line) {
        log::warn!("cannot write {}: {e}", record.display());
    }
    Ok(listener)
}

/// The control socket paths to try, best first: the one the daemon recorded in the data dir, then
/// the one `--runtime-dir` implies.
fn control_candidates(config: &Config) -> Vec<std::path::PathBuf> {
    let mut paths = Vec::new();
    if let Ok(bytes) = std::fs::read(config.data_dir.join(CONTROL_RECORD)) {
        use std::os::unix::ffi::OsStrExt;
        let recorded = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        if !recorded.is_empty() {
            paths.push(std::ffi::OsStr::from_bytes(recorded).into());
        }
    }
    let implied = control_path(&config.runtime_dir);
    if !paths.contains(&implied) {
        paths.push(implied);
    }
    paths
}

/// Serve the control socket until `stop` turns true.
pub async fn serve_control(
    app: Rc<App>,
    listener: UnixListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let app = app.clone();
                tokio::task::spawn_local(async move { handle_control(app, stream).await });
            }
        }
    }
    let _ = std::fs::remove_file(app.config.data_dir.join(CONTROL_RECORD));
    let _ = std::fs::remove_file(control_path(&app.config.runtime_dir));
}

async fn handle_control(app: Rc<App>, mut stream: UnixStream) {
    let reply = match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio_codec::read_frame(&mut stream, MAX_CONTROL_FRAME),
    )
    .await
    {
        Ok(Ok(Some(body))) => match serde_json::from_slice::<Request>(&body) {
            Ok(req) => execute(&app.store, Some(&app.supervisor), &app.config.data_dir, req).await,
            Err(e) => Err(format!("bad request: {e}")),
        },
        _ => return,
    };
    let body = match reply {
        Ok(v) => json!({ "ok": true, "result": v }),
        Err(e) => json!({ "ok": false, "error": e }),
    };
    let _ =
        tokio_codec::write_frame(&mut stream, body.to_string().as_bytes(), MAX_CONTROL_FRAME).await;
}

/// Why an administrative command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The command itself failed (message for the user).
    #[error("{0}")]
    Failed(String),
    /// The daemon holds the store but does not answer on its control socket.
    #[error(
        "toru is running (the data dir is locked) but its control socket {0} does not answer; is --runtime-dir the same as the daemon's?"
    )]
    NoControl(std::path::PathBuf),
    /// The store could not be opened.
    #[error(transparent)]
    Run(#[from] crate::RunError),
}

/// Run one administrative request from the command line: through the daemon if it runs, else on
/// the store directly. Must run inside a `LocalSet`.
pub async fn run_cli(config: &Config, req: Request) -> Result<Value, AdminError> {
    let candidates = control_candidates(config);
    let mut connected = None;
    for path in &candidates {
        if let Ok(stream) = UnixStream::connect(path).await {
            connected = Some(stream);
            break;
        }
    }
    if let Some(mut stream) = connected {
        let body = serde_json::to_vec(&req).map_err(|e| AdminError::Failed(e.to_string()))?;
        tokio_codec::write_frame(&mut stream, &body, MAX_CONTROL_FRAME)
            .await
            .map_err(|e| AdminError::Failed(e.to_string()))?;
        let reply = tokio_codec::read_frame(&mut stream, MAX_CONTROL_FRAME)
            .await
            .map_err(|e| AdminError::Failed(e.to_string()))?
            .ok_or_else(|| AdminError::Failed("the daemon closed the control connection".into()))?;
        let v: Value =
            serde_json::from_slice(&reply).map_err(|e| AdminError::Failed(e.to_string()))?;
        return if v["ok"] == json!(true) {
            Ok(v["result"].clone())
        } else {
            Err(AdminError::Failed(
                v["error"].as_str().unwrap_or("failed").to_string(),
            ))
        };
    }
    let store = match crate::open_store(config) {
        Ok(s) => s,
        Err(crate::RunError::AlreadyRunning(_)) => {
            // The first candidate: the recorded socket if the daemon left one, else the implied.
            let tried = candidates.into_iter().next().unwrap_or_default();
            return Err(AdminError::NoControl(tried));
        }
        Err(e) => return Err(e.into()),
    };
    let result = execute(&store, None, &config.data_dir, req)
        .await
        .map_err(AdminError::Failed);
    store.close();
    result
}
