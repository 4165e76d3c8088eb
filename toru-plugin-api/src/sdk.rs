//! The plugin SDK: the [`ToruPlugin`] trait, [`PluginContext`] and the runner ([`run`], [`serve`]).
//!
//! The runner owns the socket. One task reads frames and dispatches them; the writer queue, the
//! pending KV requests and their ids and limits are the shared multiplexer's ([`crate::mux`], the
//! same code the host runs); every HTTP request runs in its own local task, so a slow handler never
//! delays a heartbeat or another request. Everything runs on a `current_thread` runtime inside a
//! `LocalSet`, which is why the trait needs neither `Send` nor `Sync`.
//!
//! A 1.1 host keeps one connection; when it closes, the host is gone and the plugin exits. A legacy
//! 1.0 host connects once per message; the runner notices (init without `protocol`) and accepts
//! again after each connection.
//!
//! Settings: [`PluginContext::config`] starts as `init`'s `config` and follows each 1.1 `config`
//! message. Those are handled one at a time, in arrival order: the new settings are put in place,
//! [`ToruPlugin::on_config`] runs, and if it refuses them the previous ones are put back.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::codec::{FrameError, MAX_FRAME_LEN, tokio_codec};
use crate::mux::{Mux, MuxConfig, MuxError, PluginMux};
use crate::protocol::{
    ErrorCode, ErrorReply, HostMessage, HttpRequest, HttpResponse, Init, KvReply, KvRequest,
    LogLevel, LogRecord, MqttDelivery, MqttRequest, PROTOCOL_VERSION, PluginMessage,
    PluginMetadata, decode_host_frame, empty_config,
};

/// The environment variable holding the socket path (defined in [`crate::protocol`]).
pub use crate::protocol::SOCKET_ENV;

/// A Toru plugin. Implement this and hand it to [`run`].
///
/// The futures are not `Send`: the runner drives them on one thread.
#[allow(async_fn_in_trait)]
pub trait ToruPlugin: 'static {
    /// What `--metadata` prints. The runner adds `"protocol": "1.1"`.
    fn metadata(&self) -> PluginMetadata;

    /// Called once when the host sends `init`, before `ready`. An error is reported to the host and
    /// the plugin exits.
    async fn init(&self, ctx: &PluginContext) -> Result<(), PluginError> {
        let _ = ctx;
        Ok(())
    }

    /// Answer one HTTP request. `req.path` is the part after the plugin's route, query included.
    async fn handle_http(&self, ctx: &PluginContext, req: HttpRequest) -> HttpResponse;

    /// The plugin's settings changed (a 1.1 `config` message; a 1.0 host restarts the plugin
    /// instead). `config` is the whole new settings object, already in [`PluginContext::config`]
    /// when this runs. Return an error to refuse them: the host reports its message, and
    /// [`PluginContext::config`] goes back to the previous settings. An error with code
    /// [`ErrorCode::Unsupported`] asks the host to restart the plugin, which then gets the new
    /// settings in `init`. The default accepts every change (handlers read
    /// [`PluginContext::config`] when they need a setting).
    async fn on_config(
        &self,
        ctx: &PluginContext,
        config: serde_json::Value,
    ) -> Result<(), PluginError> {
        let _ = (ctx, config);
        Ok(())
    }

    /// A message arrived on a topic the plugin subscribed to ([`MqttClient::subscribe`]); `topic`
    /// is relative to the plugin's own part of the topic tree. Each runs in its own task. The
    /// default ignores it.
    async fn on_mqtt_message(&self, ctx: &PluginContext, message: MqttDelivery) {
        let _ = (ctx, message);
    }

    /// Answer a KV request from a legacy 1.0 host, which could ask plugins for values. Toru keeps
    /// KV in the host (see [`PluginContext::kv`]), so the default answers `unsupported`.
    async fn handle_kv(
        &self,
        ctx: &PluginContext,
        req: KvRequest,
    ) -> Result<Option<String>, PluginError> {
        let _ = (ctx, req);
        Err(PluginError::new(
            ErrorCode::Unsupported,
            "this plugin keeps no KV of its own",
        ))
    }
}

/// An error a plugin reports to the host (init failure, KV failure).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    /// The code sent in the `error` frame.
    pub code: ErrorCode,
    /// A human sentence.
    pub message: String,
}

impl PluginError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> PluginError {
        PluginError {
            code,
            message: message.into(),
        }
    }

    /// An `internal` error.
    pub fn internal(message: impl Into<String>) -> PluginError {
        PluginError::new(ErrorCode::Internal, message)
    }
}

