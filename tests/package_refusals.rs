//! Bad input gets a clear error and changes nothing. Each package below is refused — through
//! `POST /api/packages/upload` (and, for a few, through `toru plugin install|update`: non-zero
//! exit, the reason on stderr) — with a status and a code or message that names the problem; and
//! afterwards `.staging` is empty, nothing new is in the packages dir, and the version installed first
//! (v1.0.0 of a stress package) is untouched: still ready, same pid, same versions.
//!
//! The packages: corrupt bytes, a truncated package, entries `../x` and `/abs`, a symlink and a
//! hard link, a compression bomb (a few KB of gzip past `max_unpacked_bytes`), a manifest with a
//! field missing, a target this machine is not, `min_host = ">=99"`, a manifest that disagrees with
//! `--metadata`, unsigned, signed by an untrusted key, tampered after signing, an update signed by
//! another trusted key, a downgrade (refused, then accepted with `allow_downgrade`), one over
//! `max_package_bytes` (413), an id an unpackaged `*.binary` plugin has; and, as root, a disk that
//! fills while the package is extracted (507). Last, `allow_unsigned = true` lets an unsigned
//! package in and `GET /api/system` says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pkg_util;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use pkg_util::*;
use serde_json::{Value, json};
use support::package::HOST_TRIPLE;
use support::{Bins, Host, PluginSrc, Resp, TempDir, Tmpfs, free_bytes, parse_response};

/// The installed package's id (and route).
const ID: &str = "pr";
/// Small limits, so that a bomb and an oversized package stay small: 8 MiB uploads (the stress
/// packages are ~5.4 MB), 20 MiB unpacked (the debug stress binary is ~18 MB).
const LIMITS: &str = "max_package_bytes = 8388608\nmax_unpacked_bytes = 20971520\n";
/// An executable for packages that are refused before it would run.
const FAKE_EXE: &[u8] = b"#!/bin/sh\nexit 1\n";
/// A target triple that is not this machine's.
fn other_triple() -> &'static str {
    if HOST_TRIPLE == "aarch64-unknown-linux-musl" {
        "armv7-unknown-linux-gnueabihf"
    } else {
        "aarch64-unknown-linux-musl"
    }
}

/// A host with `key` trusted, an admin token, and v1.0.0 of package [`ID`] installed and ready.
struct Fixture {
    bins: Bins,
    t: TempDir,
    key: Key,
    h: Host,
    token: String,
    /// The plugins running before the refusals: id → pid.
    running: Vec<(String, u32)>,
}

impl Fixture {
    fn new(extra_config: &str, plugins: Vec<PluginSrc>) -> Fixture {
        let bins = Bins::locate().unwrap();
        let t = TempDir::new("pr").unwrap();
        let key = Key::new(&bins, "publisher");
        let h = Host::start(support::HostOpts {
            plugins,
            ..opts(None, &config(extra_config), &[])
        });
        key.trust(&h);
        let token = admin_token(&h);
        let v1 = stress(&bins, &t.0, ID, "1.0.0", "ok", Some(&key));
        cli_install_ok(&h, "install", &v1);
        let mut f = Fixture {
            bins,
            t,
            key,
            h,
            token,
            running: Vec::new(),
        };
        f.running = f.snapshot();
        f
    }

