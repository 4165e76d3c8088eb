//! Building `.toru` plugin packages for tests: real ones from a directory through the real
//! `toru plugin pack` ([`PackageDir`], [`pack_example`], [`PackageDir::stress`], [`PackageDir::hostile`]), and arbitrary —
//! broken — ones entry by entry ([`RawTar`]: traversal, links, devices, bombs, a manifest that is
//! not first). The format is `docs/PACKAGES.md`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::host::run_with_stdin;
use crate::{Bins, KitError, io};

/// The target triple the workspace (and so `toru`) was built for, as rustc names it.
pub const HOST_TRIPLE: &str = env!("TORU_TEST_KIT_TARGET");

/// An example plugin of `plugins/` that has a `manifest.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Example {
    /// `plugins/hello-rust` (the built `hello-rust` binary at its entry for this triple).
    HelloRust,
    /// `plugins/hello-python` (script, SDK and bundle).
    HelloPython,
}

/// A directory holding a `manifest.toml` and the files it names, packed with `toru plugin pack`.
#[derive(Debug, Clone)]
pub struct PackageDir {
    /// The directory.
    pub dir: PathBuf,
}

impl PackageDir {
    /// A fresh directory `dir` (created) with `manifest` as its `manifest.toml`.
    pub fn new(dir: &Path, manifest: &str) -> Result<PackageDir, KitError> {
        std::fs::create_dir_all(dir).map_err(io(format!("mkdir {}", dir.display())))?;
        let p = PackageDir {
            dir: dir.to_path_buf(),
        };
        p.file("manifest.toml", manifest.as_bytes())?;
        Ok(p)
    }

