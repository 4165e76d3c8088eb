//! [`PluginLink`]: the host's side of the conversation with one plugin process, whichever protocol
//! it speaks. The only place the supervisor tells 1.0 and 1.1 apart.
//!
//! | | 1.0 (legacy) | 1.1 |
//! |---|---|---|
//! | [`init`](PluginLink::init) | close the probe connection, deliver `init` on a connection of its own; ready once delivered | keep the probe connection ([`Conn`]), send `init`, wait for `ready` |
//! | [`request`](PluginLink::request) | one connection per request, never two at once; text bodies only | on the connection, up to 64 in flight |
//! | [`configure`](PluginLink::configure) | nothing sent: the plugin must be restarted (its settings come with `init`) | `config` on the connection, waits for `ok` or `error`; `error`/`unsupported` means "restart me" |
//! | [`shutdown`](PluginLink::shutdown) | one connection, no reply | on the connection, waits for `shutdown_ack` |
//! | [`watch`](PluginLink::watch) | nothing to watch (health is the process's exit) | heartbeats, and the end of the connection |
//!
//! [`ping`](PluginLink::ping) sends one heartbeat at once, for `toru plugin check`.
//!
//! The plugin task (`supervisor::plugin`) makes one link per process and drops it when the
//! process is gone; `Supervisor::forward_http` sends requests through it. [`PluginReply`] is an
//! HTTP reply checked once, here: the rest of the host trusts it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::oneshot;
use toru_plugin_api::codec::{FrameError, tokio_codec};
use toru_plugin_api::protocol::{
    BodyEncoding, ErrorCode, Frame, HostMessage, HttpRequest, HttpResponse, Init, PROTOCOL_VERSION,
    PluginMessage, ProtocolVersion, decode_plugin_frame,
};

use super::conn::{Conn, ConnEnd, ConnError, Tally};
use super::logs::LogRing;
use super::mqtt_port::PluginMqtt;
use super::view::ForwardError;
use crate::store::Store;

/// Statuses a plugin may answer with: final HTTP statuses. A 1xx cannot end an exchange (the
/// client would wait for the real response) and 101 would switch protocols.
const REPLY_STATUSES: std::ops::RangeInclusive<u16> = 200..=599;

/// A plugin's reply to a forwarded HTTP request, checked: its status is a final HTTP status
/// (200–599) and its body is bytes (decoded from base64 when the plugin sent it so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginReply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl PluginReply {
    /// Check a reply as received; the error says what is wrong with it.
    pub(crate) fn from_wire(reply: HttpResponse) -> Result<PluginReply, String> {
        if !REPLY_STATUSES.contains(&reply.status) {
            return Err(format!(
                "status {} is not a final HTTP status (200-599)",
                reply.status
            ));
        }
        let body = match (reply.body, reply.body_encoding) {
            (None, _) => Vec::new(),
            (Some(text), BodyEncoding::Utf8) => text.into_bytes(),
            (Some(encoded), BodyEncoding::Base64) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.as_bytes())
                    .map_err(|_| "body_encoding is base64 but the body is not".to_string())?
            }
        };
        Ok(PluginReply {
            status: reply.status,
            headers: reply.headers,
            body,
        })
    }

    /// The status, 200–599.
    #[cfg(test)]
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The body.
    #[cfg(test)]
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Status (200–599), headers and body.
    pub fn into_parts(self) -> (u16, BTreeMap<String, String>, Vec<u8>) {
        (self.status, self.headers, self.body)
    }
}

/// How a plugin took new settings ([`PluginLink::configure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConfigAnswer {
    /// It answered `ok`: the settings are in effect.
    Applied,
    /// It answered with an `error`; the message says why.
    Rejected(String),
    /// It takes settings only in `init` (1.0, or a 1.1 plugin that answered `unsupported`): the
    /// caller restarts it.
    NeedsRestart,
}

/// Why [`PluginLink::init`] failed. Its text is the sentence for the plugin's log and failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InitError {
    /// 1.0: the `init` message could not be delivered.
    #[error("init not delivered: {0}")]
    NotDelivered(ConnError),
    /// 1.1: the plugin answered `init` with an `error`.
    #[error("init refused: {0}")]
    Refused(toru_plugin_api::protocol::ErrorReply),
    /// 1.1: the plugin answered `init` with something other than `ready` (its debug form).
    #[error("unexpected answer to init: {0}")]
    Unexpected(String),
    /// 1.1: no `ready` came: the timeout passed, or the connection ended first.
    #[error("no ready after init: {0}")]
    NoReady(ConnError),
}

/// How one heartbeat went ([`PluginLink::ping`]).
#[derive(Debug)]
pub(crate) enum Ping {
    /// The matching `pong` came in time.
    Pong,
    /// No `pong` in time, another answer, or no room for the ping: a miss (the text says which).
    Missed(String),
    /// The connection is gone.
    Gone(ConnError),
}