    /// Every plugin once ready: (id, pid).
    fn snapshot(&self) -> Vec<(String, u32)> {
        let r = api(&self.h, &self.token, "GET", "/api/plugins", None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let id = p["id"].as_str().unwrap().to_string();
                let p = wait_ready(&self.h, &self.token, &id);
                (id, pid_of(&p))
            })
            .collect()
    }

    /// A stress package of [`ID`] in `mode`, signed by the fixture's key.
    fn stress(&self, version: &str, mode: &str) -> PathBuf {
        stress(&self.bins, &self.t.0, ID, version, mode, Some(&self.key))
    }

    /// Nothing changed since the fixture was made: see the module doc.
    fn assert_unchanged(&self, case: &str) {
        assert_eq!(staging(&self.h), Vec::<String>::new(), "{case}: .staging");
        assert_eq!(packages_on_disk(&self.h), [ID], "{case}: packages dir");
        assert_eq!(versions_on_disk(&self.h, ID), ["1.0.0"], "{case}: versions");
        let p = plugin(&self.h, &self.token, ID);
        assert_eq!(
            (&p["state"], &p["version"], &p["package"]["versions"]),
            (&json!("ready"), &json!("1.0.0"), &json!(["1.0.0"])),
            "{case}: {p}"
        );
        assert!(p["package"]["update"].is_null(), "{case}: {p}");
        let now = self.snapshot();
        assert_eq!(
            now, self.running,
            "{case}: the plugins or their pids changed"
        );
    }

    /// Upload `bytes` with `sig`: refused with `status` and `code`, the message holding every
    /// part of `says`; nothing changed.
    fn refused(
        &self,
        case: &str,
        bytes: &[u8],
        sig: Option<&str>,
        (status, code): (u16, &str),
        says: &[&str],
    ) -> String {
        let r = upload(&self.h, &self.token, bytes, sig);
        let message = refusal(case, &r, status, code, says);
        self.assert_unchanged(case);
        message
    }

    /// [`Fixture::refused`] for a package signed by the fixture's key.
    fn refused_signed(&self, case: &str, bytes: &[u8], want: (u16, &str), says: &[&str]) -> String {
        self.refused(case, bytes, Some(&self.key.sign(bytes)), want, says)
    }

    /// `toru plugin update FILE [args]` fails with every part of `says` on stderr; nothing changed.
    fn cli_refused(&self, case: &str, pkg: &Path, args: &[&str], says: &[&str]) -> String {
        let o = cli_install(&self.h, "update", pkg, args);
        let err = stderr(&o);
        assert!(!o.status.success(), "{case}: accepted: {}", stdout(&o));
        for part in says {
            assert!(err.contains(part), "{case}: {part:?} not in stderr: {err}");
        }
        eprintln!("{case}: exit {:?}: {}", o.status.code(), err.trim_end());
        self.assert_unchanged(case);
        err
    }
}

/// The refusal `r` has `status` and `code` and a message holding every part of `says`; the message.
fn refusal(case: &str, r: &Resp, status: u16, code: &str, says: &[&str]) -> String {
    let v = r.json();
    assert_eq!(
        (r.status, v["error"].as_str().unwrap_or("")),
        (status, code),
        "{case}: {}",
        r.text()
    );
    let message = v["message"].as_str().unwrap_or("").to_string();
    eprintln!("{case}: {status} {code}: {message}");
    for part in says {
        assert!(
            message.contains(part),
            "{case}: {part:?} not in {message:?}"
        );
    }
    message
}

/// A package [`ID`] `version` whose manifest is `manifest`, with a fake executable.
fn fake(manifest: &str) -> Vec<u8> {
    raw_package(manifest, |t| {
        t.exe("stress", FAKE_EXE).file("stress.json", b"{}")
    })
}

