//! What the bridge publishes (pure): Home Assistant's device discovery payload, the host's and each
//! plugin's state, and the update entity's versions, as JSON built from plain snapshots. No I/O;
//! the glue (`bridge`) decides when. The topics and fields are documented in docs/MQTT.md: a field
//! renamed here must be renamed there.
//!
//! The discovery payload is Home Assistant's *device* discovery (one retained message per device,
//! `dev` + `o` + `cmps`, with the availability topic shared by every component); its keys use Home
//! Assistant's documented abbreviations (`stat_t`, `cmd_t`, `val_tpl`, `uniq_id`, …).

use serde_json::{Map, Value, json};

use super::topics::Topics;
use crate::supervisor::PluginView;

/// The host's facts for `<topic_prefix>/host/state`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostFacts {
    /// Toru's version.
    pub version: String,
    /// Seconds since the host started.
    pub uptime_secs: u64,
    /// Plugins found.
    pub plugins_total: usize,
    /// Plugins ready.
    pub plugins_ready: usize,
    /// Plugins enabled.
    pub plugins_enabled: usize,
    /// The store's state (`ok`, `degraded`).
    pub store: String,
}

/// `<topic_prefix>/host/state`.
pub(crate) fn host_state(h: &HostFacts) -> Value {
    json!({
        "version": h.version,
        "uptime_secs": h.uptime_secs,
        "plugins": {
            "total": h.plugins_total,
            "ready": h.plugins_ready,
            "enabled": h.plugins_enabled,
        },
        "store": h.store,
    })
}

/// `<topic_prefix>/plugins/<id>/state`.
pub(crate) fn plugin_state(p: &PluginView) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "version": p.version,
        "state": p.state,
        "enabled": p.enabled,
        "restarts": p.restarts,
        "consecutive_failures": p.consecutive_failures,
        "auto_disabled": p.auto_disabled,
        "ready_since": p.ready_since,
    })
}

/// `<topic_prefix>/plugins/<id>/update`: the host knows no newer version than the installed one
/// (packages are uploaded, not fetched), so `latest_version` is the installed version.
pub(crate) fn plugin_update(p: &PluginView) -> Value {
    json!({
        "installed_version": p.version,
        "latest_version": p.version,
        "title": p.name,
    })
}

/// What the discovery payload needs of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PluginEntry {
    /// The plugin id.
    pub id: String,
    /// Its name.
    pub name: String,
}

