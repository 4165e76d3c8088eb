//! Frame codec: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! ```text
//! +--------+--------+--------+--------+----------------------+
//! |      N: u32, big-endian           |  N bytes UTF-8 JSON  |
//! +--------+--------+--------+--------+----------------------+
//! ```
//!
//! Readers keep three end-of-stream cases apart: a clean EOF between frames (`Ok(None)`), EOF inside a
//! frame ([`FrameError::Truncated`]) and a length over the limit ([`FrameError::TooLarge`], detected
//! before any buffer is allocated). The body buffer grows only as bytes arrive, so a peer that
//! announces a large frame and sends nothing costs nothing. This module knows nothing of JSON: see
//! [`crate::protocol`] for that. The sync functions use `std::io`; the async ones (feature `tokio`)
//! mirror them.

use std::io::{self, Read, Write};

/// Default limit on a frame's length: an HTTP reply carrying a ~0.7 MB bundle, JSON-escaped, fits.
pub const MAX_FRAME_LEN: usize = 8 * 1024 * 1024;
/// Limit on a control frame (any `type` but `http`).
pub const MAX_CONTROL_FRAME_LEN: usize = 1024 * 1024;
/// Bytes in the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Initial body buffer; it grows as data arrives.
const INITIAL_CAPACITY: usize = 16 * 1024;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream ended inside a frame (in the length or the body).
    #[error("truncated frame: stream ended after {got} of {expected} bytes")]
    Truncated {
        /// Bytes the frame (prefix or body) should have had.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The length prefix is over the reader's limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The reader's limit.
        max: usize,
    },
    /// A zero length prefix.
    #[error("empty frame (length 0)")]
    Empty,
    /// The body to write is over the limit.
    #[error("refusing to write a frame of {len} bytes (limit {max})")]
    WriteTooLarge {
        /// Body length.
        len: usize,
        /// The writer's limit.
        max: usize,
    },
    /// The underlying stream failed.
    #[error("i/o error on plugin socket")]
    Io(#[from] io::Error),
}

/// Check a length prefix against the limit.
pub fn check_len(prefix: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Prefix `body` with its length, ready to be written in one call.
pub fn encode_frame(body: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    if body.is_empty() {
        return Err(FrameError::Empty);
    }
    if body.len() > max || body.len() > u32::MAX as usize {
        return Err(FrameError::WriteTooLarge {
            len: body.len(),
            max,
        });
    }
    let mut out = Vec::with_capacity(LEN_PREFIX + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// Read the prefix; `Ok(None)` on a clean EOF before its first byte.
fn read_prefix<R: Read>(r: &mut R) -> Result<Option<[u8; 4]>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated { expected: 4, got }),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(prefix))
}

/// Read one frame's body. `Ok(None)` means the peer closed cleanly between frames.
pub fn read_frame<R: Read>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(prefix) = read_prefix(r)? else {
        return Ok(None);
    };
    let len = check_len(prefix, max)?;
    let mut body = Vec::with_capacity(len.min(INITIAL_CAPACITY));
    let got = r.take(len as u64).read_to_end(&mut body)?;
    if got < len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    Ok(Some(body))
}

/// Write one frame (length prefix and body in one `write_all`) and flush.
pub fn write_frame<W: Write>(w: &mut W, body: &[u8], max: usize) -> Result<(), FrameError> {
    w.write_all(&encode_frame(body, max)?)?;
    w.flush()?;
    Ok(())
}

