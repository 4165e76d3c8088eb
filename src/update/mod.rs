//! Whole-device A/B updates through RAUC, the host's side (docs/UPDATES.md): receive a bundle,
//! have RAUC check it, install it into the other slot, and — after the reboot — decide whether
//! the new system is healthy before its slot is marked good. Owns the staged bundle (one at a
//! time, under `<data-dir>/updates/`), the install under way and the start-up health gate.
//!
//! - `rauc`: the only code that runs the `rauc` command (info, status, install, mark-good/bad).
//! - `policy`: the health gate as a state machine (facts and plugin states in, actions out, no
//!   I/O); `gate` (below, [`Updates::run_gate`]) runs it: `rauc status`, the boot id, the store's
//!   pending record, the supervisor's plugin states and a timer in, `rauc`, the store and the
//!   reboot command out.
//!
//! Called by `http::update` (the API), `admin` (the control socket: `toru system update`) and
//! `run` (the gate, once the host is READY). Uses the store (records in `store::system_update`)
//! and asks the supervisor for plugin states; never names the HTTP library.
//! With `[update] enabled = false` nothing here runs `rauc`: every write answers
//! [`UpdateError::Disabled`].

pub(crate) mod policy;
pub(crate) mod rauc;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::rc::Rc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use self::policy::{Action, Facts, Gate, Phase, PluginHealth};
use self::rauc::{BundleInfo, Mark, Progress, Rauc, RaucError};
use crate::config::Config;
use crate::store::{
    EventKind, NewEvent, PendingSystemUpdate, Store, StoreError, SystemUpdateOutcome,
    SystemUpdateResult, UpdateAttempt,
};
use crate::supervisor::{PluginState, Supervisor};

/// Tries of `rauc status` when the gate starts (the service may still be starting), and the
/// first pause between them (doubled each time).
const STATUS_TRIES: u32 = 5;
const STATUS_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Why an update operation did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpdateError {
    /// `[update] enabled = false`.
    #[error("updates are not available on this device ([update] enabled is false)")]
    Disabled,
    /// RAUC refused the bundle, or it is for another device; nothing was installed.
    #[error("{message}")]
    Refused {
        /// `unsigned`, `untrusted_signer`, `wrong_compatible`, `invalid_bundle`.
        code: &'static str,
        /// For people, with RAUC's reason.
        message: String,
    },
    /// Something else is under way (an upload, an install, the check of a new system).
    #[error("{0}")]
    Busy(String),
    /// The bundle is larger than `[update] max_bundle_bytes`.
    #[error("the bundle is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// No staged bundle with this token.
    #[error("no uploaded bundle {0}: it was installed, cancelled or replaced by another upload")]
    NoUpload(String),
    /// The disk is full.
    #[error("the disk is full ({0}); nothing was installed")]
    DiskFull(String),
    /// A file operation failed.
    #[error("{0}")]
    Io(String),
    /// `rauc` could not be run or failed.
    #[error(transparent)]
    Rauc(#[from] RaucError),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl UpdateError {
    fn io(doing: &str, e: std::io::Error) -> UpdateError {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            UpdateError::DiskFull(doing.to_owned())
        } else {
            UpdateError::Io(format!("{doing}: {e}"))
        }
    }

    /// The HTTP status this error answers with.
    pub(crate) fn status(&self) -> u16 {
        match self {
            UpdateError::Disabled | UpdateError::Busy(_) => 409,
            UpdateError::Refused { .. } => 422,
            UpdateError::TooLarge(_) => 413,
            UpdateError::NoUpload(_) => 404,
            UpdateError::DiskFull(_) | UpdateError::Store(StoreError::DiskFull(_)) => 507,
            UpdateError::Rauc(_) => 502,
            UpdateError::Store(StoreError::Degraded | StoreError::Unavailable) => 503,
            UpdateError::Io(_) | UpdateError::Store(_) => 500,
        }
    }

    /// The short code the API answers with.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            UpdateError::Disabled => "updates_disabled",
            UpdateError::Refused { code, .. } => code,
            UpdateError::Busy(_) => "busy",
            UpdateError::TooLarge(_) => "too_large",
            UpdateError::NoUpload(_) => "no_upload",
            UpdateError::DiskFull(_) | UpdateError::Store(StoreError::DiskFull(_)) => {
                "storage_full"
            }
            UpdateError::Rauc(_) => "rauc_failed",
            UpdateError::Io(_) | UpdateError::Store(_) => "internal",
        }
    }
}

