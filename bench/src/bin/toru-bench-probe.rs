//! `toru-bench-probe`: the one child process every supervisor in the benchmark runs, so the
//! supervisors are compared on the same work.
//!
//! First thing in `main()` it sends one datagram `main <pid> <unix-ns>` to the bench's probe socket
//! (`--probe-socket PATH`, else `$TORU_BENCH_PROBE`, else `./probe.sock` in its working directory:
//! Toru runs plugins in the plugins dir with a cleared environment). That is the "restarted
//! main()" instant of the restart benchmark.
//!
//! - Under a Toru host (`TORU_PLUGIN_SOCKET` set, or `--metadata`) it is a minimal protocol 1.1
//!   plugin built on the public SDK. Its id and route come from its file name
//!   (`<id>.binary` → route `/<id>`). Routes: `GET /` → `{"ok":true}`; `/rt` → a reply padded so
//!   the frame is about 200 bytes; `/kvbench?n=N&w=W` → N acknowledged KV sets from W concurrent
//!   writers, timed inside the plugin (the KV-through-the-plugin-socket benchmark);
//!   `/mqttbench?n=N&w=W` → N messages published through the host's MQTT bridge on `bench/<w>`
//!   from W concurrent publishers, a `busy` answer (the bridge's queue is full) retried after 1 ms
//!   and counted (the MQTT benchmark).
//! - Otherwise (runit, s6, supervisord, monit) it sleeps until killed. `--pidfile F` writes its pid
//!   (monit), `$TORU_BENCH_NOTIFY_FD=N` writes a newline to fd N (s6 readiness), `--daemonize`
//!   forks into the background first (a classic daemon, for monit's `start program`).
//!
//! Bench-only: never installed on a device.

use std::os::unix::net::UnixDatagram;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use toru_plugin_api::{HttpRequest, HttpResponse, PluginContext, PluginMetadata, ToruPlugin};

/// Most KV sets one `/kvbench` request may ask for (keeps the request bounded in time).
const MAX_KVBENCH_SETS: usize = 5_000;
/// Most concurrent writers of one `/kvbench` request (the host allows 16 KV requests in flight).
const MAX_KVBENCH_WRITERS: usize = 16;
/// Most messages one `/mqttbench` request may publish.
const MAX_MQTTBENCH_MESSAGES: usize = 100_000;
/// Most `busy` retries of one `/mqttbench` request in all (bounds it in time: ~1 ms each).
const MAX_MQTTBENCH_RETRIES: usize = 60_000;

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn stem() -> String {
    let arg0 = std::env::args().next().unwrap_or_default();
    let name = std::path::Path::new(&arg0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".binary").unwrap_or(&name).to_string()
}

/// Tell the bench that `main()` runs now.
fn report_main(args: &[String]) {
    let path = arg_value(args, "--probe-socket")
        .or_else(|| std::env::var("TORU_BENCH_PROBE").ok())
        .unwrap_or_else(|| "probe.sock".to_string());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // Never block: a bench that is not reading its socket just misses the report.
    if let Ok(sock) = UnixDatagram::unbound()
        && sock.set_nonblocking(true).is_ok()
    {
        let _ = sock.send_to(
            format!("main {} {now}", std::process::id()).as_bytes(),
            &path,
        );
    }
}

struct Probe;

impl ToruPlugin for Probe {
    fn metadata(&self) -> PluginMetadata {
        let id = stem();
        PluginMetadata {
            route: format!("/{id}"),
            name: format!("Bench probe {id}"),
            id,
            version: env!("CARGO_PKG_VERSION").into(),
            author: Some("toru-bench".into()),
            icon: "⏱".into(),
            protocol: None,
        }
    }

    async fn handle_http(&self, ctx: &PluginContext, req: HttpRequest) -> HttpResponse {
        match req.path_only() {
            "/" => HttpResponse::json(200, &json!({"ok": true})),
            // The request frame is ~200 bytes (the bench pads it); answer in kind.
            "/rt" => HttpResponse::json(200, &json!({"pad": "x".repeat(120)})),
            "/kvbench" => kvbench(ctx, &req).await,
            "/mqttbench" => mqttbench(ctx, &req).await,
            _ => HttpResponse::json(404, &json!({"error": "not_found"})),
        }
    }
}

