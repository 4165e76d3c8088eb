//! `docs/PACKAGES.md` says a package can be built and signed with `tar` and `minisign` alone, and
//! that a key from `toru key generate` is a minisign key. These tests run the documented commands
//! with the system's `tar` and `minisign` and check the host's side (`archive::extract`,
//! `sign::verify`) accepts the result, and that `minisign -V` accepts what `toru` signs. Without
//! the `minisign` tool (`apt-get install minisign`) they say so and pass.

use std::path::Path;
use std::process::Command;

use toru_test_kit::TempDir;

use super::archive::{Limits, extract};
use super::manifest::HOST_TRIPLE;
use super::sign::{self, PublicKey};

/// Whether `tool` runs; prints why the test is skipped when it does not.
fn have(tool: &str, test: &str) -> bool {
    let ok = Command::new(tool)
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED {test}: `{tool}` is not installed (apt-get install {tool})");
    }
    ok
}

/// Run `cmd` in `dir`; panics with its output when it fails.
fn run(dir: &Path, cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A plugin folder as an author has it: a script plugin with a manifest and a frontend.
fn author_dir(t: &TempDir) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = t.join("hello");
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::write(
        d.join("manifest.toml"),
        format!(
            "id = \"hello\"\nname = \"Hello\"\nversion = \"1.2.3\"\nauthor = \"Me\"\n\
             route = \"/hello\"\nmin_host = \">=0.1\"\nfrontend = \"bundle.js\"\n\
             [entry]\n{HOST_TRIPLE} = \"bin/hello\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("bin/hello"),
        "#!/bin/sh\necho '{\"id\":\"hello\",\"name\":\"Hello\",\"version\":\"1.2.3\",\
         \"author\":\"Me\",\"route\":\"/hello\"}'\n",
    )
    .unwrap();
    std::fs::set_permissions(d.join("bin/hello"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.join("bundle.js"), "// ui\n").unwrap();
    std::fs::write(d.join("README"), "not named in the manifest\n").unwrap();
    d
}

#[test]
fn a_package_made_with_tar_and_minisign_alone_is_accepted() {
    let test = "a_package_made_with_tar_and_minisign_alone_is_accepted";
    if !have("minisign", test) {
        return;
    }
    let t = TempDir::new("interop").unwrap();
    let d = author_dir(&t);
    // The commands of docs/PACKAGES.md, "By hand".
    run(
        &d,
        &[
            "tar",
            "czf",
            "hello.toru",
            "manifest.toml",
            "bin/hello",
            "bundle.js",
            "README",
        ],
    );
    run(
        &d,
        &["minisign", "-G", "-W", "-p", "me.pub", "-s", "me.key"],
    );
    run(&d, &["minisign", "-S", "-s", "me.key", "-m", "hello.toru"]);

    let key = PublicKey::parse(&std::fs::read_to_string(d.join("me.pub")).unwrap()).unwrap();
    let sig = std::fs::read_to_string(d.join("hello.toru.minisig")).unwrap();
    let v = sign::verify(&d.join("hello.toru"), &sig, std::slice::from_ref(&key)).unwrap();
    assert_eq!(v.key_id, key.key_id);
    assert!(
        v.trusted_comment.contains("file:hello.toru"),
        "{}",
        v.trusted_comment
    );
    // The .pub file's comment names the same key id minisign printed (minisign prints it with
    // `%PRIX64`: no leading zeros, so one key in 16 has a shorter id there).
    assert!(
        std::fs::read_to_string(d.join("me.pub"))
            .unwrap()
            .contains(key.key_id.trim_start_matches('0'))
    );

    let x = extract(&d.join("hello.toru"), &t.join("x"), &Limits::default()).unwrap();
    assert_eq!(x.files, vec!["bin/hello", "bundle.js"]);
    assert_eq!(x.skipped, vec!["README"]);

    // Legacy signatures (`-l`) are refused by name.
    run(
        &d,
        &["minisign", "-S", "-l", "-s", "me.key", "-m", "hello.toru"],
    );
    let sig = std::fs::read_to_string(d.join("hello.toru.minisig")).unwrap();
    let e = sign::verify(&d.join("hello.toru"), &sig, &[key]).unwrap_err();
    assert!(matches!(e, sign::SignError::Legacy { .. }), "{e:?}");

    // `tar czf` of the folder itself puts `./` first: refused, saying what came first.
    run(&d, &["tar", "czf", "../dot.toru", "."]);
    let e = extract(&t.join("dot.toru"), &t.join("y"), &Limits::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "manifest.toml must be the first entry in the package; the first is \"./\""
    );
}

#[test]
fn what_toru_signs_verifies_with_minisign() {
    let test = "what_toru_signs_verifies_with_minisign";
    if !have("minisign", test) {
        return;
    }
    let t = TempDir::new("interop").unwrap();
    let d = author_dir(&t);
    let (sk, pk) = sign::generate("toru", &d).unwrap();
    let out = d.join("hello.toru");
    super::pack::pack(&d, Some(&sk), &out).unwrap();
    let said = run(
        &d,
        &["minisign", "-V", "-p", "toru.pub", "-m", "hello.toru"],
    );
    assert!(
        said.contains("Signature and comment signature verified"),
        "{said}"
    );
    // minisign signs with a key from `toru key generate` too (unencrypted: -W is not needed).
    std::fs::remove_file(d.join("hello.toru.minisig")).unwrap();
    run(
        &d,
        &["minisign", "-S", "-s", "toru.key", "-m", "hello.toru"],
    );
    let key = PublicKey::parse(&std::fs::read_to_string(pk).unwrap()).unwrap();
    let sig = std::fs::read_to_string(d.join("hello.toru.minisig")).unwrap();
    assert!(sign::verify(&out, &sig, &[key]).is_ok());
    // And the package lists with the system's tar, manifest first.
    let list = run(&d, &["tar", "tzf", "hello.toru"]);
    assert_eq!(list, "manifest.toml\nbin/hello\nbundle.js\n");
}
