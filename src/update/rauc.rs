//! The `rauc` command line: the only code that runs it. `rauc info` (a bundle's manifest and
//! signer, verified against the keyring of the device's `system.conf`), `rauc status --detailed`
//! (the slots), `rauc install` (its progress lines as they come) and `rauc status
//! mark-good|mark-bad booted`. The CLI talks to `rauc service` over the system D-Bus
//! (`DBUS_SYSTEM_BUS_ADDRESS` selects it); this module only runs the command and reads what it
//! prints — the parsers are pure functions, tested below on RAUC 1.8's real output.
//!
//! Every process runs with `kill_on_drop`: a caller that stops waiting (the host stopping) does
//! not leave a `rauc` client behind (an install goes on inside `rauc service` regardless).

use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// `rauc info` of a large plain bundle hashes the whole file; give it time.
const INFO_TIMEOUT: Duration = Duration::from_secs(600);
/// `rauc status` and `mark-good`/`mark-bad` answer at once when the service runs.
const STATUS_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of a command's stderr kept (the reason is in its last lines).
const MAX_STDERR_BYTES: usize = 64 * 1024;

/// Why a `rauc` command did not give what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum RaucError {
    /// The command could not be started (not installed, not executable).
    #[error("cannot run {program}: {message}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        message: String,
    },
    /// It ran and failed; `message` is what it said (its error lines).
    #[error("rauc {command} failed: {message}")]
    Failed {
        /// `info`, `status`, `install`, `mark-good` …
        command: &'static str,
        /// RAUC's own words.
        message: String,
    },
    /// It did not finish in time (and was killed).
    #[error("rauc {command} did not finish within {} s", .after.as_secs())]
    TimedOut {
        /// Which.
        command: &'static str,
        /// The limit.
        after: Duration,
    },
    /// It printed something this host cannot read.
    #[error("rauc {command} printed output that could not be read: {detail}")]
    Output {
        /// Which.
        command: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl RaucError {
    /// RAUC's own words for a failed command (`None` for other errors).
    pub(crate) fn rauc_message(&self) -> Option<&str> {
        match self {
            RaucError::Failed { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// A bundle's manifest as `rauc info` shows it, and who signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct BundleInfo {
    /// The compatible string it is for.
    pub compatible: String,
    /// Its version.
    pub version: String,
    /// Its description, if the manifest has one.
    pub description: Option<String>,
    /// Its build id, if the manifest has one.
    pub build: Option<String>,
    /// The signer's subject as RAUC prints it (`CN = Toru test signer`).
    pub signer: Option<String>,
}

/// One slot of `rauc status --detailed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SlotStatus {
    /// RAUC's name for it (`rootfs.1`).
    pub name: String,
    /// Its class (`rootfs`).
    pub class: String,
    /// The bootloader's name for it (`B`); only bootable slots have one.
    pub bootname: Option<String>,
    /// `booted`, `active` or `inactive`.
    pub state: String,
    /// `good` or `bad`, as the bootloader says.
    pub boot_status: Option<String>,
    /// The version of the bundle last installed into it.
    pub version: Option<String>,
    /// When a bundle was last installed into it (RFC 3339).
    pub installed_at: Option<String>,
    /// When it was last activated (RFC 3339).
    pub activated_at: Option<String>,
}

/// `rauc status --detailed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SystemStatus {
    /// The device's compatible string (its `system.conf`).
    pub compatible: String,
    /// The booted slot's bootname (`A`).
    pub booted: String,
    /// The slot the bootloader starts next (`rootfs.1`), if it says.
    pub boot_primary: Option<String>,
    /// Every slot, in RAUC's order.
    pub slots: Vec<SlotStatus>,
}

impl SystemStatus {
    /// The bootname of the slot the bootloader starts next.
    pub(crate) fn primary_bootname(&self) -> Option<&str> {
        let primary = self.boot_primary.as_deref()?;
        self.slots
            .iter()
            .find(|s| s.name == primary)
            .and_then(|s| s.bootname.as_deref())
    }
}

/// One progress line of `rauc install` (` 40% Checking bundle done.`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Progress {
    /// 0–100.
    pub percent: u8,
    /// What it is doing.
    pub message: String,
}

/// What `rauc status mark-… booted` says of the booted slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// It works: reset its boot counter.
    Good,
    /// It does not: the bootloader must not start it again.
    Bad,
    /// The bootloader starts it next.
    Active,
}

