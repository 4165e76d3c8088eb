//! Administrative subcommands (`toru token …`, `toru passwd`, `toru plugins [unbind ID]`,
//! `toru events`, `toru system safe-mode [--leave]`, …).
//!
//! They work whether the daemon runs or not: while it runs it holds the store, so the CLI sends the
//! request over the daemon's control socket (`<runtime-dir>/control.sock`, `0600` inside a `0700`
//! directory; one length-prefixed JSON frame each way); otherwise the CLI opens the store itself.
//! The daemon records the socket's path in `<data-dir>/control.addr` while it runs, so a command
//! given only `--data-dir` finds a daemon started with another `--runtime-dir`.
//! Both paths call `execute`, so they behave the same.
//!
//! Called by `main` ([`run_cli`]) and by startup (`bind_control`, `serve_control`). Uses `auth`
//! for passwords and tokens, the supervisor for plugin commands and `update` for the daemon's side
//! of `toru system update|reboot` (the client side is `update_cmd`); never names the HTTP library.
//!
//! ## The control socket
//! Request: a [`Request`] (`{"cmd": "token-create", "name": …, "role": "viewer"}`). Reply: `{"ok":
//! true, "result": …}` with a [`Reply`], or `{"ok": false, "error": "<message with its causes>"}`.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use tokio::net::{UnixListener, UnixStream};
use toru_plugin_api::codec::{FrameError, tokio_codec};

use crate::app::App;
use crate::auth::{self, ADMIN, Kdf};
use crate::config::Config;
use crate::error_chain::error_chain;
use crate::install::{Expect, PackageError, Packages};
use crate::role::Role;
use crate::store::{Event, Store, StoreError, TokenRecord};
use crate::supervisor::{PluginView, RescanReport, Supervisor, SupervisorError};

pub use crate::auth::AuthError;

/// Largest control frame.
const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// A control client must send its request within this time.
const CONTROL_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One administrative request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Create an API token; the reply carries it once.
    TokenCreate {
        /// Unique name.
        name: String,
        /// What the token may do.
        role: Role,
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
        /// What the user may do.
        role: Role,
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
    /// Release a plugin id from the file it is bound to, so that the next scan gives it to the
    /// file that claims it then (a plugin file renamed or replaced by its owner).
    Unbind {
        /// Plugin id.
        id: String,
    },
    /// Recent events, optionally of one plugin.
    Events {
        /// The plugin, or all.
        plugin: Option<String>,
        /// How many.
        limit: usize,
    },
    /// Install or update a package (daemon only). The package's `size` bytes follow the request
    /// on the control connection as frames of at most 64 KiB.
    PluginInstall {
        /// The package's length in bytes.
        size: u64,
        /// The `.minisig` file's text (`None`: unsigned).
        signature: Option<String>,
        /// `install` (refuse an installed id), `update` (refuse one that is not) or `any`.
        expect: String,
        /// Accept an older version than the installed one.
        allow_downgrade: bool,
    },
    /// Remove a package (daemon only).
    PluginRemove {
        /// Plugin id.
        id: String,
        /// Delete its KV data, settings and state too.
        purge_data: bool,
    },
    /// The kept versions of a package.
    PluginVersions {
        /// Plugin id.
        id: String,
    },
    /// Make the version before the active one active again (daemon only).
    PluginRollback {
        /// Plugin id.
        id: String,
    },
    /// What a plugin gets and what protects it (daemon only).
    PluginSecurity {
        /// Plugin id.
        id: String,
    },
    /// Set or clear (`null`) limits of a plugin; restarts it if it runs (daemon only).
    PluginLimits {
        /// Plugin id.
        id: String,
        /// `{"memory": "128M", "cpu": null, …}`.
        limits: serde_json::Map<String, serde_json::Value>,
    },
    /// Grant or revoke a requested permission (`group:NAME`, `syscall:NAME`); restarts the
    /// plugin if it runs (daemon only).
    PluginGrant {
        /// Plugin id.
        id: String,
        /// `group:gpio` or `syscall:ptrace`.
        permission: String,
        /// Grant (`true`) or revoke.
        grant: bool,
    },
    /// Trust a publisher key.
    TrustAdd {
        /// The `.pub` file's text.
        public_key: String,
        /// A note.
        comment: String,
    },
    /// The trusted publisher keys.
    TrustList,
    /// Stop trusting a publisher key.
    TrustRemove {
        /// Its key id.
        key_id: String,
    },
    /// This instance's ids: the UUID and the licensing id (the key is made on first use).
    InstanceId,
    /// Install a licence (daemon only).
    LicenseInstall {
        /// The licence file's text.
        text: String,
        /// The plugin it must be for (`None`: the one it names).
        plugin: Option<String>,
    },
    /// The installed licences, and the packages that need one but have none.
    LicenseList,
    /// Remove a plugin's licence (daemon only).
    LicenseRemove {
        /// The plugin.
        plugin: String,
    },
    /// Where safe mode stands; with `leave`, leave it (the held plugins start; with the daemon
    /// stopped, the next start starts normally).
    SafeMode {
        /// Leave safe mode.
        leave: bool,
    },
    /// Upload a whole-device update bundle (daemon only; `toru system update`). The bundle's
    /// `size` bytes follow the request on the control connection as frames of at most 64 KiB;
    /// the reply is RAUC's preview (version, compatible, signer, token).
    UpdateUpload {
        /// The bundle's length in bytes.
        size: u64,
    },
    /// Install the uploaded bundle `token` (daemon only); answers once `rauc install` started.
    UpdateInstall {
        /// The upload's token.
        token: String,
    },
    /// Drop the uploaded bundle `token` (daemon only).
    UpdateCancel {
        /// The upload's token.
        token: String,
    },
    /// Slots, the health gate, the pending update, the last result, the install under way
    /// (daemon only: what `GET /api/system/update` answers).
    UpdateStatus,
    /// Run the reboot command (daemon only, where updates are enabled).
    Reboot,
}

