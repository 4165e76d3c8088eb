//! Every message either side may send survives its trip: a frame built from the fuzzer's bytes —
//! any host message (init with settings, shutdown, ping, HTTP request, KV payload, error,
//! settings change, MQTT ok and delivery) or plugin message (ready, shutdown ack, pong, HTTP
//! reply, KV request, log, error, settings applied, MQTT publish and subscribe), with arbitrary
//! strings,
//! headers, bodies, numbers and timestamps within the protocol's rules — decodes to exactly the
//! frame that was encoded: `decode(encode(x)) == x`.
//!
//! The rules a sender keeps, and so the generator: a `request_id` is 1 to 128 bytes and present on
//! every request and reply that needs one; timestamps are RFC 3339 (years 0 to 9999, offsets in
//! whole minutes); a KV payload carries a known `action` and no `type` of its own; settings are a
//! JSON object.
#![no_main]

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use toru_plugin_api::protocol::{
    BodyEncoding, ErrorCode, ErrorReply, Frame, HostMessage, HttpRequest, HttpResponse, Init,
    KvPayload, KvRequest, LogLevel, LogRecord, MAX_REQUEST_ID_LEN, MqttDelivery, MqttRequest,
    PluginMessage, decode_host_frame, decode_plugin_frame,
};

fn string(u: &mut Unstructured) -> Result<String> {
    u.arbitrary()
}

fn request_id(u: &mut Unstructured) -> Result<String> {
    let mut id: String = u.arbitrary()?;
    while id.len() > MAX_REQUEST_ID_LEN {
        id.pop();
    }
    if id.is_empty() {
        id.push('r');
    }
    Ok(id)
}

/// 0000-01-01 to 9999-12-30 UTC, a day inside the range either way so the local time stays in it.
fn timestamp(u: &mut Unstructured) -> Result<DateTime<FixedOffset>> {
    let secs = u.int_in_range(-62_167_132_800i64..=253_402_214_399)?;
    let nanos = u.int_in_range(0u32..=999_999_999)?;
    let minutes = u.int_in_range(-(23 * 60 + 59)..=(23 * 60 + 59))?;
    let offset = FixedOffset::east_opt(minutes * 60).expect("within a day");
    let utc = DateTime::from_timestamp(secs, nanos).expect("within chrono's range");
    Ok(utc.with_timezone(&offset))
}

fn headers(u: &mut Unstructured) -> Result<BTreeMap<String, String>> {
    u.arbitrary()
}

fn body(u: &mut Unstructured) -> Result<(Option<String>, BodyEncoding)> {
    let enc = if u.arbitrary()? {
        BodyEncoding::Base64
    } else {
        BodyEncoding::Utf8
    };
    Ok((u.arbitrary()?, enc))
}

/// Any JSON value but floats (a KV payload from a peer; the host's own hold strings and bools).
fn json(u: &mut Unstructured, depth: u32) -> Result<Value> {
    let kinds = if depth == 0 { 4 } else { 6 };
    Ok(match u.int_in_range(0..=kinds - 1)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => {
            if u.arbitrary()? {
                Value::from(u.arbitrary::<i64>()?)
            } else {
                Value::from(u.arbitrary::<u64>()?)
            }
        }
        3 => Value::String(string(u)?),
        4 => Value::Array(
            (0..u.int_in_range(0..=3)?)
                .map(|_| json(u, depth - 1))
                .collect::<Result<_>>()?,
        ),
        _ => Value::Object(
            (0..u.int_in_range(0..=3)?)
                .map(|_| Ok((string(u)?, json(u, depth - 1)?)))
                .collect::<Result<_>>()?,
        ),
    })
}

/// A plugin's settings: a JSON object of any values but floats.
fn settings(u: &mut Unstructured) -> Result<Value> {
    Ok(Value::Object(
        (0..u.int_in_range(0..=4)?)
            .map(|_| Ok((string(u)?, json(u, 2)?)))
            .collect::<Result<_>>()?,
    ))
}

fn error_reply(u: &mut Unstructured) -> Result<ErrorReply> {
    let code = *u.choose(&[
        ErrorCode::BadRequest,
        ErrorCode::Unsupported,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::QuotaExceeded,
        ErrorCode::Busy,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Unknown,
    ])?;
    Ok(ErrorReply::new(code, string(u)?))
}