/// The refusal for a bundle `rauc info` did not accept, by what RAUC said.
fn refusal(message: &str) -> UpdateError {
    let lower = message.to_ascii_lowercase();
    let (code, why) = if lower.contains("signature size is 0") || lower.contains("no signature") {
        ("unsigned", "the bundle is not signed")
    } else if lower.contains("signature") && (lower.contains("verif") || lower.contains("cms")) {
        (
            "untrusted_signer",
            "the bundle is not signed by a certificate this device trusts",
        )
    } else {
        ("invalid_bundle", "RAUC cannot read the bundle")
    };
    UpdateError::Refused {
        code,
        message: format!("{why}; nothing was installed (RAUC: {message})"),
    }
}

/// A file under `<data-dir>/updates/`, removed when dropped.
#[derive(Debug)]
struct StagedFile(PathBuf);

impl Drop for StagedFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Clears the "an upload is arriving" flag however the upload ends.
#[derive(Debug)]
struct UploadSlot(Rc<Inner>);

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.0.uploading.set(false);
    }
}

/// A bundle arriving: written to its staging file as it comes, within the size limit. Dropped
/// unfinished, its file goes.
#[derive(Debug)]
pub(crate) struct BundleUpload {
    token: String,
    file: std::fs::File,
    staged: StagedFile,
    bytes: u64,
    limit: u64,
    _slot: UploadSlot,
}

impl BundleUpload {
    /// Append `chunk`. Fails past the size limit or when the disk is full.
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<(), UpdateError> {
        self.bytes += chunk.len() as u64;
        if self.bytes > self.limit {
            return Err(UpdateError::TooLarge(self.limit));
        }
        self.file
            .write_all(chunk)
            .map_err(|e| UpdateError::io("writing the bundle", e))
    }
}

/// What an uploaded bundle is, shown before it is installed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Preview {
    /// The token to install or cancel it with.
    pub token: String,
    /// The bundle's version.
    pub version: String,
    /// The compatible string it is for (this device's).
    pub compatible: String,
    /// Who signed it, as RAUC names the certificate.
    pub signer: Option<String>,
    /// Its description, if any.
    pub description: Option<String>,
    /// Its build id, if any.
    pub build: Option<String>,
    /// Its size in bytes.
    pub bytes: u64,
}

/// A checked bundle waiting for its install.
#[derive(Debug)]
struct Staged {
    preview: Preview,
    file: StagedFile,
}

/// How the install is going (this run of the host).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum InstallState {
    /// `rauc install` runs.
    Running,
    /// It succeeded: reboot to switch.
    Done,
    /// It failed (`error` says why).
    Failed,
}

/// The install under way or the last one of this run, for the API.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InstallView {
    /// The upload's token.
    pub token: String,
    /// The bundle's version.
    pub version: String,
    /// Running, done or failed.
    pub state: InstallState,
    /// RAUC's last progress figure (0–100).
    pub percent: u8,
    /// RAUC's last progress line.
    pub message: String,
    /// Why it failed.
    pub error: Option<String>,
    /// When it began.
    pub started_at: DateTime<Utc>,
}

/// The health gate as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
enum GateView {
    /// `[update] enabled = false`, or the host is not READY yet.
    NotStarted,
    /// The gate could not start (`rauc status` or the boot id failed).
    Error { reason: String },
    /// See [`Phase`].
    #[serde(untagged)]
    Phase(Phase),
}