/// What a request produced: the `result` of a control reply. Serialised without a tag, as the
/// bare object or list each command has always answered (the CLI prints it; `--json` passes it
/// through). Fields are in the order the replies always had (alphabetical).
#[derive(Debug, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum Reply {
    /// `token-create`: the token, shown this once.
    TokenCreated {
        /// The token's name.
        name: String,
        /// What it may do.
        role: Role,
        /// The secret.
        token: String,
    },
    /// `token-list`.
    Tokens(Vec<TokenRecord>),
    /// `token-revoke`.
    TokenRevoked {
        /// The name of the token revoked.
        revoked: String,
    },
    /// `passwd`.
    PasswordSet {
        /// The user's role.
        role: Role,
        /// The user.
        user: String,
    },
    /// `plugins` while the daemon runs.
    Plugins(Vec<PluginView>),
    /// `plugins` while it does not: what the store remembers.
    StoredPlugins(Vec<StoredPlugin>),
    /// `enable`, `disable`, `restart`: the plugin afterwards.
    Plugin(Box<PluginView>),
    /// `rescan`.
    Rescanned(RescanReport),
    /// `unbind`: the id and the file it was bound to.
    Unbound {
        /// The file it was bound to.
        file: String,
        /// The plugin id.
        id: String,
    },
    /// `events`.
    Events(Vec<Event>),
    /// The package and trust commands: their result as JSON.
    Json(Value),
}

/// A plugin as the store remembers it (the daemon does not run, so nothing is running).
#[derive(Debug, Serialize)]
pub struct StoredPlugin {
    /// Why the supervisor disabled it, if it did.
    pub auto_disabled: Option<String>,
    /// Whether it should run.
    pub enabled: bool,
    /// Its id.
    pub id: String,
    /// `stopped` or `disabled`.
    pub state: &'static str,
}