    /// Write `rel` (parents created) with `bytes`, mode `0644`.
    pub fn file(&self, rel: &str, bytes: &[u8]) -> Result<&PackageDir, KitError> {
        let dest = self.dir.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("mkdir {}", parent.display())))?;
        }
        std::fs::write(&dest, bytes).map_err(io(format!("write {}", dest.display())))?;
        Ok(self)
    }

    /// Copy the executable `src` to `rel` (parents created), mode `0755`.
    pub fn exe(&self, rel: &str, src: &Path) -> Result<&PackageDir, KitError> {
        use std::os::unix::fs::PermissionsExt;
        let dest = self.dir.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("mkdir {}", parent.display())))?;
        }
        std::fs::copy(src, &dest).map_err(io(format!(
            "copy {} → {}",
            src.display(),
            dest.display()
        )))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("chmod {}", dest.display())))?;
        Ok(self)
    }

    /// A package of the `stress` plugin (built binary at `stress`, with a `stress.json` beside it)
    /// claiming `id` (route `/<id>`) and `version`, misbehaving in `mode` (see `plugins/stress`),
    /// for this machine's triple; in `dir`.
    pub fn stress(
        bins: &Bins,
        dir: &Path,
        id: &str,
        version: &str,
        mode: &str,
    ) -> Result<PackageDir, KitError> {
        let manifest = format!(
            "id = \"{id}\"\nname = \"Stress ({mode})\"\nversion = \"{version}\"\nauthor = \"tests\"\n\
             icon = \"🧪\"\nroute = \"/{id}\"\nprotocol = \"1.1\"\nmin_host = \">=0.1\"\n\
             files = [\"stress.json\"]\n\n[entry]\n{HOST_TRIPLE} = \"stress\"\n"
        );
        let p = PackageDir::new(dir, &manifest)?;
        p.exe("stress", &bins.get("stress"))?;
        let cfg = serde_json::json!({"id": id, "version": version, "mode": mode, "route": format!("/{id}")});
        p.file("stress.json", cfg.to_string().as_bytes())?;
        Ok(p)
    }

    /// A package of the `hostile` plugin (built binary at `hostile`, with a `hostile.json` beside
    /// it) claiming `id` (route `/<id>`, version `0.1.0`), attacking in `mode` (see
    /// `plugins/hostile`), for this machine's triple; in `dir`. `tables` is appended to the
    /// manifest after `[entry]` (e.g. `"[permissions]\nnetwork = \"none\"\n"`); the fields of
    /// `extra` (an object: `port`, `other`, …) are added to `hostile.json`.
    pub fn hostile(
        bins: &Bins,
        dir: &Path,
        id: &str,
        mode: &str,
        tables: &str,
        extra: &serde_json::Value,
    ) -> Result<PackageDir, KitError> {
        let manifest = format!(
            "id = \"{id}\"\nname = \"Hostile ({mode})\"\nversion = \"0.1.0\"\nauthor = \"tests\"\n\
             icon = \"☠\"\nroute = \"/{id}\"\nprotocol = \"1.1\"\nmin_host = \">=0.1\"\n\
             files = [\"hostile.json\"]\n\n[entry]\n{HOST_TRIPLE} = \"hostile\"\n\n{tables}"
        );
        let p = PackageDir::new(dir, &manifest)?;
        p.exe("hostile", &bins.get("hostile"))?;
        let mut cfg = serde_json::json!({"id": id, "version": "0.1.0", "mode": mode, "route": format!("/{id}")});
        if let (Some(cfg), Some(extra)) = (cfg.as_object_mut(), extra.as_object()) {
            cfg.extend(extra.clone());
        }
        p.file("hostile.json", cfg.to_string().as_bytes())?;
        Ok(p)
    }

    /// The `manifest.toml` text.
    pub fn manifest(&self) -> Result<String, KitError> {
        let p = self.dir.join("manifest.toml");
        std::fs::read_to_string(&p).map_err(io(format!("read {}", p.display())))
    }

    /// Run `toru plugin pack DIR [--key KEY] -o OUT` (whatever its outcome).
    pub fn pack(&self, bins: &Bins, key: Option<&Path>, out: &Path) -> Result<Output, KitError> {
        let mut cmd = Command::new(bins.get("toru"));
        cmd.arg("plugin").arg("pack").arg(&self.dir);
        if let Some(k) = key {
            cmd.arg("--key").arg(k);
        }
        cmd.arg("-o").arg(out);
        run_with_stdin(cmd, None)
    }

    /// [`PackageDir::pack`] that must succeed: `Err` carries its stderr.
    pub fn pack_ok(&self, bins: &Bins, key: Option<&Path>, out: &Path) -> Result<(), KitError> {
        let o = self.pack(bins, key, out)?;
        if o.status.success() {
            Ok(())
        } else {
            Err(KitError::Io {
                what: format!(
                    "toru plugin pack {} failed: {}",
                    self.dir.display(),
                    String::from_utf8_lossy(&o.stderr)
                ),
                source: std::io::Error::other("pack failed"),
            })
        }
    }
}

