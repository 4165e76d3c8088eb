//! The bridge's glue: two tasks on the host's runtime. The *link* task owns the MQTT client's
//! event loop and only polls it — never cancelled, so a connection being set up is never torn down
//! by other work — reconnecting with a capped backoff and reporting the connection state. The
//! *bridge* task follows the supervisor's state changes and the store's live event feed, turns them
//! into messages in the [`Outbox`] (coalesced, bounded, drops counted) and hands them to the client
//! with `try_publish` only while connected and only while the client's bounded queue has room; on
//! every new connection it republishes the discovery payload, availability and all state, and
//! subscribes to the command topics when commands are on. Commands run on tasks of their own,
//! a few at a time. Nothing here awaits the broker on behalf of anyone else: the broker being
//! down, slow or refusing shows in [`Status`], never in the host's other work.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rumqttc::{
    AsyncClient, ClientError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
};
use serde::Serialize;
use tokio::sync::{Notify, broadcast, mpsc, watch};

use toru_plugin_api::protocol::{
    ErrorCode, ErrorReply, MAX_MQTT_PAYLOAD_LEN, MqttDelivery, MqttRequest,
};

use super::outbox::{Message, Outbox};
use super::payloads::{self, HostFacts, PluginEntry};
use super::topics::{Command, Topics, matches};
use crate::config::MqttConfig;
use crate::store::Store;
use crate::supervisor::mqtt_port::{PluginMqtt, bridge_off};
use crate::supervisor::{PluginState, Supervisor};

/// The host's version, as `crate::app::VERSION` (the same `CARGO_PKG_VERSION`; named here so the
/// bridge does not import the layer above it).
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The first wait before reconnecting; it doubles after each failure up to [`MAX_RETRY`].
pub(crate) const MIN_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between connection attempts.
pub(crate) const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long one connection attempt (TCP, TLS, CONNACK) may take.
const CONNECT_TIMEOUT_SECS: u64 = 10;
/// MQTT keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Requests the client's queue holds (the bridge stops handing over messages when it is full).
const CLIENT_QUEUE: usize = 64;
/// Incoming messages (commands) waiting for the bridge task; more are dropped and counted.
const INCOMING_QUEUE: usize = 64;
/// Commands running at once; more are dropped and counted.
const MAX_COMMANDS_IN_FLIGHT: usize = 4;
/// How often the host's state (uptime) is republished without another change.
const HOST_STATE_PERIOD: Duration = Duration::from_secs(60);
/// Largest MQTT packet accepted or sent.
const MAX_PACKET_BYTES: usize = 256 * 1024;
/// How long a stop waits for the offline message and the disconnect to go out.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Topic filters one plugin may hold.
pub(crate) const MAX_FILTERS_PER_PLUGIN: usize = 16;
/// While the bridge cannot be set up (an unreadable CA or password file), how often it tries.
const SETUP_RETRY: Duration = Duration::from_secs(30);

/// The bridge's connection state, as `/api/system`, `/metrics` and the UI show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ConnState {
    /// No `[mqtt] url`: the bridge is off.
    Disabled,
    /// Connecting (or waiting to retry).
    Connecting,
    /// Connected to the broker.
    Connected,
    /// The last attempt or connection failed (`last_error` says why); retrying.
    Disconnected,
}

/// What the bridge reports.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Status {
    /// See [`ConnState`].
    pub state: ConnState,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub broker: Option<String>,
    /// The client id in use.
    pub client_id: Option<String>,
    /// `<topic_prefix>` in force.
    pub topic_prefix: Option<String>,
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: Option<String>,
    /// Whether commands from the broker are obeyed.
    pub commands: bool,
    /// Why the last attempt or connection failed.
    pub last_error: Option<String>,
    /// When the current connection was made.
    pub connected_since: Option<DateTime<Utc>>,
    /// Connections made since the start.
    pub connects: u64,
    /// Messages written to the broker since the start.
    pub published: u64,
    /// Messages dropped (queues full) since the start.
    pub dropped: u64,
    /// Commands obeyed since the start.
    pub commands_done: u64,
}

