//! The request side, below the router: [`Ctx`], what a handler knows about a request besides its
//! body (method, raw path and query, headers, the client's address), and reading a body with a
//! size cap and a deadline.
//!
//! Built by `router` (which decides the client address and the proxy trust); read by every
//! handler. Uses only `resp` (for [`ApiError`]); no state, no routing.

use std::future::poll_fn;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{self, HeaderMap};
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;

use super::resp::ApiError;

/// A request body must arrive completely within this time (else `408`).
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What a handler needs to know about the request besides its body.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The method.
    pub(crate) method: Method,
    /// The raw path (still percent-encoded).
    pub(crate) path: String,
    /// The raw query string, if any.
    pub(crate) query: Option<String>,
    /// The request headers.
    pub(crate) headers: HeaderMap,
    /// The client's address (see `checks::client_ip`).
    pub(crate) client: IpAddr,
    /// The peer is a trusted proxy (its `X-Forwarded-*` headers are believed).
    pub(crate) via_proxy: bool,
}

impl Ctx {
    /// A header as text.
    pub(crate) fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The decoded query parameter `name`.
    pub(crate) fn query_param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        toru_plugin_api::protocol::parse_query(q)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Whether the request may change state: any method but `GET` and `HEAD`. `OPTIONS` counts
    /// too: the host does not answer it itself, and a plugin may do anything on it.
    pub(crate) fn is_unsafe(&self) -> bool {
        !matches!(self.method, Method::GET | Method::HEAD)
    }

    /// Whether the request came over TLS (only a trusted proxy can say so).
    pub(crate) fn secure(&self) -> bool {
        self.via_proxy
            && self
                .header("x-forwarded-proto")
                .is_some_and(|p| p.eq_ignore_ascii_case("https"))
    }
}

/// Read a request body of at most `limit` bytes within [`BODY_READ_TIMEOUT`].
pub(crate) async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is over {limit} bytes"),
        )
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let read = async {
        let mut out: Vec<u8> = Vec::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let frame =
                frame.map_err(|e| ApiError::bad_request(format!("bad request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > limit {
                    return Err(too_large());
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(out))
    };
    tokio::time::timeout(BODY_READ_TIMEOUT, read)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the request body did not arrive in time",
            )
        })?
}

/// A streamed upload must keep arriving: a gap longer than this between two chunks ends it
/// (`408`). There is no limit on the whole upload (a large one on a slow link takes long); its
/// size limit is the sink's.
pub(crate) const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Streams the request body into `upload` through `write` (see `stream_body`). A write that fails
/// (too large, disk full) drops the upload at once — its staging file goes with it — and the rest
/// of the body is read and discarded; the error becomes the answer through `refused`.
pub(crate) async fn stream_upload<U, E>(
    body: &mut Incoming,
    upload: U,
    mut write: impl FnMut(&mut U, &[u8]) -> Result<(), E>,
    refused: impl FnOnce(E) -> ApiError,
) -> Result<U, ApiError> {
    let mut open = Some(upload);
    stream_body(
        body,
        |chunk| {
            let Some(u) = open.as_mut() else {
                return Ok(());
            };
            let written = write(u, chunk);
            if written.is_err() {
                open = None;
            }
            written
        },
        refused,
    )
    .await?;
    open.ok_or_else(|| ApiError::bad_request("the upload was refused"))
}

/// Hand `body` to `sink` chunk by chunk as it arrives (never held whole), each chunk within
/// [`UPLOAD_IDLE_TIMEOUT`] of the last. When `sink` refuses a chunk (too large, disk full), a
/// little more of the body is read and thrown away before its error is returned, so that the
/// answer reaches a client that writes its whole body before reading (a browser): closing with
/// unread data would reset the connection and lose the reason.
pub(crate) async fn stream_body<E>(
    body: &mut Incoming,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    refused: impl FnOnce(E) -> ApiError,
) -> Result<(), ApiError> {
    loop {
        let next = tokio::time::timeout(
            UPLOAD_IDLE_TIMEOUT,
            poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)),
        )
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the upload stopped arriving",
            )
        })?;
        let Some(frame) = next else { return Ok(()) };
        let frame = frame.map_err(|e| ApiError::bad_request(format!("bad request body: {e}")))?;
        if let Ok(data) = frame.into_data()
            && let Err(e) = sink(&data)
        {
            let answer = refused(e);
            drain(body).await;
            return Err(answer);
        }
    }
}

/// After a refusal, at most this much more of an upload is read and thrown away (or for at most
/// [`DRAIN_TIME`]) so the answer is not lost in a reset connection.
const DRAIN_BYTES: u64 = 16 * 1024 * 1024;
/// See [`DRAIN_BYTES`].
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Read and discard what is left of `body`, within [`DRAIN_BYTES`] and [`DRAIN_TIME`].
async fn drain(body: &mut Incoming) {
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            if n >= left {
                return;
            }
            left -= n;
        }
    })
    .await;
}

/// Read and parse a JSON request body.
pub(crate) async fn read_json<T: DeserializeOwned>(
    body: Incoming,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_body(body, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("bad JSON: {e}")))
}

/// Read a JSON request body; an empty body is `T::default()`.
pub(crate) async fn read_json_or_default<T: DeserializeOwned + Default>(
    body: Incoming,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_body(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("bad JSON: {e}")))
}
