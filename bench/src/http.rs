//! Group 3, HTTP with `wrk` (4 connections, keep-alive): Toru's `/api/health`, an authenticated
//! `/api/plugins`, a forwarded plugin route answered by the probe plugin; supervisord's status
//! page and XML-RPC; monit's status page; and the floor: hyper's http1 server on a current_thread
//! runtime (the host's own stack) answering the probe's body with no routing, auth or plugin hop.
//! Targets are interleaved within each round.

use std::convert::Infallible;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Bytes, Frame, SizeHint};

use crate::host::{Bins, PluginFile, Toru};
use crate::peers::{Kind, Peer};
use crate::util::{
    Proc, Result, TempDir, WrkResult, fmt_ratio, fmt_ratios, fmt_us, free_port, median, wait_tcp,
    wrk,
};
use crate::{Budget, Opts, Report};

/// The probe plugin's `GET /` body, served by the floor too.
const BODY: &str = "{\"ok\":true}";

/// A body that is one chunk.
struct Once(Option<Bytes>);

impl hyper::body::Body for Once {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// `toru-bench floor-http PORT`: serve [`BODY`] on 127.0.0.1:PORT until killed.
pub fn serve_floor(port: u16) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::task::spawn_local(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let resp = hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(Once(Some(Bytes::from_static(BODY.as_bytes()))))
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// Run the group.
pub fn run(bins: &Bins, opts: &Opts, rep: &mut Report) -> Result<()> {
    let mut t = Toru::start(
        bins,
        &[PluginFile {
            src: bins.get("toru-bench-probe"),
            name: "p".into(),
        }],
        None,
    )?;
    t.login()?;
    let port = free_port()?;
    let _floor = Proc::spawn(
        Command::new(std::env::current_exe()?)
            .arg("floor-http")
            .arg(port.to_string())
            .stdin(Stdio::null()),
        "floor",
    )?;
    wait_tcp(([127, 0, 0, 1], port).into(), Duration::from_secs(10))?;
    let sup = Peer::start(Kind::Supervisord, bins, 3)?;
    let monit = Peer::start(Kind::Monit, bins, 3)?;
    let tmp = TempDir::new("wrk")?;
    let lua = tmp.join("xmlrpc.lua");
    std::fs::write(
        &lua,
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"text/xml\"\n\
         wrk.body = \"<?xml version='1.0'?><methodCall><methodName>supervisor.getState</methodName><params/></methodCall>\"\n",
    )?;
    let token = t.token.clone().unwrap_or_default();
    let bearer = vec!["-H".to_string(), format!("Authorization: Bearer {token}")];
    let toru = format!("http://{}", t.addr);
    let sup_url = sup.url().unwrap_or_default();
    let targets: Vec<(&str, String, Vec<String>)> = vec![
        (
            "floor (hyper, no hop)",
            format!("http://127.0.0.1:{port}/"),
            vec![],
        ),
        ("Toru `/api/health`", format!("{toru}/api/health"), vec![]),
        (
            "Toru `/api/plugins` (Bearer)",
            format!("{toru}/api/plugins"),
            bearer.clone(),
        ),
        (
            "Toru forwarded `/api/plugins/route/p/` (Bearer)",
            format!("{toru}/api/plugins/route/p/"),
            bearer.clone(),
        ),
        ("supervisord status page `/`", format!("{sup_url}/"), vec![]),
        (
            "supervisord XML-RPC `getState`",
            format!("{sup_url}/RPC2"),
            vec!["-s".to_string(), lua.display().to_string()],
        ),
        (
            "monit status page `/`",
            format!("{}/", monit.url().unwrap_or_default()),
            vec![],
        ),
    ];
    let mut results: Vec<Vec<WrkResult>> = vec![Vec::new(); targets.len()];
    for round in 0..opts.http_rounds {
        for (i, (name, url, extra)) in targets.iter().enumerate() {
            eprintln!("http: round {}/{}: {name}", round + 1, opts.http_rounds);
            results[i].push(wrk(url, 4, opts.http_secs, extra)?);
        }
    }
    let floor_rps: Vec<f64> = results[0].iter().map(|r| r.rps).collect();
    let mut s = format!(
        "`wrk -t2 -c4 -d{}s --latency`, keep-alive, {} rounds, targets interleaved within each round \
         (wrk shares the 2 cores with the server). Ratio = target req/s ÷ floor req/s in the same \
         round. The forwarded route is answered by the probe plugin (SDK, `{{\"ok\":true}}`).\n\n",
        opts.http_secs, opts.http_rounds
    );
    s.push_str("| target | p50 | p99 | req/s (median) | ÷ floor per round | errors |\n|---|---|---|---|---|---|\n");
    let mut ratio_med = Vec::new();
    for (i, (name, _, _)) in targets.iter().enumerate() {
        let r = &results[i];
        let ratios: Vec<f64> = r.iter().zip(&floor_rps).map(|(x, f)| x.rps / f).collect();
        ratio_med.push(median(&ratios));
        s.push_str(&format!(
            "| {name} | {} | {} | {:.0} | {} | {} |\n",
            fmt_us(median(&r.iter().map(|x| x.p50_us).collect::<Vec<_>>())),
            fmt_us(median(&r.iter().map(|x| x.p99_us).collect::<Vec<_>>())),
            median(&r.iter().map(|x| x.rps).collect::<Vec<_>>()),
            fmt_ratios(&ratios),
            r.iter().map(|x| x.errors).sum::<u64>()
        ));
    }
    rep.section("3. HTTP", s);
    let fwd = ratio_med[3];
    let health = ratio_med[1];
    rep.set("http_floor_rps", median(&floor_rps));
    rep.set(
        "http_fwd_rps",
        median(&results[3].iter().map(|x| x.rps).collect::<Vec<_>>()),
    );
    rep.set(
        "http_health_rps",
        median(&results[1].iter().map(|x| x.rps).collect::<Vec<_>>()),
    );
    rep.budget(Budget::new(
        "Forwarded plugin route req/s",
        "≥ 0.5× floor",
        fmt_ratio(fwd),
        fwd >= 0.5,
        "a forwarded request runs the whole API path (Host check, bearer token SHA-256, \
         routing, security headers) plus the plugin round trip (section 4) on the host's one \
         thread, and the plugin's own runtime on top; wrk and both processes share 2 cores. The \
         callgrind profile below lists the costs: allocation (malloc/free), building the security \
         headers of every response, the token hash and its store lookup per request, JSON for the \
         envelope, hyper's write path. What it would take: fewer allocations per request, \
         verifying a bearer token once per keep-alive connection (cache token hash → identity per \
         connection), precomputed header values.",
    ));
    rep.budget(Budget::new(
        "`/api/health` req/s",
        "≥ 0.8× floor",
        fmt_ratio(health),
        health >= 0.8,
        "`/api/health` runs the Host check, security headers and the connection bookkeeping \
         that the floor does not have.",
    ));
    Ok(())
}