/// Why an administrative command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A password or token could not be set (bad name, weak password, name taken, …).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The store failed.
    #[error("the store failed")]
    Store(#[from] StoreError),
    /// The supervisor refused (unknown plugin, shutting down, …).
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// `token revoke` of a name no token has.
    #[error("no token named {0:?}")]
    NoSuchToken(String),
    /// The command needs the running daemon (the sentence says what to do instead).
    #[error("toru is not running: {0}")]
    NotRunning(&'static str),
    /// The daemon ran the command and it failed; its message, causes included.
    #[error("{0}")]
    Refused(String),
    /// A control message is not the JSON expected.
    #[error("bad control message")]
    BadMessage(#[from] serde_json::Error),
    /// The control connection failed mid-request.
    #[error("the control socket {path} failed")]
    Control {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: FrameError,
    },
    /// The daemon closed the control connection without answering.
    #[error("the daemon closed the control connection")]
    Closed,
    /// The daemon holds the store but does not answer on its control socket.
    #[error(
        "toru is running (the data dir is locked) but its control socket {0} does not answer; is --runtime-dir the same as the daemon's?"
    )]
    NoControl(PathBuf),
    /// The store could not be opened.
    #[error("cannot open the store")]
    Open(#[from] crate::store::OpenError),
    /// Safe mode could not be left (not in it, or the store refused).
    #[error(transparent)]
    SafeMode(#[from] crate::safe_mode::LeaveError),
    /// A local file (the package, its signature) could not be read.
    #[error("cannot read {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::update::UpdateError> for AdminError {
    /// An update command was refused: its message.
    fn from(e: crate::update::UpdateError) -> AdminError {
        AdminError::Refused(e.to_string())
    }
}

impl From<PackageError> for AdminError {
    /// A package or trust command was refused: its message (what was wrong, what to do).
    fn from(e: PackageError) -> AdminError {
        AdminError::Refused(e.to_string())
    }
}

/// One answer on the control socket: `{"ok": true, "result": …}` or `{"ok": false, "error": …}`.
#[derive(Debug, PartialEq)]
enum ControlReply<T> {
    /// The command succeeded with this result.
    Done(T),
    /// It failed; the message, causes included.
    Failed(String),
}

impl<T: Serialize> Serialize for ControlReply<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a, T> {
            ok: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            result: Option<&'a T>,
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<&'a str>,
        }
        let wire = match self {
            ControlReply::Done(r) => Wire {
                ok: true,
                result: Some(r),
                error: None,
            },
            ControlReply::Failed(e) => Wire {
                ok: false,
                result: None,
                error: Some(e),
            },
        };
        wire.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ControlReply<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire<T> {
            ok: bool,
            result: Option<T>,
            error: Option<String>,
        }
        let wire = Wire::<T>::deserialize(d)?;
        match (wire.ok, wire.result) {
            (true, Some(r)) => Ok(ControlReply::Done(r)),
            (true, None) => Err(D::Error::missing_field("result")),
            (false, _) => Ok(ControlReply::Failed(
                wire.error.unwrap_or_else(|| "failed".into()),
            )),
        }
    }
}

