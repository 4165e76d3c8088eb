//! Protocol types: metadata, the envelope and every message of protocol 1.0 and 1.1.
//!
//! No I/O happens here: this module turns JSON bytes into typed messages and back. The framing
//! (length prefixes, limits) lives in [`crate::codec`]; the normative description is `PROTOCOL.md`.
//!
//! Whether a frame is a request or a reply follows from its direction, so there are two message
//! enums: [`HostMessage`] (host → plugin) and [`PluginMessage`] (plugin → host). Each direction has
//! a decoder ([`decode_host_frame`], [`decode_plugin_frame`]) and an encoder ([`Frame::encode`]).
//!
//! Envelope: `{type, timestamp, request_id, payload}`. Unknown fields are ignored everywhere; unknown
//! `type`, `action` and `level` values are rejected with [`DecodeError::Unsupported`], which keeps
//! the `request_id` so the receiver can answer with an `error` frame.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The protocol version this crate speaks when both sides opt in.
pub const PROTOCOL_VERSION: &str = "1.1";
/// Longest accepted `request_id`, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;
/// Longest KV key, in bytes.
pub const MAX_KV_KEY_LEN: usize = 256;
/// Longest KV value, in bytes.
pub const MAX_KV_VALUE_LEN: usize = 64 * 1024;
/// Most keys one `list` reply carries; a `list` without `limit`, or with a larger one, gets this
/// many, and a `limit` of 0 is read as 1.
pub const MAX_KV_LIST_LIMIT: usize = 1000;
/// Requests the host may have waiting for replies from one plugin (1.1); more are refused before
/// they are sent.
pub const MAX_HOST_REQUESTS_IN_FLIGHT: usize = 64;
/// KV requests a plugin may have in flight to the host (1.1); more are answered `busy`.
pub const MAX_KV_REQUESTS_IN_FLIGHT: usize = 16;
/// The environment variable that gives a plugin the path of the socket it listens on.
pub const SOCKET_ENV: &str = "TORU_PLUGIN_SOCKET";
/// Longest `mqtt` publish payload, in bytes.
pub const MAX_MQTT_PAYLOAD_LEN: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------

/// What a plugin prints for `--metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginMetadata {
    /// Unique id, `^[a-z0-9][a-z0-9-]{0,62}$`.
    pub id: String,
    /// Human name, under 100 characters.
    pub name: String,
    /// Free-form version string.
    pub version: String,
    /// Author, under 100 characters, or none.
    #[serde(default)]
    pub author: Option<String>,
    /// An icon, usually one emoji.
    #[serde(default)]
    pub icon: String,
    /// URL route, `/` followed by one segment of `[A-Za-z0-9._-]`.
    pub route: String,
    /// `"1.1"` for plugins that speak protocol 1.1; absent for legacy 1.0 plugins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// Why metadata was rejected. The message is shown to users as the plugin's stored reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The output was not the JSON object described in the spec.
    #[error("metadata is not valid JSON: {0}")]
    Json(String),
    /// `id` does not match `^[a-z0-9][a-z0-9-]{0,62}$`.
    #[error(
        "invalid id {0:?}: use 1-63 lowercase letters, digits and '-', starting with a letter or digit"
    )]
    Id(String),
    /// `route` is not `/` plus one safe segment.
    #[error(
        "invalid route {0:?}: must be '/' followed by letters, digits, '.', '_' or '-' (no '..')"
    )]
    Route(String),
    /// `name` is empty or too long.
    #[error("invalid name: must be 1 to 99 characters")]
    Name,
    /// `author` is too long.
    #[error("invalid author: must be under 100 characters")]
    Author,
    /// The plugin asked for a protocol major version this host does not speak.
    #[error("plugin speaks protocol {plugin}, this host speaks 1.0 and {PROTOCOL_VERSION}")]
    Protocol {
        /// The version the plugin announced.
        plugin: String,
    },
}

/// The protocol a plugin will be driven with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ProtocolVersion {
    /// Legacy: one message per connection, no handshake.
    #[serde(rename = "1.0")]
    V1_0,
    /// One persistent multiplexed connection with ready, heartbeat, KV and log.
    #[serde(rename = "1.1")]
    V1_1,
}

impl ProtocolVersion {
    /// The version as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolVersion::V1_0 => "1.0",
            ProtocolVersion::V1_1 => "1.1",
        }
    }
}

impl PluginMetadata {
    /// Parse `--metadata` output (pretty-printed or not; unknown fields ignored).
    pub fn parse(bytes: &[u8]) -> Result<PluginMetadata, MetadataError> {
        serde_json::from_slice(bytes).map_err(|e| MetadataError::Json(e.to_string()))
    }