/// What [`PluginLink::watch`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Watch {
    /// This many heartbeats in a row went unanswered.
    Hung(u32),
    /// The connection ended (EOF, or the reason it broke).
    Lost(String),
}

/// The host's side of the conversation with one plugin process; see the module docs.
#[derive(Debug)]
pub(crate) struct PluginLink {
    plugin: String,
    max_frame: usize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// 1.0: one connection per message, serialised by the lock (never two at once).
    Legacy {
        socket: PathBuf,
        lock: tokio::sync::Mutex<()>,
    },
    /// 1.1: the connection, once the plugin said `ready`; and its end, for [`PluginLink::watch`].
    Persistent {
        store: Store,
        ring: Rc<LogRing>,
        mqtt: Option<Rc<dyn PluginMqtt>>,
        conn: RefCell<Option<Rc<Conn>>>,
        ended: RefCell<Option<oneshot::Receiver<ConnEnd>>>,
    },
}

impl PluginLink {
    /// A link to the process of `plugin` that listens on `socket`; nothing is sent before
    /// [`PluginLink::init`]. A 1.1 plugin's KV requests are served from `store`, its `log` frames
    /// go to `ring`, its `mqtt` requests to `mqtt` (`None`: answered that the bridge is off).
    pub(crate) fn new(
        protocol: ProtocolVersion,
        plugin: &str,
        socket: &Path,
        store: &Store,
        ring: &Rc<LogRing>,
        max_frame: usize,
        mqtt: Option<Rc<dyn PluginMqtt>>,
    ) -> PluginLink {
        let kind = match protocol {
            ProtocolVersion::V1_0 => Kind::Legacy {
                socket: socket.to_path_buf(),
                lock: tokio::sync::Mutex::new(()),
            },
            ProtocolVersion::V1_1 => Kind::Persistent {
                store: store.clone(),
                ring: ring.clone(),
                mqtt,
                conn: RefCell::new(None),
                ended: RefCell::new(None),
            },
        };
        PluginLink {
            plugin: plugin.to_string(),
            max_frame,
            kind,
        }
    }

    /// Deliver `init` (written as 1.0 has it; the 1.1 fields are added here) over the first
    /// connection the plugin accepted, and return once the plugin can serve. The error is the
    /// sentence for the plugin's log and its failure.
    pub(crate) async fn init(
        &self,
        stream: UnixStream,
        mut init: Init,
        heartbeat_interval: Duration,
        ready_timeout: Duration,
    ) -> Result<(), InitError> {
        match &self.kind {
            Kind::Legacy { socket, lock } => {
                // The probe connection only proved the socket is up; 1.0 plugins get one message
                // per connection, so close it and deliver init on its own connection.
                drop(stream);
                let _one_at_a_time = lock.lock().await;
                legacy_exchange(
                    socket,
                    HostMessage::Init(init),
                    None,
                    false,
                    ready_timeout,
                    self.max_frame,
                )
                .await
                .map(|_| ())
                .map_err(InitError::NotDelivered)
            }
            Kind::Persistent {
                store,
                ring,
                mqtt,
                conn,
                ended,
            } => {
                init.protocol = Some(PROTOCOL_VERSION.to_string());
                init.heartbeat_interval_ms = Some(millis(heartbeat_interval));
                init.max_frame_len = Some(self.max_frame as u64);
                let (ended_tx, ended_rx) = oneshot::channel();
                *ended.borrow_mut() = Some(ended_rx);
                let started = Conn::start_with_mqtt(
                    stream,
                    self.plugin.clone(),
                    store.clone(),
                    ring.clone(),
                    self.max_frame,
                    ended_tx,
                    mqtt.clone(),
                );
                match started
                    .request(HostMessage::Init(init), ready_timeout)
                    .await
                {
                    Ok(f) if f.message == PluginMessage::Ready => {
                        // Until now the host sends nothing but this init (and heartbeats).
                        *conn.borrow_mut() = Some(started);
                        Ok(())
                    }
                    Ok(f) => Err(match f.message {
                        PluginMessage::Error(e) => InitError::Refused(e),
                        other => InitError::Unexpected(format!("{other:?}")),
                    }),
                    Err(e) => Err(InitError::NoReady(e)),
                }
            }
        }
    }

    /// Queue a message that needs no reply on a 1.1 connection if there is room now; `false`
    /// when there is no connection (1.0, not started) or its queue is full.
    pub(crate) fn try_notify(&self, msg: HostMessage) -> bool {
        match &self.kind {
            Kind::Persistent { conn, .. } => {
                conn.borrow().as_ref().is_some_and(|c| c.try_notify(msg))
            }
            Kind::Legacy { .. } => false,
        }
    }

