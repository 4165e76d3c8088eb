//! Fuzz the frame decoder: any byte stream yields frames, a clean end, or one of the typed errors;
//! it never panics, never returns a frame over the limit, and never allocates for the prefix alone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toru_plugin_api::codec::{FrameError, read_frame};

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut r = std::io::Cursor::new(data);
    for _ in 0..64 {
        match read_frame(&mut r, MAX) {
            Ok(Some(body)) => assert!(!body.is_empty() && body.len() <= MAX),
            Ok(None) => break,
            Err(FrameError::Truncated { expected, got }) => {
                assert!(got < expected);
                break;
            }
            Err(FrameError::TooLarge { len, max }) => {
                assert!(len > max);
                break;
            }
            Err(_) => break,
        }
    }
});