#[derive(Debug)]
struct Inner {
    config: Config,
    store: Store,
    supervisor: Supervisor,
    rauc: Rauc,
    /// An upload is arriving (one at a time).
    uploading: Cell<bool>,
    staged: RefCell<Option<Staged>>,
    install: RefCell<Option<InstallView>>,
    gate: RefCell<GateView>,
    /// Problems of the gate's own actions (a failed mark-good), shown by the API.
    gate_problem: RefCell<Option<String>>,
}

/// Whole-device updates; cheap to clone, used on the runtime thread only.
#[derive(Debug, Clone)]
pub(crate) struct Updates {
    inner: Rc<Inner>,
}

impl Updates {
    /// The update service for `config`. When enabled, bundles a previous run left under
    /// `<data-dir>/updates/` are removed (staged bundles do not outlive the host).
    pub(crate) fn new(config: Config, store: Store, supervisor: Supervisor) -> Updates {
        let rauc = Rauc::new(&config.update.rauc);
        let updates = Updates {
            inner: Rc::new(Inner {
                config,
                store,
                supervisor,
                rauc,
                uploading: Cell::new(false),
                staged: RefCell::new(None),
                install: RefCell::new(None),
                gate: RefCell::new(GateView::NotStarted),
                gate_problem: RefCell::new(None),
            }),
        };
        if updates.enabled() {
            let dir = updates.dir();
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        updates
    }

    /// Whether updates are offered here (`[update] enabled`).
    pub(crate) fn enabled(&self) -> bool {
        self.inner.config.update.enabled
    }

    /// `<data-dir>/updates`: where bundles are staged.
    fn dir(&self) -> PathBuf {
        self.inner.config.data_dir.join("updates")
    }

    fn need_enabled(&self) -> Result<(), UpdateError> {
        if self.enabled() {
            Ok(())
        } else {
            Err(UpdateError::Disabled)
        }
    }

    fn boot_id(&self) -> Result<String, String> {
        let file = &self.inner.config.update.boot_id_file;
        std::fs::read_to_string(file)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("cannot read the boot id from {}: {e}", file.display()))
    }

    fn installing(&self) -> bool {
        matches!(
            self.inner.install.borrow().as_ref().map(|i| &i.state),
            Some(InstallState::Running)
        )
    }