impl From<KvError> for PluginError {
    fn from(e: KvError) -> PluginError {
        match e {
            KvError::Host(reply) => PluginError::new(reply.code, reply.message),
            other => PluginError::internal(other.to_string()),
        }
    }
}

/// Why a KV call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The host answered with an `error` frame (limit, quota, degraded store …).
    #[error("host refused the KV request: {0}")]
    Host(#[source] ErrorReply),
    /// The connection to the host is gone.
    #[error("not connected to the host")]
    Disconnected,
    /// The host speaks protocol 1.0, which has no host KV.
    #[error("the host speaks protocol 1.0, which has no KV store")]
    Unsupported,
    /// The host's reply did not match the request.
    #[error("unexpected KV reply from the host: {0}")]
    Protocol(String),
}

/// Why an MQTT call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MqttError {
    /// The host answered with an `error` frame: its MQTT bridge is off (`unavailable`), the topic
    /// leaves the plugin's part of the tree (`bad_request`), the payload is too large, …
    #[error("host refused the MQTT request: {0}")]
    Host(#[source] ErrorReply),
    /// The connection to the host is gone.
    #[error("not connected to the host")]
    Disconnected,
    /// The host speaks protocol 1.0, which has no MQTT bridge.
    #[error("the host speaks protocol 1.0, which has no MQTT bridge")]
    Unsupported,
    /// The host's reply did not match the request.
    #[error("unexpected MQTT reply from the host: {0}")]
    Protocol(String),
}

/// Publish and subscribe through the host's MQTT bridge, under the plugin's own part of the topic
/// tree (`<topic_prefix>/plugins/<id>/`): topics are relative to it. The plugin needs no MQTT
/// client or broker credentials of its own.
#[derive(Clone)]
pub struct MqttClient {
    /// The 1.1 connection; `None` under a 1.0 host.
    link: Option<Rc<PluginMux>>,
}

impl fmt::Debug for MqttClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttClient").finish_non_exhaustive()
    }
}

impl MqttClient {
    async fn call(&self, req: MqttRequest) -> Result<(), MqttError> {
        let link = self.link.as_ref().ok_or(MqttError::Unsupported)?;
        let frame = link
            .request(PluginMessage::Mqtt(req))
            .await
            .map_err(|e| match e {
                MuxError::Busy(_) | MuxError::TooLarge { .. } => {
                    MqttError::Host(ErrorReply::new(ErrorCode::Busy, e.to_string()))
                }
                _ => MqttError::Disconnected,
            })?;
        match frame.message {
            HostMessage::MqttOk => Ok(()),
            HostMessage::Error(e) => Err(MqttError::Host(e)),
            other => Err(MqttError::Protocol(format!("{other:?}"))),
        }
    }

    /// Publish `payload` on `topic` (relative; retained if `retain`), QoS 1. Returns once the host
    /// queued it for the broker (it is delivered when the bridge is connected; see docs/MQTT.md).
    pub async fn publish(&self, topic: &str, payload: &str, retain: bool) -> Result<(), MqttError> {
        self.call(MqttRequest::Publish {
            topic: topic.into(),
            payload: payload.into(),
            retain,
            qos: None,
        })
        .await
    }

    /// Receive what is published on `filter` (relative; `+` and `#` as whole levels, not the
    /// first) through [`ToruPlugin::on_mqtt_message`].
    pub async fn subscribe(&self, filter: &str) -> Result<(), MqttError> {
        self.call(MqttRequest::Subscribe {
            filter: filter.into(),
        })
        .await
    }
}

/// Why the runner stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// `TORU_PLUGIN_SOCKET` is not set.
    #[error("{SOCKET_ENV} is not set: this program is a Toru plugin and is started by the host")]
    NoSocket,
    /// Something other than a socket is at the socket path; it is left alone.
    #[error("refusing to replace {path}: it exists and is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Binding or preparing the socket failed.
    #[error("cannot listen on {path}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Accepting the host's connection failed.
    #[error("accept failed")]
    Accept(#[source] io::Error),
    /// Reading or writing a frame failed.
    #[error("connection to the host failed")]
    Frame(#[from] FrameError),
    /// `init` failed.
    #[error("init failed: {0}")]
    Init(PluginError),
    /// The runtime could not be built.
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
}

/// What a plugin knows about its host; cheap to clone.
#[derive(Clone)]
pub struct PluginContext {
    /// The device's instance id, from `init`.
    pub instance_id: String,
    /// The `init` message as received.
    pub init: Rc<Init>,
    /// A client of the host's KV store, scoped to this plugin.
    pub kv: KvClient,
    /// Publish and subscribe through the host's MQTT bridge, under this plugin's topics.
    pub mqtt: MqttClient,
    log: Logger,
    /// The current settings, shared by every clone of this context.
    config: Rc<RefCell<serde_json::Value>>,
}

impl fmt::Debug for PluginContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginContext")
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl PluginContext {
    /// Send a log record to the host (stderr under a 1.0 host).
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        self.log.log(level, message.into());
    }

    /// The plugin's licence as the host verified it at this start (signature by the package's
    /// publisher, this device, the dates): `None` when the plugin has none installed. A plugin
    /// whose manifest says `license = "required"` is started only with one.
    pub fn license(&self) -> Option<&crate::protocol::License> {
        self.init.license.as_ref()
    }

    /// The plugin's current settings, a JSON object (`{}` when it has none): those of `init`,
    /// replaced by each `config` message the plugin accepted (see [`ToruPlugin::on_config`]).
    pub fn config(&self) -> serde_json::Value {
        self.config.borrow().clone()
    }
}

