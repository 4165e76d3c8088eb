//! The plugin package format on arbitrary bytes: `manifest.toml`, the `.toru` extractor and the
//! signature reader (`toru::internals::package`). Every input is read three ways:
//! - as `manifest.toml` text: nothing panics, and a manifest that parses has an id the host's
//!   metadata rules accept;
//! - as a package: if the first byte is even, the rest is a tar stream that this target gzips (so
//!   the fuzzer works on tar, not on deflate), else the whole input is the `.toru` file. Nothing
//!   panics, and nothing is written outside the destination: afterwards the work dir holds only
//!   the package and the destination, nothing below the destination is a symlink or special file,
//!   and after a success the files there are exactly the ones reported;
//! - as a `.minisig` text verified over a fixed file against a fixed key (seeded with a valid
//!   signature): nothing panics (minisign 0.10 itself panics on a short comment signature).
#![no_main]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use toru::internals::package::{extract_small, parse_manifest, verify_signature};

/// The key of the seed signature `seeds/package/signature.minisig` (its secret key is not kept).
const PUBLIC_KEY: &str = "untrusted comment: minisign public key CBC373DEE481B7A7\n\
                          RWSnt4Hk3nPDy1XzLyh/ebN6EN4Pbh67uQV4VFQKz/LmYh5oRPRk2IJO\n";

/// This process's work dir, and the file the seed signature signs (one byte, `x`).
fn work() -> &'static (PathBuf, PathBuf) {
    static WORK: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    WORK.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("toru-fuzz-package-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("work")).expect("temp dir");
        let signed = root.join("signed");
        std::fs::write(&signed, b"x").expect("signed file");
        (root.join("work"), signed)
    })
}

/// Every path below `dir` (relative), refusing anything but files and directories.
fn walk(dir: &Path, base: &Path, files: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("dir entry");
        let meta = std::fs::symlink_metadata(e.path()).expect("metadata");
        let rel = e
            .path()
            .strip_prefix(base)
            .expect("below")
            .to_string_lossy()
            .into_owned();
        if meta.is_dir() {
            walk(&e.path(), base, files);
        } else {
            assert!(
                meta.is_file(),
                "{rel} is neither a file nor a directory: {meta:?}"
            );
            files.insert(rel);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = parse_manifest(text) {
            assert!(
                !id.is_empty()
                    && id.len() <= 63
                    && !id.starts_with('-')
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{id:?}"
            );
        }
        let (_, signed) = work();
        let _ = verify_signature(signed, text, PUBLIC_KEY);
    }

    let (dir, _) = work();
    let package = dir.join("p.toru");
    let dest = dir.join("dest");
    let _ = std::fs::remove_dir_all(&dest);
    let bytes = match data.split_first() {
        Some((first, rest)) if first % 2 == 0 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(rest).expect("gzip into memory");
            gz.finish().expect("gzip into memory")
        }
        _ => data.to_vec(),
    };
    std::fs::write(&package, &bytes).expect("write the package");
    let result = extract_small(&package, &dest);

    let mut top: Vec<String> = std::fs::read_dir(dir)
        .expect("read the work dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert!(
        top == ["dest", "p.toru"] || top == ["p.toru"],
        "something was written beside the destination: {top:?}"
    );
    let mut found = BTreeSet::new();
    if dest.exists() {
        walk(&dest, &dest, &mut found);
    }
    if let Ok(files) = result {
        let reported: BTreeSet<String> = files.into_iter().collect();
        assert_eq!(found, reported);
    }
});
