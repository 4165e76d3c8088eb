//! The MQTT bridge (issue 15; docs/MQTT.md): with `[mqtt] url` set, the host keeps a connection to
//! a broker on its own runtime and publishes Home Assistant's device discovery payload, its
//! availability (a last will), its own and every plugin's state (retained, on change) and every
//! stored event; with `[mqtt] commands = true` it obeys enable/disable/restart commands. The only
//! module that names the MQTT client crate (`rumqttc`) and rustls.
//!
//! - [`topics`] (pure): every topic name, the command parser, the rule confining a plugin's own
//!   topics;
//! - [`payloads`] (pure): the discovery payload and the state JSON;
//! - [`outbox`] (pure): the coalescing, bounded queue between the host and the client;
//! - [`bridge`]: the glue — the tasks, the connection state the HTTP layer reports.
//!
//! It reads the supervisor (states, its change notifications, and commands) and the store (its
//! live event feed, its health and instance id); neither knows it exists. The broker being down,
//! slow or refusing is never the host's error: it shows as the bridge's state, and whatever does
//! not fit the bounded queues meanwhile is dropped and counted.

pub(crate) mod bridge;
pub(crate) mod outbox;
pub(crate) mod payloads;
pub(crate) mod topics;

pub(crate) use bridge::{Bridge, ConnState};