impl Status {
    fn disabled() -> Status {
        Status {
            state: ConnState::Disabled,
            broker: None,
            client_id: None,
            topic_prefix: None,
            discovery_prefix: None,
            commands: false,
            last_error: None,
            connected_since: None,
            connects: 0,
            published: 0,
            dropped: 0,
            commands_done: 0,
        }
    }
}

/// Why the bridge could not be set up (it retries every [`SETUP_RETRY`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SetupError {
    /// `password_file` cannot be read.
    #[error("cannot read the MQTT password file {path}")]
    PasswordFile {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `ca_file` cannot be read or holds no usable certificate.
    #[cfg(feature = "mqtt-tls")]
    #[error("cannot use the MQTT CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// No `ca_file` and no system CA certificates.
    #[cfg(feature = "mqtt-tls")]
    #[error("no CA certificates to check the broker with: set [mqtt] ca_file")]
    NoRoots,
    /// The TLS configuration was refused.
    #[cfg(feature = "mqtt-tls")]
    #[error("TLS setup failed")]
    Tls(#[source] rustls::Error),
}

/// Handle to the bridge (cheap to clone; lives on the runtime thread).
#[derive(Debug, Clone)]
pub(crate) struct Bridge {
    inner: Rc<Inner>,
}

#[derive(Debug)]
struct Inner {
    status: RefCell<Status>,
    /// Messages dropped outside the outbox (incoming queue full, too many commands at once,
    /// deliveries a plugin could not take).
    dropped_elsewhere: Cell<u64>,
    /// The topics (`None` while the bridge is off).
    topics: Option<Topics>,
    /// What waits for the client (the bridge task and plugins' publishes fill it).
    outbox: RefCell<Outbox>,
    /// Wakes the bridge task: a plugin queued a message or a subscription.
    wake: Notify,
    /// Each plugin's topic filters (absolute), kept for the host's life and subscribed again on
    /// every connection.
    subscriptions: RefCell<std::collections::BTreeMap<String, BTreeSet<String>>>,
    /// Filters not yet subscribed on this connection.
    unsent_filters: RefCell<Vec<String>>,
    stop: watch::Sender<bool>,
    tasks: RefCell<Vec<tokio::task::JoinHandle<()>>>,
}

/// What the two tasks share.
struct Shared {
    bridge: Rc<Inner>,
    /// Bumped on every new connection (the bridge task republishes).
    connected: watch::Sender<u64>,
    /// Notified when the client took a request from its queue (room to hand over more).
    room: Notify,
    /// Incoming messages for the bridge task.
    incoming: mpsc::Sender<rumqttc::Publish>,
    /// Set once the bridge task asked for the disconnect (the link task ends on it).
    stopping: Cell<bool>,
}

impl Bridge {
    /// A bridge that is off (`[mqtt]` has no url).
    pub(crate) fn disabled() -> Bridge {
        Bridge::with_topics(None)
    }

    fn with_topics(topics: Option<Topics>) -> Bridge {
        Bridge {
            inner: Rc::new(Inner {
                status: RefCell::new(Status::disabled()),
                dropped_elsewhere: Cell::new(0),
                topics,
                outbox: RefCell::new(Outbox::new()),
                wake: Notify::new(),
                subscriptions: RefCell::new(std::collections::BTreeMap::new()),
                unsent_filters: RefCell::new(Vec::new()),
                stop: watch::Sender::new(false),
                tasks: RefCell::new(Vec::new()),
            }),
        }
    }

    /// Start the bridge `config` describes on the current `LocalSet` (off without a url). Returns
    /// at once; connecting happens on the bridge's own tasks.
    pub(crate) fn start(
        config: &MqttConfig,
        store: Store,
        supervisor: Supervisor,
        started: Instant,
    ) -> Bridge {
        let Some(broker) = config.broker.clone() else {
            return Bridge::disabled();
        };
        let instance = store.instance_id();
        let topics = Topics::new(
            config.topic_prefix.as_deref(),
            &config.discovery_prefix,
            &instance,
        );
        let bridge = Bridge::with_topics(Some(topics.clone()));
        let client_id = config.client_id.clone().unwrap_or(instance);
        {
            let mut s = bridge.inner.status.borrow_mut();
            s.state = ConnState::Connecting;
            let scheme = if broker.tls { "mqtts" } else { "mqtt" };
            let host = if broker.host.contains(':') {
                format!("[{}]", broker.host)
            } else {
                broker.host.clone()
            };
            s.broker = Some(format!("{scheme}://{host}:{}", broker.port));
            s.client_id = Some(client_id.clone());
            s.topic_prefix = Some(topics.prefix().to_string());
            s.discovery_prefix = Some(config.discovery_prefix.clone());
            s.commands = config.commands;
        }
        let task = tokio::task::spawn_local(run(
            config.clone(),
            client_id,
            topics,
            store,
            supervisor,
            started,
            bridge.inner.clone(),
        ));
        bridge.inner.tasks.borrow_mut().push(task);
        bridge
    }

    /// The bridge's state and counters.
    pub(crate) fn status(&self) -> Status {
        self.inner.status.borrow().clone()
    }

    /// Publish `offline`, disconnect and end the bridge's tasks (at most [`STOP_GRACE`]).
    pub(crate) async fn stop(&self) {
        self.inner.stop.send_replace(true);
        let tasks: Vec<_> = self.inner.tasks.borrow_mut().drain(..).collect();
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(STOP_GRACE, t).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// The MQTT options for `config`.
fn options(
    config: &MqttConfig,
    client_id: &str,
    topics: &Topics,
) -> Result<MqttOptions, SetupError> {
    let broker = config
        .broker
        .as_ref()
        .expect("the bridge runs only with a broker");
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    o.set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_last_will(LastWill::new(
            topics.availability(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(user) = &config.username {
        let password = match &config.password_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|source| SetupError::PasswordFile {
                    path: path.clone(),
                    source,
                })?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    #[cfg(feature = "mqtt-tls")]
    if broker.tls {
        let tls = tls_config(config.ca_file.as_deref())?;
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls)),
        ));
    }
    Ok(o)
}

/// A rustls client configuration (ring provider) trusting `ca_file`'s certificates, or the
/// system's without one.
#[cfg(feature = "mqtt-tls")]
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, SetupError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let err = |reason: String| SetupError::CaFile {
                path: path.to_path_buf(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?;
            for cert in certs {
                let cert = cert.map_err(|e| err(e.to_string()))?;
                roots.add(cert).map_err(|e| err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(err("no certificate in it".into()));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(SetupError::NoRoots);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SetupError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The bridge task: set up (retrying while the files it needs are unusable), start the link task,
/// then follow the host and feed the client until stopped.
async fn run(
    config: MqttConfig,
    client_id: String,
    topics: Topics,
    store: Store,
    supervisor: Supervisor,
    started: Instant,
    inner: Rc<Inner>,
) {
    let mut stop = inner.stop.subscribe();
    let opts = loop {
        match options(&config, &client_id, &topics) {
            Ok(o) => break o,
            Err(e) => {
                let message = crate::error_chain::error_chain(&e);
                log::error!("mqtt: {message}; trying again in {SETUP_RETRY:?}");
                {
                    let mut s = inner.status.borrow_mut();
                    s.state = ConnState::Disconnected;
                    s.last_error = Some(message);
                }
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(SETUP_RETRY) => {}
                }
            }
        }
    };
    let (client, mut eventloop) = AsyncClient::new(opts, CLIENT_QUEUE);
    eventloop
        .network_options
        .set_connection_timeout(CONNECT_TIMEOUT_SECS);
    let (incoming_tx, mut incoming_rx) = mpsc::channel(INCOMING_QUEUE);
    let shared = Rc::new(Shared {
        bridge: inner.clone(),
        connected: watch::Sender::new(0),
        room: Notify::new(),
        incoming: incoming_tx,
        stopping: Cell::new(false),
    });
    let mut connected = shared.connected.subscribe();
    let link = tokio::task::spawn_local(drive(eventloop, shared.clone()));

    let mut feed = store.subscribe_events();
    let changes = supervisor.changes();
    // The retained payload last handed to the client, per topic (cleared on a new connection).
    let mut sent: HashMap<String, Vec<u8>> = HashMap::new();
    let mut plugins_published: BTreeSet<String> = BTreeSet::new();
    let mut host_timer = tokio::time::interval(HOST_STATE_PERIOD);
    host_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut uptime_secs = 0;
    let in_flight = Rc::new(Cell::new(0usize));
    let mut is_connected = false;
    let mut feed_open = true;
    let mut dirty = true;
    loop {
        let notified = changes.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let wake = inner.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let outbox_empty = {
            let mut outbox = inner.outbox.borrow_mut();
            if dirty {
                dirty = false;
                let s = Snapshot {
                    topics: &topics,
                    supervisor: &supervisor,
                    store: &store,
                    commands: config.commands,
                    uptime_secs,
                };
                s.queue(&mut outbox, &mut sent, &mut plugins_published);
            }
            if is_connected {
                subscribe_new_filters(&client, &inner);
                hand_over(&client, &mut outbox);
            }
            inner.status.borrow_mut().dropped = outbox.dropped() + inner.dropped_elsewhere.get();
            outbox.is_empty()
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            () = &mut notified => dirty = true,
            changed = connected.changed() => {
                if changed.is_err() {
                    break;
                }
                is_connected = true;
                sent.clear();
                plugins_published.clear();
                uptime_secs = started.elapsed().as_secs();
                dirty = true;
                inner
                    .outbox
                    .borrow_mut()
                    .put_retained(topics.availability(), b"online".to_vec());
                // A new session: every plugin's filters are subscribed again.
                let all: Vec<String> = inner
                    .subscriptions
                    .borrow()
                    .values()
                    .flatten()
                    .cloned()
                    .collect();
                *inner.unsent_filters.borrow_mut() = all;
                if config.commands {
                    for f in topics.command_filters() {
                        if client.try_subscribe(f, QoS::AtLeastOnce).is_err() {
                            log::warn!("mqtt: cannot subscribe to the command topics (client queue full); they follow the next connection");
                        }
                    }
                }
            }
            ev = feed.recv(), if feed_open => match ev {
                Ok(event) => {
                    let payload = serde_json::to_vec(&event).expect("an Event always serialises");
                    inner.outbox.borrow_mut().push_event(&event.plugin, Message {
                        topic: topics.events(),
                        payload,
                        retain: false,
                        qos: 1,
                    });
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    inner.outbox.borrow_mut().count_dropped(n);
                }
                Err(broadcast::error::RecvError::Closed) => feed_open = false,
            },
            Some(p) = incoming_rx.recv() => {
                handle_incoming(&p, &topics, &config, &supervisor, &inner, &in_flight);
            }
            _ = host_timer.tick() => {
                uptime_secs = started.elapsed().as_secs();
                dirty = true;
            }
            () = shared.room.notified(), if is_connected && !outbox_empty => {}
            () = &mut wake => {}
        }
        if inner.status.borrow().state != ConnState::Connected {
            is_connected = false;
        }
    }
    // A clean stop: the plugins' last states (they stopped just before), then `offline`
    // (retained), then disconnect; the link task ends on the disconnect.
    shared.stopping.set(true);
    if inner.status.borrow().state == ConnState::Connected {
        {
            let mut outbox = inner.outbox.borrow_mut();
            let s = Snapshot {
                topics: &topics,
                supervisor: &supervisor,
                store: &store,
                commands: config.commands,
                uptime_secs: started.elapsed().as_secs(),
            };
            s.queue(&mut outbox, &mut sent, &mut plugins_published);
            hand_over(&client, &mut outbox);
        }
        let _ = client.try_publish(topics.availability(), QoS::AtLeastOnce, true, "offline");
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(STOP_GRACE, link).await;
    } else {
        link.abort();
    }
    let mut s = inner.status.borrow_mut();
    s.state = ConnState::Disconnected;
    s.connected_since = None;
}

/// Subscribe to the filters plugins asked for since the last call, while the client's queue has
/// room (the rest wait for the next turn).
fn subscribe_new_filters(client: &AsyncClient, inner: &Inner) {
    let mut unsent = inner.unsent_filters.borrow_mut();
    while let Some(f) = unsent.pop() {
        if client.try_subscribe(f.clone(), QoS::AtLeastOnce).is_err() {
            unsent.push(f);
            return;
        }
    }
}

/// Hand messages to the client while its queue has room.
fn hand_over(client: &AsyncClient, outbox: &mut Outbox) {
    while let Some(popped) = outbox.pop() {
        let m = &popped.message;
        let qos = match m.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        match client.try_publish(m.topic.clone(), qos, m.retain, m.payload.clone()) {
            Ok(()) => {}
            Err(ClientError::TryRequest(_) | ClientError::Request(_)) => {
                outbox.unpop(popped);
                return;
            }
        }
    }
}

/// What the host looks like now, queued where it differs from what was last handed over.
struct Snapshot<'a> {
    topics: &'a Topics,
    supervisor: &'a Supervisor,
    store: &'a Store,
    commands: bool,
    uptime_secs: u64,
}

impl Snapshot<'_> {
    fn queue(
        &self,
        outbox: &mut Outbox,
        sent: &mut HashMap<String, Vec<u8>>,
        plugins_published: &mut BTreeSet<String>,
    ) {
        let t = self.topics;
        let plugins = self.supervisor.plugins();
        let mut put = |topic: String, payload: Vec<u8>| {
            if sent.get(&topic) != Some(&payload) {
                sent.insert(topic.clone(), payload.clone());
                outbox.put_retained(topic, payload);
            }
        };
        let entries: Vec<PluginEntry> = plugins
            .iter()
            .map(|p| PluginEntry {
                id: p.id.clone(),
                name: p.name.clone(),
            })
            .collect();
        let config = payloads::device_config(t, VERSION, &entries, self.commands);
        put(t.discovery_config(), to_json(&config));
        let health = self.store.health();
        let facts = HostFacts {
            version: VERSION.to_string(),
            uptime_secs: self.uptime_secs,
            plugins_total: plugins.len(),
            plugins_ready: plugins
                .iter()
                .filter(|p| p.state == PluginState::Ready)
                .count(),
            plugins_enabled: plugins.iter().filter(|p| p.enabled).count(),
            store: match health {
                crate::store::StoreHealth::Ok => "ok".to_string(),
                _ => "degraded".to_string(),
            },
        };
        put(t.host_state(), to_json(&payloads::host_state(&facts)));
        let mut now: BTreeSet<String> = BTreeSet::new();
        for p in &plugins {
            put(t.plugin_state(&p.id), to_json(&payloads::plugin_state(p)));
            put(t.plugin_update(&p.id), to_json(&payloads::plugin_update(p)));
            now.insert(p.id.clone());
        }
        // A plugin that is gone: its retained state is cleared (an empty retained message).
        for gone in plugins_published.difference(&now) {
            for topic in [t.plugin_state(gone), t.plugin_update(gone)] {
                sent.remove(&topic);
                outbox.put_retained(topic, Vec::new());
            }
        }
        *plugins_published = now;
    }
}

fn to_json(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value always serialises")
}

/// A message the broker delivered: for the plugins whose filters match it, and a command (when
/// commands are on); anything else is ignored.
fn handle_incoming(
    p: &rumqttc::Publish,
    topics: &Topics,
    config: &MqttConfig,
    supervisor: &Supervisor,
    inner: &Rc<Inner>,
    in_flight: &Rc<Cell<usize>>,
) {
    let mut for_plugins = false;
    for (id, filters) in inner.subscriptions.borrow().iter() {
        if !filters.iter().any(|f| matches(f, &p.topic)) {
            continue;
        }
        for_plugins = true;
        let relative = topics.plugin(id).relative(&p.topic).map(str::to_string);
        let payload = std::str::from_utf8(&p.payload).ok().map(str::to_string);
        let delivered = match (relative, payload) {
            (Some(topic), Some(payload)) => {
                supervisor.deliver_mqtt(id, MqttDelivery { topic, payload })
            }
            _ => false,
        };
        if !delivered {
            inner
                .dropped_elsewhere
                .set(inner.dropped_elsewhere.get() + 1);
            inner.status.borrow_mut().dropped += 1;
        }
    }
    if for_plugins || !config.commands {
        return;
    }
    let Some(cmd) = topics.parse_command(&p.topic, &p.payload) else {
        log::debug!("mqtt: ignoring a message on {}", p.topic);
        return;
    };
    // A retained command would be obeyed again on every reconnect: only live ones count.
    if p.retain {
        log::warn!("mqtt: ignoring a retained command on {}", p.topic);
        return;
    }
    if in_flight.get() >= MAX_COMMANDS_IN_FLIGHT {
        log::warn!("mqtt: too many commands at once; dropped {cmd:?}");
        inner
            .dropped_elsewhere
            .set(inner.dropped_elsewhere.get() + 1);
        inner.status.borrow_mut().dropped += 1;
        return;
    }
    in_flight.set(in_flight.get() + 1);
    let guard = InFlight(in_flight.clone());
    let (supervisor, inner) = (supervisor.clone(), inner.clone());
    tokio::task::spawn_local(async move {
        let _guard = guard;
        log::info!("mqtt: command from the broker: {cmd:?}");
        let result = match &cmd {
            Command::Enable(id) => supervisor.enable(id).await,
            Command::Disable(id) => supervisor.disable(id).await,
            Command::Restart(id) => supervisor.restart(id).await,
        };
        match result {
            Ok(_) => inner.status.borrow_mut().commands_done += 1,
            Err(e) => log::warn!("mqtt: command {cmd:?} failed: {e}"),
        }
    });
}

/// Releases a command's place when its task ends, however it ends.
struct InFlight(Rc<Cell<usize>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// The link task: poll the event loop for ever, reporting the connection state; after a failure,
/// wait (doubling from [`MIN_RETRY`] to [`MAX_RETRY`]) and poll again, which reconnects.
async fn drive(mut eventloop: EventLoop, shared: Rc<Shared>) {
    let mut retry = MIN_RETRY;
    let mut last_logged: Option<String> = None;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                retry = MIN_RETRY;
                last_logged = None;
                {
                    let mut s = shared.bridge.status.borrow_mut();
                    s.state = ConnState::Connected;
                    s.last_error = None;
                    s.connected_since = Some(crate::clock::now());
                    s.connects += 1;
                    log::info!(
                        "mqtt: connected to {}",
                        s.broker.as_deref().unwrap_or("the broker")
                    );
                }
                shared.connected.send_modify(|n| *n += 1);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if shared.incoming.try_send(p).is_err() {
                    let b = &shared.bridge;
                    b.dropped_elsewhere.set(b.dropped_elsewhere.get() + 1);
                    b.status.borrow_mut().dropped += 1;
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) if shared.stopping.get() => return,
            Ok(Event::Outgoing(out)) => {
                if let Outgoing::Publish(_) = out {
                    shared.bridge.status.borrow_mut().published += 1;
                }
                shared.room.notify_one();
            }
            Ok(Event::Incoming(_)) => {}
            Err(e) => {
                if shared.stopping.get() {
                    return;
                }
                let message = e.to_string();
                if last_logged.as_deref() != Some(message.as_str()) {
                    log::warn!("mqtt: {message}; retrying (backoff up to {MAX_RETRY:?})");
                    last_logged = Some(message.clone());
                }
                {
                    let mut s = shared.bridge.status.borrow_mut();
                    s.state = ConnState::Disconnected;
                    s.last_error = Some(message);
                    s.connected_since = None;
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
                shared.bridge.status.borrow_mut().state = ConnState::Connecting;
            }
        }
    }
}

impl PluginMqtt for Bridge {
    fn request(&self, plugin: &str, req: MqttRequest) -> Result<(), ErrorReply> {
        let Some(topics) = &self.inner.topics else {
            return Err(bridge_off());
        };
        let mine = topics.plugin(plugin);
        let bad =
            |e: super::topics::TopicError| ErrorReply::new(ErrorCode::BadRequest, e.to_string());
        match req {
            MqttRequest::Publish {
                topic,
                payload,
                retain,
                qos,
            } => {
                if payload.len() > MAX_MQTT_PAYLOAD_LEN {
                    return Err(ErrorReply::new(
                        ErrorCode::TooLarge,
                        format!("an MQTT payload may be at most {MAX_MQTT_PAYLOAD_LEN} bytes"),
                    ));
                }
                let qos = match qos {
                    None | Some(1) => 1,
                    Some(0) => 0,
                    Some(q) => {
                        return Err(ErrorReply::new(
                            ErrorCode::BadRequest,
                            format!("qos {q}: the host publishes with QoS 0 or 1"),
                        ));
                    }
                };
                let topic = mine.publish_topic(&topic).map_err(bad)?;
                let queued = self.inner.outbox.borrow_mut().push_plugin_message(
                    plugin,
                    Message {
                        topic,
                        payload: payload.into_bytes(),
                        retain,
                        qos,
                    },
                );
                if !queued {
                    return Err(ErrorReply::new(
                        ErrorCode::Busy,
                        "too many messages wait for the broker: this one was dropped",
                    ));
                }
                self.inner.wake.notify_one();
                Ok(())
            }
            MqttRequest::Subscribe { filter } => {
                let filter = mine.subscribe_filter(&filter).map_err(bad)?;
                let mut subs = self.inner.subscriptions.borrow_mut();
                let mine = subs.entry(plugin.to_string()).or_default();
                if mine.contains(&filter) {
                    return Ok(());
                }
                if mine.len() >= MAX_FILTERS_PER_PLUGIN {
                    return Err(ErrorReply::new(
                        ErrorCode::TooLarge,
                        format!("a plugin may hold at most {MAX_FILTERS_PER_PLUGIN} topic filters"),
                    ));
                }
                mine.insert(filter.clone());
                self.inner.unsent_filters.borrow_mut().push(filter);
                self.inner.wake.notify_one();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, payload: &str, qos: Option<u8>) -> MqttRequest {
        MqttRequest::Publish {
            topic: topic.into(),
            payload: payload.into(),
            retain: false,
            qos,
        }
    }

    #[test]
    fn without_a_bridge_every_plugin_request_is_unavailable() {
        let b = Bridge::disabled();
        let e = b.request("p", publish("t", "x", None)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.message.contains("[mqtt] url"), "{}", e.message);
        let sub = MqttRequest::Subscribe { filter: "a".into() };
        assert_eq!(
            b.request("p", sub).unwrap_err().code,
            ErrorCode::Unavailable
        );
    }

    #[test]
    fn plugin_requests_are_checked_queued_and_bounded() {
        let b = Bridge::with_topics(Some(Topics::new(Some("site"), "homeassistant", "i")));
        b.request("p", publish("temp", "21", Some(0))).unwrap();
        let queued = b.inner.outbox.borrow_mut().pop().unwrap().message;
        assert_eq!(queued.topic, "site/plugins/p/temp");
        assert_eq!((queued.qos, queued.retain), (0, false));
        let code = |r: MqttRequest| b.request("p", r).unwrap_err().code;
        assert_eq!(code(publish("../q/temp", "x", None)), ErrorCode::BadRequest);
        assert_eq!(code(publish("state", "x", None)), ErrorCode::BadRequest);
        assert_eq!(code(publish("t", "x", Some(2))), ErrorCode::BadRequest);
        let big = "x".repeat(MAX_MQTT_PAYLOAD_LEN + 1);
        assert_eq!(code(publish("t", &big, None)), ErrorCode::TooLarge);
        // The outbox's share of one plugin, then `busy`.
        let mut busy = 0;
        for _ in 0..super::super::outbox::MAX_QUEUED_MESSAGES_PER_PLUGIN + 3 {
            if b.request("p", publish("t", "x", None)).is_err() {
                busy += 1;
            }
        }
        assert_eq!(busy, 3);
        // Filters: checked, registered once, at most MAX_FILTERS_PER_PLUGIN.
        let sub = |f: &str| MqttRequest::Subscribe { filter: f.into() };
        assert_eq!(code(sub("#")), ErrorCode::BadRequest);
        b.request("p", sub("cmd/#")).unwrap();
        b.request("p", sub("cmd/#")).unwrap();
        assert_eq!(b.inner.unsent_filters.borrow().len(), 1);
        for i in 1..MAX_FILTERS_PER_PLUGIN {
            b.request("p", sub(&format!("f{i}"))).unwrap();
        }
        assert_eq!(code(sub("one/more")), ErrorCode::TooLarge);
        assert_eq!(
            b.inner.subscriptions.borrow()["p"]
                .first()
                .map(String::as_str),
            Some("site/plugins/p/cmd/#")
        );
    }
}