/// Where log records go: `log` frames on a 1.1 connection, stderr otherwise.
#[derive(Clone)]
struct Logger {
    link: Option<Rc<PluginMux>>,
}

impl Logger {
    fn log(&self, level: LogLevel, message: String) {
        match &self.link {
            Some(link) => {
                // A full queue drops the record rather than block the caller: logs are best effort.
                let _ = link.try_send(None, PluginMessage::Log(LogRecord { level, message }));
            }
            None => eprintln!("[{}] {message}", level.as_str()),
        }
    }
}

/// A client of the host's KV store over the plugin socket. Values are durable when `set` returns.
#[derive(Clone)]
pub struct KvClient {
    /// The 1.1 connection; `None` under a 1.0 host, which has no host KV.
    link: Option<Rc<PluginMux>>,
}

impl fmt::Debug for KvClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvClient")
            .field(
                "connected",
                &self.link.as_ref().is_some_and(|l| !l.is_closed()),
            )
            .finish_non_exhaustive()
    }
}

impl KvClient {
    async fn call(&self, req: KvRequest) -> Result<KvReply, KvError> {
        let link = self.link.as_ref().ok_or(KvError::Unsupported)?;
        let frame = link
            .request(PluginMessage::Kv(req))
            .await
            .map_err(|e| match e {
                MuxError::Busy(max) => KvError::Host(ErrorReply::new(
                    ErrorCode::Busy,
                    format!("more than {max} KV requests in flight"),
                )),
                MuxError::TooLarge { .. } => {
                    KvError::Host(ErrorReply::new(ErrorCode::TooLarge, e.to_string()))
                }
                _ => KvError::Disconnected,
            })?;
        match frame.message {
            HostMessage::Kv(payload) => payload
                .into_reply()
                .map_err(|e| KvError::Host(ErrorReply::new(ErrorCode::BadRequest, e.to_string()))),
            HostMessage::Error(e) => Err(KvError::Host(e)),
            other => Err(KvError::Protocol(format!("{other:?}"))),
        }
    }

    /// Read a key; `None` when absent.
    pub async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        match self.call(KvRequest::Get { key: key.into() }).await? {
            KvReply::Get { value, .. } => Ok(value),
            other => Err(KvError::Protocol(format!("{other:?}"))),
        }
    }

    /// Write a key; returns once the host has made it durable.
    pub async fn set(&self, key: &str, value: &str) -> Result<(), KvError> {
        match self
            .call(KvRequest::Set {
                key: key.into(),
                value: value.into(),
            })
            .await?
        {
            KvReply::Set { .. } => Ok(()),
            other => Err(KvError::Protocol(format!("{other:?}"))),
        }
    }

    /// Remove a key; returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        match self.call(KvRequest::Delete { key: key.into() }).await? {
            KvReply::Delete { existed, .. } => Ok(existed),
            other => Err(KvError::Protocol(format!("{other:?}"))),
        }
    }

    /// Keys starting with `prefix`, in byte order, at most `limit` (≤ 1000) after `start_after`.
    /// Returns the keys and whether more follow.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<(Vec<String>, bool), KvError> {
        let req = KvRequest::List {
            prefix: prefix.into(),
            start_after: start_after.map(Into::into),
            limit,
        };
        match self.call(req).await? {
            KvReply::List { keys, truncated } => Ok((keys, truncated)),
            other => Err(KvError::Protocol(format!("{other:?}"))),
        }
    }
}

