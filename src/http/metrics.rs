//! Request counters and latency histograms kept by the HTTP layer, and the Prometheus text format
//! of `GET /metrics` (these plus plugin states, restarts, store size and process memory read at
//! scrape time, and the connection and reply-budget figures the handler passes in as
//! [`HttpGauges`]). Memory is bounded: one entry per route class and per known plugin.
//!
//! A leaf of `http`: imports nothing from it and names no HTTP type. The router holds the counters
//! and `dispatch` counts every response; the `/metrics` and `/api/system` handlers read them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::app::App;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

/// Plugins tracked at most (ids beyond it share the `other` entry).
const MAX_PLUGINS: usize = 256;

/// A latency histogram.
#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// `(VmRSS, VmHWM)` of this process in bytes, from `/proc/self/status`.
pub(crate) fn rss_bytes() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status.lines().find_map(|l| {
            let v = l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim();
            v.parse::<u64>().ok().map(|kb| kb * 1024)
        })
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Gauges and counters kept elsewhere in `http` (connections, the reply budget), read at scrape
/// time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpGauges {
    /// Open connections.
    pub(crate) connections: usize,
    /// Connections refused with `503` since start.
    pub(crate) rejected: u64,
    /// Connections closed to make room since start.
    pub(crate) evicted: u64,
    /// Bytes of replies held for clients now.
    pub(crate) reply_bytes: usize,
    /// The reply budget.
    pub(crate) reply_budget: usize,
    /// Requests refused because the reply budget was spent, since start.
    pub(crate) reply_refused: u64,
}

/// What the HTTP layer counts.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// (route class, status) → requests.
    requests: BTreeMap<(&'static str, u16), u64>,
    /// route class → latency.
    latency: BTreeMap<&'static str, Histogram>,
    /// (plugin, status) → forwarded requests.
    plugin_requests: BTreeMap<(String, u16), u64>,
    /// plugin → forward latency.
    plugin_latency: BTreeMap<String, Histogram>,
}

impl Metrics {
    /// Count a request of `class` (`ui`, `api`, `plugin`, `auth`, `metrics`, …).
    pub(crate) fn request(&mut self, class: &'static str, status: u16, took: Duration) {
        *self.requests.entry((class, status)).or_default() += 1;
        self.latency.entry(class).or_default().observe(took);
    }