    /// Forward an HTTP request and wait for the reply, at most `timeout`.
    pub(crate) async fn request(
        &self,
        req: HttpRequest,
        timeout: Duration,
    ) -> Result<PluginReply, ForwardError> {
        let id = &self.plugin;
        let frame = match &self.kind {
            Kind::Persistent { conn, .. } => {
                let conn = conn
                    .borrow()
                    .clone()
                    .ok_or_else(|| ForwardError::Unavailable {
                        id: id.clone(),
                        reason: "not connected".into(),
                    })?;
                conn.request(HostMessage::Http(req), timeout).await
            }
            Kind::Legacy { socket, lock } => {
                if req.body_encoding != BodyEncoding::Utf8 {
                    return Err(ForwardError::BadRequest(
                        "the request body is not UTF-8 text, and this plugin speaks protocol 1.0, which carries text only".into(),
                    ));
                }
                let started = tokio::time::Instant::now();
                let _one_at_a_time = tokio::time::timeout(timeout, lock.lock())
                    .await
                    .map_err(|_| ForwardError::Timeout(id.clone()))?;
                let left = timeout.saturating_sub(started.elapsed());
                let rid = uuid::Uuid::new_v4().to_string();
                legacy_exchange(
                    socket,
                    HostMessage::Http(req),
                    Some(rid),
                    true,
                    left,
                    self.max_frame,
                )
                .await
                .and_then(|f| f.ok_or(ConnError::Closed))
            }
        };
        let frame = frame.map_err(|e| match e {
            ConnError::Timeout(_) => ForwardError::Timeout(id.clone()),
            ConnError::Invalid(reason) => ForwardError::BadReply {
                id: id.clone(),
                reason,
            },
            ConnError::TooLarge { len, max }
            | ConnError::Frame(FrameError::WriteTooLarge { len, max }) => ForwardError::BadRequest(
                format!("request of {len} bytes exceeds the plugin frame limit of {max}"),
            ),
            other => ForwardError::Unavailable {
                id: id.clone(),
                reason: other.to_string(),
            },
        })?;
        let bad_reply = |reason: String| ForwardError::BadReply {
            id: id.clone(),
            reason,
        };
        match frame.message {
            PluginMessage::HttpReply(reply) => PluginReply::from_wire(reply).map_err(bad_reply),
            PluginMessage::Error(e) => {
                Err(bad_reply(format!("plugin answered with an error: {e}")))
            }
            other => Err(bad_reply(format!("unexpected reply {other:?}"))),
        }
    }

    /// Hand a running plugin its new settings (a JSON object) and wait for its answer, at most
    /// `timeout`. Nothing is sent to a 1.0 plugin: the answer is [`ConfigAnswer::NeedsRestart`].
    pub(crate) async fn configure(
        &self,
        config: serde_json::Value,
        timeout: Duration,
    ) -> Result<ConfigAnswer, ConnError> {
        let conn = match &self.kind {
            Kind::Legacy { .. } => return Ok(ConfigAnswer::NeedsRestart),
            Kind::Persistent { conn, .. } => conn.borrow().clone().ok_or(ConnError::Closed)?,
        };
        let frame = conn.request(HostMessage::Config(config), timeout).await?;
        match frame.message {
            PluginMessage::ConfigOk => Ok(ConfigAnswer::Applied),
            // A plugin written before `config` existed answers `unsupported`, as for any unknown
            // type; a plugin that cannot apply settings while it runs may say the same.
            PluginMessage::Error(e) if e.code == ErrorCode::Unsupported => {
                Ok(ConfigAnswer::NeedsRestart)
            }
            PluginMessage::Error(e) if e.message.is_empty() => {
                Ok(ConfigAnswer::Rejected(e.code.as_str().to_string()))
            }
            PluginMessage::Error(e) => Ok(ConfigAnswer::Rejected(e.message)),
            other => Err(ConnError::Invalid(format!(
                "unexpected answer to config: {other:?}"
            ))),
        }
    }

    /// Ask the process to exit. 1.1 waits for `shutdown_ack` (at most `grace`); a 1.1 plugin not
    /// yet ready, or whose connection is gone, gets nothing (the caller signals it instead).
    pub(crate) async fn shutdown(&self, grace: Duration) -> Result<(), ConnError> {
        match &self.kind {
            Kind::Persistent { conn, .. } => {
                let conn = conn.borrow_mut().take().ok_or(ConnError::Closed)?;
                conn.request(HostMessage::Shutdown, grace).await.map(|_| ())
            }
            Kind::Legacy { socket, lock } => {
                let _one_at_a_time = lock.lock().await;
                legacy_exchange(
                    socket,
                    HostMessage::Shutdown,
                    None,
                    false,
                    grace,
                    self.max_frame,
                )
                .await
                .map(|_| ())
            }
        }
    }

