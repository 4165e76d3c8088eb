//! The plugin SDK: the [`ToruPlugin`] trait, [`PluginContext`] and the runner ([`run`], [`serve`]).
//!
//! The runner owns the socket. One task reads frames and dispatches them; one task writes frames from
//! a bounded queue; every HTTP request runs in its own local task, so a slow handler never delays a
//! heartbeat or another request. Everything runs on a `current_thread` runtime inside a `LocalSet`,
//! which is why the trait needs neither `Send` nor `Sync`.
//!
//! A 1.1 host keeps one connection; when it closes, the host is gone and the plugin exits. A legacy
//! 1.0 host connects once per message; the runner notices (init without `protocol`) and accepts
//! again after each connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{FrameError, MAX_FRAME_LEN, tokio_codec};
use crate::protocol::{
    ErrorCode, ErrorReply, Frame, HostMessage, HttpRequest, HttpResponse, Init, KvReply, KvRequest,
    LogLevel, LogRecord, PROTOCOL_VERSION, PluginMessage, PluginMetadata, decode_host_frame,
};

/// The environment variable holding the socket path.
pub const SOCKET_ENV: &str = "TORU_PLUGIN_SOCKET";
/// Frames queued for writing before senders wait.
const WRITE_QUEUE: usize = 64;
/// KV requests a plugin may have in flight (the host's limit too).
const MAX_KV_IN_FLIGHT: usize = 16;

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
    log: Logger,
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
}

#[derive(Clone)]
struct Logger {
    out: Option<mpsc::Sender<Vec<u8>>>,
}

impl Logger {
    fn log(&self, level: LogLevel, message: String) {
        match &self.out {
            Some(out) => {
                let frame = Frame::new(None, PluginMessage::Log(LogRecord { level, message }));
                // A full queue drops the record rather than block the caller: logs are best effort.
                let _ = out.try_send(frame.encode());
            }
            None => eprintln!("[{}] {message}", level.as_str()),
        }
    }
}

type Pending = Rc<RefCell<HashMap<String, oneshot::Sender<Result<KvReply, ErrorReply>>>>>;

/// A client of the host's KV store over the plugin socket. Values are durable when `set` returns.
#[derive(Clone)]
pub struct KvClient {
    out: Option<mpsc::Sender<Vec<u8>>>,
    pending: Pending,
    next_id: Rc<Cell<u64>>,
}

impl fmt::Debug for KvClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvClient")
            .field("connected", &self.out.is_some())
            .finish_non_exhaustive()
    }
}