/// Run a request against a store (and the supervisor, when the daemon runs). Passwords are hashed
/// through `kdf`, the limit the web layer shares.
pub(crate) async fn execute(
    store: &Store,
    supervisor: Option<&Supervisor>,
    packages: Option<&Packages>,
    kdf: &Kdf,
    data_dir: &Path,
    req: Request,
) -> Result<Reply, AdminError> {
    Ok(match req {
        Request::TokenCreate { name, role } => {
            let token = auth::create_token(store, &name, role).await?;
            Reply::TokenCreated { name, role, token }
        }
        Request::TokenList => Reply::Tokens(auth::list_tokens(store)?),
        Request::TokenRevoke { name } => {
            if !auth::revoke_token(store, &name).await? {
                return Err(AdminError::NoSuchToken(name));
            }
            Reply::TokenRevoked { revoked: name }
        }
        Request::Passwd {
            user,
            password,
            role,
        } => {
            auth::set_password(kdf, store, &user, &password, role).await?;
            if user == ADMIN {
                auth::remove_setup_code(data_dir);
            }
            Reply::PasswordSet { role, user }
        }
        Request::Plugins => match supervisor {
            Some(s) => {
                let mut out = Vec::new();
                for view in s.plugins() {
                    let security = s.security(&view.id).await.unwrap_or_default();
                    let mut v = serde_json::to_value(&view)?;
                    v["security"] = security;
                    out.push(v);
                }
                Reply::Json(serde_json::Value::Array(out))
            }
            None => Reply::StoredPlugins(
                store
                    .plugin_records()?
                    .into_iter()
                    .map(|(id, r)| StoredPlugin {
                        state: if r.enabled { "stopped" } else { "disabled" },
                        id,
                        enabled: r.enabled,
                        auto_disabled: r.auto_disabled,
                    })
                    .collect(),
            ),
        },
        Request::Enable { id } => {
            let s = daemon(supervisor, NOT_RUNNING_CHANGE)?;
            Reply::Plugin(Box::new(s.enable(&id).await?))
        }
        Request::Disable { id } => {
            let s = daemon(supervisor, NOT_RUNNING_CHANGE)?;
            Reply::Plugin(Box::new(s.disable(&id).await?))
        }
        Request::Restart { id } => {
            let s = daemon(supervisor, NOT_RUNNING_CHANGE)?;
            Reply::Plugin(Box::new(s.restart(&id).await?))
        }
        Request::Rescan => Reply::Rescanned(
            daemon(supervisor, "it scans the plugins dir when it starts")?
                .rescan()
                .await,
        ),
        Request::Unbind { id } => {
            let binding = match supervisor {
                Some(s) => s.unbind(&id).await?,
                None => crate::supervisor::unbind_stored(store, &id).await?,
            };
            Reply::Unbound {
                file: binding.file,
                id,
            }
        }
        Request::Events { plugin, limit } => {
            Reply::Events(store.events(plugin.as_deref(), limit.clamp(1, 10_000))?)
        }
        Request::PluginInstall { .. } => {
            // The daemon handles it on the connection (the package follows the request).
            return Err(AdminError::NotRunning(NOT_RUNNING_PACKAGES));
        }
        Request::SafeMode { .. } => {
            // Answered with safe mode's handle (`handle_control`) or the config (`run_cli`).
            return Err(AdminError::NotRunning(
                "safe mode is answered by the daemon or from the store",
            ));
        }
        Request::PluginRemove { id, purge_data } => {
            let p = daemon(packages, NOT_RUNNING_PACKAGES)?;
            p.remove(&id, purge_data).await?;
            Reply::Json(serde_json::json!({"removed": id, "purge_data": purge_data}))
        }
        Request::PluginVersions { id } => {
            let p = daemon(packages, NOT_RUNNING_PACKAGES)?;
            Reply::Json(serde_json::to_value(p.versions(&id)?)?)
        }
        Request::PluginRollback { id } => {
            let p = daemon(packages, NOT_RUNNING_PACKAGES)?;
            Reply::Json(serde_json::to_value(p.rollback(&id).await?)?)
        }
        Request::PluginSecurity { id } => {
            let s = daemon(supervisor, NOT_RUNNING_SECURITY)?;
            Reply::Json(s.security(&id).await?)
        }
        Request::PluginLimits { id, limits } => {
            let s = daemon(supervisor, NOT_RUNNING_SECURITY)?;
            let change = crate::supervisor::SecurityChange {
                limits,
                grants: None,
            };
            Reply::Json(s.set_security(&id, change).await?)
        }
        Request::PluginGrant {
            id,
            permission,
            grant,
        } => {
            let s = daemon(supervisor, NOT_RUNNING_SECURITY)?;
            let now = store.security_overrides(&id)?;
            let (mut groups, mut syscalls) = (now.groups, now.syscalls);
            let set = match permission.split_once(':') {
                Some(("group", name)) => (&mut groups, name),
                Some(("syscall", name)) => (&mut syscalls, name),
                _ => {
                    return Err(SupervisorError::InvalidLimit(format!(
                        "{permission:?} is not group:NAME or syscall:NAME"
                    ))
                    .into());
                }
            };
            if grant {
                set.0.insert(set.1.to_string());
            } else {
                set.0.remove(set.1);
            }
            let change = crate::supervisor::SecurityChange {
                limits: serde_json::Map::new(),
                grants: Some(crate::supervisor::Grants {
                    groups: groups.into_iter().collect(),
                    syscalls: syscalls.into_iter().collect(),
                }),
            };
            Reply::Json(s.set_security(&id, change).await?)
        }
        Request::TrustAdd {
            public_key,
            comment,
        } => {
            let key = match packages {
                Some(p) => p.trust(&public_key, &comment).await?,
                None => crate::install::trust_stored(store, &public_key, &comment).await?,
            };
            Reply::Json(serde_json::to_value(key)?)
        }
        Request::TrustList => Reply::Json(serde_json::to_value(
            store.trusted_keys()?.into_values().collect::<Vec<_>>(),
        )?),
        Request::TrustRemove { key_id } => {
            crate::install::distrust_stored(store, &key_id).await?;
            Reply::Json(serde_json::json!({"removed": key_id}))
        }
        Request::InstanceId => {
            let instance = crate::license::gate::ensure_instance(store).await;
            Reply::Json(serde_json::json!({
                "instance_id": store.instance_id(),
                "licensing_id": instance.as_ref().map(|i| i.licensing_id.clone()),
                "public_key": instance.map(|i| i.public_key),
            }))
        }
        Request::LicenseInstall { text, plugin } => {
            let p = daemon(packages, NOT_RUNNING_PACKAGES)?;
            Reply::Json(serde_json::to_value(
                p.install_license(&text, plugin.as_deref()).await?,
            )?)
        }
        Request::LicenseList => Reply::Json(serde_json::to_value(crate::install::licenses::list(
            store,
        )?)?),
        Request::LicenseRemove { plugin } => {
            let p = daemon(packages, NOT_RUNNING_PACKAGES)?;
            p.remove_license(&plugin).await?;
            Reply::Json(serde_json::json!({"removed": plugin}))
        }
        // The daemon answers these on the connection (`update_request`, `receive_bundle`).
        Request::UpdateUpload { .. }
        | Request::UpdateInstall { .. }
        | Request::UpdateCancel { .. }
        | Request::UpdateStatus
        | Request::Reboot => return Err(AdminError::NotRunning(NOT_RUNNING_UPDATE)),
    })
}