    /// After a successful [`PluginLink::init`] of a 1.1 plugin: one heartbeat now, its `pong`
    /// awaited at most `timeout`. `None` for a 1.0 plugin (no heartbeats) or one not connected.
    pub(crate) async fn ping(&self, seq: u64, timeout: Duration) -> Option<Ping> {
        let Kind::Persistent { conn, .. } = &self.kind else {
            return None;
        };
        let conn = conn.borrow().clone()?;
        Some(ping(&conn, seq, timeout).await)
    }

    /// What a 1.1 plugin sent of its own accord on its connection (KV requests, frames that could
    /// not be decoded); `None` for 1.0 or before `ready`.
    pub(crate) fn tally(&self) -> Option<Rc<Tally>> {
        let Kind::Persistent { conn, .. } = &self.kind else {
            return None;
        };
        conn.borrow().as_ref().map(|c| c.tally())
    }

    /// After a successful [`PluginLink::init`]: ping every `interval` and return when
    /// `max_misses` pings in a row went unanswered, or when the connection ends. `None` for a 1.0
    /// plugin, which has neither: its health is its process's.
    pub(crate) async fn watch(&self, interval: Duration, max_misses: u32) -> Option<Watch> {
        let Kind::Persistent { conn, ended, .. } = &self.kind else {
            return None;
        };
        let conn = conn.borrow().clone()?;
        let ended = ended.borrow_mut().take()?;
        let lost = async {
            match ended.await {
                Ok(ConnEnd::Eof) => "EOF".to_string(),
                Ok(ConnEnd::Broken(e)) => e,
                // The reader task always reports; if it is gone, so is the runtime.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(missed) = heartbeat(&conn, interval, max_misses.max(1)) => Some(Watch::Hung(missed)),
            why = lost => Some(Watch::Lost(why)),
        }
    }
}

/// Ping every `interval`; a ping unanswered within the interval is a miss. Returns the misses in
/// a row once they reach `max_misses`, or `None` when the connection is gone.
async fn heartbeat(conn: &Conn, interval: Duration, max_misses: u32) -> Option<u32> {
    let mut missed = 0u32;
    let mut seq = 0u64;
    loop {
        if missed == 0 {
            tokio::time::sleep(interval).await;
        }
        seq += 1;
        match ping(conn, seq, interval).await {
            Ping::Pong => missed = 0,
            Ping::Missed(_) => missed += 1,
            Ping::Gone(_) => return None,
        }
        if missed >= max_misses {
            return Some(missed);
        }
    }
}

/// One heartbeat: `ping` number `seq`, its `pong` awaited at most `timeout`.
async fn ping(conn: &Conn, seq: u64, timeout: Duration) -> Ping {
    match conn.request(HostMessage::Ping { seq }, timeout).await {
        Ok(f) if f.message == (PluginMessage::Pong { seq }) => Ping::Pong,
        Ok(f) => Ping::Missed(format!("answered {:?} instead of pong {seq}", f.message)),
        Err(e @ (ConnError::Timeout(_) | ConnError::Busy)) => Ping::Missed(e.to_string()),
        Err(e) => Ping::Gone(e),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Protocol 1.0: connect, write one frame, read one reply frame if `want_reply`, close.
async fn legacy_exchange(
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn reply(status: u16, body: Option<&str>, encoding: BodyEncoding) -> HttpResponse {
        let mut r = HttpResponse::new(status);
        r.body = body.map(Into::into);
        r.body_encoding = encoding;
        r
    }

    #[test]
    fn replies_are_checked_once_here() {
        let ok = PluginReply::from_wire(reply(201, Some("{}"), BodyEncoding::Utf8)).unwrap();
        assert_eq!((ok.status(), ok.body()), (201, &b"{}"[..]));
        let binary = PluginReply::from_wire(reply(200, Some("AAEC"), BodyEncoding::Base64));
        assert_eq!(binary.unwrap().body(), [0, 1, 2]);
        let empty = PluginReply::from_wire(reply(204, None, BodyEncoding::Base64)).unwrap();
        assert!(empty.body().is_empty());
        for (status, body, encoding) in [
            (200, Some("@@@"), BodyEncoding::Base64),
            (101, None, BodyEncoding::Utf8),
            (199, None, BodyEncoding::Utf8),
            (600, None, BodyEncoding::Utf8),
            (700, None, BodyEncoding::Utf8),
        ] {
            let r = reply(status, body, encoding);
            assert!(PluginReply::from_wire(r.clone()).is_err(), "{r:?}");
        }
        for status in [200, 599] {
            assert!(PluginReply::from_wire(reply(status, None, BodyEncoding::Utf8)).is_ok());
        }
    }
}
