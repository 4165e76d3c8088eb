//! A small filesystem of its own for a test that fills a disk: a tmpfs mounted for the test's
//! life (root only; callers check [`crate::is_root`]-style conditions and skip visibly), and how
//! many bytes are still free on one.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a directory until dropped (then unmounted lazily).
#[derive(Debug)]
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `size` (`"2m"`, `"64m"`) with `mode` (`"0700"`) on `dir`, creating it.
    /// Panics if it cannot (a test that needs one has checked that it runs as root).
    pub fn mount(dir: &Path, size: &str, mode: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode={mode}"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir` (`df`'s "avail").
pub fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("run df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df of {}: {:?}", dir.display(), out))
}