impl KvClient {
    async fn call(&self, req: KvRequest) -> Result<KvReply, KvError> {
        let out = self.out.as_ref().ok_or(KvError::Unsupported)?;
        if self.pending.borrow().len() >= MAX_KV_IN_FLIGHT {
            return Err(KvError::Host(ErrorReply::new(
                ErrorCode::Busy,
                format!("more than {MAX_KV_IN_FLIGHT} KV requests in flight"),
            )));
        }
        let id = format!("p{}", self.next_id.get());
        self.next_id.set(self.next_id.get() + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id.clone(), tx);
        let frame = Frame::new(Some(id.clone()), PluginMessage::Kv(req));
        if out.send(frame.encode()).await.is_err() {
            self.pending.borrow_mut().remove(&id);
            return Err(KvError::Disconnected);
        }
        match rx.await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(KvError::Host(e)),
            Err(_) => Err(KvError::Disconnected),
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
}

/// Serve the host on an already bound listener until shutdown or until a 1.1 host goes away.
/// Must run inside a `LocalSet` (as [`run`] does).
pub async fn serve<P: ToruPlugin>(plugin: P, listener: UnixListener) -> Result<(), RunError> {
    let shared = Rc::new(Shared {
        plugin,
        ctx: RefCell::new(None),
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
    let (mut reader, mut writer) = stream.into_split();
    let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let writer_task = tokio::task::spawn_local(async move {
        // An empty body is the close marker: everything queued before it is written first.
        while let Some(body) = out_rx.recv().await {
            if body.is_empty() {
                break;
            }
            if let Err(e) = tokio_codec::write_frame(&mut writer, &body, MAX_FRAME_LEN).await {
                eprintln!("plugin: cannot write to host: {e}");
                break;
            }
        }
    });
    let pending: Pending = Rc::new(RefCell::new(HashMap::new()));
    let mut modern = shared
        .ctx
        .borrow()
        .as_ref()
        .is_some_and(|c| c.init.protocol.is_some());
    let send = |out: &mpsc::Sender<Vec<u8>>, id: Option<String>, msg: PluginMessage| {
        let out = out.clone();
        let body = Frame::new(id, msg).encode();
        async move {
            let _ = out.send(body).await;
        }
    };

    let (failed_tx, mut failed_rx) = mpsc::channel::<PluginError>(1);
    let end = loop {
        let read = tokio::select! {
            read = tokio_codec::read_frame(&mut reader, MAX_FRAME_LEN) => read,
            Some(e) = failed_rx.recv() => {
                let _ = out.send(Vec::new()).await;
                let _ = writer_task.await;
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
                let _ = out.send(Vec::new()).await;
                let _ = writer_task.await;
                return Err(e.into());
            }
        };
        let frame = match decode_host_frame(&body) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("plugin: rejected frame from host: {e}");
                if let Some(id) = e.request_id() {
                    send(
                        &out,
                        Some(id.to_string()),
                        PluginMessage::Error(e.to_reply()),
                    )
                    .await;
                }
                continue;
            }
        };
        let id = frame.request_id;
        match frame.message {
            HostMessage::Init(init) => {
                modern = init.protocol.is_some();
                let live = modern.then(|| out.clone());
                let ctx = PluginContext {
                    instance_id: init.instance_id.clone(),
                    init: Rc::new(init),
                    kv: KvClient {
                        out: live.clone(),
                        pending: pending.clone(),
                        next_id: Rc::new(Cell::new(1)),
                    },
                    log: Logger { out: live },
                };
                *shared.ctx.borrow_mut() = Some(ctx.clone());
                // Init runs in its own task: it may call KV, whose replies this loop must read.
                let shared = shared.clone();
                let out = out.clone();
                let failed = failed_tx.clone();
                tokio::task::spawn_local(async move {
                    match shared.plugin.init(&ctx).await {
                        Ok(()) if modern => send(&out, id, PluginMessage::Ready).await,
                        Ok(()) => {}
                        Err(e) => {
                            if modern {
                                let reply = ErrorReply::new(e.code, e.message.clone());
                                send(&out, id, PluginMessage::Error(reply)).await;
                            }
                            let _ = failed.send(e).await;
                        }
                    }
                });
            }
            HostMessage::Shutdown => {
                if modern || id.is_some() {
                    send(&out, id, PluginMessage::ShutdownAck).await;
                }
                break ConnEnd::Shutdown;
            }
            HostMessage::Ping { seq } => send(&out, id, PluginMessage::Pong { seq }).await,
            HostMessage::Http(req) => {
                let ctx = context(shared, &out, &pending);
                let shared = shared.clone();
                let out = out.clone();
                tokio::task::spawn_local(async move {
                    let reply = shared.plugin.handle_http(&ctx, req).await;
                    let _ = out
                        .send(Frame::new(id, PluginMessage::HttpReply(reply)).encode())
                        .await;
                });
            }
            HostMessage::Kv(payload) => {
                let waiter = id.as_ref().and_then(|i| pending.borrow_mut().remove(i));
                match waiter {
                    Some(tx) => {
                        let reply = payload
                            .into_reply()
                            .map_err(|e| ErrorReply::new(ErrorCode::BadRequest, e.to_string()));
                        let _ = tx.send(reply);
                    }
                    None => {
                        let ctx = context(shared, &out, &pending);
                        let shared = shared.clone();
                        let out = out.clone();
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
                                    Err(e) => {
                                        PluginMessage::Error(ErrorReply::new(e.code, e.message))
                                    }
                                },
                            };
                            let _ = out.send(Frame::new(id, msg).encode()).await;
                        });
                    }
                }
            }
            HostMessage::Error(reply) => {
                let waiter = id.as_ref().and_then(|i| pending.borrow_mut().remove(i));
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(Err(reply));
                    }
                    None => eprintln!("plugin: error from host: {reply}"),
                }
            }
        }
    };
    // Fail every KV call still waiting: its reply can no longer arrive.
    pending.borrow_mut().clear();
    let _ = out.send(Vec::new()).await;
    let _ = writer_task.await;
    Ok(end)
}

/// The context for a handler; before `init` (a legacy host may skip it) a placeholder.
fn context<P>(
    shared: &Rc<Shared<P>>,
    out: &mpsc::Sender<Vec<u8>>,
    pending: &Pending,
) -> PluginContext {
    if let Some(ctx) = shared.ctx.borrow().as_ref() {
        return ctx.clone();
    }
    let _ = out;
    PluginContext {
        instance_id: String::new(),
        init: Rc::new(Init {
            instance_id: String::new(),
            plugin_socket: String::new(),
            log_path: String::new(),
            protocol: None,
            heartbeat_interval_ms: None,
            max_frame_len: None,
        }),
        kv: KvClient {
            out: None,
            pending: pending.clone(),
            next_id: Rc::new(Cell::new(1)),
        },
        log: Logger { out: None },
    }
}
