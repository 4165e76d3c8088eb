//! Talking to a running plugin over its socket.
//!
//! - [`Conn`] (protocol 1.1): one persistent connection; a writer task owns the write half and a
//!   reader task the read half. Host requests are matched to replies by `request_id`; plugin KV
//!   requests are answered from the store, scoped to the plugin; `log` frames go to its ring.
//! - [`legacy_exchange`] (protocol 1.0): connect, write one frame, read the reply if one is due,
//!   close. Callers serialise these per plugin (never two connections at once).
//!
//! Limits keep a misbehaving plugin from hurting the host: frames are capped before allocation,
//! requests in flight are capped, every wait has a deadline.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use toru_plugin_api::codec::{FrameError, MAX_CONTROL_FRAME_LEN, tokio_codec};
use toru_plugin_api::protocol::{
    ErrorCode, ErrorReply, Frame, HostMessage, KvPayload, KvReply, KvRequest, MAX_KV_LIST_LIMIT,
    PluginMessage, decode_plugin_frame,
};

use super::logs::LogRing;
use super::view::LogStream;
use crate::store::{Store, StoreError};

/// Host requests in flight to one plugin.
pub const MAX_IN_FLIGHT: usize = 64;
/// Plugin KV requests in flight.
pub const MAX_KV_IN_FLIGHT: usize = 16;
/// Frames queued for the writer.
const WRITE_QUEUE: usize = 64;

/// Why a request to a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The connection is closed.
    #[error("connection to the plugin is closed")]
    Closed,
    /// Too many requests in flight.
    #[error("too many requests in flight")]
    Busy,
    /// No reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The frame could not be read or written.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The reply is not a valid frame.
    #[error("invalid reply: {0}")]
    Invalid(String),
    /// Connecting failed.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
}

type Waiter = oneshot::Sender<Frame<PluginMessage>>;

/// A persistent 1.1 connection.
#[derive(Debug)]
pub struct Conn {
    out: mpsc::Sender<Vec<u8>>,
    pending: Rc<RefCell<HashMap<String, Waiter>>>,
    next_id: Cell<u64>,
    max_frame: usize,
}

/// Why a connection ended (reported once by the reader task).
#[derive(Debug)]
pub enum ConnEnd {
    /// The plugin closed the connection.
    Eof,
    /// The plugin broke the framing (oversized, truncated) or the socket failed.
    Broken(String),
}