/// `toru system safe-mode [--leave]` while the daemon is stopped: as the store records it.
async fn stored_safe_mode(
    config: &Config,
    store: &Store,
    leave: bool,
) -> Result<Reply, AdminError> {
    let status = if leave {
        crate::safe_mode::leave_stored(config, store).await?
    } else {
        crate::safe_mode::stored_status(config, store)?
    };
    Ok(Reply::Json(serde_json::to_value(status)?))
}

/// What to do instead of an update command while the daemon is stopped.
const NOT_RUNNING_UPDATE: &str = "update commands run through the daemon (it checks, installs and watches the update): start \
     toru first";

/// An update request other than the upload, on the daemon.
async fn update_request(app: &App, req: Request) -> Result<Reply, AdminError> {
    let updates = &app.updates;
    Ok(Reply::Json(match req {
        Request::UpdateInstall { token } => {
            serde_json::to_value(updates.start_install(&token).await?)?
        }
        Request::UpdateCancel { token } => {
            if !updates.cancel(&token) {
                return Err(crate::update::UpdateError::NoUpload(token).into());
            }
            serde_json::json!({"cancelled": token})
        }
        Request::Reboot => {
            updates.reboot().await?;
            serde_json::json!({"rebooting": true})
        }
        _ => updates.status().await,
    }))
}

/// Receive an update bundle of `size` bytes on the control connection and have it checked (see
/// `update`); the reply is the preview.
async fn receive_bundle(
    app: &App,
    stream: &mut UnixStream,
    size: u64,
) -> Result<Reply, AdminError> {
    let limit = app.config.update.max_bundle_bytes;
    if app.updates.enabled() && size > limit {
        return Err(crate::update::UpdateError::TooLarge(limit).into());
    }
    let mut upload = app.updates.begin_upload()?;
    receive_frames(app, stream, size, |frame| Ok(upload.write(frame)?)).await?;
    let preview = app.updates.finish_upload(upload).await?;
    Ok(Reply::Json(serde_json::to_value(preview)?))
}

/// Reads the `size` bytes that follow an upload request on the control connection (frames of at
/// most 64 KiB, each within `PACKAGE_CHUNK_TIMEOUT`), handing each frame to `write`.
async fn receive_frames(
    app: &App,
    stream: &mut UnixStream,
    size: u64,
    mut write: impl FnMut(&[u8]) -> Result<(), AdminError>,
) -> Result<(), AdminError> {
    let mut got = 0u64;
    while got < size {
        let frame = tokio::time::timeout(
            PACKAGE_CHUNK_TIMEOUT,
            tokio_codec::read_frame(stream, MAX_CONTROL_FRAME),
        )
        .await
        .map_err(|_| AdminError::Closed)?
        .map_err(|source| AdminError::Control {
            path: control_path(&app.config.runtime_dir),
            source,
        })?
        .ok_or(AdminError::Closed)?;
        got += frame.len() as u64;
        write(&frame)?;
    }
    Ok(())
}

/// What to do instead of a package command while the daemon is stopped.
const NOT_RUNNING_PACKAGES: &str =
    "package commands run through the daemon (they start and watch the plugin): start toru first";

/// What to do instead of enable/disable/restart while the daemon is stopped.
const NOT_RUNNING_CHANGE: &str =
    "start it, or the change will apply at its next start only through the web UI";