    /// Check every rule of the spec; return the protocol the plugin will be driven with.
    pub fn validate(&self) -> Result<ProtocolVersion, MetadataError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 63
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.id.starts_with('-');
        if !id_ok {
            return Err(MetadataError::Id(self.id.clone()));
        }
        if !is_valid_route(&self.route) {
            return Err(MetadataError::Route(self.route.clone()));
        }
        let name_len = self.name.chars().count();
        if name_len == 0 || name_len >= 100 {
            return Err(MetadataError::Name);
        }
        if self
            .author
            .as_ref()
            .is_some_and(|a| a.chars().count() >= 100)
        {
            return Err(MetadataError::Author);
        }
        negotiate(self.protocol.as_deref())
    }

    /// The route without its leading `/`.
    pub fn route_segment(&self) -> &str {
        self.route.trim_start_matches('/')
    }
}

/// True for `/` followed by one segment of `[A-Za-z0-9._-]` that is not `.` or `..` and has no `..`.
pub fn is_valid_route(route: &str) -> bool {
    let Some(seg) = route.strip_prefix('/') else {
        return false;
    };
    !seg.is_empty()
        && seg.len() <= 64
        && !seg.contains("..")
        && seg != "."
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Decide the protocol from the metadata's `protocol` field.
pub fn negotiate(announced: Option<&str>) -> Result<ProtocolVersion, MetadataError> {
    let Some(v) = announced else {
        return Ok(ProtocolVersion::V1_0);
    };
    let mut parts = v.split('.');
    let major = parts.next().and_then(|m| m.parse::<u32>().ok());
    let minor = parts.next().and_then(|m| m.parse::<u32>().ok());
    match (major, minor, parts.next()) {
        (Some(1), Some(0), None) => Ok(ProtocolVersion::V1_0),
        (Some(1), Some(_), None) => Ok(ProtocolVersion::V1_1),
        _ => Err(MetadataError::Protocol {
            plugin: v.to_string(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Message payloads
// ---------------------------------------------------------------------------------------------

/// How a `body` string is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    /// The body is the text itself (the default, and the only 1.0 form).
    #[default]
    Utf8,
    /// The body is base64 (RFC 4648 with padding); 1.1 only.
    Base64,
}

impl BodyEncoding {
    fn is_utf8(&self) -> bool {
        *self == BodyEncoding::Utf8
    }
}

/// The `init` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Init {
    /// The device's instance id (UUID v4, stable for the life of the installation).
    pub instance_id: String,
    /// The socket the plugin listens on.
    pub plugin_socket: String,
    /// A file path the plugin may write its own log to.
    pub log_path: String,
    /// The protocol the host speaks with this plugin (`"1.1"`); absent from a 1.0 host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// How often the host pings (1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// The host's frame reading limit (1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_len: Option<u64>,
    /// The plugin's settings: a JSON object, `{}` when it has none. Sent under both versions
    /// (a 1.0 plugin ignores it); absent from an original 1.0 host, read as `{}`.
    #[serde(default = "empty_config", deserialize_with = "config_object")]
    pub config: Value,
    /// The plugin's licence as the host verified it (a 1.1 addition; a 1.0 plugin ignores it):
    /// present only when a valid licence for this device is installed for the plugin. Absent
    /// from older hosts and for unlicensed plugins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<License>,
}

/// The verified claims of a plugin's licence (`init`'s `license`): the host checked the
/// publisher's signature, the plugin, this device and the dates before it started the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct License {
    /// The plugin the licence is for.
    pub plugin: String,
    /// The publisher key that signed it (16 hex digits, as minisign prints key ids).
    pub publisher: String,
    /// The licensing id of the device it is bound to.
    pub instance: String,
    /// What it unlocks; the plugin decides what each name means.
    #[serde(default)]
    pub features: Vec<String>,
    /// Valid from (RFC 3339).
    pub not_before: chrono::DateTime<chrono::Utc>,
    /// Valid until (RFC 3339); `None`: does not expire.
    #[serde(default)]
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
    /// When the publisher issued it (RFC 3339).
    pub issued_at: chrono::DateTime<chrono::Utc>,
}

impl License {
    /// Whether the licence lists `feature`.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

/// The settings of a plugin that has none.
pub fn empty_config() -> Value {
    Value::Object(Map::new())
}

/// A `config` field: a JSON object, anything else is refused.
fn config_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    match Value::deserialize(d)? {
        v @ Value::Object(_) => Ok(v),
        other => Err(serde::de::Error::custom(format!(
            "config must be a JSON object, not {other}"
        ))),
    }
}

/// The payload of a `config` request (1.1): the plugin's new settings.
#[derive(Deserialize)]
struct ConfigPayload {
    #[serde(deserialize_with = "config_object")]
    config: Value,
}

/// An HTTP request forwarded to a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path after the plugin's route, starting with `/`, query string kept.
    pub path: String,
    /// Request headers (repeated headers joined with `, `).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body, or `None`.
    #[serde(default)]
    pub body: Option<String>,
    /// How `body` is encoded (1.1).
    #[serde(default, skip_serializing_if = "BodyEncoding::is_utf8")]
    pub body_encoding: BodyEncoding,
}

impl HttpRequest {
    /// The path without the query string.
    pub fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(p, _)| p)
    }

    /// The raw query string (without `?`), if any.
    pub fn query_string(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, q)| q)
    }

    /// The query parameters, percent-decoded, in order.
    pub fn query(&self) -> Vec<(String, String)> {
        self.query_string().map(parse_query).unwrap_or_default()
    }

    /// The first value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// A header, looked up case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as bytes (decoding base64 if so marked).
    pub fn body_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        decode_body(self.body.as_deref(), self.body_encoding)
    }
}