/// Async versions on tokio's `AsyncRead`/`AsyncWrite`.
#[cfg(feature = "tokio")]
pub mod tokio_codec {
    use super::{FrameError, INITIAL_CAPACITY, check_len, encode_frame};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Read one frame's body. `Ok(None)` means the peer closed cleanly between frames.
    ///
    /// Cancel-safety: not cancel-safe (a partly read frame is lost); call it from one task that
    /// owns the read half.
    pub async fn read_frame<R: AsyncRead + Unpin>(
        r: &mut R,
        max: usize,
    ) -> Result<Option<Vec<u8>>, FrameError> {
        let mut prefix = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match r.read(&mut prefix[got..]).await? {
                0 if got == 0 => return Ok(None),
                0 => return Err(FrameError::Truncated { expected: 4, got }),
                n => got += n,
            }
        }
        let len = check_len(prefix, max)?;
        let mut body = Vec::with_capacity(len.min(INITIAL_CAPACITY));
        let got = (&mut *r).take(len as u64).read_to_end(&mut body).await?;
        if got < len {
            return Err(FrameError::Truncated { expected: len, got });
        }
        Ok(Some(body))
    }

    /// Write one frame and flush.
    pub async fn write_frame<W: AsyncWrite + Unpin>(
        w: &mut W,
        body: &[u8],
        max: usize,
    ) -> Result<(), FrameError> {
        w.write_all(&encode_frame(body, max)?).await?;
        w.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    /// A reader that hands out one byte per call.
    struct OneByte(Cursor<Vec<u8>>);
    impl Read for OneByte {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    /// A reader that would panic if asked for more than the prefix: proves no body read happens.
    struct PrefixOnly(Cursor<Vec<u8>>);
    impl Read for PrefixOnly {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            assert!(self.0.position() < 4, "reader went past the prefix");
            let left = 4 - self.0.position() as usize;
            let n = buf.len().min(left);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn round_trip_two_frames() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"{\"a\":1}", MAX_FRAME_LEN).unwrap();
        write_frame(&mut buf, b"{}", MAX_FRAME_LEN).unwrap();
        let mut r = Cursor::new(buf);
        assert_eq!(
            read_frame(&mut r, MAX_FRAME_LEN).unwrap().unwrap(),
            b"{\"a\":1}"
        );
        assert_eq!(read_frame(&mut r, MAX_FRAME_LEN).unwrap().unwrap(), b"{}");
        assert!(read_frame(&mut r, MAX_FRAME_LEN).unwrap().is_none());
    }

    #[test]
    fn clean_eof_is_none() {
        assert!(
            read_frame(&mut Cursor::new(Vec::new()), 10)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn eof_inside_length_is_truncated() {
        let err = read_frame(&mut Cursor::new(vec![0, 0]), 10).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    expected: 4,
                    got: 2
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn eof_inside_body_is_truncated() {
        let mut bytes = framed(b"{\"abc\":1}");
        bytes.truncate(7);
        let err = read_frame(&mut Cursor::new(bytes), 100).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    expected: 9,
                    got: 3
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn max_is_accepted_and_max_plus_one_rejected_before_reading_body() {
        let body = vec![b'x'; 10];
        assert_eq!(
            read_frame(&mut Cursor::new(framed(&body)), 10)
                .unwrap()
                .unwrap(),
            body
        );
        let mut r = PrefixOnly(Cursor::new(framed(&[b'x'; 11])));
        let err = read_frame(&mut r, 10).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len: 11, max: 10 }),
            "{err:?}"
        );
    }

    #[test]
    fn huge_prefix_allocates_nothing() {
        // u32::MAX announced with no body: rejected from the prefix alone.
        let mut r = PrefixOnly(Cursor::new(vec![0xff, 0xff, 0xff, 0xff]));
        let err = read_frame(&mut r, MAX_FRAME_LEN).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
    }

    #[test]
    fn zero_length_is_an_error() {
        let err = read_frame(&mut Cursor::new(vec![0, 0, 0, 0]), 10).unwrap_err();
        assert!(matches!(err, FrameError::Empty));
        assert!(matches!(encode_frame(b"", 10), Err(FrameError::Empty)));
    }

    #[test]
    fn writer_refuses_oversized_body() {
        let err = encode_frame(&[b'x'; 11], 10).unwrap_err();
        assert!(matches!(
            err,
            FrameError::WriteTooLarge { len: 11, max: 10 }
        ));
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut bytes = framed(b"{\"x\":\"hello\"}");
        bytes.extend(framed(b"{}"));
        let mut r = OneByte(Cursor::new(bytes));
        assert_eq!(
            read_frame(&mut r, 100).unwrap().unwrap(),
            b"{\"x\":\"hello\"}"
        );
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"{}");
        assert!(read_frame(&mut r, 100).unwrap().is_none());
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn async_codec_matches_sync() {
        let (mut a, mut b) = tokio::io::duplex(7); // small pipe: forces partial reads and writes
        let writer = tokio::spawn(async move {
            tokio_codec::write_frame(&mut a, b"{\"n\":1}", 100)
                .await
                .unwrap();
            tokio_codec::write_frame(&mut a, &[b'y'; 50], 100)
                .await
                .unwrap();
        });
        assert_eq!(
            tokio_codec::read_frame(&mut b, 100).await.unwrap().unwrap(),
            b"{\"n\":1}"
        );
        assert_eq!(
            tokio_codec::read_frame(&mut b, 100).await.unwrap().unwrap(),
            vec![b'y'; 50]
        );
        writer.await.unwrap();
        assert!(
            tokio_codec::read_frame(&mut b, 100)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn async_truncated_and_oversized() {
        let mut r: &[u8] = &[0, 0, 0, 5, b'{'];
        assert!(matches!(
            tokio_codec::read_frame(&mut r, 100).await,
            Err(FrameError::Truncated {
                expected: 5,
                got: 1
            })
        ));
        let mut r: &[u8] = &[0, 0, 1, 0];
        assert!(matches!(
            tokio_codec::read_frame(&mut r, 100).await,
            Err(FrameError::TooLarge { len: 256, max: 100 })
        ));
    }
}
