//! Group 12, the MQTT bridge (docs/MQTT.md): messages per second from a plugin through the host's
//! bridge to a subscriber on a real Mosquitto (the bench's own, on loopback), and the host's memory
//! with the bridge off vs on (3 probe plugins: idle, and after the burst). Off and on alternate
//! within each round.
//!
//! The burst: the probe plugin publishes [`BURST`] 64-byte messages (QoS 1) from [`PUBLISHERS`]
//! concurrent publishers through `ctx.mqtt` (`/mqttbench`), each waiting for the host's `ok`
//! (queued) and retrying a `busy` (the bridge's bounded queue is full) after 1 ms; a
//! `mosquitto_sub` started and subscribed before counts what reaches the broker's other side.
//! "Host accepted" is the plugin's time until the host queued the last one; "end to end" is until
//! the subscriber received the last one.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::host::{Bins, Toru};
use crate::memory::probes;
use crate::util::{Proc, Result, TempDir, err, fmt_mib, free_port, median, rss_pss_kib, wait_tcp};
use crate::{Opts, Report};

/// Messages per burst.
const BURST: usize = 20_000;
/// Concurrent publishers in the plugin.
const PUBLISHERS: usize = 8;
/// Let a freshly started host settle before reading its memory (as the memory group).
const SETTLE: Duration = Duration::from_millis(1500);
/// The longest a burst may take to arrive (bounds the run; a failure, not a pace).
const BURST_LIMIT: Duration = Duration::from_secs(120);

/// A subscriber counting what arrives on `filter`: the instant it received its `n`-th message.
struct Counter {
    _proc: Proc,
    done: mpsc::Receiver<Instant>,
}

impl Counter {
    /// Start `mosquitto_sub -d` on `filter` and return once its subscription is acknowledged.
    fn start(port: u16, filter: &str, n: usize) -> Result<Counter> {
        // Line-buffered (`stdbuf -oL`): piped, its stdio would hold the lines back.
        let mut cmd = Command::new("stdbuf");
        cmd.args([
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(["-t", filter, "-q", "1", "-d"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut proc = Proc::spawn(&mut cmd, "mosquitto_sub")?;
        let out = proc
            .child
            .stdout
            .take()
            .ok_or_else(|| err("mosquitto_sub has no stdout"))?;
        let (subscribed_tx, subscribed) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let mut count = 0;
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.contains("received SUBACK") {
                    let _ = subscribed_tx.send(());
                } else if line.contains("received PUBLISH") {
                    count += 1;
                    if count == n {
                        let _ = done_tx.send(Instant::now());
                    }
                }
            }
        });
        subscribed
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| err("mosquitto_sub did not subscribe"))?;
        Ok(Counter { _proc: proc, done })
    }
}

/// A table row: its name, the per-round figures and how to show one.
type Row<'a> = (&'a str, &'a Vec<f64>, &'a dyn Fn(f64) -> String);

