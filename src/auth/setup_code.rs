//! The one-time setup code: on a first start (no `admin` user) the host writes a code to
//! `<data-dir>/setup-code` (mode 0600) and logs it; whoever can read the log or the file can set
//! the admin password from the web UI. Setting the admin password by any path removes the file.
//!
//! Called by startup ([`ensure_setup_code`]), `login` (check a code, remove the file) and the
//! admin commands ([`remove_setup_code`] after `toru passwd`). Owns the file; never stores the
//! code anywhere else.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{ADMIN, AuthError, random_bytes};
use crate::app::App;

/// File in the data dir holding the setup code until setup completes (mode 0600).
pub(crate) const SETUP_CODE_FILE: &str = "setup-code";

/// Setup-code alphabet: no 0/O, 1/I/L, so it is easy to read off a serial console and type.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
const CODE_GROUPS: usize = 3;
const CODE_GROUP_LEN: usize = 4;

fn setup_code_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SETUP_CODE_FILE)
}

fn new_setup_code() -> Result<String, AuthError> {
    let raw = random_bytes::<{ CODE_GROUPS * CODE_GROUP_LEN }>()?;
    let mut code = String::new();
    for (i, b) in raw.iter().enumerate() {
        if i > 0 && i % CODE_GROUP_LEN == 0 {
            code.push('-');
        }
        // 256 % 31 != 0: a slight bias toward the first letters, irrelevant for ~59 bits.
        code.push(char::from(
            CODE_ALPHABET[usize::from(*b) % CODE_ALPHABET.len()],
        ));
    }
    Ok(code)
}

/// Uppercase, without dashes and spaces (what users type varies).
fn normalize_code(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn well_formed_code(s: &str) -> bool {
    let n = normalize_code(s);
    n.len() == CODE_GROUPS * CODE_GROUP_LEN && n.bytes().all(|b| CODE_ALPHABET.contains(&b))
}

/// Compare without an early exit (the setup code is short enough that timing could leak it).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// On start: if there is no `admin` user, make sure a setup code exists in
/// `<data-dir>/setup-code` (mode 0600; an existing one is kept so earlier instructions stay
/// valid), log how to use it, and return it. With an admin, remove a stale code file, return `None`.
pub(crate) async fn ensure_setup_code(app: &App) -> Result<Option<String>, AuthError> {
    let path = setup_code_path(&app.config.data_dir);
    if app.store.refuses_writes() {
        // The store's file is not in use: it may well hold an admin. No new setup code (and no
        // setup) until an admin has decided what to do with the file.
        log::warn!("no setup code: the store cannot be used (see the store's health)");
        return Ok(None);
    }
    if app.store.user(ADMIN)?.is_some() {
        let _ = std::fs::remove_file(&path);
        return Ok(None);
    }
    let code = match std::fs::read_to_string(&path) {
        Ok(existing) if well_formed_code(&existing) => existing.trim().to_string(),
        _ => {
            let code = new_setup_code()?;
            write_private(&path, &format!("{code}\n")).map_err(|source| AuthError::SetupFile {
                path: path.clone(),
                source,
            })?;
            code
        }
    };
    let listen = app.config.listen;
    let where_ = if listen.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "this-device".into());
        format!("http://{host}.local:{}/", listen.port())
    } else {
        format!("http://{listen}/")
    };
    log::warn!(
        "No admin account yet. Open {where_} and enter setup code {code} (also in {}), or run `toru passwd`.",
        path.display()
    );
    Ok(Some(code))
}

/// Whether `given` is the current setup code in `data_dir`.
pub(super) fn setup_code_matches(data_dir: &Path, given: &str) -> bool {
    match std::fs::read_to_string(setup_code_path(data_dir)) {
        Ok(code) if well_formed_code(&code) => constant_time_eq(
            normalize_code(&code).as_bytes(),
            normalize_code(given).as_bytes(),
        ),
        _ => false,
    }
}

/// Setup is complete (an admin password is set): the code is no longer valid anywhere.
pub(crate) fn remove_setup_code(data_dir: &Path) {
    let _ = std::fs::remove_file(setup_code_path(data_dir));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_codes_are_easy_to_type() {
        let c = new_setup_code().unwrap();
        assert_eq!(c.len(), 14, "{c}");
        assert_eq!(c.split('-').count(), 3);
        assert!(well_formed_code(&c));
        assert!(!c.contains(['0', 'O', '1', 'I', 'L']));
        assert!(well_formed_code(&c.to_lowercase().replace('-', " ")));
        assert!(!well_formed_code("ABCD-EFGH"));
        assert!(!well_formed_code("ABCD-EFGH-IJK0"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn setup_code_file_is_private_and_matches_loosely() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = super::super::testing::TempDir::new("code");
        let path = setup_code_path(dir.path());
        write_private(&path, "ABCD-EFGH-JKMN\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(setup_code_matches(dir.path(), "abcd efgh jkmn"));
        assert!(setup_code_matches(dir.path(), "ABCDEFGHJKMN"));
        assert!(!setup_code_matches(dir.path(), "ABCD-EFGH-JKMP"));
        assert!(!setup_code_matches(dir.path(), ""));
        remove_setup_code(dir.path());
        assert!(
            !setup_code_matches(dir.path(), "ABCD-EFGH-JKMN"),
            "no file, no setup"
        );
    }
}