#[test]
fn broken_archives_are_refused_and_change_nothing() {
    let f = Fixture::new(LIMITS, vec![]);
    let good = std::fs::read(f.stress("2.0.0", "ok")).unwrap();
    let m = stress_manifest(ID, "2.0.0");

    f.refused_signed(
        "corrupt bytes",
        &noise(64 * 1024, 7),
        (422, "bad_package"),
        &["corrupt"],
    );
    f.refused_signed(
        "truncated",
        &good[..good.len() / 2],
        (422, "bad_package"),
        &["truncated"],
    );
    let dotdot = raw_package(&m, |t| t.file("../x", b"escape").exe("stress", FAKE_EXE));
    f.refused_signed("../x", &dotdot, (422, "bad_package"), &["\"../x\"", "`..`"]);
    let abs = raw_package(&m, |t| t.file("/abs", b"escape").exe("stress", FAKE_EXE));
    f.refused_signed(
        "/abs",
        &abs,
        (422, "bad_package"),
        &["\"/abs\"", "absolute"],
    );
    let symlink = raw_package(&m, |t| t.symlink("stress", "/bin/sh"));
    f.refused_signed(
        "symlink",
        &symlink,
        (422, "bad_package"),
        &["\"stress\"", "symbolic link"],
    );
    let hardlink = raw_package(&m, |t| {
        t.exe("stress", FAKE_EXE).hardlink("stress.json", "stress")
    });
    f.refused_signed(
        "hard link",
        &hardlink,
        (422, "bad_package"),
        &["\"stress.json\"", "hard link"],
    );
    // 64 MiB of zeros, named by the manifest, past the 20 MiB cap.
    let bomb_manifest = m.replace(
        "files = [\"stress.json\"]",
        "files = [\"stress.json\", \"zeros.bin\"]",
    );
    let bomb = raw_package(&bomb_manifest, |t| {
        t.exe("stress", FAKE_EXE)
            .file("stress.json", b"{}")
            .zeros("zeros.bin", 64 << 20)
    });
    assert!(bomb.len() < 100 * 1024, "the bomb is {} bytes", bomb.len());
    eprintln!("compression bomb: {} bytes of gzip for 64 MiB", bomb.len());
    f.refused_signed(
        "compression bomb",
        &bomb,
        (422, "bad_package"),
        &["expands to more than 20971520 bytes"],
    );
}

#[test]
fn bad_manifests_are_refused_naming_the_problem() {
    let f = Fixture::new(LIMITS, vec![]);
    let m = stress_manifest(ID, "2.0.0");

    let missing = m.replace("version = \"2.0.0\"\n", "");
    f.refused_signed(
        "missing field",
        &fake(&missing),
        (422, "bad_manifest"),
        &["version"],
    );
    let other = other_triple();
    let wrong = m.replace(&format!("{HOST_TRIPLE} = "), &format!("{other} = "));
    f.refused_signed(
        "wrong target",
        &fake(&wrong),
        (422, "wrong_target"),
        &[HOST_TRIPLE, other],
    );
    let future = m.replace("min_host = \">=0.1\"", "min_host = \">=99\"");
    f.refused_signed(
        "min_host",
        &fake(&future),
        (422, "host_too_old"),
        &[">=99", env!("CARGO_PKG_VERSION")],
    );
    // The real executable, whose stress.json says 2.0.5 while the manifest says 2.1.0.
    let exe = std::fs::read(f.bins.get("stress")).unwrap();
    let disagrees = raw_package(&stress_manifest(ID, "2.1.0"), |t| {
        t.exe("stress", &exe).file(
            "stress.json",
            json!({"id": ID, "version": "2.0.5", "mode": "ok"})
                .to_string()
                .as_bytes(),
        )
    });
    f.refused_signed(
        "metadata mismatch",
        &disagrees,
        (422, "metadata_mismatch"),
        &["manifest says version \"2.1.0\", --metadata prints \"2.0.5\""],
    );
}

#[test]
fn signature_and_publisher_refusals_change_nothing() {
    // An unpackaged plugin whose id a package claims: `taken.binary` (the stress plugin, mode ok).
    let taken = PluginSrc::Built {
        bin: "stress",
        as_name: "taken".into(),
    };
    let f = Fixture::new(LIMITS, vec![taken]);
    let sys = api(&f.h, &f.token, "GET", "/api/system", None).json();
    assert_eq!(sys["packages"]["allow_unsigned"], false, "{sys}");
    let v2 = f.stress("2.0.0", "ok");
    let bytes = std::fs::read(&v2).unwrap();

    f.refused("unsigned", &bytes, None, (422, "unsigned"), &["not signed"]);
    let stranger = Key::new(&f.bins, "stranger");
    f.refused(
        "untrusted key",
        &bytes,
        Some(&stranger.sign(&bytes)),
        (422, "untrusted_key"),
        &[&stranger.id(), "does not trust"],
    );
    let mut tampered = bytes.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    f.refused(
        "tampered",
        &tampered,
        Some(&signature_of(&v2)),
        (422, "signature_mismatch"),
        &[&f.key.id(), "does not match"],
    );
    // Another publisher, trusted too: still not for an update of the first one's plugin.
    let other = Key::new(&f.bins, "other");
    other.trust(&f.h);
    f.refused(
        "other publisher",
        &bytes,
        Some(&other.sign(&bytes)),
        (422, "other_publisher"),
        &[&f.key.id(), &other.id()],
    );
    let claims = stress(&f.bins, &f.t.0, "taken", "1.0.0", "ok", Some(&f.key));
    let claims = std::fs::read(claims).unwrap();
    f.refused_signed(
        "id of an unpackaged plugin",
        &claims,
        (422, "id_taken"),
        &["taken.binary"],
    );
}

