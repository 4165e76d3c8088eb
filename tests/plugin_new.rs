//! `toru plugin new` as a user runs it: the folder it writes, where a Rust plugin's SDK comes from,
//! and what it refuses (with nothing written). A generated Python plugin packs with `toru plugin
//! pack` as it is; building, packing, installing and running both languages is `tests/guide.rs`,
//! which runs the guide that starts with this command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{Bins, TempDir};

/// `toru ARGS` in `dir`, without `TORU_SDK` unless `sdk` is given.
fn toru(dir: &Path, args: &[&str], sdk: Option<&Path>) -> Output {
    let bins = Bins::locate().unwrap();
    let mut cmd = Command::new(bins.get("toru"));
    cmd.args(args).current_dir(dir).env_remove("TORU_SDK");
    if let Some(sdk) = sdk {
        cmd.env("TORU_SDK", sdk);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_python_plugin_is_written_and_packs_as_it_is() {
    let work = TempDir::new("new-py").unwrap();
    let o = toru(
        &work.0,
        &["plugin", "new", "snake", "--lang", "python"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        files_in(&work.join("snake")),
        [
            ".gitignore",
            "README.md",
            "bundle.js",
            "manifest.toml",
            "snake.binary",
            "toru_plugin.py"
        ]
    );
    // The SDK is the repository's, byte for byte.
    let bins = Bins::locate().unwrap();
    assert_eq!(
        std::fs::read(work.join("snake/toru_plugin.py")).unwrap(),
        std::fs::read(bins.repo.join("toru-plugin-api/python/toru_plugin.py")).unwrap()
    );
    let o = toru(
        &work.0,
        &["plugin", "pack", "snake", "-o", "snake.toru"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("--metadata of snake.binary agrees with the manifest"),
        "{out}"
    );
    // A second one of the same name is refused; the first is untouched.
    let o = toru(
        &work.0,
        &["plugin", "new", "snake", "--lang", "python"],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("snake already exists and is not empty"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_rust_plugin_names_the_sdk_it_was_given_or_found() {
    let bins = Bins::locate().unwrap();
    let sdk = bins.repo.join("toru-plugin-api").canonicalize().unwrap();
    let work = TempDir::new("new-rs").unwrap();
    // --sdk may name the checkout; the SDK folder is written.
    let repo = bins.repo.to_str().unwrap();
    let o = toru(
        &work.0,
        &["plugin", "new", "crab", "--lang", "rust", "--sdk", repo],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let cargo = std::fs::read_to_string(work.join("crab/Cargo.toml")).unwrap();
    assert!(
        cargo.contains(&format!(
            "toru-plugin-api = {{ path = \"{}\" }}",
            sdk.display()
        )),
        "{cargo}"
    );
    assert_eq!(
        files_in(&work.join("crab")),
        [
            ".cargo/config.toml",
            ".gitignore",
            "Cargo.toml",
            "README.md",
            "bundle.js",
            "manifest.toml",
            "src/main.rs"
        ]
    );
    // TORU_SDK, and --dir.
    let o = toru(
        &work.0,
        &["plugin", "new", "crab2", "--lang", "rust", "--dir", "sub"],
        Some(&sdk),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(work.join("sub/crab2/src/main.rs").is_file());
    // Found above --dir: a folder in a checkout (here one whose SDK folder is a link to this one).
    std::fs::create_dir_all(work.join("checkout/plugins")).unwrap();
    std::os::unix::fs::symlink(&sdk, work.join("checkout/toru-plugin-api")).unwrap();
    let o = toru(
        &work.0,
        &[
            "plugin",
            "new",
            "crab3",
            "--lang",
            "rust",
            "--dir",
            "checkout/plugins",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let cargo = std::fs::read_to_string(work.join("checkout/plugins/crab3/Cargo.toml")).unwrap();
    assert!(cargo.contains(&sdk.display().to_string()), "{cargo}");
}

#[test]
fn refusals_say_why_and_write_nothing() {
    let work = TempDir::new("new-no").unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["plugin", "new", "x"], 2, "plugin new needs --lang"),
        (&["plugin", "new", "x", "--lang", "go"], 2, "--lang: \"go\""),
        (
            &["plugin", "new", "Bad_Name", "--lang", "python"],
            1,
            "invalid id \"Bad_Name\"",
        ),
        (
            &["plugin", "new", "9lives", "--lang", "rust"],
            1,
            "cannot start with a digit",
        ),
        (
            &["plugin", "new", "lonely", "--lang", "rust"],
            1,
            "pass --sdk PATH",
        ),
        (
            &["plugin", "new", "x", "--lang", "python", "--sdk", "/"],
            1,
            "--sdk is for --lang rust",
        ),
        (
            &["plugin", "pack", ".", "--dir", "x"],
            2,
            "belong to `toru plugin new`",
        ),
    ];
    for (args, code, message) in cases {
        let o = toru(&work.0, args, None);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(message), "{args:?}: {}", stderr(&o));
    }
    assert!(files_in(&work.0).is_empty(), "{:?}", files_in(&work.0));
    // A bad --sdk names what it was given.
    let o = toru(
        &work.0,
        &["plugin", "new", "x", "--lang", "rust", "--sdk", "/nowhere"],
        None,
    );
    assert!(
        stderr(&o).contains("--sdk /nowhere: not the Rust SDK"),
        "{}",
        stderr(&o)
    );
}
