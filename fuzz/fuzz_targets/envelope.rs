//! The envelope decoders, both directions, on arbitrary bytes: `decode_host_frame` (what a plugin
//! reads) and `decode_plugin_frame` (what the host reads). Properties:
//! - a frame that decodes re-encodes to bytes that decode to the very same frame (request id,
//!   timestamp and its offset, message);
//! - the two encoders agree: `encode` (written straight from the typed message) is the JSON of
//!   `to_value`;
//! - a refusal that keeps a `request_id` (so the receiver answers it with an `error` frame) keeps
//!   only a valid one (1 to `MAX_REQUEST_ID_LEN` bytes), and its reply is well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use toru_plugin_api::protocol::{
    DecodeError, ErrorCode, MAX_REQUEST_ID_LEN, decode_host_frame, decode_plugin_frame,
};

fn check_refusal(e: &DecodeError) {
    if let Some(id) = e.request_id() {
        assert!(!id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN, "{e}");
    }
    let reply = e.to_reply();
    assert!(matches!(
        reply.code,
        ErrorCode::BadRequest | ErrorCode::Unsupported
    ));
    assert!(!reply.message.is_empty());
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("an encoded frame is JSON")
}

fuzz_target!(|data: &[u8]| {
    match decode_host_frame(data) {
        Ok(f) => {
            let bytes = f.encode();
            assert_eq!(json(&bytes), f.to_value(), "encode and to_value agree");
            let again = decode_host_frame(&bytes).expect("a re-encoded host frame decodes");
            assert_eq!(again, f);
            assert_eq!(again.timestamp.offset(), f.timestamp.offset());
        }
        Err(e) => check_refusal(&e),
    }
    match decode_plugin_frame(data) {
        Ok(f) => {
            let bytes = f.encode();
            assert_eq!(json(&bytes), f.to_value(), "encode and to_value agree");
            let again = decode_plugin_frame(&bytes).expect("a re-encoded plugin frame decodes");
            assert_eq!(again, f);
            assert_eq!(again.timestamp.offset(), f.timestamp.offset());
        }
        Err(e) => check_refusal(&e),
    }
});
