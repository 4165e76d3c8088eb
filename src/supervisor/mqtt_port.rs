//! The port between a 1.1 plugin's `mqtt` requests and the MQTT bridge: the supervisor's side of
//! protocol messages it does not handle itself. The bridge (`crate::mqtt`) implements
//! [`PluginMqtt`] and `lib.rs` plugs it in with `Supervisor::set_mqtt` before any plugin starts;
//! the supervisor passes each plugin's requests through and delivers the bridge's messages back
//! (`Supervisor::deliver_mqtt`). Neither waits on the other: a request is answered at once
//! (queued or refused), a delivery is dropped when the plugin's queue is full.

use toru_plugin_api::protocol::{ErrorCode, ErrorReply, MqttRequest};

/// What a plugin's `mqtt` request is handed to.
pub(crate) trait PluginMqtt: std::fmt::Debug {
    /// Take plugin `plugin`'s request now, without waiting: `Ok` once published (queued for the
    /// broker) or subscribed (registered), else the `error` to answer with.
    fn request(&self, plugin: &str, req: MqttRequest) -> Result<(), ErrorReply>;
}

/// The answer to every `mqtt` request while the host has no bridge.
pub(crate) fn bridge_off() -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Unavailable,
        "the host's MQTT bridge is off ([mqtt] url is not set in the host's config)",
    )
}