/// The `rauc` program to run (`[update] rauc`).
#[derive(Debug, Clone)]
pub(crate) struct Rauc {
    program: String,
}

impl Rauc {
    pub(crate) fn new(program: &str) -> Rauc {
        Rauc {
            program: program.to_string(),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Run `rauc ARGS` to its end within `limit`: (succeeded, stdout, stderr).
    async fn run(
        &self,
        command: &'static str,
        args: &[&str],
        limit: Duration,
    ) -> Result<(bool, String, String), RaucError> {
        let child = self.command(args).spawn().map_err(|e| RaucError::Spawn {
            program: self.program.clone(),
            message: e.to_string(),
        })?;
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| RaucError::TimedOut {
                command,
                after: limit,
            })?
            .map_err(|e| RaucError::Spawn {
                program: self.program.clone(),
                message: e.to_string(),
            })?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `rauc info --output-format=json BUNDLE`: the manifest, once RAUC verified the signature
    /// against the device's keyring. A bundle it refuses (unsigned, another CA, damaged) is
    /// [`RaucError::Failed`] with its reason.
    pub(crate) async fn info(&self, bundle: &std::path::Path) -> Result<BundleInfo, RaucError> {
        let path = bundle.to_string_lossy();
        let (ok, stdout, stderr) = self
            .run(
                "info",
                &["info", "--output-format=json", &path],
                INFO_TIMEOUT,
            )
            .await?;
        if !ok {
            return Err(RaucError::Failed {
                command: "info",
                message: error_lines(&stderr),
            });
        }
        parse_info(&stdout, &stderr)
    }

    /// `rauc status --detailed --output-format=json`.
    pub(crate) async fn status(&self) -> Result<SystemStatus, RaucError> {
        let (ok, stdout, stderr) = self
            .run(
                "status",
                &["status", "--detailed", "--output-format=json"],
                STATUS_TIMEOUT,
            )
            .await?;
        if !ok {
            return Err(RaucError::Failed {
                command: "status",
                message: error_lines(&stderr),
            });
        }
        parse_status(&stdout)
    }

    /// `rauc status mark-good|mark-bad|mark-active booted`.
    pub(crate) async fn mark_booted(&self, mark: Mark) -> Result<(), RaucError> {
        let command = match mark {
            Mark::Good => "mark-good",
            Mark::Bad => "mark-bad",
            Mark::Active => "mark-active",
        };
        let (ok, _, stderr) = self
            .run(command, &["status", command, "booted"], STATUS_TIMEOUT)
            .await?;
        if ok {
            Ok(())
        } else {
            Err(RaucError::Failed {
                command,
                message: error_lines(&stderr),
            })
        }
    }

    /// `rauc install BUNDLE`, calling `progress` for each progress line as it comes; `Ok` once
    /// RAUC says it succeeded. No time limit: RAUC's service runs the install, the client only
    /// follows it.
    pub(crate) async fn install(
        &self,
        bundle: &std::path::Path,
        mut progress: impl FnMut(Progress),
    ) -> Result<(), RaucError> {
        let path = bundle.to_string_lossy();
        let mut child =
            self.command(&["install", &path])
                .spawn()
                .map_err(|e| RaucError::Spawn {
                    program: self.program.clone(),
                    message: e.to_string(),
                })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let read_err = async move {
            let mut text = String::new();
            if let Some(err) = stderr {
                let mut limited = err.take(MAX_STDERR_BYTES as u64);
                let _ = limited.read_to_string(&mut text).await;
            }
            text
        };
        let mut last_error = None;
        let read_out = async {
            if let Some(out) = stdout {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(p) = parse_progress(&line) {
                        progress(p);
                    } else if let Some(e) = line.trim().strip_prefix("LastError:") {
                        last_error = Some(e.trim().to_string());
                    }
                }
            }
        };
        let ((), err_text) = tokio::join!(read_out, read_err);
        let status = child.wait().await.map_err(|e| RaucError::Spawn {
            program: self.program.clone(),
            message: e.to_string(),
        })?;
        if status.success() {
            Ok(())
        } else {
            Err(RaucError::Failed {
                command: "install",
                message: last_error.unwrap_or_else(|| error_lines(&err_text)),
            })
        }
    }
}

/// What RAUC said went wrong: the lines of `stderr` that are not its log messages, joined.
pub(crate) fn error_lines(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| {
            let log_line = l.starts_with("rauc-Message:")
                || l.starts_with("input bundle:")
                || (l.starts_with("Installing `") && l.ends_with("failed"));
            !l.is_empty() && !log_line
        })
        .map(|l| match l.split_once("rauc-WARNING **:") {
            // `(rauc:123): rauc-WARNING **: 01:02:00.628: the message`
            Some((_, rest)) => rest.split_once(": ").map_or(rest, |(_, m)| m).trim(),
            None => l,
        })
        .collect();
    if lines.is_empty() {
        "it gave no reason".to_string()
    } else {
        lines.join("; ")
    }
}

