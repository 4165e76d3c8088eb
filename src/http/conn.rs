//! Connection handling: the accept loop, which connections are busy or idle, when each must be
//! closed, which one to evict when the limit is reached. Generic over a [`Handler`] that turns
//! one request into one response: this layer knows nothing of routes, authentication or the host.
//!
//! A connection is *busy* from the moment hyper hands us a request head until the response body has
//! been written (or dropped); a busy connection is closed after [`MAX_REQUEST_TIME`] without
//! progress — counted from the request's start or from the last bytes of its body read, so that a
//! large upload that keeps arriving (an update bundle on a slow link) is not cut. While it is not
//! busy, one deadline applies:
//! - no byte of the next request yet: `header_timeout` after accept (first request) or
//!   `keepalive_timeout` after the previous response;
//! - the next request has started: `header_timeout` after its first byte.
//!
//! At the limit, a newcomer takes the slot of the connection quiet for longest among those with no
//! request in flight whose task has looked at its socket (one accepted but never read may hold a
//! whole request); see [`Connections::register`]. Only `admit` creates connections; the task it
//! spawns removes its entry when it ends. Called by `http::serve` ([`serve`]); uses only `resp`
//! below it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Request;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::resp::{Body, Resp};
use crate::config::HttpConfig;

/// A request in flight this long without progress (since it started, or since the last bytes of
/// its body arrived) is dropped with its connection. Every handler is bounded well below it (body
/// 30 s, plugin reply 30 s, log long-poll 25 s; a streamed upload 30 s between chunks): what it
/// cuts is a client that stops reading its response.
pub(crate) const MAX_REQUEST_TIME: Duration = Duration::from_secs(120);

// A package install or update answers when its probation is over (`[packages] probation_secs`):
// the longest probation must leave room for the upload's checks and the new version's start.
const _: () = assert!(crate::config::MAX_PROBATION_SECS as u64 + 30 <= MAX_REQUEST_TIME.as_secs());

/// How long in-flight requests may take to finish once shutdown begins.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Pause after an `accept` error such as `EMFILE`, so a full descriptor table does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How long a refused connection is kept to deliver its 503 cleanly (send, FIN, drain the request).
const REJECT_LINGER: Duration = Duration::from_secs(1);
/// Refused connections lingering at once at most; beyond it they are closed without an answer.
const MAX_REJECTING: usize = 64;

/// hyper refuses a read buffer smaller than this.
const HYPER_MIN_BUF: usize = 8192;

/// Answer to a connection beyond the limit when every connection has a request in flight.
const FULL_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
cache-control: no-store\r\n\
connection: close\r\n\
content-length: 73\r\n\r\n\
{\"error\":\"busy\",\"message\":\"too many connections; try again in a moment\"}\n";

/// Answers requests: what a connection hands each request head (and its body) to.
pub(crate) trait Handler: 'static {
    /// Answer one request from `peer`. Never fails: errors are responses too.
    fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> impl Future<Output = Resp>;
}

/// The limits connections live by (from `config.http`).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Connections served at once.
    pub(crate) max_connections: usize,
    /// A request head must arrive within this.
    pub(crate) header_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub(crate) keepalive_timeout: Duration,
    /// Largest request head (hyper's read buffer; larger → 431).
    pub(crate) max_header_bytes: usize,
}

impl From<&HttpConfig> for Limits {
    fn from(c: &HttpConfig) -> Limits {
        Limits {
            max_connections: c.max_connections,
            header_timeout: c.header_timeout,
            keepalive_timeout: c.keepalive_timeout,
            max_header_bytes: c.max_header_bytes,
        }
    }
}

/// The state of one connection, shared by its task, its requests and the registry.
#[derive(Debug)]
struct ConnState {
    id: u64,
    /// Requests in flight (0 or 1 for HTTP/1.1).
    busy: Cell<u32>,
    /// When the request in flight started, or later read the last bytes of its body.
    busy_since: Cell<Instant>,
    /// When the connection last became idle (accept or the end of a response).
    idle_since: Cell<Instant>,
    /// When the first byte of the next request arrived while idle.
    head_started: Cell<Option<Instant>>,
    /// The task has read from the socket at least once: whatever the client sent before is no
    /// longer only in the kernel's buffer, so closing the connection loses no unseen request.
    seen: Cell<bool>,
    /// Responses completed.
    served: Cell<u64>,
    /// Wakes the task when its deadline may have changed.
    changed: Notify,
    /// Asks the task to close the connection (eviction or shutdown).
    close: Notify,
}

