//! The request multiplexer of a 1.1 connection, shared by both ends: the host's connection to a
//! plugin (`toru::supervisor::conn`) and the SDK runner (`sdk`, feature `sdk`) use this one
//! implementation. Behind the `tokio` feature; it needs a `LocalSet` (it spawns local tasks).
//!
//! A [`Mux`] owns what both ends need to talk over one connection:
//! - the **writer queue**: one local task owns the write half and writes whole frames from a
//!   bounded queue ([`WRITE_QUEUE`]), so frames are never interleaved and a slow peer makes
//!   senders wait instead of growing memory;
//! - the **pending table**: requests this side sent, by request id, each with the oneshot its
//!   caller waits on. Ids are `<prefix><n>` (`h1`, `h2` … for the host, `p1` … for plugins);
//! - the **in-flight limits**: requests this side may have waiting ([`MuxConfig::max_in_flight`],
//!   refused with [`MuxError::Busy`] before anything is sent) and requests from the peer it serves
//!   at once ([`Mux::try_admit`]).
//!
//! It does not read: each end runs its own read loop, because what a frame means depends on the
//! direction. The loop hands replies to [`Mux::resolve`] and calls [`Mux::fail_all`] when the
//! connection ends.
//!
//! Cancel safety: a caller of [`Mux::request`] may be dropped at any `.await` (deadline, client
//! gone). Its pending entry is removed by a guard's `Drop`, so an abandoned request frees its slot
//! and its late reply is reported as unknown. A [`Permit`] frees its slot the same way.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::codec::{FrameError, MAX_FRAME_LEN, tokio_codec};
use crate::protocol::{
    DecodeError, ErrorReply, Frame, HostMessage, MAX_HOST_REQUESTS_IN_FLIGHT,
    MAX_KV_REQUESTS_IN_FLIGHT, PluginMessage,
};

/// Frames queued for the writer before senders wait.
pub const WRITE_QUEUE: usize = 64;

/// A message one end writes: how it is encoded and how that end says `error`.
pub trait Outgoing: Sized {
    /// The frame's JSON bytes (without the length prefix).
    fn encode(frame: &Frame<Self>) -> Vec<u8>;
    /// The `error` message this end sends in reply to a request it cannot handle.
    fn error(reply: ErrorReply) -> Self;
}

impl Outgoing for HostMessage {
    fn encode(frame: &Frame<Self>) -> Vec<u8> {
        frame.encode()
    }

    fn error(reply: ErrorReply) -> Self {
        HostMessage::Error(reply)
    }
}

impl Outgoing for PluginMessage {
    fn encode(frame: &Frame<Self>) -> Vec<u8> {
        frame.encode()
    }

    fn error(reply: ErrorReply) -> Self {
        PluginMessage::Error(reply)
    }
}

/// The host's end: sends [`HostMessage`]s, waits for [`PluginMessage`] replies.
pub type HostMux = Mux<HostMessage, PluginMessage>;
/// A plugin's end: sends [`PluginMessage`]s, waits for [`HostMessage`] replies.
pub type PluginMux = Mux<PluginMessage, HostMessage>;

/// The limits and id prefix of one end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MuxConfig {
    /// Prefix of the request ids this end chooses.
    pub id_prefix: &'static str,
    /// Requests this end may have waiting for replies; more fail with [`MuxError::Busy`].
    pub max_in_flight: usize,
    /// Requests from the peer this end serves at once (see [`Mux::try_admit`]).
    pub max_incoming: usize,
    /// Longest frame body this end writes; a longer one fails with [`MuxError::TooLarge`].
    pub max_frame_len: usize,
}

impl MuxConfig {
    /// The host's end: ids `h<n>`, at most [`MAX_HOST_REQUESTS_IN_FLIGHT`] requests waiting, at
    /// most [`MAX_KV_REQUESTS_IN_FLIGHT`] plugin KV requests served at once, frames up to
    /// `max_frame_len`.
    pub fn host(max_frame_len: usize) -> MuxConfig {
        MuxConfig {
            id_prefix: "h",
            max_in_flight: MAX_HOST_REQUESTS_IN_FLIGHT,
            max_incoming: MAX_KV_REQUESTS_IN_FLIGHT,
            max_frame_len,
        }
    }