/// The signer's subject from RAUC's log line `Verified … signature by 'CN = …'`.
fn signer(stderr: &str) -> Option<String> {
    stderr.lines().find_map(|l| {
        let (_, rest) = l.split_once("signature by '")?;
        rest.rsplit_once('\'').map(|(name, _)| name.to_string())
    })
}

#[derive(Deserialize)]
struct InfoJson {
    compatible: Option<String>,
    version: Option<String>,
    description: Option<String>,
    build: Option<String>,
}

/// `rauc info --output-format=json`'s stdout and the signer line of its stderr.
pub(crate) fn parse_info(stdout: &str, stderr: &str) -> Result<BundleInfo, RaucError> {
    let bad = |detail: String| RaucError::Output {
        command: "info",
        detail,
    };
    let j: InfoJson = serde_json::from_str(stdout.trim()).map_err(|e| bad(e.to_string()))?;
    Ok(BundleInfo {
        compatible: j
            .compatible
            .ok_or_else(|| bad("the manifest names no compatible".into()))?,
        version: j.version.unwrap_or_default(),
        description: j.description,
        build: j.build,
        signer: signer(stderr),
    })
}

/// `rauc status --detailed --output-format=json`'s stdout.
pub(crate) fn parse_status(stdout: &str) -> Result<SystemStatus, RaucError> {
    use serde_json::Value;
    let bad = |detail: String| RaucError::Output {
        command: "status",
        detail,
    };
    let v: Value = serde_json::from_str(stdout.trim()).map_err(|e| bad(e.to_string()))?;
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let mut slots = Vec::new();
    // `"slots": [{"rootfs.1": {…}}, {"rootfs.0": {…}}]`
    for entry in v
        .get("slots")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(map) = entry.as_object() else {
            continue;
        };
        for (name, s) in map {
            let status = s.get("slot_status");
            let nested =
                |a: &str, b: &str| status.and_then(|st| st.get(a)).and_then(|x| text(x, b));
            slots.push(SlotStatus {
                name: name.clone(),
                class: text(s, "class").unwrap_or_default(),
                bootname: text(s, "bootname"),
                state: text(s, "state").unwrap_or_default(),
                boot_status: text(s, "boot_status"),
                version: nested("bundle", "version"),
                installed_at: nested("installed", "timestamp"),
                activated_at: nested("activated", "timestamp"),
            });
        }
    }
    Ok(SystemStatus {
        compatible: text(&v, "compatible").unwrap_or_default(),
        booted: text(&v, "booted").ok_or_else(|| bad("no booted slot".into()))?,
        boot_primary: text(&v, "boot_primary"),
        slots,
    })
}