/// A plugin's reply to an [`HttpRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body, or `None`.
    #[serde(default)]
    pub body: Option<String>,
    /// How `body` is encoded (1.1).
    #[serde(default, skip_serializing_if = "BodyEncoding::is_utf8")]
    pub body_encoding: BodyEncoding,
}

impl HttpResponse {
    /// A response with a status and no body.
    pub fn new(status: u16) -> HttpResponse {
        HttpResponse {
            status,
            headers: BTreeMap::new(),
            body: None,
            body_encoding: BodyEncoding::Utf8,
        }
    }

    /// A JSON response.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> HttpResponse {
        let body = serde_json::to_string(value).unwrap_or_else(|e| {
            format!(
                "{{\"error\":\"serialize\",\"message\":{:?}}}",
                e.to_string()
            )
        });
        HttpResponse::new(status)
            .with_header("Content-Type", "application/json")
            .with_body(body)
    }

    /// A text response with the given content type.
    pub fn text(status: u16, content_type: &str, body: impl Into<String>) -> HttpResponse {
        HttpResponse::new(status)
            .with_header("Content-Type", content_type)
            .with_body(body)
    }

    /// A binary response (sent as base64; 1.1 only).
    pub fn bytes(status: u16, content_type: &str, body: &[u8]) -> HttpResponse {
        let mut r = HttpResponse::new(status).with_header("Content-Type", content_type);
        r.body = Some(base64::engine::general_purpose::STANDARD.encode(body));
        r.body_encoding = BodyEncoding::Base64;
        r
    }

    /// `404` with a JSON error body.
    pub fn not_found() -> HttpResponse {
        HttpResponse::json(404, &serde_json::json!({"error": "not_found"}))
    }

    /// Add a header.
    pub fn with_header(mut self, name: &str, value: &str) -> HttpResponse {
        self.headers.insert(name.to_string(), value.to_string());
        self
    }

    /// Set a UTF-8 body.
    pub fn with_body(mut self, body: impl Into<String>) -> HttpResponse {
        self.body = Some(body.into());
        self.body_encoding = BodyEncoding::Utf8;
        self
    }

    /// The body as bytes (decoding base64 if so marked).
    pub fn body_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        decode_body(self.body.as_deref(), self.body_encoding)
    }
}

fn decode_body(body: Option<&str>, enc: BodyEncoding) -> Result<Vec<u8>, base64::DecodeError> {
    match (body, enc) {
        (None, _) => Ok(Vec::new()),
        (Some(b), BodyEncoding::Utf8) => Ok(b.as_bytes().to_vec()),
        (Some(b), BodyEncoding::Base64) => base64::engine::general_purpose::STANDARD.decode(b),
    }
}

/// A KV request from a plugin to the host's store (1.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum KvRequest {
    /// Read one key.
    Get {
        /// The key.
        key: String,
    },
    /// Write one key (acknowledged once durable).
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Remove one key.
    Delete {
        /// The key.
        key: String,
    },
    /// List keys with a prefix, in byte order.
    List {
        /// Only keys starting with this.
        #[serde(default)]
        prefix: String,
        /// Only keys after this one (pagination).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_after: Option<String>,
        /// At most this many keys (capped at 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
}

