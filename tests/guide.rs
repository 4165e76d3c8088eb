//! Runs every command of the plugin author's guide, `docs/PLUGINS.md`, as a reader would: the
//! ```` ```sh ```` blocks in order, in one bash (`set -euo pipefail`: the first failing command
//! fails the test), in an empty folder, with the guide's placeholders set — `TORU_SDK` (this
//! checkout's SDK), `DEVICE` and `TORU_TOKEN` (a real `toru` started here on loopback, set up by
//! its owner). The guide's `# on the device` blocks reach that host the way they do on a device:
//! `TORU_DATA_DIR`/`TORU_RUNTIME_DIR` name its folders. Then the plugins the guide installed must
//! be ready and answering with what the guide did to them.
//!
//! The Rust plugin is built for real, for this machine and for the board
//! (`aarch64-unknown-linux-musl`; the guide's `rustup target add` adds the target), in
//! `<target dir>/guide`, which stays between runs so the dependencies are built once.
//!
//! The guide's commands are written for an x86_64 Linux machine; on another target (the aarch64
//! stage runs the tests under qemu) this test says so and passes without running them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::package::HOST_TRIPLE;
use support::{Bins, Host, HostOpts, TempDir};

/// Commands the guide shows that this build does not have yet: a line starting with one is not run
/// and a message naming it is printed instead. Empty: every command of the guide runs.
const NOT_YET: &[&str] = &[];

/// The machine the guide's commands are written for.
const GUIDE_TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// The fences the guide may use besides `sh` (which is run): output, files and excerpts.
const NOT_RUN: &[&str] = &["text", "toml", "rust", "python", "js", "json"];

/// Longest the guide may take, first run included (two release builds of the Rust plugin).
const GUIDE_DEADLINE_SECS: u32 = 1800;

/// A runnable block: where it starts in the guide (1-based line of its first command) and its
/// text.
#[derive(Debug, PartialEq, Eq)]
struct Block {
    line: usize,
    text: String,
}

/// The `sh` blocks of `md`, in order. Panics on a fence of another kind than `sh` and
/// [`NOT_RUN`], so a command cannot hide in a block the test skips (` ```bash `, ` ```console `).
fn sh_blocks(md: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for (i, line) in md.lines().enumerate() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            if let Some((_, _, text)) = open.as_mut() {
                text.push_str(line);
                text.push('\n');
            }
            continue;
        };
        match open.take() {
            Some((lang, first, text)) => {
                assert!(
                    info.trim().is_empty(),
                    "line {}: a fence inside a block",
                    i + 1
                );
                if lang == "sh" {
                    blocks.push(Block { line: first, text });
                }
            }
            None => {
                let lang = info.trim().to_string();
                assert!(
                    lang == "sh" || NOT_RUN.contains(&lang.as_str()),
                    "docs/PLUGINS.md line {}: a ```{lang} block: commands go in ```sh blocks (run by \
                     this test), anything else in one of {NOT_RUN:?}",
                    i + 1
                );
                open = Some((lang, i + 2, String::new()));
            }
        }
    }
    assert!(open.is_none(), "docs/PLUGINS.md: a block is not closed");
    blocks
}