impl Conn {
    /// Wrap a connected stream; spawns the reader and writer tasks on the local set. `ended`
    /// receives exactly one [`ConnEnd`].
    pub fn start(
        stream: UnixStream,
        plugin: String,
        store: Store,
        ring: Rc<LogRing>,
        max_frame: usize,
        ended: oneshot::Sender<ConnEnd>,
    ) -> Rc<Conn> {
        let (mut reader, mut writer) = stream.into_split();
        let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let conn = Rc::new(Conn {
            out: out.clone(),
            pending: Rc::new(RefCell::new(HashMap::new())),
            next_id: Cell::new(1),
            max_frame,
        });
        tokio::task::spawn_local(async move {
            while let Some(body) = out_rx.recv().await {
                if tokio_codec::write_frame(&mut writer, &body, max_frame)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let pending = conn.pending.clone();
        let kv_in_flight = Rc::new(Cell::new(0usize));
        tokio::task::spawn_local(async move {
            let end = loop {
                let body = match tokio_codec::read_frame(&mut reader, max_frame).await {
                    Ok(Some(b)) => b,
                    Ok(None) => break ConnEnd::Eof,
                    Err(e) => break ConnEnd::Broken(e.to_string()),
                };
                let frame = match decode_plugin_frame(&body) {
                    Ok(f) => f,
                    Err(e) => {
                        ring.push(
                            LogStream::Host,
                            toru_plugin_api::LogLevel::Warn,
                            &format!("rejected frame from plugin: {e}"),
                        );
                        let Some(id) = e.request_id() else { continue };
                        // A broken reply fails the request waiting for it (answering it with an
                        // `error` would be a reply to a reply); a broken request gets an `error`.
                        let waiter = pending.borrow_mut().remove(id);
                        match waiter {
                            Some(tx) => {
                                let failed = PluginMessage::Error(e.to_reply());
                                let _ = tx.send(Frame::new(Some(id.to_string()), failed));
                            }
                            None => {
                                let reply = Frame::new(
                                    Some(id.to_string()),
                                    HostMessage::Error(e.to_reply()),
                                );
                                let _ = out.try_send(reply.encode());
                            }
                        }
                        continue;
                    }
                };
                let is_http = matches!(frame.message, PluginMessage::HttpReply(_));
                if !is_http && body.len() > MAX_CONTROL_FRAME_LEN {
                    if let Some(id) = frame.request_id.clone() {
                        let e = ErrorReply::new(ErrorCode::TooLarge, "control frame over 1 MiB");
                        let _ = out.try_send(Frame::new(Some(id), HostMessage::Error(e)).encode());
                    }
                    continue;
                }
                match frame.message {
                    PluginMessage::Log(rec) => {
                        ring.push(LogStream::Protocol, rec.level, &rec.message)
                    }
                    PluginMessage::Kv(req) => {
                        let Some(id) = frame.request_id.clone() else {
                            continue;
                        };
                        if kv_in_flight.get() >= MAX_KV_IN_FLIGHT {
                            let e =
                                ErrorReply::new(ErrorCode::Busy, "too many KV requests in flight");
                            let _ =
                                out.try_send(Frame::new(Some(id), HostMessage::Error(e)).encode());
                            continue;
                        }
                        kv_in_flight.set(kv_in_flight.get() + 1);
                        let (store, plugin, out, counter) = (
                            store.clone(),
                            plugin.clone(),
                            out.clone(),
                            kv_in_flight.clone(),
                        );
                        tokio::task::spawn_local(async move {
                            let msg = match serve_kv(&store, &plugin, req).await {
                                Ok(reply) => HostMessage::Kv(KvPayload::from_reply(&reply)),
                                Err(e) => HostMessage::Error(e),
                            };
                            let _ = out.send(Frame::new(Some(id), msg).encode()).await;
                            counter.set(counter.get() - 1);
                        });
                    }
                    _ => {
                        let waiter = frame
                            .request_id
                            .as_ref()
                            .and_then(|id| pending.borrow_mut().remove(id));
                        match waiter {
                            Some(tx) => {
                                let _ = tx.send(frame);
                            }
                            None => ring.push(
                                LogStream::Host,
                                toru_plugin_api::LogLevel::Debug,
                                "reply for an unknown or expired request ignored",
                            ),
                        }
                    }
                }
            };
            // Every waiter fails now: their replies can no longer arrive.
            pending.borrow_mut().clear();
            let _ = ended.send(end);
        });
        conn
    }

    /// Send a request and wait for the frame answering it.
    pub async fn request(
        &self,
        msg: HostMessage,
        timeout: Duration,
    ) -> Result<Frame<PluginMessage>, ConnError> {
        if self.out.is_closed() {
            return Err(ConnError::Closed);
        }
        if self.pending.borrow().len() >= MAX_IN_FLIGHT {
            return Err(ConnError::Busy);
        }
        let id = format!("h{}", self.next_id.get());
        self.next_id.set(self.next_id.get() + 1);
        let body = Frame::new(Some(id.clone()), msg).encode();
        if body.len() > self.max_frame {
            return Err(ConnError::Frame(FrameError::WriteTooLarge {
                len: body.len(),
                max: self.max_frame,
            }));
        }
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id.clone(), tx);
        let result = tokio::time::timeout(timeout, async {
            self.out.send(body).await.map_err(|_| ConnError::Closed)?;
            rx.await.map_err(|_| ConnError::Closed)
        })
        .await;
        match result {
            Ok(r) => r,
            Err(_) => {
                self.pending.borrow_mut().remove(&id);
                Err(ConnError::Timeout(timeout))
            }
        }
    }

    /// Requests waiting for replies.
    pub fn in_flight(&self) -> usize {
        self.pending.borrow().len()
    }
}

fn store_error(e: StoreError) -> ErrorReply {
    let code = match &e {
        // An empty key is malformed, not too large (PROTOCOL.md §5.3, kv).
        StoreError::KeyTooLong(0) => ErrorCode::BadRequest,
        StoreError::KeyTooLong(_) | StoreError::ValueTooLarge(_) => ErrorCode::TooLarge,
        StoreError::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
        StoreError::Degraded
        | StoreError::Closed
        | StoreError::Unavailable
        | StoreError::DiskFull(_) => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    ErrorReply::new(code, e.to_string())
}

/// Answer one KV request from `plugin`'s namespace.
pub async fn serve_kv(store: &Store, plugin: &str, req: KvRequest) -> Result<KvReply, ErrorReply> {
    match req {
        KvRequest::Get { key } => {
            let value = store.kv_get(plugin, &key).map_err(store_error)?;
            Ok(KvReply::Get { key, value })
        }
        KvRequest::Set { key, value } => {
            store
                .kv_set(plugin, &key, &value)
                .await
                .map_err(store_error)?;
            Ok(KvReply::Set { key })
        }
        KvRequest::Delete { key } => {
            let existed = store.kv_delete(plugin, &key).await.map_err(store_error)?;
            Ok(KvReply::Delete { key, existed })
        }
        KvRequest::List {
            prefix,
            start_after,
            limit,
        } => {
            let limit = limit
                .unwrap_or(MAX_KV_LIST_LIMIT)
                .clamp(1, MAX_KV_LIST_LIMIT);
            let (keys, truncated) = store
                .kv_list(plugin, &prefix, start_after.as_deref(), limit)
                .map_err(store_error)?;
            Ok(KvReply::List { keys, truncated })
        }
    }
}

/// Protocol 1.0: connect, write one frame, read one reply frame if `want_reply`, close.
pub async fn legacy_exchange(
    socket: &Path,
    msg: HostMessage,
    request_id: Option<String>,
    want_reply: bool,
    timeout: Duration,
    max_frame: usize,
) -> Result<Option<Frame<PluginMessage>>, ConnError> {
    let work = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(ConnError::Connect)?;
        let body = Frame::new(request_id.clone(), msg).encode();
        tokio_codec::write_frame(&mut stream, &body, max_frame).await?;
        if !want_reply {
            return Ok(None);
        }
        let reply = tokio_codec::read_frame(&mut stream, max_frame)
            .await?
            .ok_or(ConnError::Closed)?;
        let frame = decode_plugin_frame(&reply).map_err(|e| ConnError::Invalid(e.to_string()))?;
        Ok(Some(frame))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ConnError::Timeout(timeout))?
}