impl ConnState {
    fn new(id: u64) -> ConnState {
        ConnState {
            id,
            busy: Cell::new(0),
            busy_since: Cell::new(Instant::now()),
            idle_since: Cell::new(Instant::now()),
            head_started: Cell::new(None),
            seen: Cell::new(false),
            served: Cell::new(0),
            changed: Notify::new(),
            close: Notify::new(),
        }
    }

    /// When this connection must be closed if nothing changes.
    fn deadline(&self, header_timeout: Duration, keepalive_timeout: Duration) -> Instant {
        if self.busy.get() > 0 {
            return self.busy_since.get() + MAX_REQUEST_TIME;
        }
        match self.head_started.get() {
            Some(t) => t + header_timeout,
            None if self.served.get() == 0 => self.idle_since.get() + header_timeout,
            None => self.idle_since.get() + keepalive_timeout,
        }
    }

    /// Since when the connection has been quiet: the first byte of a head it has not finished, or
    /// the end of its last response (or its accept).
    fn quiet_since(&self) -> Instant {
        self.head_started.get().unwrap_or(self.idle_since.get())
    }

    /// Whether a newcomer may take this connection's slot: no request in flight, and its task has
    /// read its socket.
    fn evictable(&self) -> bool {
        self.busy.get() == 0 && self.seen.get()
    }

    fn on_bytes_read(&self) {
        if self.busy.get() > 0 {
            // The request's body is arriving: progress. (The task's timer re-reads the deadline
            // when it fires, so no wake-up is needed for a deadline that only moves later.)
            self.busy_since.set(Instant::now());
            return;
        }
        if self.head_started.get().is_none() {
            self.head_started.set(Some(Instant::now()));
            self.changed.notify_one();
        }
    }
}

/// Marks a request in flight on its connection; dropping it (when the response body is done or
/// abandoned) makes the connection idle again.
#[derive(Debug)]
struct BusyGuard(Rc<ConnState>);

impl BusyGuard {
    fn new(state: Rc<ConnState>) -> BusyGuard {
        if state.busy.get() == 0 {
            state.busy_since.set(Instant::now());
        }
        state.busy.set(state.busy.get() + 1);
        BusyGuard(state)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let s = &self.0;
        s.busy.set(s.busy.get().saturating_sub(1));
        if s.busy.get() == 0 {
            s.idle_since.set(Instant::now());
            s.head_started.set(None);
            s.served.set(s.served.get() + 1);
            s.changed.notify_one();
        }
    }
}

/// A response body and the [`BusyGuard`] of its request, dropped when the body is done.
#[derive(Debug)]
struct GuardedBody {
    body: Body,
    guard: Option<BusyGuard>,
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(next, Poll::Ready(None)) {
            // Finished: the connection is idle again even if hyper keeps the body a while.
            self.guard = None;
        }
        next
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The TCP stream, noting when the first byte of a request arrives on an idle connection.
struct Tracked {
    stream: TcpStream,
    state: Rc<ConnState>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.state.seen.set(true);
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.on_bytes_read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The live connections, by id, the limits they live by, and their counters.
#[derive(Debug)]
pub(crate) struct Connections {
    limits: Limits,
    live: RefCell<BTreeMap<u64, Rc<ConnState>>>,
    next_id: Cell<u64>,
    /// Connections refused with the static 503.
    rejected: Cell<u64>,
    /// Connections without a request in flight closed to make room.
    evicted: Cell<u64>,
    /// Refused connections still delivering their 503.
    rejecting: Cell<usize>,
}

impl Connections {
    /// No connections yet.
    pub(crate) fn new(limits: Limits) -> Connections {
        Connections {
            limits,
            live: RefCell::default(),
            next_id: Cell::new(0),
            rejected: Cell::new(0),
            evicted: Cell::new(0),
            rejecting: Cell::new(0),
        }
    }

    /// Connections being served.
    pub(crate) fn active(&self) -> usize {
        self.live.borrow().len()
    }

    /// Connections refused with `503` since start.
    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.get()
    }

    /// Connections closed to make room since start.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.get()
    }

    /// Ask every connection to finish its request in flight and close (shutdown).
    fn close_all(&self) {
        for c in self.live.borrow().values() {
            c.close.notify_one();
        }
    }

    /// Whether a newcomer must take another connection's slot.
    fn at_limit(&self) -> bool {
        self.live.borrow().len() >= self.limits.max_connections.max(1)
    }