/// The host's reply to a [`KvRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum KvReply {
    /// Reply to `get`.
    Get {
        /// The key.
        key: String,
        /// The value, `None` when absent.
        value: Option<String>,
    },
    /// Reply to `set`: durable.
    Set {
        /// The key.
        key: String,
    },
    /// Reply to `delete`.
    Delete {
        /// The key.
        key: String,
        /// Whether the key existed.
        existed: bool,
    },
    /// Reply to `list`.
    List {
        /// Keys in byte order.
        keys: Vec<String>,
        /// More keys follow.
        truncated: bool,
    },
}

/// The raw payload of a host → plugin `kv` frame; see [`HostMessage::Kv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPayload(pub Map<String, Value>);

impl KvPayload {
    /// Wrap a reply for sending.
    pub fn from_reply(reply: &KvReply) -> KvPayload {
        match to_value(reply) {
            Value::Object(m) => KvPayload(m),
            _ => KvPayload(Map::new()),
        }
    }

    /// Read it as the reply to a request this side sent.
    pub fn into_reply(self) -> Result<KvReply, serde_json::Error> {
        serde_json::from_value(Value::Object(self.0))
    }

    /// Read it as a request from a legacy host.
    pub fn into_request(self) -> Result<KvRequest, serde_json::Error> {
        serde_json::from_value(Value::Object(self.0))
    }
}

/// A plugin's `mqtt` request (1.1): publish or subscribe through the host's MQTT bridge. Topics
/// and filters are relative to the plugin's own part of the host's topic tree
/// (`<topic_prefix>/plugins/<id>/`); the host refuses anything that would leave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum MqttRequest {
    /// Publish `payload` (text) on `topic`.
    Publish {
        /// The topic, relative (`temperature/kitchen`); no wildcards.
        topic: String,
        /// The payload (UTF-8 text, at most [`MAX_MQTT_PAYLOAD_LEN`] bytes).
        payload: String,
        /// Ask the broker to keep it for later subscribers.
        #[serde(default)]
        retain: bool,
        /// QoS 0 or 1 (default 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        qos: Option<u8>,
    },
    /// Receive what is published on `filter` (relative; `+` and `#` as whole levels, not first).
    Subscribe {
        /// The topic filter.
        filter: String,
    },
}

/// A message the host delivers to a plugin from a topic it subscribed to (1.1, no reply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttDelivery {
    /// The topic, relative to the plugin's part of the tree.
    pub topic: String,
    /// The payload (a payload that is not UTF-8 is not delivered).
    pub payload: String,
}

/// Severity of a `log` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something is wrong but the plugin carries on.
    Warn,
    /// Normal operation.
    Info,
    /// Detail for developers.
    Debug,
    /// Even more detail.
    Trace,
}

impl LogLevel {
    /// The level as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// A `log` record from a plugin (1.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// The text.
    pub message: String,
}

/// Machine-readable reason in an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed payload, missing field, wrong `payload.type`.
    BadRequest,
    /// Unknown `type` or `action`.
    Unsupported,
    /// No handler for this.
    NotFound,
    /// Key, value or frame over its limit.
    TooLarge,
    /// The plugin's KV quota would be exceeded.
    QuotaExceeded,
    /// Too many requests in flight.
    Busy,
    /// The store is degraded or the host is shutting down.
    Unavailable,
    /// The handler failed.
    Internal,
    /// A code this version does not know (tolerated).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Busy => "busy",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// The payload of an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ErrorReply {
    /// Why.
    pub code: ErrorCode,
    /// A human sentence.
    #[serde(default)]
    pub message: String,
}