/// Run a plugin: handles `--metadata`, binds `TORU_PLUGIN_SOCKET`, serves the host until it
/// shuts the plugin down or goes away. Call it from `main` and return its exit code.
pub fn run<P: ToruPlugin>(plugin: P) -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--metadata") {
        return print_metadata(&plugin.metadata());
    }
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)
        .and_then(|rt| {
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async {
                let path = std::env::var_os(SOCKET_ENV)
                    .map(PathBuf::from)
                    .ok_or(RunError::NoSocket)?;
                let listener = bind(&path)?;
                serve(plugin, listener).await
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!("plugin error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn print_metadata(meta: &PluginMetadata) -> ExitCode {
    let mut meta = meta.clone();
    meta.protocol = Some(PROTOCOL_VERSION.to_string());
    match serde_json::to_string_pretty(&meta) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot print metadata: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Bind a listening socket at `path`: creates a missing parent directory (`0700`), removes a stale
/// socket file, refuses to touch anything else, and makes the socket `0600`.
pub fn bind(path: &Path) -> Result<UnixListener, RunError> {
    let bind_err = |source| RunError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(bind_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(bind_err)?,
        Ok(_) => {
            return Err(RunError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// How one connection ended.
enum ConnEnd {
    /// EOF on a 1.1 connection: the host is gone.
    HostGone,
    /// EOF on a 1.0 connection: wait for the next one.
    NextConnection,
    /// The host asked us to stop.
    Shutdown,
}

struct Shared<P> {
    plugin: P,
    ctx: RefCell<Option<PluginContext>>,
    /// Held while one `config` message is applied, so they apply one at a time, in order (the
    /// lock is fair, and the tasks first run in the order they were spawned).
    config_turn: tokio::sync::Mutex<()>,
}

/// Serve the host on an already bound listener until shutdown or until a 1.1 host goes away.
/// Must run inside a `LocalSet` (as [`run`] does).
pub async fn serve<P: ToruPlugin>(plugin: P, listener: UnixListener) -> Result<(), RunError> {
    let shared = Rc::new(Shared {
        plugin,
        ctx: RefCell::new(None),
        config_turn: tokio::sync::Mutex::new(()),
    });
    loop {
        let (stream, _) = listener.accept().await.map_err(RunError::Accept)?;
        match serve_connection(&shared, stream).await? {
            ConnEnd::NextConnection => continue,
            ConnEnd::HostGone | ConnEnd::Shutdown => return Ok(()),
        }
    }
}

async fn serve_connection<P: ToruPlugin>(
    shared: &Rc<Shared<P>>,
    stream: UnixStream,
) -> Result<ConnEnd, RunError> {
    let (mut reader, writer) = stream.into_split();
    let link: Rc<PluginMux> = Mux::start(writer, MuxConfig::plugin());
    let mut modern = shared
        .ctx
        .borrow()
        .as_ref()
        .is_some_and(|c| c.init.protocol.is_some());

    let (failed_tx, mut failed_rx) = mpsc::channel::<PluginError>(1);
    let end = loop {
        let read = tokio::select! {
            read = tokio_codec::read_frame(&mut reader, MAX_FRAME_LEN) => read,
            Some(e) = failed_rx.recv() => {
                finish(&link).await;
                return Err(RunError::Init(e));
            }
        };
        let body = match read {
            Ok(Some(body)) => body,
            Ok(None) => {
                break if modern {
                    ConnEnd::HostGone
                } else {
                    ConnEnd::NextConnection
                };
            }
            Err(e) => {
                finish(&link).await;
                return Err(e.into());
            }
        };
        let frame = match decode_host_frame(&body) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("plugin: rejected frame from host: {e}");
                link.reject(&e);
                continue;
            }
        };
        // A `kv` or `error` frame answers one of our KV requests when its id is pending; a `kv`
        // frame that answers nothing is a legacy host's request.
        let frame = match frame.message {
            HostMessage::Kv(_) | HostMessage::Error(_) | HostMessage::MqttOk => {
                match link.resolve(frame) {
                    None => continue,
                    Some(unclaimed) => unclaimed,
                }
            }
            _ => frame,
        };
        let id = frame.request_id;
        match frame.message {
            HostMessage::Init(init) => {
                modern = init.protocol.is_some();
                let live = modern.then(|| link.clone());
                let ctx = PluginContext {
                    instance_id: init.instance_id.clone(),
                    config: Rc::new(RefCell::new(init.config.clone())),
                    init: Rc::new(init),
                    kv: KvClient { link: live.clone() },
                    mqtt: MqttClient { link: live.clone() },
                    log: Logger { link: live },
                };
                *shared.ctx.borrow_mut() = Some(ctx.clone());
                // Init runs in its own task: it may call KV, whose replies this loop must read.
                let shared = shared.clone();
                let link = link.clone();
                let failed = failed_tx.clone();
                tokio::task::spawn_local(async move {
                    match shared.plugin.init(&ctx).await {
                        Ok(()) if modern => {
                            let _ = link.send(id, PluginMessage::Ready).await;
                        }
                        Ok(()) => {}
                        Err(e) => {
                            if modern {
                                let reply = ErrorReply::new(e.code, e.message.clone());
                                let _ = link.send(id, PluginMessage::Error(reply)).await;
                            }
                            let _ = failed.send(e).await;
                        }
                    }
                });
            }
            HostMessage::Shutdown => {
                if modern || id.is_some() {
                    let _ = link.send(id, PluginMessage::ShutdownAck).await;
                }
                break ConnEnd::Shutdown;
            }
            HostMessage::Ping { seq } => {
                let _ = link.send(id, PluginMessage::Pong { seq }).await;
            }
            HostMessage::Http(req) => {
                let ctx = context(shared);
                let shared = shared.clone();
                let link = link.clone();
                tokio::task::spawn_local(async move {
                    let reply = shared.plugin.handle_http(&ctx, req).await;
                    send_http_reply(&link, id, reply, modern).await;
                });
            }
            HostMessage::Kv(payload) => {
                let ctx = context(shared);
                let shared = shared.clone();
                let link = link.clone();
                tokio::task::spawn_local(async move {
                    let msg = match payload.into_request() {
                        Err(e) => PluginMessage::Error(ErrorReply::new(
                            ErrorCode::BadRequest,
                            e.to_string(),
                        )),
                        Ok(req) => match shared.plugin.handle_kv(&ctx, req).await {
                            Ok(value) => PluginMessage::HttpReply(HttpResponse::json(
                                200,
                                &serde_json::json!({ "value": value }),
                            )),
                            Err(e) => PluginMessage::Error(ErrorReply::new(e.code, e.message)),
                        },
                    };
                    let _ = link.send(id, msg).await;
                });
            }
            HostMessage::Error(reply) => eprintln!("plugin: error from host: {reply}"),
            HostMessage::MqttOk => {}
            HostMessage::MqttMessage(message) => {
                let ctx = context(shared);
                let shared = shared.clone();
                tokio::task::spawn_local(async move {
                    shared.plugin.on_mqtt_message(&ctx, message).await;
                });
            }
            HostMessage::Config(config) => {
                if !modern {
                    // 1.0 has no `config` message (nor an `error` frame to refuse it with).
                    eprintln!("plugin: ignored a config message from a 1.0 host");
                    continue;
                }
                let shared = shared.clone();
                let link = link.clone();
                tokio::task::spawn_local(async move {
                    let msg = match apply_config(&shared, config).await {
                        Ok(()) => PluginMessage::ConfigOk,
                        Err(e) => PluginMessage::Error(ErrorReply::new(e.code, e.message)),
                    };
                    let _ = link.send(id, msg).await;
                });
            }
        }
    };
    finish(&link).await;
    Ok(end)
}

/// Apply a `config` message: put the settings in place, run [`ToruPlugin::on_config`], put the
/// previous ones back if it refuses. One at a time.
async fn apply_config<P: ToruPlugin>(
    shared: &Shared<P>,
    config: serde_json::Value,
) -> Result<(), PluginError> {
    let _turn = shared.config_turn.lock().await;
    let Some(ctx) = shared.ctx.borrow().clone() else {
        return Err(PluginError::new(
            ErrorCode::Unavailable,
            "settings arrived before init",
        ));
    };
    let previous = ctx.config.replace(config.clone());
    let result = shared.plugin.on_config(&ctx, config).await;
    if result.is_err() {
        *ctx.config.borrow_mut() = previous;
    }
    result
}

/// End a connection: fail every KV call still waiting (its reply can no longer arrive), write
/// what is queued, close the write half.
async fn finish(link: &PluginMux) {
    link.fail_all();
    if let Err(e) = link.close().await {
        eprintln!("plugin: cannot write to host: {e}");
    }
}

/// Send a handler's reply. One over the frame limit is not sent (it would break the connection):
/// the request is answered `too_large` instead, as an `error` frame, or under a 1.0 host (which
/// has no `error` frame) as a `413` reply.
async fn send_http_reply(link: &PluginMux, id: Option<String>, reply: HttpResponse, modern: bool) {
    if let Err(e @ MuxError::TooLarge { .. }) =
        link.send(id.clone(), PluginMessage::HttpReply(reply)).await
    {
        let message = format!("reply is too large: {e}");
        eprintln!("plugin: {message}");
        let msg = if modern {
            PluginMessage::Error(ErrorReply::new(ErrorCode::TooLarge, message))
        } else {
            PluginMessage::HttpReply(HttpResponse::json(
                413,
                &serde_json::json!({ "error": "too_large", "message": message }),
            ))
        };
        let _ = link.send(id, msg).await;
    }
}

/// The context for a handler; before `init` (a legacy host may skip it) a placeholder.
fn context<P>(shared: &Rc<Shared<P>>) -> PluginContext {
    if let Some(ctx) = shared.ctx.borrow().as_ref() {
        return ctx.clone();
    }
    PluginContext {
        instance_id: String::new(),
        init: Rc::new(Init {
            instance_id: String::new(),
            plugin_socket: String::new(),
            log_path: String::new(),
            protocol: None,
            heartbeat_interval_ms: None,
            max_frame_len: None,
            config: empty_config(),
            license: None,
        }),
        kv: KvClient { link: None },
        mqtt: MqttClient { link: None },
        log: Logger { link: None },
        config: Rc::new(RefCell::new(empty_config())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::protocol::decode_plugin_frame;
    use tokio::io::AsyncWriteExt;

    /// A plugin whose page shows its settings and which refuses an empty `greeting`.
    struct Settings {
        seen: Rc<RefCell<Vec<serde_json::Value>>>,
    }

    impl ToruPlugin for Settings {
        fn metadata(&self) -> PluginMetadata {
            PluginMetadata {
                id: "settings".into(),
                name: "Settings".into(),
                version: "0".into(),
                author: None,
                icon: String::new(),
                route: "/settings".into(),
                protocol: None,
            }
        }

        async fn handle_http(&self, ctx: &PluginContext, _req: HttpRequest) -> HttpResponse {
            HttpResponse::json(200, &ctx.config())
        }

        async fn on_config(
            &self,
            ctx: &PluginContext,
            config: serde_json::Value,
        ) -> Result<(), PluginError> {
            // What the context says while the callback runs: already the new settings.
            self.seen.borrow_mut().push(ctx.config());
            if config["greeting"] == "" {
                return Err(PluginError::new(
                    ErrorCode::BadRequest,
                    "greeting must not be empty",
                ));
            }
            Ok(())
        }
    }

    /// Plays the host on the socket of a plugin served by [`serve`].
    struct Host {
        stream: UnixStream,
        next: u64,
    }

    impl Host {
        async fn request(&mut self, msg: HostMessage) -> crate::protocol::Frame<PluginMessage> {
            self.next += 1;
            let id = format!("h{}", self.next);
            let frame = crate::protocol::Frame::new(Some(id.clone()), msg);
            tokio_codec::write_frame(&mut self.stream, &frame.encode(), MAX_FRAME_LEN)
                .await
                .unwrap();
            loop {
                let body = tokio_codec::read_frame(&mut self.stream, MAX_FRAME_LEN)
                    .await
                    .unwrap()
                    .expect("a reply");
                let reply = decode_plugin_frame(&body).unwrap();
                if reply.request_id.as_deref() == Some(id.as_str()) {
                    return reply;
                }
            }
        }

        async fn page(&mut self) -> serde_json::Value {
            let req = HttpRequest {
                method: "GET".into(),
                path: "/".into(),
                headers: Default::default(),
                body: None,
                body_encoding: Default::default(),
            };
            match self.request(HostMessage::Http(req)).await.message {
                PluginMessage::HttpReply(r) => serde_json::from_str(&r.body.unwrap()).unwrap(),
                other => panic!("{other:?}"),
            }
        }
    }

    fn init(config: serde_json::Value) -> HostMessage {
        HostMessage::Init(Init {
            instance_id: "i".into(),
            plugin_socket: String::new(),
            log_path: String::new(),
            protocol: Some(PROTOCOL_VERSION.into()),
            heartbeat_interval_ms: Some(5000),
            max_frame_len: Some(MAX_FRAME_LEN as u64),
            config,
            license: None,
        })
    }

    /// Settings come with init and change with each `config` message: the context follows them,
    /// `on_config` sees the new ones, a refusal is answered with an `error` and changes nothing.
    #[test]
    fn settings_arrive_in_init_and_follow_config_messages() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("toru-sdk-cfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("p.sock");
        tokio::task::LocalSet::new().block_on(&rt, async {
            let listener = bind(&path).unwrap();
            let seen = Rc::new(RefCell::new(Vec::new()));
            let served = tokio::task::spawn_local(serve(Settings { seen: seen.clone() }, listener));
            let mut host = Host {
                stream: UnixStream::connect(&path).await.unwrap(),
                next: 0,
            };
            let ready = host
                .request(init(serde_json::json!({"greeting": "hello"})))
                .await;
            assert_eq!(ready.message, PluginMessage::Ready);
            assert_eq!(host.page().await, serde_json::json!({"greeting": "hello"}));

            let new = serde_json::json!({"greeting": "howdy", "nested": {"n": [1, 2]}});
            let ok = host.request(HostMessage::Config(new.clone())).await;
            assert_eq!(ok.message, PluginMessage::ConfigOk);
            assert_eq!(host.page().await, new);

            let refused = host
                .request(HostMessage::Config(serde_json::json!({"greeting": ""})))
                .await;
            match refused.message {
                PluginMessage::Error(e) => {
                    assert_eq!(e.code, ErrorCode::BadRequest);
                    assert_eq!(e.message, "greeting must not be empty");
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(host.page().await, new, "a refused change is not kept");
            assert_eq!(
                *seen.borrow(),
                vec![new.clone(), serde_json::json!({"greeting": ""})]
            );

            let bye = host.request(HostMessage::Shutdown).await;
            assert_eq!(bye.message, PluginMessage::ShutdownAck);
            served.await.unwrap().unwrap();
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Subscribes in `init`; answers each message on `cmd/<x>` by publishing it on `echo/<x>`.
    struct Echo;

    impl ToruPlugin for Echo {
        fn metadata(&self) -> PluginMetadata {
            PluginMetadata {
                id: "echo".into(),
                name: "Echo".into(),
                version: "0".into(),
                author: None,
                icon: String::new(),
                route: "/echo".into(),
                protocol: None,
            }
        }

        async fn init(&self, ctx: &PluginContext) -> Result<(), PluginError> {
            ctx.mqtt
                .subscribe("cmd/#")
                .await
                .map_err(|e| PluginError::internal(e.to_string()))
        }

        async fn handle_http(&self, _ctx: &PluginContext, _req: HttpRequest) -> HttpResponse {
            HttpResponse::json(200, &serde_json::json!({}))
        }

        async fn on_mqtt_message(&self, ctx: &PluginContext, m: MqttDelivery) {
            let rest = m.topic.strip_prefix("cmd/").unwrap_or(&m.topic);
            let answer = ctx
                .mqtt
                .publish(&format!("echo/{rest}"), &m.payload, false)
                .await;
            // The host refuses the second one: the SDK hands the refusal back.
            let refused = ctx.mqtt.publish("../escape", "x", false).await;
            let outcome = match (answer, refused) {
                (Ok(()), Err(MqttError::Host(e))) => e.message,
                other => format!("unexpected: {other:?}"),
            };
            ctx.log(LogLevel::Info, outcome);
        }
    }

    /// `mqtt` through the SDK: a subscribe answered `ok`, a delivered message reaching
    /// `on_mqtt_message`, a publish answered `ok` and one answered with an `error`.
    #[test]
    fn mqtt_requests_and_deliveries_go_through_the_context() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("toru-sdk-mqtt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("p.sock");
        tokio::task::LocalSet::new().block_on(&rt, async {
            let listener = bind(&path).unwrap();
            let served = tokio::task::spawn_local(serve(Echo, listener));
            let mut stream = UnixStream::connect(&path).await.unwrap();
            let write = |f: crate::protocol::Frame<HostMessage>| f.encode();
            let init_frame = crate::protocol::Frame::new(Some("h1".into()), init(empty_config()));
            tokio_codec::write_frame(&mut stream, &write(init_frame), MAX_FRAME_LEN)
                .await
                .unwrap();
            let mut seen = Vec::new();
            for _ in 0..10 {
                let body = tokio_codec::read_frame(&mut stream, MAX_FRAME_LEN)
                    .await
                    .unwrap()
                    .expect("a frame");
                let f = decode_plugin_frame(&body).unwrap();
                let reply = match &f.message {
                    PluginMessage::Mqtt(MqttRequest::Publish { topic, .. })
                        if topic.starts_with("..") =>
                    {
                        Some(HostMessage::Error(ErrorReply::new(
                            ErrorCode::BadRequest,
                            "leaves the plugin's topics",
                        )))
                    }
                    PluginMessage::Mqtt(_) => Some(HostMessage::MqttOk),
                    _ => None,
                };
                if let Some(r) = reply {
                    let out = crate::protocol::Frame::new(f.request_id.clone(), r);
                    tokio_codec::write_frame(&mut stream, &out.encode(), MAX_FRAME_LEN)
                        .await
                        .unwrap();
                }
                if f.message == PluginMessage::Ready {
                    let m = crate::protocol::Frame::new(
                        None,
                        HostMessage::MqttMessage(MqttDelivery {
                            topic: "cmd/go".into(),
                            payload: "now".into(),
                        }),
                    );
                    tokio_codec::write_frame(&mut stream, &m.encode(), MAX_FRAME_LEN)
                        .await
                        .unwrap();
                }
                let done = matches!(&f.message, PluginMessage::Log(_));
                seen.push(f.message);
                if done {
                    break;
                }
            }
            assert_eq!(
                seen[0],
                PluginMessage::Mqtt(MqttRequest::Subscribe {
                    filter: "cmd/#".into()
                })
            );
            assert_eq!(seen[1], PluginMessage::Ready);
            assert_eq!(
                seen[2],
                PluginMessage::Mqtt(MqttRequest::Publish {
                    topic: "echo/go".into(),
                    payload: "now".into(),
                    retain: false,
                    qos: None
                })
            );
            match seen.last() {
                Some(PluginMessage::Log(l)) => assert_eq!(l.message, "leaves the plugin's topics"),
                other => panic!("{other:?}"),
            }
            drop(stream);
            served.await.unwrap().unwrap();
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Under a legacy host (init without `protocol` or `config`) the settings are `{}`, and a
    /// `config` frame is ignored (1.0 has neither it nor an `error` frame to answer with).
    #[test]
    fn a_legacy_host_gives_empty_settings() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("toru-sdk-cfg10-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("p.sock");
        tokio::task::LocalSet::new().block_on(&rt, async {
            let listener = bind(&path).unwrap();
            let seen = Rc::new(RefCell::new(Vec::new()));
            let served = tokio::task::spawn_local(serve(
                Settings { seen: seen.clone() },
                listener,
            ));
            // One message per connection, as a 1.0 host sends them.
            let legacy_init = br#"{"type":"lifecycle","timestamp":"2025-12-30T12:00:00Z","request_id":null,"payload":{"type":"lifecycle","action":"init","instance_id":"i","plugin_socket":"s","log_path":"l"}}"#;
            let config = crate::protocol::Frame::new(
                Some("h1".into()),
                HostMessage::Config(serde_json::json!({"greeting": "no"})),
            )
            .encode();
            for body in [&legacy_init[..], &config] {
                let mut s = UnixStream::connect(&path).await.unwrap();
                tokio_codec::write_frame(&mut s, body, MAX_FRAME_LEN)
                    .await
                    .unwrap();
                s.shutdown().await.unwrap();
                // The plugin writes nothing back and closes its side when done.
                let none = tokio_codec::read_frame(&mut s, MAX_FRAME_LEN).await.unwrap();
                assert!(none.is_none(), "{none:?}");
            }
            let mut host = Host {
                stream: UnixStream::connect(&path).await.unwrap(),
                next: 0,
            };
            assert_eq!(host.page().await, serde_json::json!({}));
            drop(host);
            assert!(seen.borrow().is_empty());
            let mut s = UnixStream::connect(&path).await.unwrap();
            let bye = crate::protocol::Frame::new(None, HostMessage::Shutdown).encode();
            tokio_codec::write_frame(&mut s, &bye, MAX_FRAME_LEN)
                .await
                .unwrap();
            served.await.unwrap().unwrap();
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A handler's reply over the frame limit would break the connection if written: it is
    /// answered `too_large` instead (an `error` frame under 1.1, a 413 reply under 1.0), and the
    /// connection keeps working.
    #[test]
    fn an_oversized_http_reply_is_answered_too_large() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, async {
            for modern in [true, false] {
                let (near, mut far) = tokio::io::duplex(64 * 1024);
                let config = MuxConfig {
                    max_frame_len: 300,
                    ..MuxConfig::plugin()
                };
                let link: Rc<PluginMux> = Mux::start(near, config);
                let big = HttpResponse::text(200, "text/plain", "x".repeat(400));
                send_http_reply(&link, Some("h1".into()), big, modern).await;
                send_http_reply(&link, Some("h2".into()), HttpResponse::new(204), modern).await;
                link.close().await.unwrap();
                let mut frames = Vec::new();
                while let Some(body) = tokio_codec::read_frame(&mut far, MAX_FRAME_LEN)
                    .await
                    .unwrap()
                {
                    frames.push(decode_plugin_frame(&body).unwrap());
                }
                assert_eq!(frames.len(), 2, "{frames:?}");
                assert_eq!(frames[0].request_id.as_deref(), Some("h1"));
                match &frames[0].message {
                    PluginMessage::Error(e) if modern => assert_eq!(e.code, ErrorCode::TooLarge),
                    PluginMessage::HttpReply(r) if !modern => assert_eq!(r.status, 413),
                    other => panic!("modern={modern}: {other:?}"),
                }
                assert!(
                    matches!(&frames[1].message, PluginMessage::HttpReply(r) if r.status == 204)
                );
            }
        });
    }
}
