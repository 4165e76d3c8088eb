//! Group 4, the plugin protocol: a ~200-byte request/reply round trip from the host's own
//! connection code (`toru::internals::Conn`, driven in-process on a current_thread runtime
//! as the host does) to the probe plugin (SDK) over its 1.1 persistent connection; throughput with
//! 8 and 32 requests in flight; and the floor: a raw Unix-socket ping-pong of the same frame size
//! between two blocking threads. Floor and Toru alternate within each round.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::json;
use toru::internals::Conn;
use toru::internals::LogRing;
use toru::internals::{Store, StoreOptions};
use toru_plugin_api::codec::MAX_FRAME_LEN;
use toru_plugin_api::protocol::{Frame, HostMessage, HttpRequest, Init, PluginMessage};

use crate::host::Bins;
use crate::util::{Proc, Result, TempDir, err, fmt_ratios, fmt_us, median, pct};
use crate::{Budget, Opts, Report};

/// Round trips per round (sequential).
const SEQ: usize = 5000;
/// Requests per in-flight measurement.
const PAR_TOTAL: usize = 8000;
/// Target encoded size of the request frame.
const FRAME_BYTES: usize = 200;

/// Pin the calling thread to `cpu`.
fn pin(cpu: usize) {
    crate::sys::pin(0, cpu);
}

/// Raw ping-pong of `len`-byte frames (4-byte length prefix) between two threads; µs per trip.
/// Both threads are pinned to one core: on this VM a wake-up of another, idle vCPU costs tens of
/// µs, which made an unpinned floor bimodal (3 µs when the machine was busy, ~60 µs when idle).
fn floor(n: usize, len: usize) -> Result<Vec<f64>> {
    let (mut a, mut b) = UnixStream::pair()?;
    let cpu = crate::sys::current_cpu();
    let echo = std::thread::spawn(move || {
        pin(cpu);
        let mut buf = vec![0u8; len + 4];
        for _ in 0..n {
            if b.read_exact(&mut buf).is_err() || b.write_all(&buf).is_err() {
                return;
            }
        }
    });
    let mut frame = vec![b'x'; len + 4];
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    let mut back = vec![0u8; len + 4];
    let mut lat = Vec::with_capacity(n);
    let saved = crate::sys::SavedAffinity::save();
    pin(cpu);
    for _ in 0..n {
        let t = Instant::now();
        a.write_all(&frame)?;
        a.read_exact(&mut back)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let _ = echo.join();
    drop(saved);
    Ok(lat)
}

/// A request whose encoded frame is about [`FRAME_BYTES`].
fn request(pad: usize) -> Result<HostMessage> {
    let req: HttpRequest = serde_json::from_value(json!({
        "method": "GET", "path": "/rt", "headers": {"X-Pad": "y".repeat(pad)}, "body": null
    }))?;
    Ok(HostMessage::Http(req))
}

struct TorusSide {
    conn: Rc<Conn>,
    msg: HostMessage,
    frame_len: usize,
    reply_len: usize,
}

async fn connect(dir: &TempDir, sock: &std::path::Path) -> Result<TorusSide> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match tokio::net::UnixStream::connect(sock).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => return Err(err(format!("connect {}: {e}", sock.display()))),
        }
    };
    let store = Store::open(&dir.join("data"), StoreOptions::default())
        .map_err(|e| err(format!("store: {e}")))?;
    let ring = Rc::new(LogRing::new("p", 1000, 200));
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let conn = Conn::start(stream, "p".into(), store, ring, MAX_FRAME_LEN, tx);
    let init: Init = serde_json::from_value(json!({
        "instance_id": "00000000-0000-4000-8000-000000000000",
        "plugin_socket": sock.display().to_string(),
        "log_path": dir.join("p.log").display().to_string(),
        "protocol": "1.1", "heartbeat_interval_ms": 5000, "max_frame_len": MAX_FRAME_LEN
    }))?;
    let ready = conn
        .request(HostMessage::Init(init), Duration::from_secs(10))
        .await
        .map_err(|e| err(format!("init: {e}")))?;
    if !matches!(ready.message, PluginMessage::Ready) {
        return Err(err(format!("init answered {:?}", ready.message)));
    }
    let probe = |pad| -> Result<usize> {
        Ok(Frame::new(Some("h123".to_string()), request(pad)?)
            .encode()
            .len())
    };
    let base = probe(0)?;
    let pad = FRAME_BYTES.saturating_sub(base);
    let msg = request(pad)?;
    let frame_len = probe(pad)?;
    let reply = conn
        .request(msg.clone(), Duration::from_secs(10))
        .await
        .map_err(|e| err(format!("request: {e}")))?;
    let reply_len = Frame::new(reply.request_id.clone(), reply.message)
        .encode()
        .len();
    Ok(TorusSide {
        conn,
        msg,
        frame_len,
        reply_len,
    })
}

async fn sequential(side: &TorusSide, n: usize) -> Result<Vec<f64>> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        side.conn
            .request(side.msg.clone(), Duration::from_secs(10))
            .await
            .map_err(|e| err(format!("request: {e}")))?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(lat)
}