impl ErrorReply {
    /// An error reply.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages and frames
// ---------------------------------------------------------------------------------------------

/// A message from the host to a plugin.
#[derive(Debug, Clone, PartialEq)]
pub enum HostMessage {
    /// `lifecycle`/`init`.
    Init(Init),
    /// `lifecycle`/`shutdown`.
    Shutdown,
    /// `heartbeat`/`ping` (1.1).
    Ping {
        /// Sequence number echoed by the pong.
        seq: u64,
    },
    /// `http` request.
    Http(HttpRequest),
    /// `kv`: in 1.1 the reply to a request the plugin sent; from a legacy host, a request.
    /// Only the receiver knows which (by its own pending ids), so the payload stays raw.
    Kv(KvPayload),
    /// `error` reply to a plugin's request (1.1).
    Error(ErrorReply),
    /// `config`/`set` (1.1): the plugin's settings changed; the payload's `config`, a JSON
    /// object. Answered with [`PluginMessage::ConfigOk`] or an `error`.
    Config(Value),
    /// `mqtt`/`ok` (1.1): the reply to a plugin's [`PluginMessage::Mqtt`] (published: queued for
    /// the broker; subscribed: registered).
    MqttOk,
    /// `mqtt`/`message` (1.1): a message on a topic the plugin subscribed to; no reply.
    MqttMessage(MqttDelivery),
}

/// A message from a plugin to the host.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginMessage {
    /// `lifecycle`/`ready` (1.1).
    Ready,
    /// `lifecycle`/`shutdown_ack` (1.1).
    ShutdownAck,
    /// `heartbeat`/`pong` (1.1).
    Pong {
        /// The ping's sequence number.
        seq: u64,
    },
    /// `http` reply, either form.
    HttpReply(HttpResponse),
    /// `kv` request (1.1).
    Kv(KvRequest),
    /// `log` record (1.1).
    Log(LogRecord),
    /// `error` reply to a host request (1.1).
    Error(ErrorReply),
    /// `config`/`ok` (1.1): the plugin applied the settings of a [`HostMessage::Config`].
    ConfigOk,
    /// `mqtt`/`publish` or `mqtt`/`subscribe` (1.1): answered with [`HostMessage::MqttOk`] or
    /// an `error`.
    Mqtt(MqttRequest),
}

/// A message with its envelope fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<M> {
    /// `request_id`, when the message is a request or a reply.
    pub request_id: Option<String>,
    /// When the sender wrote it.
    pub timestamp: DateTime<FixedOffset>,
    /// The message.
    pub message: M,
}

impl<M> Frame<M> {
    /// A frame stamped now.
    pub fn new(request_id: Option<String>, message: M) -> Frame<M> {
        Frame {
            request_id,
            // Not `Utc::now()`: it panics on a clock set before 1970; this conversion cannot.
            timestamp: DateTime::<Utc>::from(std::time::SystemTime::now()).fixed_offset(),
            message,
        }
    }
}

/// Why a frame's JSON could not be turned into a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not a JSON object with the envelope fields.
    #[error("frame is not a valid envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    /// `timestamp` is not RFC 3339.
    #[error("timestamp {value:?} is not RFC 3339")]
    Timestamp {
        /// The value received.
        value: String,
        /// Request id of the frame, for the error reply.
        request_id: Option<String>,
        /// The parser's complaint.
        #[source]
        source: chrono::ParseError,
    },
    /// Unknown `type`, `action` or `level`.
    #[error("unsupported {field} {value:?}")]
    Unsupported {
        /// Which field (`type`, `action`, `level`).
        field: &'static str,
        /// The value received.
        value: String,
        /// Request id of the frame, for the error reply.
        request_id: Option<String>,
    },
    /// The payload does not have the fields the message needs.
    #[error("bad {kind} payload: {source}")]
    Payload {
        /// The message type.
        kind: &'static str,
        /// Request id of the frame, for the error reply.
        request_id: Option<String>,
        /// What serde found.
        #[source]
        source: serde_json::Error,
    },
    /// Envelope rule broken (missing request id, `payload.type` mismatch, id too long).
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// Request id of the frame, for the error reply.
        request_id: Option<String>,
    },
}

impl DecodeError {
    /// The frame's `request_id`, when it could be read: such a frame gets an `error` reply.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            DecodeError::Envelope(_) => None,
            DecodeError::Timestamp { request_id, .. }
            | DecodeError::Unsupported { request_id, .. }
            | DecodeError::Payload { request_id, .. }
            | DecodeError::Invalid { request_id, .. } => request_id.as_deref(),
        }
    }

    /// The error reply a receiver sends for this.
    pub fn to_reply(&self) -> ErrorReply {
        let code = match self {
            DecodeError::Unsupported { .. } => ErrorCode::Unsupported,
            _ => ErrorCode::BadRequest,
        };
        ErrorReply::new(code, self.to_string())
    }
}

#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(rename = "type")]
    kind: String,
    timestamp: String,
    #[serde(default)]
    request_id: Option<String>,
    payload: Map<String, Value>,
}

struct Parsed {
    kind: String,
    request_id: Option<String>,
    timestamp: DateTime<FixedOffset>,
    payload: Map<String, Value>,
}