/// One bash script of `blocks`: each announced with its line in the guide (so a failure names
/// its block), every command echoed (`set -x`), a [`NOT_YET`] command replaced by a message.
fn script(blocks: &[Block]) -> String {
    let mut s = String::from("set -euo pipefail\n");
    for b in blocks {
        s.push_str(&format!(
            "set +x; echo; echo '### docs/PLUGINS.md line {}'; set -x\n",
            b.line
        ));
        for (n, line) in b.text.lines().enumerate() {
            match NOT_YET.iter().find(|c| line.trim_start().starts_with(*c)) {
                Some(c) => {
                    let note = format!(
                        "guide: NOT RUN `{}` (docs/PLUGINS.md line {}): `{c}` is not in this build yet",
                        line.trim(),
                        b.line + n
                    );
                    s.push_str(&format!("echo {} >&2\n", shell_quote(&note)));
                }
                None => {
                    s.push_str(line);
                    s.push('\n');
                }
            }
        }
    }
    s
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn blocks_are_found_and_other_fences_are_not_run() {
    let md = "# t\n```sh\na\nb\n```\n```text\nnot run\n```\nx\n```sh\nc\n```\n";
    let b = sh_blocks(md);
    assert_eq!(
        b,
        vec![
            Block {
                line: 3,
                text: "a\nb\n".into()
            },
            Block {
                line: 11,
                text: "c\n".into()
            }
        ]
    );
    let s = script(&[Block {
        line: 7,
        text: "echo a\ntoru plugin check x\necho ok\n".into(),
    }]);
    if NOT_YET.contains(&"toru plugin check") {
        assert!(
            s.contains("echo 'guide: NOT RUN `toru plugin check x` (docs/PLUGINS.md line 8)"),
            "{s}"
        );
    }
    assert!(s.ends_with("echo ok\n"));
}

#[test]
#[should_panic(expected = "a ```bash block")]
fn a_command_in_another_fence_is_refused() {
    sh_blocks("```bash\nrm -rf x\n```\n");
}

fn get(h: &Host, token: &str, path: &str) -> (u16, String) {
    let r = h.http(
        "GET",
        path,
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    );
    (r.status, r.text())
}

fn get_json(h: &Host, token: &str, path: &str) -> Value {
    let (status, body) = get(h, token, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn ok(what: &str, out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn every_command_of_the_plugin_guide_runs() {
    let mut stderr = std::io::stderr();
    if HOST_TRIPLE != GUIDE_TRIPLE {
        // Not captured by the test harness, so the skip shows in the test output.
        let _ = writeln!(
            stderr,
            "guide: docs/PLUGINS.md is written for {GUIDE_TRIPLE}; on {HOST_TRIPLE} its commands \
             are not run"
        );
        return;
    }
    let bins = Bins::locate().unwrap();
    let guide = std::fs::read_to_string(bins.repo.join("docs/PLUGINS.md")).unwrap();
    let blocks = sh_blocks(&guide);
    assert!(blocks.len() >= 10, "only {} sh blocks", blocks.len());

    // The device: set up by its owner (the API answers nothing before), with an admin token.
    let h = Host::start(HostOpts {
        config: Some("[packages]\nprobation_secs = 1\n".into()),
        ..Default::default()
    });
    ok(
        "toru passwd",
        &h.cli(&["passwd"], Some("the guide's device password\n")),
    );
    let token = ok(
        "toru token create",
        &h.cli(&["token", "create", "guide"], None),
    );
    assert!(token.starts_with("toru_"), "{token}");

    // The reader's machine: `toru` on PATH, an empty folder.
    let work = TempDir::new("guide").unwrap();
    let path_dir = work.join("bin");
    let folder = work.join("work");
    std::fs::create_dir_all(&path_dir).unwrap();
    std::fs::create_dir_all(&folder).unwrap();
    std::os::unix::fs::symlink(bins.get("toru"), path_dir.join("toru")).unwrap();
    let path = format!(
        "{}:{}",
        path_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let target_dir = bins.dir.parent().unwrap_or(&bins.dir).join("guide");
    let script_path = work.join("guide.sh");
    std::fs::write(&script_path, script(&blocks)).unwrap();
    let log_path = work.join("guide.log");
    let log = std::fs::File::create(&log_path).unwrap();

    // `timeout` kills the script's whole process group (cargo included) at the deadline.
    let status = Command::new("timeout")
        .args(["-k", "10", &GUIDE_DEADLINE_SECS.to_string(), "bash"])
        .arg(&script_path)
        .current_dir(&folder)
        .env("PATH", path)
        .env("TORU_SDK", bins.repo.join("toru-plugin-api"))
        .env("DEVICE", h.addr.to_string())
        .env("TORU_TOKEN", &token)
        .env("TORU_DATA_DIR", &h.data_dir)
        .env("TORU_RUNTIME_DIR", &h.runtime_dir)
        .env("TORU_PLUGINS_DIR", &h.plugins_dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .unwrap();
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    for line in output.lines().filter(|l| l.starts_with("guide: NOT RUN")) {
        let _ = writeln!(stderr, "{line}");
    }
    assert!(
        status.success(),
        "a command of the guide failed ({status}; the last block is the one that failed):\n{}\n\n\
         host log (last lines):\n{}",
        tail(&output, 80),
        tail(&h.log(), 40)
    );
    check_what_the_guide_did(&h, &token, &folder);
}

/// The plugins the guide installed run, with the versions, settings and data it gave them.
fn check_what_the_guide_did(h: &Host, token: &str, folder: &Path) {
    for (id, version) in [("hello-world", "0.1.0"), ("hello-snake", "0.2.0")] {
        let p = get_json(h, token, &format!("/api/plugins/{id}"));
        assert_eq!(p["state"], "ready", "{p}");
        assert_eq!(p["package"]["version"], version, "{p}");
        assert_eq!(p["package"]["unsigned"], false, "{p}");
        let (status, bundle) = get(h, token, &format!("/api/plugins/{id}/bundle.js"));
        assert_eq!(status, 200, "{bundle}");
        assert!(
            bundle.contains(&format!("window.ToruPlugins[\"{id}\"]")),
            "{bundle}"
        );
    }
    // The setting the guide changed, and the visits it made (install, settings: two so far).
    let world = get_json(h, token, "/api/plugins/route/hello-world/");
    assert_eq!(world["message"], "Kia ora from Hello world!", "{world}");
    assert_eq!(world["visits"], 3, "{world}");
    let snake = get_json(h, token, "/api/plugins/route/hello-snake/");
    assert_eq!(snake["message"], "Hello from Hello snake!", "{snake}");
    // Built for the board as the guide said: a static aarch64 executable in the package.
    let board = folder.join("hello-world/bin/aarch64-unknown-linux-musl/hello-world");
    let head = std::fs::read(&board).unwrap();
    // ELF, 64-bit, little-endian; e_machine 183 = EM_AARCH64.
    assert_eq!(&head[..6], b"\x7fELF\x02\x01", "{}", board.display());
    assert_eq!(u16::from_le_bytes([head[18], head[19]]), 183);
}