/// Run `toru key generate NAME` in `dir`; returns (`NAME.key`, `NAME.pub`).
pub fn generate_key(bins: &Bins, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), KitError> {
    let mut cmd = Command::new(bins.get("toru"));
    cmd.args(["key", "generate", name]).current_dir(dir);
    let o = run_with_stdin(cmd, None)?;
    if !o.status.success() {
        return Err(KitError::Io {
            what: format!(
                "toru key generate failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            source: std::io::Error::other("key generate failed"),
        });
    }
    Ok((
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    ))
}

/// Keep, in the `[entry]` table of `manifest`, only the line for `triple` (and `any`): the
/// examples name binaries for every device, a test has only this machine's.
pub fn entry_only(manifest: &str, triple: &str) -> String {
    let mut in_entry = false;
    let mut out = String::new();
    for line in manifest.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_entry = t == "[entry]";
        } else if in_entry && t.contains('=') && !t.starts_with('#') {
            let key = t.split('=').next().unwrap_or("").trim();
            if key != triple && key != "any" {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The value of `key` in the `[entry]` table of `manifest` (a plain `key = "value"` line).
fn entry_value(manifest: &str, key: &str) -> Option<String> {
    let mut in_entry = false;
    for line in manifest.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_entry = t == "[entry]";
            continue;
        }
        if !in_entry {
            continue;
        }
        let (k, v) = t.split_once('=')?;
        if k.trim() == key {
            return Some(v.trim().trim_matches('"').to_string());
        }
    }
    None
}

/// Assemble `example` in `dir` from the repository (its `manifest.toml`, reduced to this machine's
/// entry, and its files; the built `hello-rust` for the Rust one) and pack it into `out` with
/// `toru plugin pack` (signed when `key` is given). Returns the package dir.
pub fn pack_example(
    bins: &Bins,
    example: Example,
    dir: &Path,
    key: Option<&Path>,
    out: &Path,
) -> Result<PackageDir, KitError> {
    let src = bins.repo.join(match example {
        Example::HelloRust => "plugins/hello-rust",
        Example::HelloPython => "plugins/hello-python",
    });
    let read = |p: &Path| std::fs::read(p).map_err(io(format!("read {}", p.display())));
    let manifest = String::from_utf8_lossy(&read(&src.join("manifest.toml"))?).into_owned();
    let manifest = entry_only(&manifest, HOST_TRIPLE);
    let pkg = PackageDir::new(dir, &manifest)?;
    match example {
        Example::HelloRust => {
            let entry = entry_value(&manifest, HOST_TRIPLE).ok_or_else(|| KitError::Io {
                what: format!("plugins/hello-rust/manifest.toml has no entry for {HOST_TRIPLE}"),
                source: std::io::Error::other("no entry"),
            })?;
            pkg.exe(&entry, &bins.get("hello-rust"))?;
            pkg.file("bundle.js", &read(&src.join("bundle.js"))?)?;
        }
        Example::HelloPython => {
            pkg.exe("hello-python.binary", &src.join("hello-python.binary"))?;
            pkg.file("toru_plugin.py", &read(&src.join("toru_plugin.py"))?)?;
            pkg.file("bundle.js", &read(&src.join("bundle.js"))?)?;
        }
    }
    pkg.pack_ok(bins, key, out)?;
    Ok(pkg)
}

/// Tar entry types [`RawTar::entry`] writes (the byte in the header).
pub mod kind {
    /// A regular file.
    pub const FILE: u8 = b'0';
    /// A hard link.
    pub const HARD_LINK: u8 = b'1';
    /// A symbolic link.
    pub const SYMLINK: u8 = b'2';
    /// A character device.
    pub const CHAR_DEVICE: u8 = b'3';
    /// A directory.
    pub const DIR: u8 = b'5';
    /// A FIFO.
    pub const FIFO: u8 = b'6';
}

/// A gzip-compressed tar written entry by entry with no checks at all (names with `..`, absolute
/// names, links, devices, huge files of zeros), compressed as it is written.
pub struct RawTar {
    gz: GzEncoder<Vec<u8>>,
}

impl std::fmt::Debug for RawTar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawTar")
    }
}

impl Default for RawTar {
    fn default() -> RawTar {
        RawTar::new()
    }
}

const BLOCK: usize = 512;

impl RawTar {
    /// An empty archive.
    pub fn new() -> RawTar {
        RawTar {
            gz: GzEncoder::new(Vec::new(), Compression::default()),
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        // Writing into a Vec cannot fail.
        let _ = self.gz.write_all(bytes);
    }

    fn pad(&mut self, len: u64) {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.put(&[0u8; BLOCK][..BLOCK - rem]);
        }
    }

