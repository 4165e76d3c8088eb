//! The MQTT bridge against a real Mosquitto (Debian's `mosquitto`, started by each test on a free
//! loopback port with its own config: no persistence, anonymous clients) and the real host with real
//! plugins. What a subscriber sees is read with `mosquitto_sub` (`mosquitto-clients`); commands are
//! sent with `mosquitto_pub`. Every test skips, saying so, when Mosquitto is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_util;
mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http_util::{bearer, create_token, setup_admin};
use serde_json::Value;
use support::{Host, HostOpts, PluginSrc, TempDir, built, eventually};

/// Fast supervisor timings, so a crashing plugin fails in milliseconds.
const FAST: &str =
    "[supervisor]\nbackoff_base_ms = 20\nshutdown_grace_ms = 1000\nterm_grace_ms = 500\n";
/// The longest any one wait for a message may take (a failure, not a pace).
const WAIT: Duration = Duration::from_secs(30);

fn have_mosquitto() -> bool {
    let ok = |bin: &str| {
        Command::new(bin)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    let found = ok("mosquitto") && ok("mosquitto_sub") && ok("mosquitto_pub");
    if !found {
        eprintln!(
            "SKIPPED: mosquitto / mosquitto-clients are not installed (scripts/test.d/20-cargo.sh installs them)"
        );
    }
    found
}

fn stress(mode: &str) -> PluginSrc {
    PluginSrc::Built {
        bin: "stress",
        as_name: format!("stress-{mode}"),
    }
}

/// A free loopback port (bound, then released for the broker).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Mosquitto of the test's own, on `127.0.0.1:port`.
struct Broker {
    conf: PathBuf,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Broker {
    /// Start a broker listening on a free port; `tls` is `(ca, cert, key)` for a TLS listener.
    fn start(dir: &TempDir, tls: Option<(&Path, &Path, &Path)>) -> Broker {
        Broker::start_with(dir, tls, "allow_anonymous true\n")
    }

    /// [`Broker::start`] with `auth` (the `allow_anonymous` / `password_file` lines) in its config.
    fn start_with(dir: &TempDir, tls: Option<(&Path, &Path, &Path)>, auth: &str) -> Broker {
        let port = free_port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\n{auth}persistence false\nlog_dest stderr\nlog_type all\n"
        );
        if support::is_root() {
            // The key and the config lie in a private temp dir: stay root to read them.
            conf.push_str("user root\n");
        }
        if let Some((ca, cert, key)) = tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                ca.display(),
                cert.display(),
                key.display()
            ));
        }
        let path = dir.join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let mut b = Broker {
            conf: path,
            port,
            child: None,
            log: dir.join("mosquitto.log"),
        };
        b.resume();
        b
    }

    /// Start (again) on the same port and wait until it accepts connections.
    fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {}: {}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop it (SIGTERM, then wait).
    fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            support::kill(c.id(), libc::SIGTERM);
            let _ = c.wait();
        }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn sub_args(&self, tls_ca: Option<&Path>) -> Vec<String> {
        let mut a = vec![
            "-h".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
        ];
        if let Some(ca) = tls_ca {
            a.push("--cafile".into());
            a.push(ca.display().to_string());
        }
        a
    }

    /// The retained message on `topic` (a fresh subscriber gets it at once), waiting for one to
    /// be there.
    fn retained(&self, topic: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = Command::new("mosquitto_sub")
                .args(self.sub_args(None))
                .args([
                    "-t",
                    topic,
                    "-C",
                    "1",
                    "-W",
                    "2",
                    "--retained-only",
                    "-F",
                    "%p",
                ])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !text.is_empty() {
                return serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
            }
            assert!(Instant::now() < deadline, "no retained message on {topic}");
        }
    }

    /// `mosquitto_pub` one message.
    fn publish(&self, topic: &str, payload: &str) {
        let out = Command::new("mosquitto_pub")
            .args(self.sub_args(None))
            .args(["-t", topic, "-m", payload, "-q", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running `mosquitto_sub` whose lines (`retain<TAB>topic<TAB>payload`) arrive on a channel.
struct Subscriber {
    child: Child,
    lines: mpsc::Receiver<(bool, String, String)>,
}

impl Subscriber {
    fn start(broker: &Broker, filter: &str) -> Subscriber {
        let mut child = Command::new("mosquitto_sub")
            .args(broker.sub_args(None))
            .args(["-t", filter, "-q", "1", "-F", "%r\t%t\t%p"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.splitn(3, '\t');
                let (Some(r), Some(t), Some(p)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                if tx.send((r == "1", t.to_string(), p.to_string())).is_err() {
                    break;
                }
            }
        });
        Subscriber { child, lines }
    }

    /// Publishes `(topic, payload)` until the next message this subscriber gets within 2 s is one
    /// `answered(topic, payload)` accepts, within [`WAIT`] (else fails with `failure`): the host
    /// subscribes only once connected, and a message sent before that is lost. Each send is one
    /// real message.
    fn publish_until_answered(
        &self,
        broker: &Broker,
        (topic, payload): (&str, &str),
        failure: &str,
        answered: impl Fn(&str, &str) -> bool,
    ) {
        let deadline = Instant::now() + WAIT;
        loop {
            broker.publish(topic, payload);
            let got = self
                .lines
                .recv_timeout(Duration::from_secs(2))
                .ok()
                .is_some_and(|(_, t, p)| answered(&t, &p));
            if got {
                break;
            }
            assert!(Instant::now() < deadline, "{failure}");
        }
    }

    /// The first message (retained or not) for which `want` says yes, within [`WAIT`].
    fn wait_for(
        &self,
        what: &str,
        mut want: impl FnMut(&str, &Value) -> bool,
    ) -> (bool, String, Value) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (retain, topic, payload) = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
            let v = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
            if want(&topic, &v) {
                return (retain, topic, v);
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain broker (no TLS, anonymous clients) of the test's own in a temp dir named `name`, or
/// `None` (the test skips) where Mosquitto is not installed. Keep both: the dir outlives the broker.
fn plain_broker(name: &str) -> Option<(TempDir, Broker)> {
    if !have_mosquitto() {
        return None;
    }
    let dir = TempDir::new(name).unwrap();
    let broker = Broker::start(&dir, None);
    Some((dir, broker))
}

fn host(broker_url: &str, extra: &str, plugins: Vec<PluginSrc>) -> Host {
    Host::start(HostOpts {
        plugins,
        config: Some(format!(
            "{FAST}[mqtt]\nurl = \"{broker_url}\"\ntopic_prefix = \"toru/test\"\n{extra}"
        )),
        ..Default::default()
    })
}

/// The admin set up and an admin API token.
fn admin_token(h: &Host) -> String {
    setup_admin(h);
    create_token(h, "t", "admin")
}

fn system(h: &Host, token: &str) -> Value {
    let r = bearer(h, "GET", "/api/system", token, None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn plugin_state(h: &Host, token: &str, id: &str) -> Value {
    let r = bearer(h, "GET", &format!("/api/plugins/{id}"), token, None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn discovery_topic(h: &Host, token: &str) -> String {
    let id = system(h, token)["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    format!("homeassistant/device/toru_{id}/config")
}

#[test]
fn discovery_state_and_events_are_published_and_a_crash_shows_in_both() {
    let Some((_dir, broker)) = plain_broker("mqtt-disc") else {
        return;
    };
    let events = Subscriber::start(&broker, "toru/test/events");
    let h = host(
        &broker.url("mqtt"),
        "",
        vec![built("hello-rust"), stress("crash-start")],
    );
    let token = admin_token(&h);

    // Connected, as every health surface says.
    eventually("the bridge to connect", || {
        (system(&h, &token)["mqtt"]["state"] == "connected").then_some(())
    });
    let metrics = bearer(&h, "GET", "/metrics", &token, None).text();
    assert!(metrics.contains("toru_mqtt_connected 1"), "{metrics}");
    assert!(metrics.contains("toru_mqtt_dropped_total 0"), "{metrics}");

    // The device discovery payload, retained, with the documented fields.
    let config = broker.retained(&discovery_topic(&h, &token));
    assert_eq!(config["avty_t"], "toru/test/availability");
    assert_eq!(config["o"]["name"], "toru");
    assert!(
        config["dev"]["ids"][0]
            .as_str()
            .unwrap()
            .starts_with("toru_")
    );
    let cmps = config["cmps"].as_object().unwrap();
    for key in [
        "version",
        "uptime",
        "plugins_total",
        "plugins_ready",
        "store",
    ] {
        assert!(cmps.contains_key(key), "{key} in {config}");
    }
    let hello = &cmps["plugin_hello_rust_state"];
    assert_eq!(hello["p"], "sensor");
    assert_eq!(hello["stat_t"], "toru/test/plugins/hello-rust/state");
    assert_eq!(cmps["plugin_hello_rust_update"]["p"], "update");
    assert!(
        !cmps.contains_key("plugin_hello_rust_enabled"),
        "no switch while commands are off"
    );
    assert_eq!(broker.retained("toru/test/availability"), "online");
    let host_state = broker.retained("toru/test/host/state");
    assert_eq!(host_state["version"], system(&h, &token)["version"]);
    let update = broker.retained("toru/test/plugins/hello-rust/update");
    assert_eq!(update["installed_version"], update["latest_version"]);

    // The ready plugin's retained state.
    let states = Subscriber::start(&broker, "toru/test/plugins/+/state");
    states.wait_for("hello-rust ready", |t, v| {
        t == "toru/test/plugins/hello-rust/state" && v["state"] == "ready" && v["enabled"] == true
    });
    // The crashing one: its failures as events, and its state as it moves on.
    let (retain, _, ev) = events.wait_for("a crashed event", |_, v| {
        v["plugin"] == "stress-crash-start" && v["kind"] == "crashed"
    });
    assert!(!retain, "events are not retained");
    assert!(
        ev["seq"].as_u64().is_some() && ev["message"].is_string(),
        "{ev}"
    );
    let (retain, _, st) = states.wait_for("stress-crash-start failing", |t, v| {
        t == "toru/test/plugins/stress-crash-start/state"
            && (v["state"] == "backoff" || v["state"] == "disabled")
    });
    assert!(
        retain || st["consecutive_failures"].as_u64().is_some(),
        "{st}"
    );
    assert!(
        broker.retained("toru/test/plugins/stress-crash-start/state")["restarts"]
            .as_u64()
            .is_some()
    );
}

#[test]
fn a_command_disables_a_plugin_only_when_commands_are_on() {
    let Some((_dir, broker)) = plain_broker("mqtt-cmd") else {
        return;
    };

    // Off (the default): no controls are offered and the command does nothing.
    let mut h = host(&broker.url("mqtt"), "", vec![built("hello-rust")]);
    let token = admin_token(&h);
    let states = Subscriber::start(&broker, "toru/test/plugins/hello-rust/state");
    states.wait_for("hello-rust ready", |_, v| v["state"] == "ready");
    // The bridge subscribes (when it does) right after connecting, before it publishes any
    // state: with the state seen, the broker's log already holds every SUBSCRIBE the host sent.
    let client_id = system(&h, &token)["mqtt"]["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    let log = std::fs::read_to_string(&broker.log).unwrap();
    assert!(
        log.contains(&format!(" as {client_id} "))
            && !log.contains(&format!("Received SUBSCRIBE from {client_id}")),
        "the host subscribed with commands off:\n{log}"
    );
    broker.publish("toru/test/plugins/hello-rust/set", "OFF");
    assert_eq!(plugin_state(&h, &token, "hello-rust")["enabled"], true);
    assert_eq!(system(&h, &token)["mqtt"]["commands_done"], 0);
    h.stop();
    drop(states);

    // On: the switch and button are offered, and OFF disables the plugin.
    let h = host(
        &broker.url("mqtt"),
        "commands = true\n",
        vec![built("hello-rust")],
    );
    let token = admin_token(&h);
    let states = Subscriber::start(&broker, "toru/test/plugins/hello-rust/state");
    states.wait_for("hello-rust ready", |_, v| v["state"] == "ready");
    let config = broker.retained(&discovery_topic(&h, &token));
    assert_eq!(config["cmps"]["plugin_hello_rust_enabled"]["p"], "switch");
    assert_eq!(
        config["cmps"]["plugin_hello_rust_enabled"]["cmd_t"],
        "toru/test/plugins/hello-rust/set"
    );
    assert_eq!(config["cmps"]["plugin_hello_rust_restart"]["p"], "button");
    // The host subscribes right after connecting; a command sent before that would be lost, so
    // send until the state says it was obeyed (each send is one real command).
    states.publish_until_answered(
        &broker,
        ("toru/test/plugins/hello-rust/set", "OFF"),
        "the OFF command was not obeyed",
        |_, p| serde_json::from_str::<Value>(p).is_ok_and(|v| v["enabled"] == false),
    );
    // `enabled` turns false at once; the plugin is `stopping` until its process is gone (seen
    // under qemu-user), then `disabled`.
    let p = eventually("hello-rust disabled after the OFF command", || {
        let p = plugin_state(&h, &token, "hello-rust");
        (p["state"] != "stopping").then_some(p)
    });
    assert_eq!(
        (p["enabled"].clone(), p["state"].clone()),
        (false.into(), "disabled".into())
    );
    // The broker's log shows the subscription the first half found absent.
    let client_id = system(&h, &token)["mqtt"]["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    let log = std::fs::read_to_string(&broker.log).unwrap();
    assert!(
        log.contains(&format!("Received SUBSCRIBE from {client_id}")),
        "{log}"
    );
    broker.publish("toru/test/plugins/hello-rust/set", "ON");
    states.wait_for("enabled again", |_, v| v["enabled"] == true);
    assert!(
        system(&h, &token)["mqtt"]["commands_done"]
            .as_u64()
            .unwrap()
            >= 2
    );
}

#[test]
fn a_broker_outage_does_not_stop_the_host_and_state_is_republished_after_it() {
    let Some((_dir, mut broker)) = plain_broker("mqtt-down") else {
        return;
    };
    let h = host(&broker.url("mqtt"), "", vec![built("hello-rust")]);
    let token = admin_token(&h);
    let topic = discovery_topic(&h, &token);
    broker.retained(&topic);
    eventually("connected", || {
        (system(&h, &token)["mqtt"]["connects"] == 1).then_some(())
    });

    broker.pause();
    let down = Instant::now();
    // While the broker is away (10 s) the host serves as always, and says the bridge is down.
    let mut served = 0;
    while down.elapsed() < Duration::from_secs(10) && served < 10_000 {
        let r = h.http("GET", "/api/health", &[], None);
        assert_eq!(r.status, 200);
        served += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served > 0);
    let s = system(&h, &token)["mqtt"].clone();
    assert_ne!(s["state"], "connected", "{s}");
    assert!(s["last_error"].is_string(), "{s}");
    let metrics = bearer(&h, "GET", "/metrics", &token, None).text();
    assert!(metrics.contains("toru_mqtt_connected 0"), "{metrics}");

    // Back (without persistence: every retained message is gone) — the host reconnects and
    // publishes the discovery payload, availability and state again.
    broker.resume();
    eventually("reconnected", || {
        (system(&h, &token)["mqtt"]["connects"] == 2).then_some(())
    });
    let config = broker.retained(&topic);
    assert!(
        config["cmps"]["plugin_hello_rust_state"].is_object(),
        "{config}"
    );
    assert_eq!(broker.retained("toru/test/availability"), "online");
    assert_eq!(
        broker.retained("toru/test/plugins/hello-rust/state")["state"],
        "ready"
    );
}

#[test]
fn a_clean_stop_leaves_offline_and_a_kill_leaves_it_through_the_last_will() {
    let Some((_dir, broker)) = plain_broker("mqtt-will") else {
        return;
    };
    let mut h = host(&broker.url("mqtt"), "", vec![]);
    assert_eq!(broker.retained("toru/test/availability"), "online");
    let avail = Subscriber::start(&broker, "toru/test/availability");
    avail.wait_for("online", |_, v| v == "online");
    h.stop();
    avail.wait_for("offline after a clean stop", |_, v| v == "offline");

    let h = host(&broker.url("mqtt"), "", vec![]);
    avail.wait_for("online again", |_, v| v == "online");
    // SIGKILL: the broker publishes the last will once it notices the connection is gone.
    drop(h);
    avail.wait_for("offline through the last will", |_, v| v == "offline");
}

/// `openssl` makes a CA and a server certificate for 127.0.0.1 signed by it.
#[cfg(feature = "mqtt-tls")]
fn make_ca(dir: &TempDir) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir.join(""))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=toru test CA",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]) && {
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ])
    };
    ok.then(|| {
        (
            dir.join("ca.pem"),
            dir.join("server.pem"),
            dir.join("server.key"),
        )
    })
}

#[cfg(feature = "mqtt-tls")]
#[test]
fn tls_with_a_test_ca() {
    if !have_mosquitto() {
        return;
    }
    let dir = TempDir::new("mqtt-tls").unwrap();
    let Some((ca, cert, key)) = make_ca(&dir) else {
        eprintln!("SKIPPED: openssl could not make a test CA");
        return;
    };
    let broker = Broker::start(&dir, Some((&ca, &cert, &key)));
    let h = host(
        &broker.url("mqtts"),
        &format!("ca_file = \"{}\"\n", ca.display()),
        vec![],
    );
    let token = admin_token(&h);
    eventually("a TLS connection", || {
        let s = system(&h, &token)["mqtt"].clone();
        (s["state"] == "connected").then_some(())
    });
    let out = Command::new("mosquitto_sub")
        .args(broker.sub_args(Some(&ca)))
        .args([
            "-t",
            "toru/test/availability",
            "-C",
            "1",
            "-W",
            "10",
            "-F",
            "%p",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "online");

    // A CA that did not sign the broker's certificate: refused, and said why.
    let other = TempDir::new("mqtt-tls2").unwrap();
    let (other_ca, _, _) = make_ca(&other).unwrap();
    let (_h2, s) = refused_second_host(
        &broker.url("mqtts"),
        &format!("ca_file = \"{}\"\n", other_ca.display()),
        "a refused TLS connection",
    );
    assert!(
        s["last_error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("cert"),
        "{s}"
    );
}

/// A second host (client id `second`, `extra` added to its `[mqtt]`) on `broker_url` whose
/// connection the broker refuses: waits until the bridge says why (`last_error`, the wait named
/// `what`) and checks it never connected. The host is returned alive, with its `mqtt` status.
fn refused_second_host(broker_url: &str, extra: &str, what: &str) -> (Host, Value) {
    let h = host(
        broker_url,
        &format!("client_id = \"second\"\n{extra}"),
        vec![],
    );
    let token = admin_token(&h);
    let s = eventually(what, || {
        let s = system(&h, &token)["mqtt"].clone();
        s["last_error"].is_string().then_some(s)
    });
    assert_eq!(s["connects"], 0, "{s}");
    (h, s)
}

/// The `stress` plugin's `<stem>.mqtt` report once it holds `line`.
fn wait_report_line(h: &Host, stem: &str, line: &str) -> String {
    eventually(&format!("{line:?} in {stem}.mqtt"), || {
        h.read_report(&format!("{stem}.mqtt"))
            .filter(|r| r.lines().any(|l| l == line))
    })
}

#[test]
fn a_plugin_publishes_and_subscribes_under_its_own_topics_only() {
    let Some((_dir, broker)) = plain_broker("mqtt-plug") else {
        return;
    };
    let own = Subscriber::start(&broker, "toru/test/plugins/stress-mqtt/#");
    let h = host(&broker.url("mqtt"), "", vec![stress("mqtt")]);

    // Its publish (retained) reached the broker under its own prefix.
    let (retain, _, v) = own.wait_for("the plugin's retained publish", |t, _| {
        t == "toru/test/plugins/stress-mqtt/hello"
    });
    assert!(retain || v == "hi", "{v}");
    assert_eq!(broker.retained("toru/test/plugins/stress-mqtt/hello"), "hi");
    // Leaving its part of the tree is refused with an error, not a crash.
    wait_report_line(&h, "stress-mqtt", "m1 ok");
    wait_report_line(&h, "stress-mqtt", "m2 ok");
    wait_report_line(&h, "stress-mqtt", "m3 error bad_request");
    wait_report_line(&h, "stress-mqtt", "m4 error bad_request");

    // A message on its topic reaches it (relative), and its answer reaches a subscriber. The
    // bridge subscribes once connected: send until the answer shows that it did.
    own.publish_until_answered(
        &broker,
        ("toru/test/plugins/stress-mqtt/cmd/go", "now"),
        "no echo from the plugin",
        |t, p| t == "toru/test/plugins/stress-mqtt/echo/go" && p == "now",
    );
    wait_report_line(&h, "stress-mqtt", "message cmd/go now");
    // Another plugin's topics are not its own: nothing published there reaches it.
    let report = h.read_report("stress-mqtt.mqtt").unwrap();
    assert!(!report.contains("escape"), "{report}");
}

#[test]
fn a_plugins_mqtt_request_is_refused_clearly_when_the_bridge_is_off() {
    // No broker needed: the host has no [mqtt] url.
    let h = Host::start(HostOpts {
        plugins: vec![stress("mqtt")],
        config: Some(FAST.into()),
        ..Default::default()
    });
    for rid in ["m1", "m2", "m3", "m4"] {
        wait_report_line(&h, "stress-mqtt", &format!("{rid} error unavailable"));
    }
    let token = admin_token(&h);
    assert_eq!(system(&h, &token)["mqtt"]["state"], "disabled");
    let metrics = bearer(&h, "GET", "/metrics", &token, None).text();
    assert!(!metrics.contains("toru_mqtt_connected"), "{metrics}");
}

#[test]
fn credentials_come_from_the_password_file_and_a_refusal_says_why() {
    if !have_mosquitto() {
        return;
    }
    let dir = TempDir::new("mqtt-auth").unwrap();
    let passwords = dir.join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwords)
        .args(["toru", "s3cret pass"])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let broker = Broker::start_with(
        &dir,
        None,
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            passwords.display()
        ),
    );
    let good = dir.join("good.pw");
    std::fs::write(&good, "s3cret pass\n").unwrap();
    let h = host(
        &broker.url("mqtt"),
        &format!(
            "username = \"toru\"\npassword_file = \"{}\"\n",
            good.display()
        ),
        vec![],
    );
    let token = admin_token(&h);
    eventually("connected with the password", || {
        (system(&h, &token)["mqtt"]["state"] == "connected").then_some(())
    });

    // A wrong password: the broker refuses, the host says why and keeps serving.
    let bad = dir.join("bad.pw");
    std::fs::write(&bad, "wrong").unwrap();
    let (h2, s) = refused_second_host(
        &broker.url("mqtt"),
        &format!(
            "username = \"toru\"\npassword_file = \"{}\"\n",
            bad.display()
        ),
        "a refusal",
    );
    assert!(s["last_error"].as_str().unwrap().contains("refused"), "{s}");
    assert_eq!(h2.http("GET", "/api/health", &[], None).status, 200);
}