/// The daemon's handle, or [`AdminError::NotRunning`] with `instead`.
/// Why a security command needs the daemon.
const NOT_RUNNING_SECURITY: &str =
    "a plugin's confinement is worked out and applied by the running host; start toru first";

fn daemon<'a, T>(handle: Option<&'a T>, instead: &'static str) -> Result<&'a T, AdminError> {
    handle.ok_or(AdminError::NotRunning(instead))
}

/// The file in the data dir that names the running daemon's control socket.
const CONTROL_RECORD: &str = "control.addr";

/// Where the control socket of a daemon started with `runtime_dir` lives.
fn control_path(runtime_dir: &std::path::Path) -> std::path::PathBuf {
    runtime_dir.join("control.sock")
}

/// Bind the control socket (`0600`), replacing a stale socket file, and record its path in the
/// data dir.
pub(crate) fn bind_control(app: &App) -> std::io::Result<UnixListener> {
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
pub(crate) async fn serve_control(
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
    let body = match tokio::time::timeout(
        CONTROL_READ_TIMEOUT,
        tokio_codec::read_frame(&mut stream, MAX_CONTROL_FRAME),
    )
    .await
    {
        Ok(Ok(Some(body))) => body,
        _ => return,
    };
    let result = match serde_json::from_slice::<Request>(&body) {
        Ok(Request::PluginInstall {
            size,
            signature,
            expect,
            allow_downgrade,
        }) => receive_package(&app, &mut stream, size, signature, &expect, allow_downgrade).await,
        Ok(Request::SafeMode { leave }) => {
            let status = if leave {
                app.safe_mode.leave().await.map_err(AdminError::from)
            } else {
                Ok(app.safe_mode.status())
            };
            status.and_then(|s| Ok(Reply::Json(serde_json::to_value(s)?)))
        }
        Ok(Request::UpdateUpload { size }) => receive_bundle(&app, &mut stream, size).await,
        Ok(
            req @ (Request::UpdateInstall { .. }
            | Request::UpdateCancel { .. }
            | Request::UpdateStatus
            | Request::Reboot),
        ) => update_request(&app, req).await,
        Ok(req) => {
            let (store, sup) = (&app.store, Some(&app.supervisor));
            let packages = Some(&app.packages);
            execute(
                store,
                sup,
                packages,
                &Kdf::shared(),
                &app.config.data_dir,
                req,
            )
            .await
        }
        Err(e) => Err(AdminError::BadMessage(e)),
    };
    let reply = match result {
        Ok(r) => ControlReply::Done(r),
        Err(e) => ControlReply::Failed(error_chain(&e)),
    };
    let Ok(body) = serde_json::to_vec(&reply) else {
        log::error!("control: a reply could not be encoded");
        return;
    };
    let _ = tokio_codec::write_frame(&mut stream, &body, MAX_CONTROL_FRAME).await;
}

/// Receive a package of `size` bytes on the control connection, check it, and install or update
/// it (see `install`); the reply waits for the probation.
async fn receive_package(
    app: &App,
    stream: &mut UnixStream,
    size: u64,
    signature: Option<String>,
    expect: &str,
    allow_downgrade: bool,
) -> Result<Reply, AdminError> {
    let expect = match expect {
        "install" => Expect::Install,
        "update" => Expect::Update,
        _ => Expect::Any,
    };
    let limit = app.config.packages.max_package_bytes;
    if size > limit {
        return Err(PackageError::TooLarge(limit).into());
    }
    let mut upload = app.packages.begin_upload(signature)?;
    receive_frames(app, stream, size, |frame| Ok(upload.write(frame)?)).await?;
    let preview = app.packages.finish_upload(upload).await?;
    let done = app
        .packages
        .confirm(&preview.upload, expect, allow_downgrade)
        .await?;
    Ok(Reply::Json(serde_json::json!({
        "result": done.result,
        "id": done.id,
        "version": done.version,
        "action": preview.action,
        "installed_version": preview.installed_version,
        "signature": preview.signature,
    })))
}

/// A client streaming a package must send each chunk within this time.
const PACKAGE_CHUNK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `toru plugin install|update FILE`: stream `file` (and its signature, `FILE.minisig` unless
/// `signature` names another file or `None` is forced) to the running daemon.
pub async fn run_install(
    config: &Config,
    file: &Path,
    signature: Option<&Path>,
    expect: &str,
    allow_downgrade: bool,
) -> Result<Value, AdminError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| AdminError::File {
            path: path.to_path_buf(),
            source,
        })
    };
    let sig_path = match signature {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let p = crate::package::sign::signature_path(file);
            p.exists().then_some(p)
        }
    };
    let signature = sig_path.as_deref().map(read).transpose()?;
    let mut package = std::fs::File::open(file).map_err(|source| AdminError::File {
        path: file.to_path_buf(),
        source,
    })?;
    let (mut stream, path) = connect_daemon(config)
        .await
        .ok_or(AdminError::NotRunning(NOT_RUNNING_PACKAGES))?;
    let size = package
        .metadata()
        .map_err(|source| AdminError::File {
            path: file.to_path_buf(),
            source,
        })?
        .len();
    let req = Request::PluginInstall {
        size,
        signature,
        expect: expect.to_owned(),
        allow_downgrade,
    };
    send_file(&mut stream, &path, &req, &mut package, file).await
}