    /// One header block: GNU format, `name` (a GNU long-name entry first when over 100 bytes),
    /// `kind`, `link` name, `mode`, claimed `size`.
    pub fn header(mut self, name: &[u8], kind: u8, link: &[u8], mode: u32, size: u64) -> RawTar {
        if name.len() > 100 {
            let mut long = name.to_vec();
            long.push(0);
            self = self.header(b"././@LongLink", b'L', b"", 0o644, long.len() as u64);
            self.put(&long);
            self.pad(long.len() as u64);
        }
        let mut h = tar::Header::new_gnu();
        if let Some(gnu) = h.as_gnu_mut() {
            let n = name.len().min(100);
            gnu.name[..n].copy_from_slice(&name[..n]);
            let l = link.len().min(100);
            gnu.linkname[..l].copy_from_slice(&link[..l]);
        }
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::new(kind));
        if kind == kind::CHAR_DEVICE {
            let _ = h.set_device_major(1);
            let _ = h.set_device_minor(3);
        }
        h.set_cksum();
        self.put(h.as_bytes());
        self
    }

    /// Any entry: a header for `data` plus the data, padded.
    pub fn entry(self, name: &[u8], kind: u8, link: &[u8], mode: u32, data: &[u8]) -> RawTar {
        let mut s = self.header(name, kind, link, mode, data.len() as u64);
        s.put(data);
        s.pad(data.len() as u64);
        s
    }

    /// A regular file, mode `0644`.
    pub fn file(self, name: &str, data: &[u8]) -> RawTar {
        self.entry(name.as_bytes(), kind::FILE, b"", 0o644, data)
    }

    /// A regular file, mode `0755`.
    pub fn exe(self, name: &str, data: &[u8]) -> RawTar {
        self.entry(name.as_bytes(), kind::FILE, b"", 0o755, data)
    }

    /// A directory entry (`name` should end with `/`).
    pub fn dir(self, name: &str) -> RawTar {
        self.entry(name.as_bytes(), kind::DIR, b"", 0o755, b"")
    }

    /// A symbolic link `name` → `target`.
    pub fn symlink(self, name: &str, target: &str) -> RawTar {
        self.entry(
            name.as_bytes(),
            kind::SYMLINK,
            target.as_bytes(),
            0o777,
            b"",
        )
    }

    /// A hard link `name` → `target`.
    pub fn hardlink(self, name: &str, target: &str) -> RawTar {
        self.entry(
            name.as_bytes(),
            kind::HARD_LINK,
            target.as_bytes(),
            0o644,
            b"",
        )
    }

    /// A character device (1, 3: `/dev/null`).
    pub fn device(self, name: &str) -> RawTar {
        self.entry(name.as_bytes(), kind::CHAR_DEVICE, b"", 0o644, b"")
    }

    /// A FIFO.
    pub fn fifo(self, name: &str) -> RawTar {
        self.entry(name.as_bytes(), kind::FIFO, b"", 0o644, b"")
    }

    /// A regular file of `size` zero bytes, streamed through gzip (a compression bomb when large:
    /// ~1 KiB compressed per MiB).
    pub fn zeros(self, name: &str, size: u64) -> RawTar {
        let mut s = self.header(name.as_bytes(), kind::FILE, b"", 0o644, size);
        let chunk = [0u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            s.put(&chunk[..n]);
            left -= n as u64;
        }
        s.pad(size);
        s
    }

    /// Raw bytes into the tar stream (before compression).
    pub fn raw(mut self, bytes: &[u8]) -> RawTar {
        self.put(bytes);
        self
    }

    /// The package: the end-of-archive blocks, compressed.
    pub fn finish(self) -> Vec<u8> {
        self.raw(&[0u8; 2 * BLOCK]).finish_without_end()
    }

    /// The compressed stream as it is, without end-of-archive blocks.
    pub fn finish_without_end(self) -> Vec<u8> {
        self.gz.finish().unwrap_or_default()
    }

    /// [`RawTar::finish`] into the file `path`.
    pub fn write_to(self, path: &Path) -> Result<(), KitError> {
        std::fs::write(path, self.finish()).map_err(io(format!("write {}", path.display())))
    }
}
