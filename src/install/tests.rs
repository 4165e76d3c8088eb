//! Unit tests of the pure parts; the transactions are tested against the real host in
//! `tests/packages.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn version(v: &str) -> PackageVersion {
    PackageVersion {
        version: v.into(),
        installed_at: crate::clock::now(),
        key_id: None,
        entry: "x".into(),
        manifest: json!({}),
    }
}

#[test]
fn prune_keeps_the_active_version_and_the_newest_other() {
    let mut v = vec![version("3.0.0"), version("2.0.0"), version("1.0.0")];
    assert_eq!(prune(&mut v, "3.0.0"), vec!["1.0.0".to_string()]);
    let kept: Vec<&str> = v.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(kept, ["3.0.0", "2.0.0"]);
    // After a rollback the active one is not the newest install.
    let mut v = vec![version("3.0.0"), version("2.0.0"), version("1.0.0")];
    assert_eq!(prune(&mut v, "2.0.0"), vec!["1.0.0".to_string()]);
}
