//! The 1.1 connection to a running plugin (1.0 exchanges are in `link`, which uses this).
//!
//! - [`Conn`]: one persistent connection on the shared multiplexer
//!   ([`toru_plugin_api::mux`], the same code the SDK runs): its writer task owns the write half,
//!   host requests are matched to replies by `request_id` in its pending table. The reader task
//!   here owns the read half and dispatches what the plugin sends: replies to the multiplexer, KV
//!   requests to [`crate::store::kv::serve`] (scoped to the plugin; the same function serves the
//!   REST API's KV), `log` frames to its ring, `mqtt` requests to the MQTT bridge's port
//!   ([`super::mqtt_port`], answered at once).
//!
//! Each connection keeps a [`Tally`] of what the plugin sent of its own accord (KV requests,
//! frames it could not decode), which `toru plugin check` reports.
//!
//! Limits keep a misbehaving plugin from hurting the host: frames are capped before allocation,
//! requests in flight are capped both ways, every wait has a deadline.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::oneshot;
use toru_plugin_api::codec::{FrameError, MAX_CONTROL_FRAME_LEN, tokio_codec};
use toru_plugin_api::mux::{HostMux, Mux, MuxConfig, MuxError};
use toru_plugin_api::protocol::{
    ErrorCode, ErrorReply, Frame, HostMessage, KvPayload, PluginMessage, decode_plugin_frame,
};

use super::logs::LogRing;
use super::mqtt_port::{PluginMqtt, bridge_off};
use super::view::LogStream;
use crate::store::{Store, kv};

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
    /// The request's frame is over the writing limit; nothing was sent.
    #[error("refusing to write a frame of {len} bytes (limit {max})")]
    TooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
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

impl From<MuxError> for ConnError {
    fn from(e: MuxError) -> ConnError {
        match e {
            MuxError::Busy(_) => ConnError::Busy,
            MuxError::TooLarge { len, max } => ConnError::TooLarge { len, max },
            _ => ConnError::Closed,
        }
    }
}

/// A persistent 1.1 connection.
#[derive(Debug)]
pub struct Conn {
    mux: Rc<HostMux>,
    tally: Rc<Tally>,
}

/// What the plugin sent on one connection of its own accord, counted by the reader task.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// KV requests received (counted on arrival).
    pub(crate) kv_requests: Cell<u64>,
    /// KV requests answered with an `error` (limits, quota, store state, too many at once).
    pub(crate) kv_refused: Cell<u64>,
    /// The first refusal's message.
    pub(crate) first_kv_refusal: RefCell<Option<String>>,
    /// Frames that could not be decoded (logged and dropped, or failing the request they answer).
    pub(crate) rejected: Cell<u64>,
    /// The first such frame's decode error.
    pub(crate) first_rejected: RefCell<Option<String>>,
}

impl Tally {
    fn count(counter: &Cell<u64>, first: &RefCell<Option<String>>, why: impl FnOnce() -> String) {
        counter.set(counter.get() + 1);
        first.borrow_mut().get_or_insert_with(why);
    }
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
    /// receives exactly one [`ConnEnd`]. The plugin's `mqtt` requests are answered that the
    /// bridge is off (see [`Conn::start_with_mqtt`]).
    pub fn start(
        stream: UnixStream,
        plugin: String,
        store: Store,
        ring: Rc<LogRing>,
        max_frame: usize,
        ended: oneshot::Sender<ConnEnd>,
    ) -> Rc<Conn> {
        Conn::start_with_mqtt(stream, plugin, store, ring, max_frame, ended, None)
    }