/// `toru system update FILE`: stream the bundle `file` to the running daemon, which has RAUC
/// check it; the preview (version, compatible, signer, token).
pub async fn run_update_upload(config: &Config, file: &Path) -> Result<Value, AdminError> {
    let file_err = |source| AdminError::File {
        path: file.to_path_buf(),
        source,
    };
    let mut bundle = std::fs::File::open(file).map_err(file_err)?;
    let size = bundle.metadata().map_err(file_err)?.len();
    let (mut stream, path) = connect_daemon(config)
        .await
        .ok_or(AdminError::NotRunning(NOT_RUNNING_UPDATE))?;
    let req = Request::UpdateUpload { size };
    send_file(&mut stream, &path, &req, &mut bundle, file).await
}

/// Send `req`, then `file`'s bytes in frames, to the daemon, and read its one reply: the client
/// side of the control socket's uploads (packages, update bundles). A refusal mid-way (too large,
/// disk full) closes the connection; its reply is read all the same.
async fn send_file(
    stream: &mut UnixStream,
    path: &Path,
    req: &Request,
    content: &mut std::fs::File,
    file: &Path,
) -> Result<Value, AdminError> {
    use std::io::Read;
    let control = |source| AdminError::Control {
        path: path.to_path_buf(),
        source,
    };
    tokio_codec::write_frame(stream, &serde_json::to_vec(req)?, MAX_CONTROL_FRAME)
        .await
        .map_err(control)?;
    let mut buf = vec![0u8; MAX_CONTROL_FRAME];
    loop {
        let n = content.read(&mut buf).map_err(|source| AdminError::File {
            path: file.to_path_buf(),
            source,
        })?;
        if n == 0
            || tokio_codec::write_frame(stream, &buf[..n], MAX_CONTROL_FRAME)
                .await
                .is_err()
        {
            break;
        }
    }
    let reply = tokio_codec::read_frame(stream, MAX_CONTROL_FRAME)
        .await
        .map_err(control)?
        .ok_or(AdminError::Closed)?;
    match serde_json::from_slice::<ControlReply<Value>>(&reply)? {
        ControlReply::Done(v) => Ok(v),
        ControlReply::Failed(e) => Err(AdminError::Refused(e)),
    }
}

/// A connection to the running daemon's control socket, and its path.
async fn connect_daemon(config: &Config) -> Option<(UnixStream, PathBuf)> {
    for path in control_candidates(config) {
        if let Ok(stream) = UnixStream::connect(&path).await {
            return Some((stream, path));
        }
    }
    None
}