    /// Count a request forwarded to a plugin.
    pub(crate) fn plugin_request(&mut self, plugin: &str, status: u16, took: Duration) {
        let known = self.plugin_latency.contains_key(plugin);
        let plugin = if known || self.plugin_latency.len() < MAX_PLUGINS {
            plugin.to_string()
        } else {
            "other".to_string()
        };
        *self
            .plugin_requests
            .entry((plugin.clone(), status))
            .or_default() += 1;
        self.plugin_latency.entry(plugin).or_default().observe(took);
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub(crate) fn render(&self, app: &App, http: &HttpGauges) -> String {
        let mut o = String::with_capacity(4096);
        let up = app.started.elapsed().as_secs_f64();
        help(
            &mut o,
            "toru_uptime_seconds",
            "gauge",
            "Seconds since the host started.",
        );
        let _ = writeln!(o, "toru_uptime_seconds {up}");
        let info_labels = format!(
            "version=\"{}\",instance_id=\"{}\"",
            esc(crate::app::VERSION),
            esc(&app.store.instance_id())
        );
        help(
            &mut o,
            "toru_info",
            "gauge",
            "Host version and instance id.",
        );
        let _ = writeln!(o, "toru_info{{{info_labels}}} 1");
        if let Some(rss) = rss_bytes().0 {
            help(
                &mut o,
                "toru_memory_rss_bytes",
                "gauge",
                "Resident memory of the host process.",
            );
            let _ = writeln!(o, "toru_memory_rss_bytes {rss}");
        }
        help(
            &mut o,
            "toru_store_file_bytes",
            "gauge",
            "Size of the store file.",
        );
        let _ = writeln!(o, "toru_store_file_bytes {}", app.store.file_bytes());
        help(
            &mut o,
            "toru_store_commits_total",
            "counter",
            "Durable store commits since start.",
        );
        let _ = writeln!(o, "toru_store_commits_total {}", app.store.commits());
        let degraded = u8::from(app.store.health() != crate::store::StoreHealth::Ok);
        help(
            &mut o,
            "toru_store_degraded",
            "gauge",
            "1 when the store runs without its file.",
        );
        let _ = writeln!(o, "toru_store_degraded {degraded}");
        let mqtt = app.mqtt.status();
        if mqtt.state != crate::mqtt::ConnState::Disabled {
            help(
                &mut o,
                "toru_mqtt_connected",
                "gauge",
                "1 while the MQTT bridge is connected to its broker.",
            );
            let connected = u8::from(mqtt.state == crate::mqtt::ConnState::Connected);
            let _ = writeln!(o, "toru_mqtt_connected {connected}");
            for (name, what, v) in [
                (
                    "toru_mqtt_connects_total",
                    "Connections the MQTT bridge made to its broker.",
                    mqtt.connects,
                ),
                (
                    "toru_mqtt_published_total",
                    "Messages the MQTT bridge wrote to its broker.",
                    mqtt.published,
                ),
                (
                    "toru_mqtt_dropped_total",
                    "Messages the MQTT bridge dropped because a bounded queue was full.",
                    mqtt.dropped,
                ),
                (
                    "toru_mqtt_commands_total",
                    "Commands from the broker the MQTT bridge carried out.",
                    mqtt.commands_done,
                ),
            ] {
                help(&mut o, name, "counter", what);
                let _ = writeln!(o, "{name} {v}");
            }
        }
        let safe_mode = app.safe_mode.status();
        help(
            &mut o,
            "toru_safe_mode",
            "gauge",
            "1 while the host runs in safe mode (third-party plugins held).",
        );
        let _ = writeln!(o, "toru_safe_mode {}", u8::from(safe_mode.active));
        help(
            &mut o,
            "toru_unclean_runs",
            "gauge",
            "Unclean host exits in a row (reset by a run that lasts [safe_mode] clean_secs).",
        );
        let _ = writeln!(o, "toru_unclean_runs {}", safe_mode.unclean_in_a_row);
        if let Ok(Some(last)) = app.store.system_update().map(|u| u.last_result) {
            help(
                &mut o,
                "toru_update_last_result",
                "gauge",
                "How the last whole-device update ended: 1 ok, 0 failed (absent before the first).",
            );
            let ok = u8::from(last.result == crate::store::SystemUpdateOutcome::Ok);
            let _ = writeln!(
                o,
                "toru_update_last_result{{version=\"{}\"}} {ok}",
                esc(&last.version)
            );
        }

        let plugins = app.supervisor.plugins();
        help(
            &mut o,
            "toru_plugin_state",
            "gauge",
            "1 for the state each plugin is in.",
        );
        for p in &plugins {
            let state = serde_json::to_value(p.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "toru_plugin_state{{plugin=\"{}\",state=\"{}\"}} 1",
                esc(&p.id),
                esc(&state)
            );
        }
        per_plugin(
            &mut o,
            &plugins,
            "toru_plugin_enabled",
            "gauge",
            "1 when the plugin is enabled.",
            |p| u64::from(p.enabled),
        );
        per_plugin(
            &mut o,
            &plugins,
            "toru_plugin_restarts_total",
            "counter",
            "Plugin restarts since the host started.",
            |p| p.restarts,
        );
        per_plugin(
            &mut o,
            &plugins,
            "toru_plugin_log_dropped_total",
            "counter",
            "Plugin log lines dropped.",
            |p| p.log_dropped,
        );
        help(
            &mut o,
            "toru_plugins_invalid",
            "gauge",
            "Plugin binaries skipped at the last scan.",
        );
        let _ = writeln!(o, "toru_plugins_invalid {}", app.supervisor.invalid().len());

        help(
            &mut o,
            "toru_http_connections",
            "gauge",
            "Open HTTP connections.",
        );
        let _ = writeln!(o, "toru_http_connections {}", http.connections);
        help(
            &mut o,
            "toru_http_connections_rejected_total",
            "counter",
            "Connections refused with 503 (limit).",
        );
        let _ = writeln!(o, "toru_http_connections_rejected_total {}", http.rejected);
        help(
            &mut o,
            "toru_http_connections_evicted_total",
            "counter",
            "Connections without a request in flight closed to make room.",
        );
        let _ = writeln!(o, "toru_http_connections_evicted_total {}", http.evicted);
        help(
            &mut o,
            "toru_http_reply_buffered_bytes",
            "gauge",
            "Bytes of response bodies held for clients that have not taken them yet.",
        );
        let _ = writeln!(o, "toru_http_reply_buffered_bytes {}", http.reply_bytes);
        help(
            &mut o,
            "toru_http_reply_budget_bytes",
            "gauge",
            "The limit of toru_http_reply_buffered_bytes (http.max_buffered_reply_bytes).",
        );
        let _ = writeln!(o, "toru_http_reply_budget_bytes {}", http.reply_budget);
        help(
            &mut o,
            "toru_http_reply_budget_refused_total",
            "counter",
            "Requests answered 503 because replies held for slow clients spent the budget.",
        );
        let _ = writeln!(
            o,
            "toru_http_reply_budget_refused_total {}",
            http.reply_refused
        );
        help(
            &mut o,
            "toru_http_requests_total",
            "counter",
            "HTTP requests by route class and status.",
        );
        for ((class, status), n) in &self.requests {
            let _ = writeln!(
                o,
                "toru_http_requests_total{{class=\"{class}\",status=\"{status}\"}} {n}"
            );
        }
        help(
            &mut o,
            "toru_http_request_duration_seconds",
            "histogram",
            "HTTP request latency by route class.",
        );
        for (class, h) in &self.latency {
            h.write(
                &mut o,
                "toru_http_request_duration_seconds",
                &format!("class=\"{class}\""),
            );
        }
        help(
            &mut o,
            "toru_plugin_requests_total",
            "counter",
            "Requests forwarded to plugins by status.",
        );
        for ((plugin, status), n) in &self.plugin_requests {
            let _ = writeln!(
                o,
                "toru_plugin_requests_total{{plugin=\"{}\",status=\"{status}\"}} {n}",
                esc(plugin)
            );
        }
        help(
            &mut o,
            "toru_plugin_request_duration_seconds",
            "histogram",
            "Latency of requests forwarded to plugins.",
        );
        for (plugin, h) in &self.plugin_latency {
            h.write(
                &mut o,
                "toru_plugin_request_duration_seconds",
                &format!("plugin=\"{}\"", esc(plugin)),
            );
        }
        o
    }
}

/// One metric family with a `plugin` label: its HELP/TYPE lines, then one sample per plugin.
fn per_plugin(
    o: &mut String,
    plugins: &[crate::supervisor::PluginView],
    name: &str,
    kind: &str,
    text: &str,
    value: impl Fn(&crate::supervisor::PluginView) -> u64,
) {
    help(o, name, kind, text);
    for p in plugins {
        let _ = writeln!(o, "{name}{{plugin=\"{}\"}} {}", esc(&p.id), value(p));
    }
}

fn help(o: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(o, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// Escape a label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(2));
        h.observe(Duration::from_secs(2));
        let mut o = String::new();
        h.write(&mut o, "x", "a=\"b\"");
        assert!(o.contains("x_bucket{a=\"b\",le=\"0.001\"} 0"), "{o}");
        assert!(o.contains("x_bucket{a=\"b\",le=\"0.005\"} 1"), "{o}");
        assert!(o.contains("x_bucket{a=\"b\",le=\"5\"} 2"), "{o}");
        assert!(o.contains("x_bucket{a=\"b\",le=\"+Inf\"} 2"), "{o}");
        assert!(o.contains("x_count{a=\"b\"} 2"), "{o}");
    }

    #[test]
    fn plugin_entries_are_bounded() {
        let mut m = Metrics::default();
        for i in 0..(MAX_PLUGINS + 10) {
            m.plugin_request(&format!("p{i}"), 200, Duration::from_millis(1));
        }
        assert!(m.plugin_latency.len() <= MAX_PLUGINS + 1);
        assert_eq!(esc("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }

    #[test]
    fn rss_is_read() {
        let (rss, peak) = rss_bytes();
        assert!(rss.unwrap() > 0);
        assert!(peak.unwrap() >= rss.unwrap());
    }
}