    /// A plugin's end: ids `p<n>`, at most [`MAX_KV_REQUESTS_IN_FLIGHT`] KV requests waiting,
    /// host requests served without a limit of its own (the host limits them), frames up to
    /// [`MAX_FRAME_LEN`].
    pub fn plugin() -> MuxConfig {
        MuxConfig {
            id_prefix: "p",
            max_in_flight: MAX_KV_REQUESTS_IN_FLIGHT,
            max_incoming: usize::MAX,
            max_frame_len: MAX_FRAME_LEN,
        }
    }
}

/// Why a message could not be sent, or a request got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MuxError {
    /// The connection is closed (or closed while the request waited).
    #[error("the connection is closed")]
    Closed,
    /// This end already has its limit of requests waiting for replies.
    #[error("more than {0} requests in flight")]
    Busy(usize),
    /// The encoded frame is over this end's writing limit; nothing was sent.
    #[error("refusing to write a frame of {len} bytes (limit {max})")]
    TooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

enum Outbound {
    Frame(Vec<u8>),
    /// Written after everything queued before it; the writer stops.
    Close,
}

type Waiter<In> = oneshot::Sender<Frame<In>>;
type Pending<In> = RefCell<HashMap<String, Waiter<In>>>;

/// One end of a multiplexed connection; see the module docs. Share it as `Rc<Mux>`.
pub struct Mux<Out, In> {
    out: mpsc::Sender<Outbound>,
    pending: Pending<In>,
    next_id: Cell<u64>,
    closed: Cell<bool>,
    incoming: Rc<Cell<usize>>,
    config: MuxConfig,
    writer: RefCell<Option<JoinHandle<Result<(), FrameError>>>>,
    _out: PhantomData<fn(Out)>,
}

impl<Out, In> fmt::Debug for Mux<Out, In> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mux")
            .field("config", &self.config)
            .field("in_flight", &self.pending.borrow().len())
            .field("incoming", &self.incoming.get())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// Removes a request's pending entry when its caller stops waiting, whatever the reason.
struct Slot<'a, In> {
    pending: &'a Pending<In>,
    id: String,
}

impl<In> Drop for Slot<'_, In> {
    fn drop(&mut self) {
        self.pending.borrow_mut().remove(&self.id);
    }
}

/// A slot for serving one request from the peer; released when dropped.
#[derive(Debug)]
pub struct Permit {
    incoming: Rc<Cell<usize>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.incoming.set(self.incoming.get().saturating_sub(1));
    }
}

impl<Out, In> Mux<Out, In> {
    /// Hand `frame` to the request waiting for its id. Gives the frame back when none waits
    /// (no id, an unknown id, or a request whose caller gave up): for the read loop to handle.
    pub fn resolve(&self, frame: Frame<In>) -> Option<Frame<In>> {
        let waiter = frame
            .request_id
            .as_deref()
            .and_then(|id| self.pending.borrow_mut().remove(id));
        match waiter {
            Some(tx) => {
                // The receiver is alive: its guard would have removed the entry otherwise.
                let _ = tx.send(frame);
                None
            }
            None => Some(frame),
        }
    }

    /// A slot for serving one request from the peer, or `None` when
    /// [`MuxConfig::max_incoming`] are being served (answer `busy`). Taken before the work
    /// starts; freed when the permit is dropped.
    pub fn try_admit(&self) -> Option<Permit> {
        if self.incoming.get() >= self.config.max_incoming {
            return None;
        }
        self.incoming.set(self.incoming.get() + 1);
        Some(Permit {
            incoming: self.incoming.clone(),
        })
    }

    /// Requests waiting for replies.
    pub fn in_flight(&self) -> usize {
        self.pending.borrow().len()
    }

    /// The limits this end was started with.
    pub fn config(&self) -> MuxConfig {
        self.config
    }

    /// True once the read loop reported the end or the writer stopped.
    pub fn is_closed(&self) -> bool {
        self.closed.get() || self.out.is_closed()
    }

    /// The connection ended (the read loop saw EOF or a broken frame): every waiting request
    /// fails with [`MuxError::Closed`] now, since its reply can no longer arrive, and so does
    /// every later one.
    pub fn fail_all(&self) {
        self.closed.set(true);
        // Dropping the senders wakes the waiters.
        let waiters: Vec<_> = self.pending.borrow_mut().drain().collect();
        drop(waiters);
    }
}