/// A progress line of `rauc install` (`  0% Installing`, `100% Installing done.`).
pub(crate) fn parse_progress(line: &str) -> Option<Progress> {
    let (percent, message) = line.trim_start().split_once("% ")?;
    let percent: u8 = percent.parse().ok().filter(|p| *p <= 100)?;
    Some(Progress {
        percent,
        message: message.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// RAUC 1.8 on a plain bundle signed by the test CA.
    const INFO_OUT: &str = r#"{"compatible":"toru-test","version":"2.0.0","description":null,"build":null,"hooks":[],"images":[{"rootfs":{"variant":null,"filename":"rootfs.ext4","checksum":"6c5f","size":1048576,"hooks":[],"adaptive":[]}}]}"#;
    const INFO_ERR: &str = "rauc-Message: 01:03:24.347: Reading bundle: /tmp/upx/b1.raucb\n\
        rauc-Message: 01:03:24.364: Verifying bundle signature... \n\
        rauc-Message: 01:03:24.366: Verified detached signature by 'CN = Toru test signer'\n";

    #[test]
    fn info_gives_the_manifest_and_the_signer() {
        let i = parse_info(INFO_OUT, INFO_ERR).unwrap();
        assert_eq!(i.compatible, "toru-test");
        assert_eq!(i.version, "2.0.0");
        assert_eq!(i.description, None);
        assert_eq!(i.signer.as_deref(), Some("CN = Toru test signer"));
        let inline = "rauc-Message: x: Verified inline signature by 'CN = a, O = b's'\n";
        assert_eq!(signer(inline).as_deref(), Some("CN = a, O = b's"));
        assert!(parse_info("not json", "").is_err());
        assert!(
            parse_info(r#"{"version":"1"}"#, "").is_err(),
            "no compatible"
        );
    }

    #[test]
    fn refusals_keep_rauc_s_reason_without_its_log_lines() {
        let other_ca = "rauc-Message: 01:03:30.278: Reading bundle: /tmp/upx/other-ca.raucb\n\
            rauc-Message: 01:03:30.287: Verifying bundle signature... \n\
            signature verification failed: Verify error: unable to get local issuer certificate\n";
        assert_eq!(
            error_lines(other_ca),
            "signature verification failed: Verify error: unable to get local issuer certificate"
        );
        let unsigned = "rauc-Message: 01:03:30.379: Reading bundle: /tmp/upx/unsigned.raucb\n\
            Invalid bundle format: Signature size is 0\n";
        assert_eq!(
            error_lines(unsigned),
            "Invalid bundle format: Signature size is 0"
        );
        let warning = "\n(rauc:9755): rauc-WARNING **: 01:02:00.628: Failed mounting bundle: \
            Failed to open /dev/mapper/control: No such file or directory\n\
            Installing `/tmp/x.raucb` failed\n";
        assert_eq!(
            error_lines(warning),
            "Failed mounting bundle: Failed to open /dev/mapper/control: No such file or directory"
        );
        assert_eq!(error_lines(""), "it gave no reason");
    }

    #[test]
    fn status_lists_the_slots_with_their_bundle_and_times() {
        let out = r#"{"compatible":"toru-test","variant":"","booted":"A","boot_primary":"rootfs.1","slots":[{"rootfs.1":{"class":"rootfs","device":"/tmp/upx/slotB.img","type":"ext4","bootname":"B","state":"inactive","parent":null,"mountpoint":null,"boot_status":"bad","slot_status":{"bundle":{"compatible":"toru-test","version":"2.0.0"},"checksum":{"sha256":"6c5f","size":1048576},"installed":{"timestamp":"2026-12-02T01:03:41Z","count":1},"activated":{"timestamp":"2026-12-02T01:03:41Z","count":1},"status":"ok"}}},{"rootfs.0":{"class":"rootfs","device":"/tmp/upx/slotA.img","type":"ext4","bootname":"A","state":"booted","parent":null,"mountpoint":null,"boot_status":"good","slot_status":{"bundle":{"compatible":null}}}}]}"#;
        let s = parse_status(out).unwrap();
        assert_eq!(s.compatible, "toru-test");
        assert_eq!(s.booted, "A");
        assert_eq!(s.primary_bootname(), Some("B"));
        assert_eq!(s.slots.len(), 2);
        let b = &s.slots[0];
        assert_eq!(
            (b.name.as_str(), b.bootname.as_deref(), b.state.as_str()),
            ("rootfs.1", Some("B"), "inactive")
        );
        assert_eq!(b.boot_status.as_deref(), Some("bad"));
        assert_eq!(b.version.as_deref(), Some("2.0.0"));
        assert_eq!(b.installed_at.as_deref(), Some("2026-12-02T01:03:41Z"));
        let a = &s.slots[1];
        assert_eq!(
            (a.version.as_deref(), a.installed_at.as_deref()),
            (None, None)
        );
        assert!(parse_status(r#"{"compatible":"x"}"#).is_err(), "no booted");
    }

    #[test]
    fn progress_lines_are_read_and_others_are_not() {
        assert_eq!(
            parse_progress(" 40% Checking bundle done."),
            Some(Progress {
                percent: 40,
                message: "Checking bundle done.".into()
            })
        );
        assert_eq!(
            parse_progress("100% Installing done.").unwrap().percent,
            100
        );
        assert_eq!(parse_progress("  0% Installing").unwrap().percent, 0);
        assert_eq!(parse_progress("installing"), None);
        assert_eq!(parse_progress("LastError: 5% of nothing"), None);
        assert_eq!(parse_progress("101% no"), None);
    }
}