/// A host message and whether it needs a `request_id`.
fn host_message(u: &mut Unstructured) -> Result<(HostMessage, bool)> {
    Ok(match u.int_in_range(0..=8)? {
        0 => (
            HostMessage::Init(Init {
                instance_id: string(u)?,
                plugin_socket: string(u)?,
                log_path: string(u)?,
                protocol: u.arbitrary()?,
                heartbeat_interval_ms: u.arbitrary()?,
                max_frame_len: u.arbitrary()?,
                config: settings(u)?,
                license: None,
            }),
            false,
        ),
        1 => (HostMessage::Shutdown, false),
        2 => (
            HostMessage::Ping {
                seq: u.arbitrary()?,
            },
            true,
        ),
        3 => {
            let (body, body_encoding) = body(u)?;
            let req = HttpRequest {
                method: string(u)?,
                path: string(u)?,
                headers: headers(u)?,
                body,
                body_encoding,
            };
            (HostMessage::Http(req), true)
        }
        4 => {
            let mut m = Map::new();
            for _ in 0..u.int_in_range(0..=4)? {
                let key = string(u)?;
                if key != "type" {
                    m.insert(key, json(u, 2)?);
                }
            }
            let action = *u.choose(&["get", "set", "delete", "list"])?;
            m.insert("action".into(), Value::String(action.into()));
            (HostMessage::Kv(KvPayload(m)), true)
        }
        5 => (HostMessage::Config(settings(u)?), true),
        6 => (HostMessage::MqttOk, true),
        7 => (
            HostMessage::MqttMessage(MqttDelivery {
                topic: string(u)?,
                payload: string(u)?,
            }),
            false,
        ),
        _ => (HostMessage::Error(error_reply(u)?), true),
    })
}

/// A plugin message and whether it needs a `request_id`.
fn plugin_message(u: &mut Unstructured) -> Result<(PluginMessage, bool)> {
    Ok(match u.int_in_range(0..=8)? {
        0 => (PluginMessage::Ready, false),
        1 => (PluginMessage::ShutdownAck, false),
        2 => (
            PluginMessage::Pong {
                seq: u.arbitrary()?,
            },
            false,
        ),
        3 => {
            let (body, body_encoding) = body(u)?;
            let reply = HttpResponse {
                status: u.arbitrary()?,
                headers: headers(u)?,
                body,
                body_encoding,
            };
            (PluginMessage::HttpReply(reply), false)
        }
        4 => {
            let req = match u.int_in_range(0..=3)? {
                0 => KvRequest::Get { key: string(u)? },
                1 => KvRequest::Set {
                    key: string(u)?,
                    value: string(u)?,
                },
                2 => KvRequest::Delete { key: string(u)? },
                _ => KvRequest::List {
                    prefix: string(u)?,
                    start_after: u.arbitrary()?,
                    limit: u.arbitrary()?,
                },
            };
            (PluginMessage::Kv(req), true)
        }
        5 => {
            let level = *u.choose(&[
                LogLevel::Error,
                LogLevel::Warn,
                LogLevel::Info,
                LogLevel::Debug,
                LogLevel::Trace,
            ])?;
            (
                PluginMessage::Log(LogRecord {
                    level,
                    message: string(u)?,
                }),
                false,
            )
        }
        6 => (PluginMessage::ConfigOk, false),
        7 => {
            let req = if u.arbitrary()? {
                MqttRequest::Publish {
                    topic: string(u)?,
                    payload: string(u)?,
                    retain: u.arbitrary()?,
                    qos: u.arbitrary()?,
                }
            } else {
                MqttRequest::Subscribe { filter: string(u)? }
            };
            (PluginMessage::Mqtt(req), true)
        }
        _ => (PluginMessage::Error(error_reply(u)?), false),
    })
}

fn frame<M>(u: &mut Unstructured, message: M, needs_id: bool) -> Result<Frame<M>> {
    let request_id = if needs_id || u.arbitrary()? {
        Some(request_id(u)?)
    } else {
        None
    };
    Ok(Frame {
        request_id,
        timestamp: timestamp(u)?,
        message,
    })
}

fn check(u: &mut Unstructured) -> Result<()> {
    let (msg, needs_id) = host_message(u)?;
    let sent = frame(u, msg, needs_id)?;
    let got = decode_host_frame(&sent.encode())
        .unwrap_or_else(|e| panic!("host frame {sent:?} does not decode: {e}"));
    assert_eq!(got, sent);
    assert_eq!(got.timestamp.offset(), sent.timestamp.offset());

    let (msg, needs_id) = plugin_message(u)?;
    let sent = frame(u, msg, needs_id)?;
    let got = decode_plugin_frame(&sent.encode())
        .unwrap_or_else(|e| panic!("plugin frame {sent:?} does not decode: {e}"));
    assert_eq!(got, sent);
    assert_eq!(got.timestamp.offset(), sent.timestamp.offset());
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = check(&mut Unstructured::new(data));
});
