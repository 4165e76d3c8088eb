//! Response types and builders, the bottom layer of `http`: [`Resp`] and its in-memory [`Body`],
//! [`ApiError`] (every error answer is JSON `{error, message}`), the JSON/bytes/405 builders, the
//! session cookie's `Set-Cookie` values, and the security headers every response carries.
//!
//! Imports nothing from the rest of `http`; everything above uses it. Holds no state and does no
//! I/O (an internal error is logged when it is turned into a `500`).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Bytes, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::json;

use crate::auth::SESSION_COOKIE;
use crate::error_chain::error_chain;
use crate::store::StoreError;

/// A response on its way out.
pub(crate) type Resp = Response<Body>;

/// A complete response body held in memory.
#[derive(Debug, Default)]
pub(crate) struct Body {
    data: Option<Bytes>,
}

impl Body {
    /// A body with these bytes (empty → no data frame).
    pub(crate) fn new(data: impl Into<Bytes>) -> Body {
        let data: Bytes = data.into();
        Body {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// Bytes not yet sent.
    pub(crate) fn len(&self) -> usize {
        self.data.as_ref().map_or(0, Bytes::len)
    }

    /// The same body, with `guard` kept until the last of its bytes is gone: hyper holds the
    /// bytes, not the body, until the socket has taken them (or the connection is dropped), so a
    /// guard on the body would go too early.
    pub(crate) fn tied_to<G: Send + 'static>(self, guard: G) -> Body {
        /// Bytes and what lives exactly as long as they do.
        struct Tied<G> {
            data: Bytes,
            _guard: G,
        }
        impl<G> AsRef<[u8]> for Tied<G> {
            fn as_ref(&self) -> &[u8] {
                &self.data
            }
        }
        Body {
            data: self.data.map(|data| {
                Bytes::from_owner(Tied {
                    data,
                    _guard: guard,
                })
            }),
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len() as u64)
    }
}

/// An error answer: status, machine-readable code, human sentence.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// HTTP status.
    pub(crate) status: StatusCode,
    /// Machine-readable code (`not_found`, `unauthorized`, …).
    pub(crate) error: &'static str,
    /// One human sentence.
    pub(crate) message: String,
    /// Extra headers (`Retry-After`, `Allow`, `Set-Cookie`).
    headers: Vec<(HeaderName, HeaderValue)>,
    /// More fields for the JSON body (an object), beside `error` and `message`.
    details: Option<serde_json::Value>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub(crate) fn new(
        status: StatusCode,
        error: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            error,
            message: message.into(),
            headers: Vec::new(),
            details: None,
        }
    }

    /// Add the fields of `details` (an object) to the JSON body.
    pub(crate) fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.details = Some(details);
        self
    }

    /// `404 not_found`.
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// `400 bad_request`.
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// `503 busy` with `Retry-After: 1`: a shared limit is reached; the same request may succeed in
    /// a moment.
    pub(crate) fn busy(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
            .with_header(header::RETRY_AFTER, "1")
    }

    /// `403 forbidden` for viewers.
    pub(crate) fn read_only() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this account is read-only (viewer)",
        )
    }

    /// `500 internal` (details are logged, not sent).
    /// The answer to a store failure that is not the request's fault: `507 storage_full` while
    /// the disk is full, `503 unavailable` while the store cannot write, `500` otherwise.
    pub(crate) fn store(what: &str, e: StoreError) -> ApiError {
        match e {
            StoreError::DiskFull(_) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
                format!("{e}; free space on the device (see System)"),
            ),
            StoreError::Degraded | StoreError::Closed | StoreError::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            e => ApiError::internal(what, &e),
        }
    }

    pub(crate) fn internal(what: &str, e: &dyn std::error::Error) -> ApiError {
        log::error!("http: {what}: {}", error_chain(e));
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what} failed; see the host log"),
        )
    }

    /// Add a header.
    pub(crate) fn with_header(mut self, name: HeaderName, value: &str) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    /// The JSON response.
    pub(crate) fn into_response(self) -> Resp {
        let mut body = json!({"error": self.error, "message": self.message});
        if let (Some(serde_json::Value::Object(extra)), Some(o)) =
            (self.details, body.as_object_mut())
        {
            for (k, v) in extra {
                o.entry(k).or_insert(v);
            }
        }
        let mut r = json_response(self.status, &body);
        for (k, v) in self.headers {
            r.headers_mut().insert(k, v);
        }
        r
    }
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, value: &impl Serialize) -> Resp {
    let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    let mut r = Response::new(Body::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `200` with JSON.
pub(crate) fn ok_json(value: &impl Serialize) -> Result<Resp, ApiError> {
    Ok(json_response(StatusCode::OK, value))
}

/// A response with a body and content type.
pub(crate) fn bytes_response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Resp {
    let mut r = Response::new(Body::new(body));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// `503 busy`: replies waiting for slow clients hold the whole reply budget.
pub(crate) fn reply_budget_spent() -> ApiError {
    ApiError::busy(
        "replies waiting for slow clients fill the reply buffer \
         (http.max_buffered_reply_bytes); try again in a moment",
    )
}

/// `405` with `Allow`.
pub(crate) fn method_not_allowed(allow: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("use {allow}"),
    )
    .with_header(header::ALLOW, allow)
}

/// The `Set-Cookie` value for a new session.
pub(crate) fn session_cookie(id: &str, max_age_secs: u64, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// Content-Security-Policy of every response. Scripts only from this origin (plugin bundles are
/// served from here too); inline styles are allowed because plugin bundles use them.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'";

/// The headers every response carries; `api` answers (`/api/*`, `/metrics`) are never cached,
/// UI files are revalidated unless they say otherwise.
pub(crate) fn add_security_headers(h: &mut HeaderMap, api: bool) {
    let set = |h: &mut HeaderMap, k: HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(
        h,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        h,
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    if api {
        set(h, header::CACHE_CONTROL, "no-store");
    } else if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-cache");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tied_guard_lives_as_long_as_the_bytes() {
        use hyper::body::Body as _;
        let alive = std::sync::Arc::new(());
        let mut body = Body::new("hello").tied_to(alive.clone());
        assert_eq!(body.len(), 5);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) else {
            panic!("one data frame");
        };
        drop(body);
        assert_eq!(
            std::sync::Arc::strong_count(&alive),
            2,
            "the bytes still live"
        );
        let data = frame.into_data().unwrap();
        assert_eq!(&data[..], b"hello");
        let rest = data.slice(1..);
        drop(data);
        assert_eq!(
            std::sync::Arc::strong_count(&alive),
            2,
            "a part still lives"
        );
        drop(rest);
        assert_eq!(
            std::sync::Arc::strong_count(&alive),
            1,
            "released with the last byte"
        );
        let empty = Body::new("").tied_to(alive.clone());
        assert_eq!(empty.len(), 0);
        assert_eq!(
            std::sync::Arc::strong_count(&alive),
            1,
            "no bytes: released at once"
        );
    }

    #[test]
    fn errors_are_json_with_their_headers() {
        let r = method_not_allowed("GET").into_response();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()["allow"], "GET");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert!(r.body().len() > 0);
        assert_eq!(
            session_cookie("abc", 60, true),
            "toru_session=abc; HttpOnly; SameSite=Strict; Path=/; Max-Age=60; Secure"
        );
        assert_eq!(
            clear_cookie(),
            "toru_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        );
    }
}