fn parse_envelope(bytes: &[u8]) -> Result<Parsed, DecodeError> {
    let raw: RawEnvelope = serde_json::from_slice(bytes).map_err(DecodeError::Envelope)?;
    let request_id = raw.request_id;
    if let Some(id) = &request_id
        && (id.is_empty() || id.len() > MAX_REQUEST_ID_LEN)
    {
        return Err(DecodeError::Invalid {
            message: format!("request_id must be 1 to {MAX_REQUEST_ID_LEN} bytes"),
            request_id: None,
        });
    }
    let timestamp =
        DateTime::parse_from_rfc3339(&raw.timestamp).map_err(|source| DecodeError::Timestamp {
            value: raw.timestamp.clone(),
            request_id: request_id.clone(),
            source,
        })?;
    if let Some(inner) = raw.payload.get("type")
        && inner.as_str() != Some(raw.kind.as_str())
    {
        return Err(DecodeError::Invalid {
            message: format!("payload.type {inner} does not match type {:?}", raw.kind),
            request_id,
        });
    }
    Ok(Parsed {
        kind: raw.kind,
        request_id,
        timestamp,
        payload: raw.payload,
    })
}

impl Parsed {
    fn action(&self) -> Result<&str, DecodeError> {
        match self.payload.get("action").and_then(Value::as_str) {
            Some(a) => Ok(a),
            None => Err(DecodeError::Invalid {
                message: format!("{} payload has no action", self.kind),
                request_id: self.request_id.clone(),
            }),
        }
    }

    fn unsupported(&self, field: &'static str, value: &str) -> DecodeError {
        DecodeError::Unsupported {
            field,
            value: value.to_string(),
            request_id: self.request_id.clone(),
        }
    }

    fn require_id(&self) -> Result<(), DecodeError> {
        if self.request_id.is_none() {
            return Err(DecodeError::Invalid {
                message: format!("{} message needs a request_id", self.kind),
                request_id: None,
            });
        }
        Ok(())
    }

    fn payload_as<T: serde::de::DeserializeOwned>(
        &self,
        kind: &'static str,
        value: Value,
    ) -> Result<T, DecodeError> {
        serde_json::from_value(value).map_err(|source| DecodeError::Payload {
            kind,
            request_id: self.request_id.clone(),
            source,
        })
    }

    fn whole_payload<T: serde::de::DeserializeOwned>(
        &self,
        kind: &'static str,
    ) -> Result<T, DecodeError> {
        self.payload_as(kind, Value::Object(self.payload.clone()))
    }

    fn seq(&self) -> Result<u64, DecodeError> {
        #[derive(Deserialize)]
        struct Seq {
            #[serde(default)]
            seq: u64,
        }
        Ok(self.whole_payload::<Seq>("heartbeat")?.seq)
    }

    fn frame<M>(self, message: M) -> Frame<M> {
        Frame {
            request_id: self.request_id,
            timestamp: self.timestamp,
            message,
        }
    }
}

/// Decode a frame sent by the host (what a plugin reads).
pub fn decode_host_frame(bytes: &[u8]) -> Result<Frame<HostMessage>, DecodeError> {
    let p = parse_envelope(bytes)?;
    let msg = match p.kind.as_str() {
        "lifecycle" => match p.action()? {
            "init" => HostMessage::Init(p.whole_payload("lifecycle")?),
            "shutdown" => HostMessage::Shutdown,
            other => return Err(p.unsupported("action", other)),
        },
        "heartbeat" => match p.action()? {
            "ping" => {
                p.require_id()?;
                HostMessage::Ping { seq: p.seq()? }
            }
            other => return Err(p.unsupported("action", other)),
        },
        "http" => {
            p.require_id()?;
            let inner = p.payload.get("payload").cloned().unwrap_or(Value::Null);
            HostMessage::Http(p.payload_as("http", inner)?)
        }
        "kv" => {
            p.require_id()?;
            match p.action()? {
                "get" | "set" | "delete" | "list" => {
                    let mut payload = p.payload.clone();
                    payload.remove("type");
                    HostMessage::Kv(KvPayload(payload))
                }
                other => return Err(p.unsupported("action", other)),
            }
        }
        "error" => {
            p.require_id()?;
            HostMessage::Error(p.whole_payload("error")?)
        }
        "config" => match p.action()? {
            "set" => {
                p.require_id()?;
                HostMessage::Config(p.whole_payload::<ConfigPayload>("config")?.config)
            }
            other => return Err(p.unsupported("action", other)),
        },
        "mqtt" => match p.action()? {
            "ok" => {
                p.require_id()?;
                HostMessage::MqttOk
            }
            "message" => HostMessage::MqttMessage(p.whole_payload("mqtt")?),
            other => return Err(p.unsupported("action", other)),
        },
        other => return Err(p.unsupported("type", other)),
    };
    Ok(p.frame(msg))
}