/// Run the group.
pub fn run(bins: &Bins, opts: &Opts, rep: &mut Report) -> Result<()> {
    if Command::new("mosquitto").arg("-h").output().is_err()
        || Command::new("mosquitto_sub")
            .arg("--help")
            .output()
            .is_err()
    {
        return Err(err(
            "mosquitto and mosquitto-clients are needed (scripts/bench.sh installs them)",
        ));
    }
    let dir = TempDir::new("mqtt")?;
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages {}\n",
            BURST * 2
        ),
    )?;
    let mut broker_cmd = Command::new("mosquitto");
    broker_cmd
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _broker = Proc::spawn(&mut broker_cmd, "mosquitto")?;
    wait_tcp(([127, 0, 0, 1], port).into(), Duration::from_secs(10))?;
    let on = format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\ntopic_prefix = \"bench\"\n");

    let (mut rss_off, mut rss_on, mut rss_after) = (Vec::new(), Vec::new(), Vec::new());
    let (mut accepted, mut e2e, mut retries) = (Vec::new(), Vec::new(), Vec::new());
    let mut dropped = 0u64;
    for round in 0..opts.rounds {
        eprintln!("mqtt: round {}/{}", round + 1, opts.rounds);
        {
            let t = Toru::start(bins, &probes(bins, "probe", 3), None)?;
            std::thread::sleep(SETTLE);
            rss_off.push(rss_pss_kib(t.pid())?.0 as f64);
        }
        let mut t = Toru::start(bins, &probes(bins, "probe", 3), Some(&on))?;
        t.login()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while t.get("/api/system")?["mqtt"]["state"] != "connected" {
            if Instant::now() > deadline {
                return Err(err("the bridge did not connect"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(SETTLE);
        rss_on.push(rss_pss_kib(t.pid())?.0 as f64);

        let counter = Counter::start(port, "bench/plugins/probe0/bench/#", BURST)?;
        let t0 = Instant::now();
        let v = t.get(&format!(
            "/api/plugins/route/probe0/mqttbench?n={BURST}&w={PUBLISHERS}"
        ))?;
        let host_us = v["elapsed_us"]
            .as_f64()
            .ok_or_else(|| err(format!("mqttbench: {v}")))?;
        accepted.push(BURST as f64 / (host_us / 1e6));
        retries.push(v["busy_retries"].as_f64().unwrap_or(f64::NAN));
        let arrived = counter
            .done
            .recv_timeout(BURST_LIMIT.saturating_sub(t0.elapsed()))
            .map_err(|_| err("the burst did not arrive in full"))?;
        e2e.push(BURST as f64 / arrived.duration_since(t0).as_secs_f64());
        rss_after.push(rss_pss_kib(t.pid())?.0 as f64);
        dropped += t.get("/api/system")?["mqtt"]["dropped"]
            .as_u64()
            .unwrap_or(0);
    }
    let mut s = format!(
        "A real Mosquitto on loopback; the host with 3 probe plugins. A burst of {BURST} \
         64-byte messages (QoS 1) published by one plugin from {PUBLISHERS} concurrent \
         publishers through `ctx.mqtt`, each waiting for the host's `ok` (queued for the broker) \
         and retrying `busy` after 1 ms; a `mosquitto_sub` subscribed beforehand counts them. \
         {} rounds, bridge off and on alternating; medians.\n\n",
        opts.rounds
    );
    s.push_str("| measure | median | rounds |\n|---|---|---|\n");
    let rate = |x: f64| format!("{x:.0}/s");
    let count = |x: f64| format!("{x:.0}");
    let rows: [Row; 6] = [
        ("messages accepted by the host", &accepted, &rate),
        (
            "messages end to end (plugin → host → broker → subscriber)",
            &e2e,
            &rate,
        ),
        ("`busy` answers retried per burst", &retries, &count),
        ("host RSS, bridge off (idle)", &rss_off, &fmt_mib),
        ("host RSS, bridge on (connected, idle)", &rss_on, &fmt_mib),
        ("host RSS, bridge on, after the burst", &rss_after, &fmt_mib),
    ];
    for (name, v, f) in rows {
        let all = v.iter().map(|x| f(*x)).collect::<Vec<_>>().join(" / ");
        s.push_str(&format!("| {name} | {} | {all} |\n", f(median(v))));
    }
    let cost = median(&rss_on) - median(&rss_off);
    s.push_str(&format!(
        "\nThe bridge costs {} of RSS when connected and idle (median on − median off). Messages \
         dropped by the bridge over all rounds: {dropped} (a `busy` answer is not a drop: the \
         plugin was told and retried).\n",
        fmt_mib(cost)
    ));
    rep.set("mqtt_e2e_per_s", median(&e2e));
    rep.set("mqtt_rss_cost_kib", cost);
    rep.section("12. MQTT bridge", s);
    Ok(())
}
