//! Plugin packages, the format alone: what a `.toru` file is, how it is read safely, how it is
//! signed and how an author builds one. Pure and host-independent: no store, no supervisor, no
//! HTTP — the package service (install, update, rollback) and the REST handlers use it; the offline
//! author commands (`toru key generate`, `toru plugin pack`) are built on it (`pack_cmd`).
//!
//! ```text
//! NAME.toru          gzip( tar( manifest.toml, then the files the manifest names ) )
//! NAME.toru.minisig  minisign signature (Ed25519, prehashed) over the exact bytes of NAME.toru
//! ```
//!
//! - [`manifest`]: `manifest.toml` parsed and checked (identity by the host's metadata rules,
//!   semver, clean relative paths), the entry for a target triple, `min_host`, agreement with
//!   `--metadata`.
//! - [`archive`]: blocking, streaming extraction with limits: manifest first, only named files,
//!   no links/devices/traversal, a compression bomb stops at the cap.
//! - [`sign`]: minisign public keys, signature verification against trusted keys, key generation
//!   and signing.
//! - [`atomic`]: a file written whole or not at all (temporary file, fsync, rename).
//! - [`pack`]: a directory with a `manifest.toml` → a reproducible `.toru` (+ signature), after
//!   checking the files and the executable's `--metadata`.
//!
//! The format is specified for authors (with `tar` and `minisign` alone) in `docs/PACKAGES.md`.
//! Nothing here imports another module of the host except the leaves `sys` and `error_chain`.

pub(crate) mod archive;
pub(crate) mod atomic;
pub(crate) mod manifest;
pub(crate) mod pack;
pub(crate) mod sign;

#[cfg(test)]
mod interop_tests;