/// Decode a frame sent by a plugin (what the host reads). Accepts both HTTP reply forms.
pub fn decode_plugin_frame(bytes: &[u8]) -> Result<Frame<PluginMessage>, DecodeError> {
    let mut p = parse_envelope(bytes)?;
    let msg = match p.kind.as_str() {
        "lifecycle" => match p.action()? {
            "ready" => PluginMessage::Ready,
            "shutdown_ack" => PluginMessage::ShutdownAck,
            other => return Err(p.unsupported("action", other)),
        },
        "heartbeat" => match p.action()? {
            "pong" => PluginMessage::Pong { seq: p.seq()? },
            other => return Err(p.unsupported("action", other)),
        },
        "http" => {
            let reply = decode_http_reply(&mut p)?;
            PluginMessage::HttpReply(reply)
        }
        "kv" => {
            p.require_id()?;
            match p.action()? {
                "get" | "set" | "delete" | "list" => PluginMessage::Kv(p.whole_payload("kv")?),
                other => return Err(p.unsupported("action", other)),
            }
        }
        "log" => {
            if let Some(level) = p.payload.get("level").and_then(Value::as_str)
                && serde_json::from_value::<LogLevel>(Value::String(level.to_string())).is_err()
            {
                return Err(p.unsupported("level", level));
            }
            PluginMessage::Log(p.whole_payload("log")?)
        }
        "error" => PluginMessage::Error(p.whole_payload("error")?),
        "config" => match p.action()? {
            "ok" => PluginMessage::ConfigOk,
            other => return Err(p.unsupported("action", other)),
        },
        "mqtt" => {
            p.require_id()?;
            match p.action()? {
                "publish" | "subscribe" => PluginMessage::Mqtt(p.whole_payload("mqtt")?),
                other => return Err(p.unsupported("action", other)),
            }
        }
        other => return Err(p.unsupported("type", other)),
    };
    Ok(p.frame(msg))
}

/// The documented form `{status, headers, body}` or the legacy Rust SDK form, where the reply is
/// shaped like a request whose `payload.body` is a JSON string holding `{status, headers, body}`.
fn decode_http_reply(p: &mut Parsed) -> Result<HttpResponse, DecodeError> {
    if p.payload.contains_key("status") {
        // Take the payload instead of cloning it: it may hold a large body.
        let payload = std::mem::take(&mut p.payload);
        return p.payload_as("http", Value::Object(payload));
    }
    let legacy_body = p
        .payload
        .get("payload")
        .and_then(|inner| inner.get("body"))
        .and_then(Value::as_str);
    match legacy_body {
        Some(body) => serde_json::from_str(body).map_err(|source| DecodeError::Payload {
            kind: "http",
            request_id: p.request_id.clone(),
            source,
        }),
        None => Err(DecodeError::Invalid {
            message: "http reply has neither status nor a legacy body".to_string(),
            request_id: p.request_id.clone(),
        }),
    }
}

fn envelope(
    kind: &str,
    timestamp: &DateTime<FixedOffset>,
    request_id: &Option<String>,
    payload: Value,
) -> Value {
    let mut env = Map::new();
    env.insert("type".into(), Value::String(kind.into()));
    env.insert(
        "timestamp".into(),
        Value::String(timestamp.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    );
    env.insert(
        "request_id".into(),
        request_id.clone().map_or(Value::Null, Value::String),
    );
    env.insert("payload".into(), payload);
    Value::Object(env)
}

fn tagged(kind: &str, extra: Value) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), Value::String(kind.into()));
    if let Value::Object(fields) = extra {
        m.extend(fields);
    }
    Value::Object(m)
}