#[test]
fn a_downgrade_needs_allow_downgrade() {
    let f = Fixture::new(LIMITS, vec![]);
    let old = f.stress("0.9.0", "ok");
    let bytes = std::fs::read(&old).unwrap();
    let r = upload(&f.h, &f.token, &bytes, Some(&signature_of(&old)));
    assert_eq!(r.status, 201, "{}", r.text());
    let preview = r.json();
    assert_eq!(
        (&preview["action"], &preview["installed_version"]),
        (&json!("downgrade"), &json!("1.0.0")),
        "{preview}"
    );
    let confirm = format!(
        "/api/packages/upload/{}/confirm",
        preview["upload"].as_str().unwrap()
    );
    let r = api(&f.h, &f.token, "POST", &confirm, Some(&json!({})));
    refusal(
        "downgrade",
        &r,
        422,
        "downgrade",
        &["0.9.0", "1.0.0", "--allow-downgrade"],
    );
    f.assert_unchanged("downgrade");
    // The refused confirmation used the upload up.
    let r = api(&f.h, &f.token, "POST", &confirm, Some(&json!({})));
    assert_eq!(r.status, 404, "{}", r.text());

    let r = install_http(&f.h, &f.token, &old, true);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], "0.9.0", "{}", r.text());
    let p = wait_ready(&f.h, &f.token, ID);
    assert_eq!(p["version"], "0.9.0", "{p}");
    assert_eq!(staging(&f.h), Vec::<String>::new());
}

