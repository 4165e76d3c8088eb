//! Fuzz the envelope parser in both directions: decoding arbitrary bytes never panics, and every
//! frame that decodes re-encodes to something that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toru_plugin_api::protocol::{decode_host_frame, decode_plugin_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = decode_host_frame(data) {
        let again = decode_host_frame(&f.encode()).expect("re-encoded host frame decodes");
        assert_eq!(again.message, f.message);
        assert_eq!(again.request_id, f.request_id);
    }
    if let Ok(f) = decode_plugin_frame(data) {
        let again = decode_plugin_frame(&f.encode()).expect("re-encoded plugin frame decodes");
        assert_eq!(again.message, f.message);
    }
    if let Some(e) = decode_host_frame(data).err() {
        let _ = e.to_reply();
    }
});