fn to_value<T: Serialize>(v: &T) -> Value {
    // Serializing these plain structs cannot fail: every map key is a string.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl Frame<HostMessage> {
    /// The JSON value of this frame, shaped as the 1.0 vectors show.
    pub fn to_value(&self) -> Value {
        let (kind, payload) = match &self.message {
            HostMessage::Init(init) => {
                let mut v = tagged("lifecycle", serde_json::json!({"action": "init"}));
                if let (Value::Object(m), Value::Object(f)) = (&mut v, to_value(init)) {
                    m.extend(f);
                }
                ("lifecycle", v)
            }
            HostMessage::Shutdown => (
                "lifecycle",
                tagged("lifecycle", serde_json::json!({"action": "shutdown"})),
            ),
            HostMessage::Ping { seq } => (
                "heartbeat",
                tagged(
                    "heartbeat",
                    serde_json::json!({"action": "ping", "seq": seq}),
                ),
            ),
            HostMessage::Http(req) => (
                "http",
                tagged(
                    "http",
                    serde_json::json!({"request_id": self.request_id, "payload": to_value(req)}),
                ),
            ),
            HostMessage::Kv(p) => ("kv", tagged("kv", Value::Object(p.0.clone()))),
            HostMessage::Error(e) => ("error", tagged("error", to_value(e))),
            HostMessage::Config(config) => (
                "config",
                tagged(
                    "config",
                    serde_json::json!({"action": "set", "config": config}),
                ),
            ),
            HostMessage::MqttOk => ("mqtt", tagged("mqtt", serde_json::json!({"action": "ok"}))),
            HostMessage::MqttMessage(m) => {
                let mut v = tagged("mqtt", serde_json::json!({"action": "message"}));
                if let (Value::Object(o), Value::Object(f)) = (&mut v, to_value(m)) {
                    o.extend(f);
                }
                ("mqtt", v)
            }
        };
        envelope(kind, &self.timestamp, &self.request_id, payload)
    }

    /// The frame's JSON bytes. HTTP requests, the hot path, are written straight from the typed
    /// request (no intermediate `Value`); the rest go through [`Frame::to_value`].
    pub fn encode(&self) -> Vec<u8> {
        if let HostMessage::Http(req) = &self.message {
            #[derive(Serialize)]
            struct Payload<'a> {
                #[serde(rename = "type")]
                kind: &'static str,
                request_id: &'a Option<String>,
                payload: &'a HttpRequest,
            }
            let env = TypedEnvelope {
                kind: "http",
                timestamp: stamp(&self.timestamp),
                request_id: &self.request_id,
                payload: Payload {
                    kind: "http",
                    request_id: &self.request_id,
                    payload: req,
                },
            };
            if let Ok(bytes) = serde_json::to_vec(&env) {
                return bytes;
            }
        }
        self.to_value().to_string().into_bytes()
    }
}

/// The envelope, serialized from borrowed parts (field order as in the vectors).
#[derive(Serialize)]
struct TypedEnvelope<'a, P: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    request_id: &'a Option<String>,
    payload: P,
}

fn stamp(t: &DateTime<FixedOffset>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

impl Frame<PluginMessage> {
    /// The JSON value of this frame (HTTP replies in the documented form).
    pub fn to_value(&self) -> Value {
        let (kind, payload) = match &self.message {
            PluginMessage::Ready => (
                "lifecycle",
                tagged("lifecycle", serde_json::json!({"action": "ready"})),
            ),
            PluginMessage::ShutdownAck => (
                "lifecycle",
                tagged("lifecycle", serde_json::json!({"action": "shutdown_ack"})),
            ),
            PluginMessage::Pong { seq } => (
                "heartbeat",
                tagged(
                    "heartbeat",
                    serde_json::json!({"action": "pong", "seq": seq}),
                ),
            ),
            PluginMessage::HttpReply(r) => ("http", to_value(r)),
            PluginMessage::Kv(r) => ("kv", tagged("kv", to_value(r))),
            PluginMessage::Log(r) => ("log", tagged("log", to_value(r))),
            PluginMessage::Error(e) => ("error", tagged("error", to_value(e))),
            PluginMessage::ConfigOk => (
                "config",
                tagged("config", serde_json::json!({"action": "ok"})),
            ),
            PluginMessage::Mqtt(r) => ("mqtt", tagged("mqtt", to_value(r))),
        };
        envelope(kind, &self.timestamp, &self.request_id, payload)
    }

    /// The frame's JSON bytes (HTTP replies written straight from the typed reply).
    pub fn encode(&self) -> Vec<u8> {
        if let PluginMessage::HttpReply(reply) = &self.message {
            let env = TypedEnvelope {
                kind: "http",
                timestamp: stamp(&self.timestamp),
                request_id: &self.request_id,
                payload: reply,
            };
            if let Ok(bytes) = serde_json::to_vec(&env) {
                return bytes;
            }
        }
        self.to_value().to_string().into_bytes()
    }
}

/// Split a query string into percent-decoded pairs (`+` is a space).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Percent-decode a URL component (`+` becomes a space); invalid escapes are kept as written.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                // Two hex digits, nothing else: `from_str_radix` alone would also take `+5`.
                let hex = Some(&bytes[i + 1..i + 3])
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