/// `n` sets from `w` writers; each writer times its own sets. Answers the latencies in µs.
async fn kvbench(ctx: &PluginContext, req: &HttpRequest) -> HttpResponse {
    let num = |k: &str, d: usize| {
        req.query_param(k)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(d)
    };
    let n = num("n", 100).clamp(1, MAX_KVBENCH_SETS);
    let w = num("w", 1).clamp(1, MAX_KVBENCH_WRITERS);
    let tag = req.query_param("tag").unwrap_or_default();
    let value = "v".repeat(64);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..w {
        let (ctx, value, tag) = (ctx.clone(), value.clone(), tag.clone());
        let count = n / w + usize::from(writer < n % w);
        tasks.push(tokio::task::spawn_local(async move {
            let mut lat = Vec::with_capacity(count);
            for i in 0..count {
                let t = Instant::now();
                if ctx
                    .kv
                    .set(&format!("b{tag}-{writer}-{i}"), &value)
                    .await
                    .is_err()
                {
                    return Err(());
                }
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok(lat)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        match t.await {
            Ok(Ok(lat)) => all.extend(lat),
            _ => return HttpResponse::json(500, &json!({"error": "kv set failed"})),
        }
    }
    let elapsed_us = start.elapsed().as_secs_f64() * 1e6;
    HttpResponse::json(200, &json!({"lat_us": all, "elapsed_us": elapsed_us}))
}

/// `n` publishes from `w` publishers, each waiting for the host's answer; `busy` is retried after
/// 1 ms. Answers how long the host took to take them all, and the retries.
async fn mqttbench(ctx: &PluginContext, req: &HttpRequest) -> HttpResponse {
    use std::cell::Cell;
    use std::rc::Rc;
    let num = |k: &str, d: usize| {
        req.query_param(k)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(d)
    };
    let n = num("n", 1000).clamp(1, MAX_MQTTBENCH_MESSAGES);
    let w = num("w", 1).clamp(1, MAX_KVBENCH_WRITERS);
    let retries = Rc::new(Cell::new(0usize));
    let payload = "x".repeat(num("bytes", 64).clamp(1, 4096));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for publisher in 0..w {
        let (ctx, payload, retries) = (ctx.clone(), payload.clone(), retries.clone());
        let count = n / w + usize::from(publisher < n % w);
        tasks.push(tokio::task::spawn_local(async move {
            let topic = format!("bench/{publisher}");
            for _ in 0..count {
                loop {
                    match ctx.mqtt.publish(&topic, &payload, false).await {
                        Ok(()) => break,
                        Err(toru_plugin_api::MqttError::Host(e))
                            if e.code == toru_plugin_api::ErrorCode::Busy
                                && retries.get() < MAX_MQTTBENCH_RETRIES =>
                        {
                            retries.set(retries.get() + 1);
                            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return HttpResponse::json(500, &json!({ "error": e })),
            Err(e) => return HttpResponse::json(500, &json!({ "error": e.to_string() })),
        }
    }
    let elapsed_us = start.elapsed().as_secs_f64() * 1e6;
    HttpResponse::json(
        200,
        &json!({"elapsed_us": elapsed_us, "busy_retries": retries.get()}),
    )
}

fn peer(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "--daemonize") {
        // SAFETY: fork in a single-threaded process; the child only continues this function.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return ExitCode::FAILURE;
        }
        if pid > 0 {
            return ExitCode::SUCCESS;
        }
        // SAFETY: plain syscall in the child.
        unsafe { libc::setsid() };
    }
    report_main(args);
    if let Some(file) = arg_value(args, "--pidfile") {
        let _ = std::fs::write(file, format!("{}\n", std::process::id()));
    }
    if let Some(fd) = std::env::var("TORU_BENCH_NOTIFY_FD")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        // SAFETY: writes one byte to and closes an fd our supervisor handed us for this purpose.
        unsafe {
            libc::write(fd, b"\n".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
    loop {
        // SAFETY: waits for a signal; the default dispositions end the process.
        unsafe { libc::pause() };
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let plugin_mode = args.get(1).map(String::as_str) == Some("--metadata")
        || std::env::var_os(toru_plugin_api::sdk::SOCKET_ENV).is_some();
    if !plugin_mode {
        return peer(&args);
    }
    if args.get(1).map(String::as_str) != Some("--metadata") {
        report_main(&args);
    }
    toru_plugin_api::run(Probe)
}
