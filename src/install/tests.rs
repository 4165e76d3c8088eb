//! Unit tests of the pure parts; the transactions are tested against the real host in
//! `tests/packages.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::settings::Schema;

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

#[test]
fn settings_are_fitted_to_the_new_schema() {
    let schema = Schema::parse(&json!({
        "type": "object",
        "properties": {
            "greeting": {"type": "string", "default": "Hello"},
            "port": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5}
        }
    }))
    .unwrap();
    assert_eq!(
        fit_settings(&schema, None),
        json!({"greeting": "Hello", "port": 5})
    );
    // Kept, with the new field's default.
    assert_eq!(
        fit_settings(&schema, Some(&json!({"greeting": "Hi"}))),
        json!({"greeting": "Hi", "port": 5})
    );
    // A field the new version dropped (here a secret of the old one) goes; the rest stays.
    assert_eq!(
        fit_settings(
            &schema,
            Some(&json!({"greeting": "Hi", "password": "s3cret"}))
        ),
        json!({"greeting": "Hi", "port": 5})
    );
    // Out of the new range: that setting takes its default, the others stay.
    assert_eq!(
        fit_settings(&schema, Some(&json!({"greeting": "Hi", "port": 99}))),
        json!({"greeting": "Hi", "port": 5})
    );
}