/// `<discovery_prefix>/device/<node_id>/config`: one device for this host with its entities
/// (version, uptime, plugin counts, store state) and, per plugin, a state sensor, a restart count
/// sensor and an update entity; with `commands`, also a switch (enabled) and a restart button.
pub(crate) fn device_config(
    t: &Topics,
    version: &str,
    plugins: &[PluginEntry],
    commands: bool,
) -> Value {
    let node = t.node_id();
    let host = t.host_state();
    let mut cmps = Map::new();
    let mut add = |key: String, v: Value| {
        let mut v = v;
        if let Some(o) = v.as_object_mut() {
            o.insert("uniq_id".into(), json!(format!("{node}_{key}")));
        }
        cmps.insert(key, v);
    };
    add(
        "version".into(),
        json!({"p": "sensor", "name": "Version", "stat_t": host,
               "val_tpl": "{{ value_json.version }}", "ent_cat": "diagnostic"}),
    );
    add(
        "uptime".into(),
        json!({"p": "sensor", "name": "Uptime", "stat_t": host,
               "val_tpl": "{{ value_json.uptime_secs }}", "unit_of_meas": "s",
               "dev_cla": "duration", "stat_cla": "measurement", "ent_cat": "diagnostic"}),
    );
    for (key, name) in [
        ("total", "Plugins found"),
        ("ready", "Plugins ready"),
        ("enabled", "Plugins enabled"),
    ] {
        add(
            format!("plugins_{key}"),
            json!({"p": "sensor", "name": name, "stat_t": host,
                   "val_tpl": format!("{{{{ value_json.plugins.{key} }}}}"),
                   "stat_cla": "measurement"}),
        );
    }
    add(
        "store".into(),
        json!({"p": "sensor", "name": "Store", "stat_t": host,
               "val_tpl": "{{ value_json.store }}", "ent_cat": "diagnostic"}),
    );
    for p in plugins {
        let (id, name) = (&p.id, &p.name);
        let state = t.plugin_state(id);
        // Unique ids and component keys use '_' for the id's '-'.
        let k = id.replace('-', "_");
        add(
            format!("plugin_{k}_state"),
            json!({"p": "sensor", "name": format!("{name} state"), "stat_t": state,
                   "val_tpl": "{{ value_json.state }}"}),
        );
        add(
            format!("plugin_{k}_restarts"),
            json!({"p": "sensor", "name": format!("{name} restarts"), "stat_t": state,
                   "val_tpl": "{{ value_json.restarts }}", "stat_cla": "total_increasing",
                   "ent_cat": "diagnostic"}),
        );
        add(
            format!("plugin_{k}_update"),
            json!({"p": "update", "name": format!("{name} version"),
                   "stat_t": t.plugin_update(id), "ent_cat": "diagnostic"}),
        );
        if commands {
            add(
                format!("plugin_{k}_enabled"),
                json!({"p": "switch", "name": format!("{name} enabled"), "stat_t": state,
                       "val_tpl": "{{ 'ON' if value_json.enabled else 'OFF' }}",
                       "cmd_t": t.plugin_set(id), "pl_on": "ON", "pl_off": "OFF",
                       "stat_on": "ON", "stat_off": "OFF"}),
            );
            add(
                format!("plugin_{k}_restart"),
                json!({"p": "button", "name": format!("{name} restart"),
                       "cmd_t": t.plugin_restart(id), "pl_prs": "PRESS",
                       "dev_cla": "restart"}),
            );
        }
    }
    json!({
        "dev": {
            "ids": [node],
            "name": format!("Toru {}", t.prefix()),
            "mf": "Toru",
            "mdl": "Toru host",
            "sw": version,
        },
        "o": {"name": "toru", "sw": version},
        "avty_t": t.availability(),
        "pl_avail": "online",
        "pl_not_avail": "offline",
        "qos": 1,
        "cmps": cmps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<PluginEntry> {
        vec![PluginEntry {
            id: "hello-rust".into(),
            name: "Hello".into(),
        }]
    }

    #[test]
    fn the_device_payload_has_the_host_entities_and_each_plugins() {
        let t = Topics::new(None, "homeassistant", "abc");
        let c = device_config(&t, "0.1.0", &entries(), false);
        assert_eq!(c["dev"]["ids"][0], "toru_abc");
        assert_eq!(c["o"]["name"], "toru");
        assert_eq!(c["avty_t"], "toru/abc/availability");
        let cmps = c["cmps"].as_object().unwrap();
        for key in [
            "version",
            "uptime",
            "plugins_total",
            "plugins_ready",
            "plugins_enabled",
            "store",
            "plugin_hello_rust_state",
            "plugin_hello_rust_restarts",
            "plugin_hello_rust_update",
        ] {
            let cmp = &cmps[key];
            assert!(cmp["p"].is_string(), "{key}");
            assert_eq!(cmp["uniq_id"], format!("toru_abc_{key}"));
        }
        assert_eq!(
            cmps["plugin_hello_rust_state"]["stat_t"],
            "toru/abc/plugins/hello-rust/state"
        );
        assert_eq!(
            cmps["plugins_ready"]["val_tpl"],
            "{{ value_json.plugins.ready }}"
        );
        assert!(
            !cmps.contains_key("plugin_hello_rust_enabled"),
            "no controls without commands"
        );
        let c = device_config(&t, "0.1.0", &entries(), true);
        assert_eq!(c["cmps"]["plugin_hello_rust_enabled"]["p"], "switch");
        assert_eq!(
            c["cmps"]["plugin_hello_rust_enabled"]["cmd_t"],
            "toru/abc/plugins/hello-rust/set"
        );
        assert_eq!(c["cmps"]["plugin_hello_rust_restart"]["p"], "button");
    }

    #[test]
    fn the_host_state_carries_the_counts() {
        let h = HostFacts {
            version: "0.1.0".into(),
            uptime_secs: 5,
            plugins_total: 3,
            plugins_ready: 2,
            plugins_enabled: 3,
            store: "ok".into(),
        };
        let v = host_state(&h);
        assert_eq!(v["plugins"]["ready"], 2);
        assert_eq!(v["store"], "ok");
    }
}