    /// Everything the API shows: slots (from `rauc status`), the gate, the pending update, the
    /// last result, the install under way and the staged bundle.
    pub(crate) async fn status(&self) -> Value {
        let (status, status_error) = if self.enabled() {
            match self.inner.rauc.status().await {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e.to_string())),
            }
        } else {
            (None, None)
        };
        // Read after the await: the records and the install below are of one moment.
        let records = self.inner.store.system_update().unwrap_or_default();
        let mut v = json!({
            "enabled": self.enabled(),
            "max_bundle_bytes": self.inner.config.update.max_bundle_bytes,
            "pending": records.pending,
            "last_result": records.last_result,
        });
        if !self.enabled() {
            v["message"] = json!("updates are not available on this device");
            return v;
        }
        v["compatible"] = json!(status.as_ref().map(|s| &s.compatible));
        v["booted"] = json!(status.as_ref().map(|s| &s.booted));
        v["boot_primary"] = json!(status.as_ref().and_then(|s| s.primary_bootname()));
        v["slots"] = json!(status.as_ref().map(|s| &s.slots));
        v["status_error"] = json!(status_error);
        v["boot_id"] = json!(self.boot_id().ok());
        v["gate"] = json!(&*self.inner.gate.borrow());
        v["gate_problem"] = json!(&*self.inner.gate_problem.borrow());
        v["install"] = json!(&*self.inner.install.borrow());
        v["staged"] = json!(self.inner.staged.borrow().as_ref().map(|s| &s.preview));
        v
    }

    /// Start receiving a bundle (one at a time; a bundle staged before is dropped).
    pub(crate) fn begin_upload(&self) -> Result<BundleUpload, UpdateError> {
        self.need_enabled()?;
        if self.installing() {
            return Err(UpdateError::Busy(
                "an update is being installed; wait until it is done".into(),
            ));
        }
        if self.inner.uploading.replace(true) {
            return Err(UpdateError::Busy(
                "another bundle is being uploaded; wait until it is done".into(),
            ));
        }
        let slot = UploadSlot(self.inner.clone());
        drop(self.inner.staged.borrow_mut().take());
        let dir = self.dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| UpdateError::io("creating the staging folder", e))?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let path = dir.join(format!("{token}.raucb"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| UpdateError::io("creating the bundle file", e))?;
        Ok(BundleUpload {
            token,
            file,
            staged: StagedFile(path),
            bytes: 0,
            limit: self.inner.config.update.max_bundle_bytes,
            _slot: slot,
        })
    }

    /// The bundle has arrived: RAUC checks its signature against the device's keyring and reads
    /// its manifest; a bundle for another compatible string is refused here too. Staged until
    /// installed, cancelled or replaced.
    pub(crate) async fn finish_upload(&self, up: BundleUpload) -> Result<Preview, UpdateError> {
        let BundleUpload {
            token,
            file,
            staged,
            bytes,
            _slot,
            ..
        } = up;
        // No fsync: RAUC reads it at once (from the page cache), and a staged bundle does not
        // outlive the host anyway.
        drop(file);
        let info: BundleInfo = match self.inner.rauc.info(&staged.0).await {
            Ok(i) => i,
            Err(RaucError::Failed { message, .. }) => return Err(refusal(&message)),
            Err(e) => return Err(e.into()),
        };
        let device = self.inner.rauc.status().await?.compatible;
        if info.compatible != device {
            return Err(UpdateError::Refused {
                code: "wrong_compatible",
                message: format!(
                    "this bundle is for {:?}, this device is {device:?}; nothing was installed",
                    info.compatible
                ),
            });
        }
        let preview = Preview {
            token,
            version: info.version,
            compatible: info.compatible,
            signer: info.signer,
            description: info.description,
            build: info.build,
            bytes,
        };
        *self.inner.staged.borrow_mut() = Some(Staged {
            preview: preview.clone(),
            file: staged,
        });
        log::info!(
            "update bundle {} staged: version {}, signed by {}",
            preview.token,
            preview.version,
            preview.signer.as_deref().unwrap_or("(unknown)")
        );
        Ok(preview)
    }

    /// Forget the staged bundle `token`; whether there was one.
    pub(crate) fn cancel(&self, token: &str) -> bool {
        let mut staged = self.inner.staged.borrow_mut();
        if staged.as_ref().is_some_and(|s| s.preview.token == token) {
            *staged = None;
            true
        } else {
            false
        }
    }

    /// Install the staged bundle `token` into the other slot: the pending update is recorded
    /// first (durable), then `rauc install` runs on its own task, its progress in
    /// [`Updates::status`]. Answers once it started.
    pub(crate) async fn start_install(&self, token: &str) -> Result<InstallView, UpdateError> {
        self.need_enabled()?;
        if self.installing() {
            return Err(UpdateError::Busy(
                "an update is being installed already".into(),
            ));
        }
        if matches!(
            &*self.inner.gate.borrow(),
            GateView::Phase(Phase::Checking { .. })
        ) {
            return Err(UpdateError::Busy(
                "this system is still being checked after the last update; wait until it is \
                 marked good"
                    .into(),
            ));
        }
        let staged_token = self
            .inner
            .staged
            .borrow()
            .as_ref()
            .map(|s| s.preview.token.clone());
        if staged_token.as_deref() != Some(token) {
            return Err(UpdateError::NoUpload(token.to_string()));
        }
        let status = self.inner.rauc.status().await?;
        let boot_id = self.boot_id().map_err(UpdateError::Io)?;
        let booted = status.booted.clone();
        let class = status
            .slots
            .iter()
            .find(|s| s.bootname.as_deref() == Some(booted.as_str()))
            .map(|s| s.class.clone())
            .unwrap_or_default();
        let target = status
            .slots
            .iter()
            .find(|s| s.class == class && s.bootname.as_deref().is_some_and(|b| b != booted))
            .and_then(|s| s.bootname.clone())
            .ok_or_else(|| {
                UpdateError::Io(format!(
                    "rauc status shows no other bootable {class} slot than the booted {booted}"
                ))
            })?;
        // Taken only now: a staged bundle replaced while `rauc status` ran is not installed.
        let Some(staged) = self
            .inner
            .staged
            .borrow_mut()
            .take_if(|s| s.preview.token == token)
        else {
            return Err(UpdateError::NoUpload(token.to_string()));
        };
        let plugins: Vec<String> = self
            .inner
            .supervisor
            .plugins()
            .into_iter()
            .filter(|p| p.enabled && p.state == PluginState::Ready)
            .map(|p| p.id)
            .collect();
        let pending = PendingSystemUpdate {
            token: token.to_string(),
            version: staged.preview.version.clone(),
            compatible: staged.preview.compatible.clone(),
            signer: staged.preview.signer.clone(),
            from_slot: booted,
            to_slot: target,
            boot_id,
            plugins,
            started_at: crate::clock::now(),
            installed_at: None,
            attempts: Vec::new(),
        };
        self.inner
            .store
            .put_pending_system_update(pending.clone(), None)
            .await?;
        let view = InstallView {
            token: token.to_string(),
            version: pending.version.clone(),
            state: InstallState::Running,
            percent: 0,
            message: "starting".into(),
            error: None,
            started_at: pending.started_at,
        };
        *self.inner.install.borrow_mut() = Some(view.clone());
        log::info!(
            "installing update {} into slot {} (from slot {})",
            pending.version,
            pending.to_slot,
            pending.from_slot
        );
        let this = self.clone();
        tokio::task::spawn_local(async move { this.install(staged, pending).await });
        Ok(view)
    }

    /// Run `rauc install` and record how it ended. The bundle file goes afterwards.
    async fn install(self, staged: Staged, mut pending: PendingSystemUpdate) {
        let inner = &self.inner;
        let result = inner
            .rauc
            .install(&staged.file.0, |p: Progress| {
                if let Some(i) = inner.install.borrow_mut().as_mut() {
                    i.percent = p.percent;
                    i.message = p.message;
                }
            })
            .await;
        drop(staged);
        let (state, error) = match result {
            Ok(()) => {
                // The slot RAUC activated is the one the bootloader starts next.
                if let Ok(s) = inner.rauc.status().await
                    && let Some(primary) = s.primary_bootname()
                {
                    pending.to_slot = primary.to_string();
                }
                pending.installed_at = Some(crate::clock::now());
                let event = NewEvent {
                    kind: EventKind::SystemUpdateInstalled,
                    message: format!(
                        "update {} was installed into slot {}; reboot to switch to it",
                        pending.version, pending.to_slot
                    ),
                    details: json!({"version": pending.version, "from_slot": pending.from_slot,
                        "to_slot": pending.to_slot, "signer": pending.signer}),
                };
                log::info!("{}", event.message);
                match inner
                    .store
                    .put_pending_system_update(pending, Some(event))
                    .await
                {
                    Ok(()) => {
                        *inner.gate.borrow_mut() = GateView::Phase(Phase::AwaitingReboot);
                        (InstallState::Done, None)
                    }
                    Err(e) => {
                        let why = format!(
                            "the update was installed but could not be recorded ({e}); the new \
                             system will not be checked before it is marked good"
                        );
                        log::error!("{why}");
                        (InstallState::Failed, Some(why))
                    }
                }
            }
            Err(e) => {
                let reason = format!("the install failed: {}", error_text(&e));
                log::error!("update {}: {reason}", pending.version);
                self.finish(&pending, SystemUpdateOutcome::Failed, Some(reason.clone()))
                    .await;
                (InstallState::Failed, Some(reason))
            }
        };
        if let Some(i) = inner.install.borrow_mut().as_mut() {
            i.state = state;
            i.error = error;
        }
    }

    /// End the pending update with `outcome` (store, event, log).
    async fn finish(
        &self,
        pending: &PendingSystemUpdate,
        outcome: SystemUpdateOutcome,
        reason: Option<String>,
    ) {
        let (kind, message) = match (&outcome, &reason) {
            (SystemUpdateOutcome::Ok, _) => (
                EventKind::SystemUpdateSucceeded,
                format!(
                    "update to {} succeeded: slot {} is marked good",
                    pending.version, pending.to_slot
                ),
            ),
            (SystemUpdateOutcome::Failed, r) => (
                EventKind::SystemUpdateFailed,
                format!(
                    "update to {} failed: {}",
                    pending.version,
                    r.as_deref().unwrap_or("no reason")
                ),
            ),
        };
        let result = SystemUpdateResult {
            result: outcome,
            version: pending.version.clone(),
            from_slot: pending.from_slot.clone(),
            to_slot: pending.to_slot.clone(),
            reason: reason.clone(),
            at: crate::clock::now(),
        };
        let event = NewEvent {
            kind,
            message: message.clone(),
            details: json!({"version": pending.version, "from_slot": pending.from_slot,
                "to_slot": pending.to_slot, "reason": reason}),
        };
        match outcome {
            SystemUpdateOutcome::Ok => log::info!("{message}"),
            SystemUpdateOutcome::Failed => log::error!("{message}"),
        }
        if let Err(e) = self
            .inner
            .store
            .finish_system_update(result, Some(event))
            .await
        {
            log::error!("cannot record the end of the update: {e}");
        }
    }

    /// Run the reboot command (`[update] reboot_command`).
    pub(crate) async fn reboot(&self) -> Result<(), UpdateError> {
        self.need_enabled()?;
        let cmd = &self.inner.config.update.reboot_command;
        let Some((program, args)) = cmd.split_first() else {
            return Err(UpdateError::Io("no reboot command is configured".into()));
        };
        log::warn!("rebooting: {}", cmd.join(" "));
        let out = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| UpdateError::Io(format!("cannot run {program}: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(UpdateError::Io(format!(
                "{} failed ({}): {}",
                cmd.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// The start-up health gate (see `policy`): once the host is READY, read `rauc status`, the
    /// boot id and the pending update, and act — mark the booted slot good, check the new system
    /// (its watched plugins, within `[update] health_timeout_ms`) or end an update the device
    /// fell back from. Runs until it has decided; the host aborts it when it stops.
    pub(crate) async fn run_gate(self) {
        if !self.enabled() {
            return;
        }
        let status = {
            let mut pause = STATUS_RETRY_PAUSE;
            let mut tries = 0;
            loop {
                tries += 1;
                match self.inner.rauc.status().await {
                    Ok(s) => break s,
                    Err(e) if tries >= STATUS_TRIES => {
                        let reason = format!("the update check could not start: {e}");
                        log::error!("{reason}");
                        *self.inner.gate.borrow_mut() = GateView::Error { reason };
                        return;
                    }
                    Err(e) => {
                        log::warn!("{e}; asking again in {pause:?}");
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                    }
                }
            }
        };
        let boot_id = match self.boot_id() {
            Ok(b) => b,
            Err(reason) => {
                log::error!("{reason}");
                *self.inner.gate.borrow_mut() = GateView::Error { reason };
                return;
            }
        };
        let pending = match self.inner.store.system_update() {
            Ok(r) => r.pending,
            Err(e) => {
                let reason = format!("cannot read the pending update: {e}");
                log::error!("{reason}");
                *self.inner.gate.borrow_mut() = GateView::Error { reason };
                return;
            }
        };
        let facts = Facts {
            booted: status.booted.clone(),
            boot_id: boot_id.clone(),
            pending,
        };
        let timeout = self.inner.config.update.health_timeout;
        let (mut gate, actions) = Gate::start(facts, timeout);
        self.show(&gate);
        match gate.phase() {
            Phase::NoUpdate => {
                log::info!(
                    "update: no update under way; marking slot {} good",
                    status.booted
                );
            }
            Phase::AwaitingReboot => log::info!("update: installed, waiting for a reboot"),
            Phase::Checking { .. } => log::info!(
                "update: this is the new system (slot {}); waiting up to {timeout:?} for plugins {:?}",
                status.booted,
                gate.watched()
            ),
            _ => {}
        }
        if !self.perform(&gate, &status.booted, &boot_id, actions).await {
            return;
        }
        if !matches!(gate.phase(), Phase::Checking { .. }) {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let changes = self.inner.supervisor.changes();
        loop {
            let notified = changes.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let health = self.plugin_health(&gate.watched());
            let actions = gate.plugins(&health);
            self.show(&gate);
            if !actions.is_empty() {
                self.perform(&gate, &status.booted, &boot_id, actions).await;
                return;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {
                    let actions = gate.timed_out();
                    self.show(&gate);
                    self.perform(&gate, &status.booted, &boot_id, actions).await;
                    return;
                }
            }
        }
    }

    fn show(&self, gate: &Gate) {
        *self.inner.gate.borrow_mut() = GateView::Phase(gate.phase().clone());
    }

    /// How each watched plugin is doing: the supervisor's state, or the store's record for a
    /// plugin the supervisor does not run (disabled by an admin, removed, or its file missing).
    fn plugin_health(&self, ids: &[String]) -> BTreeMap<String, PluginHealth> {
        let views: BTreeMap<String, _> = self
            .inner
            .supervisor
            .plugins()
            .into_iter()
            .map(|v| (v.id.clone(), v))
            .collect();
        let records = self.inner.store.plugin_records().unwrap_or_default();
        ids.iter()
            .map(|id| {
                let health = match (views.get(id), records.get(id)) {
                    (Some(v), _) if v.state == PluginState::Ready => PluginHealth::Ready,
                    (Some(v), _) if !v.enabled && v.auto_disabled.is_none() => {
                        PluginHealth::Disabled
                    }
                    (Some(v), _) if v.auto_disabled.is_some() => {
                        PluginHealth::NotReady("disabled after repeated failures".into())
                    }
                    (Some(v), _) => PluginHealth::NotReady(
                        serde_json::to_value(v.state)
                            .ok()
                            .and_then(|s| s.as_str().map(str::to_string))
                            .unwrap_or_else(|| "not ready".into()),
                    ),
                    (None, None) => PluginHealth::Removed,
                    (None, Some(r)) if !r.enabled && r.auto_disabled.is_none() => {
                        PluginHealth::Disabled
                    }
                    (None, Some(_)) => PluginHealth::NotReady("missing".into()),
                };
                (id.clone(), health)
            })
            .collect()
    }

    /// Do what the gate decided, in order. A failed mark-good stops the rest (the update is
    /// not called a success, and the slot's boot counter runs on); a failed mark-bad is logged
    /// and the reboot still happens (the boot counter then runs down). Returns whether every
    /// action succeeded.
    async fn perform(
        &self,
        gate: &Gate,
        booted: &str,
        boot_id: &str,
        actions: Vec<Action>,
    ) -> bool {
        let mut all_ok = true;
        for action in actions {
            match action {
                Action::MarkGood => {
                    if let Err(e) = self.inner.rauc.mark_booted(Mark::Good).await {
                        let why = format!("cannot mark slot {booted} good: {e}");
                        log::error!("{why}");
                        *self.inner.gate_problem.borrow_mut() = Some(why);
                        return false;
                    }
                    log::info!("update: slot {booted} marked good");
                }
                Action::MarkBad => {
                    if let Err(e) = self.inner.rauc.mark_booted(Mark::Bad).await {
                        let why = format!("cannot mark slot {booted} bad: {e}");
                        log::error!("{why}");
                        *self.inner.gate_problem.borrow_mut() = Some(why);
                        all_ok = false;
                    } else {
                        log::warn!("update: slot {booted} marked bad");
                    }
                }
                Action::MarkActive => {
                    if let Err(e) = self.inner.rauc.mark_booted(Mark::Active).await {
                        let why = format!("cannot make slot {booted} the next to boot: {e}");
                        log::error!("{why}");
                        *self.inner.gate_problem.borrow_mut() = Some(why);
                        all_ok = false;
                    } else {
                        log::info!("update: slot {booted} boots next");
                    }
                }
                Action::Reboot => {
                    if let Err(e) = self.reboot().await {
                        let why = format!("cannot reboot: {e}");
                        log::error!("{why}");
                        *self.inner.gate_problem.borrow_mut() = Some(why);
                        all_ok = false;
                    }
                }
                Action::RecordAttempt { reason } => {
                    let version = gate.pending().map_or("?", |p| p.version.as_str());
                    let event = NewEvent {
                        kind: EventKind::SystemUpdateFailed,
                        message: format!(
                            "the new system (slot {booted}, update {version}) did not become \
                             healthy: {reason}; marking it bad and rebooting into the old one"
                        ),
                        details: json!({"slot": booted, "boot_id": boot_id, "reason": reason}),
                    };
                    log::error!("{}", event.message);
                    let attempt = UpdateAttempt {
                        boot_id: boot_id.to_string(),
                        slot: booted.to_string(),
                        at: crate::clock::now(),
                        reason,
                    };
                    if let Err(e) = self
                        .inner
                        .store
                        .add_system_update_attempt(attempt, Some(event))
                        .await
                    {
                        log::error!("cannot record why the new system gave up: {e}");
                        all_ok = false;
                    }
                }
                Action::Finish { outcome, reason } => {
                    if let Some(p) = gate.pending() {
                        self.finish(p, outcome, reason).await;
                    }
                }
            }
        }
        all_ok
    }
}

/// RAUC's own words for a failed command, or the error itself.
fn error_text(e: &RaucError) -> String {
    e.rauc_message()
        .map_or_else(|| e.to_string(), str::to_string)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn refusals_say_what_rauc_found() {
        let e = refusal("Invalid bundle format: Signature size is 0");
        assert_eq!(e.code(), "unsigned");
        assert_eq!(e.status(), 422);
        let e = refusal(
            "signature verification failed: Verify error: unable to get local issuer certificate",
        );
        assert_eq!(e.code(), "untrusted_signer");
        assert!(
            e.to_string()
                .contains("unable to get local issuer certificate")
        );
        let e = refusal("Invalid bundle format: Signature size (1) exceeds bundle size");
        assert_eq!(e.code(), "invalid_bundle", "not a bundle at all");
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(UpdateError::Disabled.status(), 409);
        assert_eq!(UpdateError::TooLarge(1).status(), 413);
        assert_eq!(UpdateError::DiskFull("x".into()).code(), "storage_full");
        assert_eq!(UpdateError::DiskFull("x".into()).status(), 507);
        assert_eq!(UpdateError::NoUpload("t".into()).status(), 404);
        let full = UpdateError::io("writing", std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(full, UpdateError::DiskFull(_)));
    }
}
