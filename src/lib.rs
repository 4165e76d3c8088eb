//! The Toru host.
