//! The author's commands end to end with the real binary: `toru key generate` and
//! `toru plugin pack` on the examples of `plugins/` (each has a `manifest.toml` that must agree
//! with what the plugin prints for `--metadata`), the refusal of a package whose manifest and
//! executable disagree, and the defaults (output name, unsigned warning). The packages are the
//! ones the install tests use, built by the test kit (`toru_test_kit::package`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::package::{Example, PackageDir, generate_key, pack_example};
use support::{Bins, TempDir};

fn tar_list(pkg: &std::path::Path) -> Vec<String> {
    let out = Command::new("tar").arg("tzf").arg(pkg).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `minisign -V` of `pkg` with `public`, when the tool is installed.
fn minisign_verifies(pkg: &std::path::Path, public: &std::path::Path) -> Option<bool> {
    let out = Command::new("minisign")
        .arg("-V")
        .arg("-p")
        .arg(public)
        .arg("-m")
        .arg(pkg)
        .output();
    match out {
        Ok(o) => Some(o.status.success()),
        Err(_) => {
            eprintln!("minisign is not installed: the signature is not checked with it here");
            None
        }
    }
}

#[test]
fn the_examples_pack_signed_with_a_generated_key() {
    let bins = Bins::locate().unwrap();
    let t = TempDir::new("pk").unwrap();
    let (key, public) = generate_key(&bins, &t.0, "author").unwrap();
    let pub_text = std::fs::read_to_string(&public).unwrap();
    assert!(
        pub_text.starts_with("untrusted comment: minisign public key: "),
        "{pub_text}"
    );

    let rust = t.join("hello-rust.toru");
    pack_example(&bins, Example::HelloRust, &t.join("r"), Some(&key), &rust).unwrap();
    let listed = tar_list(&rust);
    assert_eq!(listed[0], "manifest.toml");
    assert!(
        listed.contains(&format!("bin/{}/hello-rust", support::package::HOST_TRIPLE)),
        "{listed:?}"
    );
    assert!(t.join("hello-rust.toru.minisig").exists());

    let python = t.join("hello-python.toru");
    pack_example(
        &bins,
        Example::HelloPython,
        &t.join("p"),
        Some(&key),
        &python,
    )
    .unwrap();
    assert_eq!(
        tar_list(&python),
        [
            "manifest.toml",
            "bundle.js",
            "hello-python.binary",
            "toru_plugin.py"
        ]
    );
    for pkg in [&rust, &python] {
        if let Some(ok) = minisign_verifies(pkg, &public) {
            assert!(ok, "minisign -V refused {}", pkg.display());
        }
    }
}

#[test]
fn a_manifest_that_disagrees_with_metadata_is_refused_naming_both_values() {
    let bins = Bins::locate().unwrap();
    let t = TempDir::new("pk").unwrap();
    let p = PackageDir::stress(&bins, &t.join("s"), "st", "0.2.0", "ok").unwrap();
    let manifest = p
        .manifest()
        .unwrap()
        .replace("version = \"0.2.0\"", "version = \"0.3.0\"");
    p.file("manifest.toml", manifest.as_bytes()).unwrap();
    let out = t.join("st.toru");
    let o = p.pack(&bins, None, &out).unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("manifest says version \"0.3.0\", --metadata prints \"0.2.0\""),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn pack_names_its_output_after_the_manifest_and_warns_when_unsigned() {
    let bins = Bins::locate().unwrap();
    let t = TempDir::new("pk").unwrap();
    let p = PackageDir::stress(&bins, &t.join("s"), "st", "1.0.0", "ok").unwrap();
    let o = Command::new(bins.get("toru"))
        .args(["plugin", "pack"])
        .arg(&p.dir)
        .current_dir(&t.0)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning: unsigned"), "{err}");
    assert_eq!(
        tar_list(&t.join("st-1.0.0.toru")),
        ["manifest.toml", "stress", "stress.json"]
    );
    assert!(!t.join("st-1.0.0.toru.minisig").exists());
}