    /// [`Conn::start`], with the plugin's `mqtt` requests handed to `mqtt`.
    pub(crate) fn start_with_mqtt(
        stream: UnixStream,
        plugin: String,
        store: Store,
        ring: Rc<LogRing>,
        max_frame: usize,
        ended: oneshot::Sender<ConnEnd>,
        mqtt: Option<Rc<dyn PluginMqtt>>,
    ) -> Rc<Conn> {
        let (mut reader, writer) = stream.into_split();
        let mux: Rc<HostMux> = Mux::start(writer, MuxConfig::host(max_frame));
        let tally = Rc::new(Tally::default());
        let conn = Rc::new(Conn {
            mux: mux.clone(),
            tally: tally.clone(),
        });
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
                        Tally::count(&tally.rejected, &tally.first_rejected, || e.to_string());
                        ring.push(
                            LogStream::Host,
                            toru_plugin_api::LogLevel::Warn,
                            &format!("rejected frame from plugin: {e}"),
                        );
                        mux.reject(&e);
                        continue;
                    }
                };
                let is_http = matches!(frame.message, PluginMessage::HttpReply(_));
                if !is_http && body.len() > MAX_CONTROL_FRAME_LEN {
                    if let Some(id) = frame.request_id {
                        let e = ErrorReply::new(ErrorCode::TooLarge, "control frame over 1 MiB");
                        let _ = mux.try_send(Some(id), HostMessage::Error(e));
                    }
                    continue;
                }
                let Frame {
                    request_id,
                    timestamp,
                    message,
                } = frame;
                match message {
                    PluginMessage::Log(rec) => {
                        ring.push(LogStream::Protocol, rec.level, &rec.message)
                    }
                    PluginMessage::Mqtt(req) => {
                        let Some(id) = request_id else {
                            continue;
                        };
                        let answer = match &mqtt {
                            Some(port) => port.request(&plugin, req),
                            None => Err(bridge_off()),
                        };
                        let msg = match answer {
                            Ok(()) => HostMessage::MqttOk,
                            Err(e) => HostMessage::Error(e),
                        };
                        // A reply from the read loop must not wait: a plugin that does not read
                        // its replies loses them (it gets a `busy` the next time it asks).
                        let _ = mux.try_send(Some(id), msg);
                    }
                    PluginMessage::Kv(req) => {
                        let Some(id) = request_id else {
                            continue;
                        };
                        tally.kv_requests.set(tally.kv_requests.get() + 1);
                        // Charged before the work starts, released when the task ends.
                        let Some(permit) = mux.try_admit() else {
                            let e =
                                ErrorReply::new(ErrorCode::Busy, "too many KV requests in flight");
                            Tally::count(&tally.kv_refused, &tally.first_kv_refusal, || {
                                e.message.clone()
                            });
                            let _ = mux.try_send(Some(id), HostMessage::Error(e));
                            continue;
                        };
                        let (store, plugin, mux) = (store.clone(), plugin.clone(), mux.clone());
                        let tally = tally.clone();
                        tokio::task::spawn_local(async move {
                            let msg = match kv::serve(&store, &plugin, req).await {
                                Ok(reply) => HostMessage::Kv(KvPayload::from_reply(&reply)),
                                Err(e) => {
                                    Tally::count(
                                        &tally.kv_refused,
                                        &tally.first_kv_refusal,
                                        || e.to_string(),
                                    );
                                    HostMessage::Error(kv::error_reply(&e))
                                }
                            };
                            let _ = mux.send(Some(id), msg).await;
                            drop(permit);
                        });
                    }
                    message => {
                        let frame = Frame {
                            request_id,
                            timestamp,
                            message,
                        };
                        if mux.resolve(frame).is_some() {
                            ring.push(
                                LogStream::Host,
                                toru_plugin_api::LogLevel::Debug,
                                "reply for an unknown or expired request ignored",
                            );
                        }
                    }
                }
            };
            // Every waiter fails now: their replies can no longer arrive.
            mux.fail_all();
            let _ = ended.send(end);
        });
        conn
    }

    /// Queue a message that needs no reply if there is room now (`false`: the connection's
    /// queue is full or closed).
    pub(crate) fn try_notify(&self, msg: HostMessage) -> bool {
        self.mux.try_send(None, msg).is_ok()
    }

    /// What the plugin sent on this connection of its own accord so far.
    pub(crate) fn tally(&self) -> Rc<Tally> {
        self.tally.clone()
    }

    /// Send a request and wait for the frame answering it, at most `timeout`.
    pub async fn request(
        &self,
        msg: HostMessage,
        timeout: Duration,
    ) -> Result<Frame<PluginMessage>, ConnError> {
        match tokio::time::timeout(timeout, self.mux.request(msg)).await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(ConnError::Timeout(timeout)),
        }
    }
}