/// Run one administrative request from the command line: through the daemon if it runs, else on
/// the store directly. Returns the reply's JSON (what the daemon sent, or the same from the local
/// run). Must run inside a `LocalSet`.
pub async fn run_cli(config: &Config, req: Request) -> Result<Value, AdminError> {
    let candidates = control_candidates(config);
    let mut connected = None;
    for path in &candidates {
        if let Ok(stream) = UnixStream::connect(path).await {
            connected = Some((stream, path.clone()));
            break;
        }
    }
    if let Some((mut stream, path)) = connected {
        let control = |source| AdminError::Control {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec(&req)?;
        tokio_codec::write_frame(&mut stream, &body, MAX_CONTROL_FRAME)
            .await
            .map_err(control)?;
        let reply = tokio_codec::read_frame(&mut stream, MAX_CONTROL_FRAME)
            .await
            .map_err(control)?
            .ok_or(AdminError::Closed)?;
        return match serde_json::from_slice::<ControlReply<Value>>(&reply)? {
            ControlReply::Done(v) => Ok(v),
            ControlReply::Failed(e) => Err(AdminError::Refused(e)),
        };
    }
    let store = match crate::app::open_store(config) {
        Ok(s) => s,
        Err(crate::store::OpenError::Locked(_)) => {
            // The first candidate: the recorded socket if the daemon left one, else the implied.
            let tried = candidates.into_iter().next().unwrap_or_default();
            return Err(AdminError::NoControl(tried));
        }
        Err(e) => return Err(e.into()),
    };
    let result = match req {
        Request::SafeMode { leave } => stored_safe_mode(config, &store, leave).await,
        req => execute(&store, None, None, &Kdf::shared(), &config.data_dir, req).await,
    };
    store.close();
    Ok(serde_json::to_value(result?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::testing::TempDir;
    use serde_json::json;

    /// The control socket's JSON is what it was when replies were built with `json!`.
    #[test]
    fn control_replies_keep_their_json() {
        let done = ControlReply::Done(Reply::PasswordSet {
            role: Role::Viewer,
            user: "bob".into(),
        });
        assert_eq!(
            serde_json::to_string(&done).unwrap(),
            r#"{"ok":true,"result":{"role":"viewer","user":"bob"}}"#
        );
        let failed: ControlReply<Reply> = ControlReply::Failed("no token named \"x\"".into());
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            json!({"ok": false, "error": "no token named \"x\""})
        );
        let back: ControlReply<Value> =
            serde_json::from_value(json!({"ok": true, "result": [1]})).unwrap();
        assert_eq!(back, ControlReply::Done(json!([1])));
        let back: ControlReply<Value> =
            serde_json::from_value(json!({"ok": false, "error": "nope"})).unwrap();
        assert_eq!(back, ControlReply::Failed("nope".into()));
        assert!(serde_json::from_value::<ControlReply<Value>>(json!({"ok": true})).is_err());
        let req: Request =
            serde_json::from_value(json!({"cmd": "token-create", "name": "ci", "role": "viewer"}))
                .unwrap();
        assert_eq!(
            req,
            Request::TokenCreate {
                name: "ci".into(),
                role: Role::Viewer
            }
        );
        assert!(
            serde_json::from_value::<Request>(
                json!({"cmd": "token-create", "name": "ci", "role": "root"})
            )
            .is_err()
        );
    }

    /// `toru passwd` hashes through the KDF limit it is given (the daemon passes the one the web
    /// layer uses), completes setup for `admin`, and its failures are typed.
    #[tokio::test]
    async fn passwd_goes_through_the_kdf_limit() {
        let dir = TempDir::new("admin");
        let store = Store::open(dir.path(), crate::store::StoreOptions::default()).unwrap();
        std::fs::write(dir.path().join("setup-code"), "ABCD-EFGH-JKMN\n").unwrap();
        let kdf = Kdf::for_test();
        let passwd = |user: &str, password: &str| Request::Passwd {
            user: user.into(),
            password: password.into(),
            role: Role::Admin,
        };
        let r = execute(
            &store,
            None,
            None,
            &kdf,
            dir.path(),
            passwd(ADMIN, "a long password"),
        )
        .await
        .unwrap();
        assert!(matches!(
            r,
            Reply::PasswordSet {
                role: Role::Admin,
                ..
            }
        ));
        assert_eq!(kdf.runs(), 1);
        assert!(!dir.path().join("setup-code").exists());
        let weak = execute(&store, None, None, &kdf, dir.path(), passwd("bob", "short")).await;
        assert!(matches!(
            weak,
            Err(AdminError::Auth(AuthError::WeakPassword))
        ));
        let gone = execute(
            &store,
            None,
            None,
            &kdf,
            dir.path(),
            Request::TokenRevoke { name: "x".into() },
        )
        .await;
        assert!(matches!(gone, Err(AdminError::NoSuchToken(n)) if n == "x"));
        let offline = execute(&store, None, None, &kdf, dir.path(), Request::Rescan).await;
        let Err(e @ AdminError::NotRunning(_)) = offline else {
            panic!("{offline:?}");
        };
        assert!(e.to_string().contains("not running"));
        store.close();
    }
}