/// Send a request head and as much of `body` as the host takes; the response once it closes.
fn raw_request(h: &Host, head: &str, body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(support::WAIT)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    // The host may answer and close before it read it all.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

/// `POST /api/packages/upload` of `bytes` signed by `sig`, as [`raw_request`] sends it.
fn raw_upload(h: &Host, token: &str, bytes: &[u8], sig: &str) -> Resp {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(sig);
    let head = format!(
        "POST /api/packages/upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         X-Toru-Csrf: 1\r\nContent-Type: application/octet-stream\r\nX-Toru-Signature: {b64}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        bytes.len()
    );
    raw_request(h, &head, bytes)
}

#[test]
fn a_package_over_the_size_limit_is_413() {
    let f = Fixture::new(LIMITS, vec![]);
    let big = noise(9 << 20, 11);
    let sig = f.key.sign(&big);
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&sig)
    };
    let auth = format!("Authorization: Bearer {}\r\nX-Toru-Csrf: 1\r\n", f.token);
    // Declared too large: refused before the body is read.
    let head = format!(
        "POST /api/packages/upload HTTP/1.1\r\nHost: localhost\r\n{auth}\
         Content-Type: application/octet-stream\r\nX-Toru-Signature: {b64}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    );
    let r = raw_request(&f.h, &head, &big[..64 * 1024]);
    refusal("declared too large", &r, 413, "too_large", &["8388608"]);
    f.assert_unchanged("declared too large");
    // Chunked, no length: refused once it passes the cap while streaming.
    let head = format!(
        "POST /api/packages/upload HTTP/1.1\r\nHost: localhost\r\n{auth}\
         Content-Type: application/octet-stream\r\nX-Toru-Signature: {b64}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let mut chunked = Vec::new();
    for c in big.chunks(256 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = raw_request(&f.h, &head, &chunked);
    refusal("streamed too large", &r, 413, "too_large", &["8388608"]);
    f.assert_unchanged("streamed too large");
    // A client that writes its whole body before it reads (as a browser does) gets the answer
    // too: it used to be lost in a reset connection (the host closed with 12 MiB unread).
    let bigger = noise(20 << 20, 12);
    let mut chunked = Vec::new();
    for c in bigger.chunks(256 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut s = TcpStream::connect(f.h.addr).unwrap();
    s.set_read_timeout(Some(support::WAIT)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&chunked)
        .expect("the host reads on after refusing, so the whole body can be sent");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    refusal(
        "streamed, read after",
        &parse_response(&raw),
        413,
        "too_large",
        &["8388608"],
    );
    f.assert_unchanged("streamed, read after");
    // The CLI says it too.
    let file = f.t.join("big.toru");
    std::fs::write(&file, &big).unwrap();
    std::fs::write(f.t.join("big.toru.minisig"), &sig).unwrap();
    f.cli_refused(
        "CLI too large",
        &file,
        &[],
        &["larger than the limit of 8388608 bytes"],
    );
}

#[test]
fn the_cli_refuses_with_the_reason_on_stderr() {
    let f = Fixture::new(LIMITS, vec![]);
    let write_signed = |name: &str, bytes: &[u8], key: &Key| {
        let p = f.t.join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::write(f.t.join(format!("{name}.minisig")), key.sign(bytes)).unwrap();
        p
    };
    let corrupt = write_signed("corrupt.toru", &noise(10_000, 3), &f.key);
    f.cli_refused("CLI corrupt", &corrupt, &[], &["corrupt"]);
    let dotdot = raw_package(&stress_manifest(ID, "2.0.0"), |t| {
        t.file("../x", b"escape").exe("stress", FAKE_EXE)
    });
    let dotdot = write_signed("dotdot.toru", &dotdot, &f.key);
    f.cli_refused("CLI ../x", &dotdot, &[], &["\"../x\"", "`..`"]);

    let v2 = f.stress("2.0.0", "ok");
    let unsigned = f.t.join("unsigned.toru");
    std::fs::copy(&v2, &unsigned).unwrap();
    f.cli_refused("CLI unsigned", &unsigned, &[], &["not signed"]);
    let stranger = Key::new(&f.bins, "stranger");
    let untrusted = write_signed("untrusted.toru", &std::fs::read(&v2).unwrap(), &stranger);
    f.cli_refused(
        "CLI untrusted key",
        &untrusted,
        &[],
        &[&stranger.id(), "does not trust"],
    );
    // `--sig` names the signature file: the wrong one does not match.
    f.cli_refused(
        "CLI other file's signature",
        &v2,
        &["--sig", f.t.join("dotdot.toru.minisig").to_str().unwrap()],
        &["does not match"],
    );

    let old = f.stress("0.9.0", "ok");
    f.cli_refused("CLI downgrade", &old, &[], &["older", "--allow-downgrade"]);
    let o = cli_install(&f.h, "update", &old, &["--allow-downgrade"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("0.9.0"), "{}", stdout(&o));
    let p = wait_ready(&f.h, &f.token, ID);
    assert_eq!(p["version"], "0.9.0", "{p}");
}

#[test]
fn allow_unsigned_lets_an_unsigned_package_in_and_says_so() {
    let bins = Bins::locate().unwrap();
    let t = TempDir::new("pr").unwrap();
    let h = start(None, &config("allow_unsigned = true\n"), &[]);
    let token = admin_token(&h);
    let sys = api(&h, &token, "GET", "/api/system", None).json();
    assert_eq!(sys["packages"]["allow_unsigned"], true, "{sys}");
    let pkg = stress(&bins, &t.0, ID, "1.0.0", "ok", None);
    let r = upload(&h, &token, &std::fs::read(&pkg).unwrap(), None);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json()["signature"],
        json!({"state": "unsigned", "key_id": null}),
        "{}",
        r.text()
    );
    let token_of_upload = r.json()["upload"].as_str().unwrap().to_string();
    let r = api(
        &h,
        &token,
        "DELETE",
        &format!("/api/packages/upload/{token_of_upload}"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(staging(&h), Vec::<String>::new());
    cli_install_ok(&h, "install", &pkg);
    let p = wait_ready(&h, &token, ID);
    assert_eq!(
        (
            &p["version"],
            &p["package"]["unsigned"],
            &p["package"]["key_id"]
        ),
        (&json!("1.0.0"), &json!(true), &Value::Null),
        "{p}"
    );
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() == 0 }
}

/// A tmpfs mounted for the test's life (as in `store_faults`).
#[test]
fn a_disk_that_fills_while_extracting_is_507_and_changes_nothing() {
    if !is_root() {
        eprintln!(
            "SKIPPED a_disk_that_fills_while_extracting_is_507…: needs root to mount a tmpfs for \
             the packages dir"
        );
        return;
    }
    let bins = Bins::locate().unwrap();
    let t = TempDir::new("pr").unwrap();
    let key = Key::new(&bins, "publisher");
    let root = support::temp_dir("prfull");
    // The packages dir (the default, `<data-dir>/packages`) on its own small filesystem.
    let tmpfs = Tmpfs::mount(&root.join("data").join("packages"), "64m", "0755");
    let h = start(Some(root.clone()), &config(""), &[]);
    key.trust(&h);
    let token = admin_token(&h);
    let v1 = stress(&bins, &t.0, ID, "1.0.0", "ok", Some(&key));
    let r = install_http(&h, &token, &v1, false);
    assert_eq!(r.status, 200, "{}", r.text());
    let before = pid_of(&wait_ready(&h, &token, ID));

    // Room for the upload (~5.4 MB) but not for the ~18 MB executable it expands to.
    let v2 = stress(&bins, &t.0, ID, "2.0.0", "ok", Some(&key));
    let bytes = std::fs::read(&v2).unwrap();
    let ballast = tmpfs.0.join(".ballast");
    let keep = bytes.len() as u64 + (4 << 20);
    let fill = free_bytes(&tmpfs.0).saturating_sub(keep);
    std::fs::write(&ballast, vec![0u8; usize::try_from(fill).unwrap()]).unwrap();
    let r = upload(&h, &token, &bytes, Some(&signature_of(&v2)));
    refusal(
        "disk full",
        &r,
        507,
        "storage_full",
        &["disk is full", "extracting"],
    );
    assert_eq!(
        staging(&h),
        Vec::<String>::new(),
        ".staging after a full disk"
    );
    assert_eq!(packages_on_disk(&h), [ID]);
    assert_eq!(versions_on_disk(&h, ID), ["1.0.0"]);
    let p = wait_ready(&h, &token, ID);
    assert_eq!(
        (&p["version"], pid_of(&p)),
        (&json!("1.0.0"), before),
        "{p}"
    );

    // Fuller still: the upload itself does not fit.
    std::fs::remove_file(&ballast).unwrap();
    let fill = free_bytes(&tmpfs.0).saturating_sub(1 << 20);
    std::fs::write(&ballast, vec![0u8; usize::try_from(fill).unwrap()]).unwrap();
    // The host answers as soon as a write fails, before the rest of the body arrives.
    let r = raw_upload(&h, &token, &bytes, &signature_of(&v2));
    refusal(
        "disk full (upload)",
        &r,
        507,
        "storage_full",
        &["disk is full", "upload"],
    );
    assert_eq!(
        staging(&h),
        Vec::<String>::new(),
        ".staging after a full disk"
    );
    assert_eq!(versions_on_disk(&h, ID), ["1.0.0"]);
    let p = wait_ready(&h, &token, ID);
    assert_eq!(
        (&p["version"], pid_of(&p)),
        (&json!("1.0.0"), before),
        "{p}"
    );

    // Space back: the same package goes in.
    std::fs::remove_file(&ballast).unwrap();
    let r = install_http(&h, &token, &v2, false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"], "updated", "{}", r.text());
    let p = wait_ready(&h, &token, ID);
    assert_eq!(p["version"], "2.0.0", "{p}");
    assert_eq!(staging(&h), Vec::<String>::new());
    drop(h);
    drop(tmpfs);
    let _ = std::fs::remove_dir_all(&root);
}