    /// Register a new connection. At the limit, the evictable connection quiet for longest is
    /// closed to make room, however recently: a slowloris keeps every slot young, and refusing
    /// newcomers then would lock everyone out. `None`: every connection has a request in flight
    /// or has not been read yet.
    fn register(&self, max: usize) -> Option<Rc<ConnState>> {
        let mut live = self.live.borrow_mut();
        if live.len() >= max.max(1) {
            let victim = live
                .values()
                .filter(|c| c.evictable())
                .map(|c| (c.quiet_since(), c.id))
                .min()
                .map(|(_, id)| id)?;
            if let Some(v) = live.remove(&victim) {
                v.close.notify_one();
                self.evicted.set(self.evicted.get() + 1);
            }
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let state = Rc::new(ConnState::new(id));
        live.insert(id, state.clone());
        Some(state)
    }

    fn remove(&self, id: u64) {
        self.live.borrow_mut().remove(&id);
    }
}

/// Serve connections from `listener` with `handler` until `shutdown` resolves, then let in-flight
/// requests finish for up to [`SHUTDOWN_GRACE`] and return. Must run inside a `LocalSet`
/// (connections are `spawn_local`ed).
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    connections: Rc<Connections>,
    handler: Rc<H>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Owns every connection task: dropping it (when serve returns) aborts any that are left.
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.at_limit() {
                        // Someone will lose their slot. Let every connection read what has
                        // arrived first (`yield_now` runs the I/O driver and the woken tasks), so
                        // a request already sent makes its connection busy, not evicted.
                        tokio::task::yield_now().await;
                    }
                    admit(&connections, &handler, stream, peer, &mut tasks);
                }
                Err(e) => {
                    log::warn!("http: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
    drop(listener);
    connections.close_all();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::info!(
            "http: {} connection(s) still busy after {SHUTDOWN_GRACE:?}; closing them",
            tasks.len()
        );
    }
    Ok(())
}

/// Take a freshly accepted connection: serve it on its own task, or answer `503` and close it.
fn admit<H: Handler>(
    connections: &Rc<Connections>,
    handler: &Rc<H>,
    stream: TcpStream,
    peer: SocketAddr,
    tasks: &mut JoinSet<()>,
) {
    let Some(state) = connections.register(connections.limits.max_connections) else {
        reject(connections, stream, tasks);
        return;
    };
    let _ = stream.set_nodelay(true);
    let connections = connections.clone();
    let handler = handler.clone();
    tasks.spawn_local(async move {
        let id = state.id;
        serve_connection(&connections, handler, stream, peer, state).await;
        connections.remove(id);
    });
}