/// `total` requests from `inflight` concurrent tasks; requests per second.
async fn parallel(side: &TorusSide, inflight: usize, total: usize) -> Result<f64> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..inflight {
        let (conn, msg) = (side.conn.clone(), side.msg.clone());
        let n = total / inflight;
        tasks.push(tokio::task::spawn_local(async move {
            for _ in 0..n {
                if conn
                    .request(msg.clone(), Duration::from_secs(10))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            true
        }));
    }
    for task in tasks {
        if !task.await.unwrap_or(false) {
            return Err(err("a request in flight failed"));
        }
    }
    Ok((total / inflight * inflight) as f64 / t.elapsed().as_secs_f64())
}

/// Run the group.
pub fn run(bins: &Bins, opts: &Opts, rep: &mut Report) -> Result<()> {
    let dir = TempDir::new("proto")?;
    let sock = dir.join("p.sock");
    let _plugin = Proc::spawn(
        Command::new(bins.get("toru-bench-probe"))
            .env_clear()
            .env("TORU_PLUGIN_SOCKET", &sock)
            .env("TORU_BENCH_PROBE", dir.join("none.sock"))
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "probe plugin",
    )?;
    // Floor and Toru both run on one core (this thread, the echo thread or the plugin process):
    // on this VM a wake-up of another, idle vCPU costs tens of µs and made unpinned runs bimodal.
    let cpu = crate::sys::current_cpu();
    let saved = crate::sys::SavedAffinity::save();
    pin(cpu);
    crate::sys::pin(_plugin.pid(), cpu);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let rounds = opts.rounds.max(3);
    let result: Result<String> = local.block_on(&rt, async {
        let side = connect(&dir, &sock).await?;
        let mut fl_p50 = Vec::new();
        let mut fl_p99 = Vec::new();
        let mut tr_p50 = Vec::new();
        let mut tr_p99 = Vec::new();
        let mut par8 = Vec::new();
        let mut par32 = Vec::new();
        let mut seq_rps = Vec::new();
        for round in 0..rounds {
            eprintln!("protocol: round {}/{rounds}", round + 1);
            let f = floor(SEQ, side.frame_len)?;
            fl_p50.push(pct(&f, 50.0));
            fl_p99.push(pct(&f, 99.0));
            let t = sequential(&side, SEQ).await?;
            tr_p50.push(pct(&t, 50.0));
            tr_p99.push(pct(&t, 99.0));
            seq_rps.push(1e6 * t.len() as f64 / t.iter().sum::<f64>());
            par8.push(parallel(&side, 8, PAR_TOTAL).await?);
            par32.push(parallel(&side, 32, PAR_TOTAL).await?);
        }
        let ratios: Vec<f64> = tr_p50.iter().zip(&fl_p50).map(|(t, f)| t / f).collect();
        let ratio = median(&ratios);
        let mut s = format!(
            "Request frame {} bytes, reply frame {} bytes. {SEQ} sequential round trips per round, \
             {rounds} rounds, floor and Toru alternating. Toru = the host's `Conn` (writer task, reader \
             task, request-id matching, oneshot per request) talking to the probe plugin (SDK runner) \
             in another process; floor = two blocking threads echoing the same number of bytes over a \
             `socketpair`. Both run pinned to one core (see `run`).\n\n",
            side.frame_len, side.reply_len
        );
        s.push_str("| path | p50 | p99 | p50 per round |\n|---|---|---|---|\n");
        let per = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(" / ");
        s.push_str(&format!(
            "| raw Unix-socket ping-pong (floor) | {} | {} | {} µs |\n",
            fmt_us(median(&fl_p50)),
            fmt_us(median(&fl_p99)),
            per(&fl_p50)
        ));
        s.push_str(&format!(
            "| Toru host ↔ plugin, 1.1 connection | {} | {} | {} µs |\n",
            fmt_us(median(&tr_p50)),
            fmt_us(median(&tr_p99)),
            per(&tr_p50)
        ));
        s.push_str(&format!(
            "\nToru ÷ floor p50 per round: {} (median {ratio:.2}×).\n\n\
             Requests in flight on the one connection (the host allows 64): 1 → {:.0} req/s, \
             8 → {:.0} req/s, 32 → {:.0} req/s (medians of {rounds} rounds).\n",
            fmt_ratios(&ratios),
            median(&seq_rps),
            median(&par8),
            median(&par32)
        ));
        rep.set("rt_p50_us", median(&tr_p50));
        rep.set("rt_floor_p50_us", median(&fl_p50));
        rep.budget(Budget::new(
            "Plugin round trip p50",
            "≤ 2× socket floor",
            format!(
                "{:.2}× ({} vs {})",
                ratio,
                fmt_us(median(&tr_p50)),
                fmt_us(median(&fl_p50))
            ),
            ratio <= 2.0,
            "the floor is two blocking threads doing write/read on a socketpair, both on one core: \
             two context switches per trip. The host side adds, per request: the envelope encoded \
             (typed since the profile below put `Frame::encode` through `serde_json::Value` first), \
             an mpsc hop to the connection's writer task, the reply decoded through a JSON map and \
             then into types, a `HashMap` of pending ids and a oneshot wake-up; the SDK does the \
             mirror image in the plugin, each side an epoll wake-up on its own current_thread \
             runtime. What it would take: decoding the envelope straight into typed structs, \
             writing from the requesting task instead of a writer task, and the same in the SDK. \
             The 64-in-flight pipelining already amortises most of it (see the req/s with 8 and \
             32 in flight)",
        ));
        Ok(s)
    });
    drop(saved);
    rep.section("4. Plugin protocol", result?);
    Ok(())
}
