//! The frame decoder against a reference model. Any byte stream, read frame by frame with the std
//! reader (what the SDK uses) and with the tokio reader (what the host uses), each both in one
//! piece and trickled a byte at a time (the tokio one also pending between bytes), yields exactly
//! what the model of the format drawn in `codec.rs` says: frames, then a clean end, `Truncated`
//! (with the right counts), `TooLarge` or `Empty`. Every frame returned re-encodes, with
//! `encode_frame`, to the very bytes it was read from.
#![no_main]

use std::io::{Cursor, Read};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use toru_plugin_api::codec::{FrameError, LEN_PREFIX, encode_frame, read_frame, tokio_codec};

/// The readers' limit: small, so that bodies at and over the limit are easy to reach.
const MAX: usize = 4096;

/// One outcome of reading a frame.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Frame(Vec<u8>),
    End,
    Truncated { expected: usize, got: usize },
    TooLarge(usize),
    Empty,
}

/// The format, read from a slice: `N: u32 big-endian`, then `N` bytes; `0 < N <= MAX`.
fn model(data: &[u8]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut left = data;
    loop {
        if left.is_empty() {
            steps.push(Step::End);
            return steps;
        }
        let Some((prefix, body)) = left.split_first_chunk::<LEN_PREFIX>() else {
            steps.push(Step::Truncated {
                expected: LEN_PREFIX,
                got: left.len(),
            });
            return steps;
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len == 0 {
            steps.push(Step::Empty);
            return steps;
        }
        if len > MAX {
            steps.push(Step::TooLarge(len));
            return steps;
        }
        if body.len() < len {
            steps.push(Step::Truncated {
                expected: len,
                got: body.len(),
            });
            return steps;
        }
        steps.push(Step::Frame(body[..len].to_vec()));
        left = &body[len..];
    }
}

fn step(r: Result<Option<Vec<u8>>, FrameError>) -> Step {
    match r {
        Ok(Some(body)) => Step::Frame(body),
        Ok(None) => Step::End,
        Err(FrameError::Truncated { expected, got }) => Step::Truncated { expected, got },
        Err(FrameError::TooLarge { len, max }) => {
            assert_eq!(max, MAX);
            Step::TooLarge(len)
        }
        Err(FrameError::Empty) => Step::Empty,
        Err(e) => panic!("a reader over memory failed with {e}"),
    }
}

/// Read frames until the first outcome that is not a frame.
fn read_all(mut next: impl FnMut() -> Step) -> Vec<Step> {
    let mut steps = Vec::new();
    loop {
        let s = next();
        let last = !matches!(s, Step::Frame(_));
        steps.push(s);
        if last {
            return steps;
        }
    }
}

/// One byte per `read` call.
struct Trickle(Cursor<Vec<u8>>, bool);

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(1);
        self.0.read(&mut buf[..n])
    }
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Every other poll is pending: the decoder must keep its place across wake-ups.
        self.1 = !self.1;
        if self.1 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut one = [0u8; 1];
        let n = Read::read(&mut self.0, &mut one)?;
        buf.put_slice(&one[..n]);
        Poll::Ready(Ok(()))
    }
}

/// Drive a future over an in-memory reader to its end (it never waits on anything real).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let want = model(data);

    let mut whole = Cursor::new(data);
    assert_eq!(
        read_all(|| step(read_frame(&mut whole, MAX))),
        want,
        "std reader"
    );
    let mut trickle = Trickle(Cursor::new(data.to_vec()), false);
    assert_eq!(
        read_all(|| step(read_frame(&mut trickle, MAX))),
        want,
        "std, byte by byte"
    );

    let mut whole = Cursor::new(data);
    let got = read_all(|| step(block_on(tokio_codec::read_frame(&mut whole, MAX))));
    assert_eq!(got, want, "tokio reader");
    let mut trickle = Trickle(Cursor::new(data.to_vec()), false);
    let got = read_all(|| step(block_on(tokio_codec::read_frame(&mut trickle, MAX))));
    assert_eq!(got, want, "tokio, byte by byte with pending polls");

    // Frames re-encode to the bytes they came from.
    let mut at = 0;
    for s in &want {
        if let Step::Frame(body) = s {
            let framed = encode_frame(body, MAX).expect("a frame read under MAX encodes");
            assert_eq!(&data[at..at + framed.len()], framed.as_slice());
            at += framed.len();
        }
    }
});