/// Answer `503` to a connection beyond the limit. Closing at once with the request unread would
/// make the kernel send RST and possibly discard the answer, so the answer is sent, the write side
/// shut, and the request drained for at most [`REJECT_LINGER`].
fn reject(connections: &Rc<Connections>, mut stream: TcpStream, tasks: &mut JoinSet<()>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let c = connections;
    c.rejected.set(c.rejected.get() + 1);
    if c.rejecting.get() >= MAX_REJECTING {
        return; // dropped: closed without an answer
    }
    c.rejecting.set(c.rejecting.get() + 1);
    let connections = connections.clone();
    tasks.spawn_local(async move {
        let _ = tokio::time::timeout(REJECT_LINGER, async {
            stream.write_all(FULL_RESPONSE).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        let c = &connections;
        c.rejecting.set(c.rejecting.get().saturating_sub(1));
    });
}

async fn serve_connection<H: Handler>(
    connections: &Connections,
    handler: Rc<H>,
    stream: TcpStream,
    peer: SocketAddr,
    state: Rc<ConnState>,
) {
    let limits = connections.limits.clone();
    let io = TokioIo::new(Tracked {
        stream,
        state: state.clone(),
    });
    let svc_state = state.clone();
    let service = hyper::service::service_fn(move |req| {
        // Created when hyper hands over the request head; moves into the response body.
        let guard = BusyGuard::new(svc_state.clone());
        let handler = handler.clone();
        async move {
            let resp = handler.handle(req, peer).await;
            Ok::<_, Infallible>(resp.map(|body| GuardedBody {
                body,
                guard: Some(guard),
            }))
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .max_buf_size(limits.max_header_bytes.max(HYPER_MIN_BUF))
        // Queue body bytes as they are instead of copying them into hyper's buffer: a reply's
        // budget charge (`Body::tied_to`) is released when those very bytes are dropped.
        .writev(true)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    loop {
        let deadline = state.deadline(limits.header_timeout, limits.keepalive_timeout);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    log::debug!("http: connection from {peer}: {e}");
                }
                return;
            }
            () = state.changed.notified() => {}
            () = state.close.notified(), if !closing => {
                if state.busy.get() == 0 {
                    return; // idle: drop it now
                }
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = tokio::time::sleep_until(deadline) => {
                let still = state.deadline(limits.header_timeout, limits.keepalive_timeout);
                if still <= Instant::now() {
                    log::debug!("http: closing connection from {peer} at its deadline");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(10);
    const K: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_request_cycle() {
        let s = Rc::new(ConnState::new(0));
        let t0 = Instant::now();
        assert_eq!(s.deadline(H, K), t0 + H, "first request: header timeout");
        tokio::time::advance(Duration::from_secs(3)).await;
        s.on_bytes_read();
        assert_eq!(s.deadline(H, K), t0 + Duration::from_secs(3) + H);
        let g = BusyGuard::new(s.clone());
        let busy_at = Instant::now();
        assert_eq!(
            s.deadline(H, K),
            busy_at + MAX_REQUEST_TIME,
            "busy: the request cap"
        );
        tokio::time::advance(Duration::from_secs(100)).await;
        s.on_bytes_read();
        assert_eq!(
            s.deadline(H, K),
            busy_at + Duration::from_secs(100) + MAX_REQUEST_TIME,
            "a body still arriving is progress: a long upload is not cut"
        );
        drop(g);
        let t1 = Instant::now();
        assert_eq!(s.deadline(H, K), t1 + K, "idle keep-alive");
        tokio::time::advance(Duration::from_secs(25)).await;
        s.on_bytes_read();
        assert_eq!(
            s.deadline(H, K),
            t1 + Duration::from_secs(25) + H,
            "the next head has its own timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn full_registry_evicts_the_connection_quiet_for_longest() {
        let c = Connections::new(Limits {
            max_connections: 3,
            header_timeout: H,
            keepalive_timeout: K,
            max_header_bytes: HYPER_MIN_BUF,
        });
        let a = c.register(3).expect("room");
        let b = c.register(3).expect("room");
        let d = c.register(3).expect("room");
        let _busy_a = BusyGuard::new(a.clone());
        a.seen.set(true);
        assert!(c.at_limit());
        assert!(
            c.register(3).is_none(),
            "b and d were never read: they may hold a request"
        );
        tokio::time::advance(Duration::from_millis(5)).await;
        b.seen.set(true);
        d.seen.set(true);
        d.on_bytes_read(); // d started a head after b went quiet: b is the older
        let e = c.register(3).expect("b makes room, however young");
        assert!(!c.live.borrow().contains_key(&b.id), "b was evicted");
        assert_eq!(c.evicted.get(), 1);
        e.seen.set(true);
        let _busy_e = BusyGuard::new(e);
        let _f = c.register(3).expect("d makes room");
        assert!(!c.live.borrow().contains_key(&d.id), "d was evicted");
        assert_eq!(c.active(), 3);
        assert!(c.register(3).is_none(), "busy or unread → refused");
    }

    #[tokio::test]
    async fn body_drops_its_guard_when_done() {
        use hyper::body::Body as _;
        let s = Rc::new(ConnState::new(0));
        let mut body = GuardedBody {
            body: Body::new("hi"),
            guard: Some(BusyGuard::new(s.clone())),
        };
        assert_eq!(s.busy.get(), 1);
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(body.is_end_stream());
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(None)
        ));
        assert_eq!(s.busy.get(), 0);
        assert_eq!(s.served.get(), 1);
    }

    #[test]
    fn static_503_is_well_formed() {
        let text = std::str::from_utf8(FULL_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    /// `conn` needs no router: any `Handler` is served, and `serve` returns once `shutdown`
    /// resolves (the connection closed, nothing left in flight).
    #[tokio::test]
    async fn serves_any_handler_until_shutdown() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        struct Echo;
        impl Handler for Echo {
            async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Resp {
                let text = format!("{} {} from {}", req.method(), req.uri(), peer.ip());
                hyper::Response::new(Body::new(text))
            }
        }

        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let connections = Rc::new(Connections::new(Limits {
                    max_connections: 4,
                    header_timeout: H,
                    keepalive_timeout: K,
                    max_header_bytes: HYPER_MIN_BUF,
                }));
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let server = tokio::task::spawn_local(serve(
                    listener,
                    connections.clone(),
                    Rc::new(Echo),
                    async move {
                        let _ = stopped.await;
                    },
                ));
                let mut client = TcpStream::connect(addr).await.unwrap();
                client
                    .write_all(b"GET /x?y=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let mut answer = String::new();
                client.read_to_string(&mut answer).await.unwrap();
                assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
                assert!(answer.ends_with("GET /x?y=1 from 127.0.0.1"), "{answer}");
                stop.send(()).unwrap();
                server.await.unwrap().unwrap();
                assert_eq!(connections.active(), 0);
            })
            .await;
    }

    fn futures_noop_waker() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
