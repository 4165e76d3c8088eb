//! The integration tests' name for the shared test kit (`test-kit/`, crate `toru_test_kit`), which
//! starts the real `toru` binary for these tests and for `bench/` alike: temp dirs, real plugin
//! binaries, `READY=1` (with the bound address) through a notify socket the kit binds, the admin
//! CLI, stopping, plain HTTP/1.1. Kept as a module so every test file reaches it the same way.
#![allow(unused_imports)]

pub use toru_test_kit::*;