impl<Out: Outgoing + 'static, In: 'static> Mux<Out, In> {
    /// Start the writer task over `writer` (on the current `LocalSet`; panics outside one).
    pub fn start<W>(writer: W, config: MuxConfig) -> Rc<Mux<Out, In>>
    where
        W: AsyncWrite + Unpin + 'static,
    {
        let (out, rx) = mpsc::channel(WRITE_QUEUE);
        let task = tokio::task::spawn_local(write_loop(writer, rx, config.max_frame_len));
        Rc::new(Mux {
            out,
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            closed: Cell::new(false),
            incoming: Rc::new(Cell::new(0)),
            config,
            writer: RefCell::new(Some(task)),
            _out: PhantomData,
        })
    }

    /// Send a request under a fresh id and wait for the frame answering it (any message the
    /// read loop passes to [`Mux::resolve`] with that id). No deadline of its own: wrap it in
    /// `tokio::time::timeout`; dropping the future forgets the request.
    pub async fn request(&self, msg: Out) -> Result<Frame<In>, MuxError> {
        if self.is_closed() {
            return Err(MuxError::Closed);
        }
        // Counted before the first await, so parallel callers cannot all slip past the limit.
        if self.pending.borrow().len() >= self.config.max_in_flight {
            return Err(MuxError::Busy(self.config.max_in_flight));
        }
        let id = format!("{}{}", self.config.id_prefix, self.next_id.get());
        self.next_id.set(self.next_id.get() + 1);
        let body = self.encode(Some(id.clone()), msg)?;
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id.clone(), tx);
        let _slot = Slot {
            pending: &self.pending,
            id,
        };
        self.out
            .send(Outbound::Frame(body))
            .await
            .map_err(|_| MuxError::Closed)?;
        rx.await.map_err(|_| MuxError::Closed)
    }

    /// Queue a frame (a reply, or a message without reply), waiting while the queue is full.
    pub async fn send(&self, request_id: Option<String>, msg: Out) -> Result<(), MuxError> {
        let body = self.encode(request_id, msg)?;
        self.out
            .send(Outbound::Frame(body))
            .await
            .map_err(|_| MuxError::Closed)
    }

    /// Queue a frame if there is room now; a full queue drops it ([`MuxError::Busy`]). For
    /// best-effort frames (logs) and for replies sent from a read loop that must not wait.
    pub fn try_send(&self, request_id: Option<String>, msg: Out) -> Result<(), MuxError> {
        let body = self.encode(request_id, msg)?;
        self.out
            .try_send(Outbound::Frame(body))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => MuxError::Busy(WRITE_QUEUE),
                mpsc::error::TrySendError::Closed(_) => MuxError::Closed,
            })
    }

    /// Deal with a frame that could not be decoded, when it had a readable request id (a frame
    /// without one gets no reply: there is nothing to address it to). If the id is one of this
    /// end's pending requests, the frame was a broken reply: the request fails at once with the
    /// decode error (answering it with an `error` would be a reply to a reply). Otherwise it was a
    /// broken request, answered with an `error`.
    pub fn reject(&self, e: &DecodeError)
    where
        In: Outgoing,
    {
        let Some(id) = e.request_id() else { return };
        let waiter = self.pending.borrow_mut().remove(id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(Frame::new(Some(id.to_string()), In::error(e.to_reply())));
            }
            None => {
                let _ = self.try_send(Some(id.to_string()), Out::error(e.to_reply()));
            }
        }
    }

    /// Write everything queued so far, then stop the writer and drop the write half. Returns the
    /// writer's error if a write failed earlier. Later sends fail with [`MuxError::Closed`].
    pub async fn close(&self) -> Result<(), FrameError> {
        let _ = self.out.send(Outbound::Close).await;
        let task = self.writer.borrow_mut().take();
        match task {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    fn encode(&self, request_id: Option<String>, msg: Out) -> Result<Vec<u8>, MuxError> {
        let body = Out::encode(&Frame::new(request_id, msg));
        if body.len() > self.config.max_frame_len {
            return Err(MuxError::TooLarge {
                len: body.len(),
                max: self.config.max_frame_len,
            });
        }
        Ok(body)
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<Outbound>,
    max_frame_len: usize,
) -> Result<(), FrameError> {
    // Ends on `Close`, or when every sender is gone (the `Mux` was dropped); then the peer
    // reads EOF, even while this end keeps reading.
    while let Some(Outbound::Frame(body)) = queue.recv().await {
        tokio_codec::write_frame(&mut writer, &body, max_frame_len).await?;
    }
    writer.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests;
