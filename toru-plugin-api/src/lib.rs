#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
//!
//! ## Layout
//! - [`protocol`]: metadata, envelope and messages of protocol 1.0 and 1.1; no I/O.
//! - [`codec`]: the length-prefixed frame codec, sync (`std::io`) and async (feature `tokio`).
//! - [`mux`] (feature `tokio`): the request multiplexer of a 1.1 connection (pending table, request
//!   ids, writer queue, in-flight limits), one implementation for both ends.
//! - [`sdk`] (feature `sdk`, default): the [`ToruPlugin`] trait, [`PluginContext`] and the runner,
//!   built on [`mux`].
//!
//! The host uses `protocol`, `codec` and `mux` only (`default-features = false, features =
//! ["tokio"]`); the SDK never depends on the host, and the host never on the SDK runner.

pub use serde_json;

pub mod codec;
#[cfg(feature = "tokio")]
pub mod mux;
pub mod protocol;
#[cfg(feature = "sdk")]
pub mod sdk;

pub use protocol::{
    ErrorCode, HttpRequest, HttpResponse, KvRequest, License, LogLevel, MqttDelivery,
    PROTOCOL_VERSION, PluginMetadata,
};
#[cfg(feature = "sdk")]
pub use sdk::{
    KvClient, KvError, MqttClient, MqttError, PluginContext, PluginError, RunError, ToruPlugin,
    run, serve,
};
