//! Package transactions: receive a package, check it, install or update it with a probation that
//! rolls a bad version back by itself, roll back on request, remove. Beside them, on the same
//! [`Packages`] handle: the trusted publisher keys (`trust`) and the plugins' settings
//! (`settings`), which the same admin surfaces manage.
//!
//! Uses the package format (`package`: manifest, archive, signatures), the settings schema
//! (`settings`), the store (records, the KV snapshot) and the supervisor (hold a plugin down,
//! start the new version, watch its probation). Called by the HTTP handlers and the control socket
//! through [`Packages`], which `App` holds; it imports neither.
//!
//! ## One transaction, step by step
//! Packages live in the packages dir (`<data-dir>/packages` unless `[packages] dir` says otherwise:
//! on the device the data dir is the writable, persistent place):
//! `<packages-dir>/<id>/<version>/` per kept version and `.staging/<token>/` per upload.
//!
//! 1. **Receive** ([`Packages::begin_upload`], [`Upload::write`], [`Packages::finish_upload`]): the
//!    package is streamed to `<packages-dir>/.staging/<token>/package.toru` (size cap while it
//!    arrives), its signature checked against the trusted keys before anything in it is parsed,
//!    then extracted with caps into `files/`; manifest, target, `min_host`, publisher, downgrade and
//!    the entry's `--metadata` are checked. The result is a [`Preview`] held under a token.
//! 2. **Confirm** ([`Packages::confirm`]): the files move to `<packages-dir>/<id>/<version>/`.
//! 3. The running version is stopped (the supervisor holds the id down).
//! 4. **Switch**, one store commit: the KV namespace is copied into the snapshot, the new version
//!    is active, the update is pending (with the settings before it), the id is bound to the
//!    package and its publisher.
//! 5. The new version starts and must stay ready for the probation (`[packages] probation_secs`).
//! 6. **Finish**, one commit: the pending update is cleared, the snapshot dropped, `installed` or
//!    `updated` recorded; versions beyond the active one and the one before are deleted.
//!    **Or roll back**: stop it, one commit restores the KV namespace and settings and makes the
//!    old version active (an install is forgotten), `update-rolled-back` says why, the old version
//!    starts.
//!
//! A host killed anywhere in this finds, at its next start ([`Packages::recover`], before any
//! plugin starts), either no pending update (the switch never committed: the old version runs;
//! or it finished: the new one runs) or a pending one, which it rolls back exactly as step 6
//! would, "the host stopped during the probation" being the reason. Staging folders and version
//! folders no record names (a version pruned by the finish commit whose folder was not deleted
//! yet) are removed then too. Operations run one at a time, each on its own
//! task: a caller that stops waiting (a closed page, an interrupted CLI) does not stop one
//! half-way.

mod error;
pub(crate) mod licenses;
mod settings;
#[cfg(test)]
mod tests;
mod trust;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::Config;
use crate::package::archive::{self, Limits};
use crate::package::manifest::{HOST_TRIPLE, Manifest};
use crate::package::sign::{self, PublicKey};
use crate::store::{
    EventKind, NewEvent, PackageRecord, PackageVersion, PendingUpdate, Store, UpdateOutcome,
};
use crate::supervisor::discovery::{self, PACKAGE_CLAIM};
use crate::supervisor::{Supervisor, package_dir};

pub(crate) use error::PackageError;
use settings::{fit_settings, schema_of};
pub(crate) use trust::{distrust_stored, trust_stored};

/// An upload not confirmed within this time is dropped.
const UPLOAD_TTL: Duration = Duration::from_secs(600);
/// Uploads staged at once (each may be as large as the package limit).
const MAX_STAGED: usize = 4;
/// The folder under the packages dir that holds uploads being checked.
const STAGING_DIR: &str = ".staging";

/// The package service; cheap to clone, runtime thread only.
#[derive(Debug, Clone)]
pub(crate) struct Packages {
    inner: Rc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    store: Store,
    supervisor: Supervisor,
    staged: RefCell<BTreeMap<String, Staged>>,
    /// One package operation at a time.
    busy: tokio::sync::Mutex<()>,
}

/// A package received and checked, waiting for a confirmation.
#[derive(Debug)]
struct Staged {
    dir: StagingDir,
    manifest: Manifest,
    key_id: Option<String>,
    entry: String,
    created: Instant,
}

/// A staging folder, removed when dropped unless its files were moved into place.
#[derive(Debug)]
struct StagingDir(PathBuf);

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// A package arriving: written to its staging folder as it comes, within the size limit.
#[derive(Debug)]
pub(crate) struct Upload {
    token: String,
    dir: StagingDir,
    file: std::fs::File,
    bytes: u64,
    limit: u64,
    signature: Option<String>,
}

impl Upload {
    /// Append `chunk`. Fails past the size limit ([`PackageError::TooLarge`]) or when the disk
    /// is full; the staging folder goes with the upload.
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<(), PackageError> {
        self.bytes += chunk.len() as u64;
        if self.bytes > self.limit {
            return Err(PackageError::TooLarge(self.limit));
        }
        self.file
            .write_all(chunk)
            .map_err(|e| PackageError::io("writing the upload", e))
    }
}

/// What an upload is, shown before the admin confirms it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Preview {
    /// The token to confirm or cancel it with.
    pub upload: String,
    /// `install`, `update`, `downgrade` or `reinstall`.
    pub action: &'static str,
    /// The version installed now.
    pub installed_version: Option<String>,
    /// The manifest's fields an admin decides on.
    pub manifest: Value,
    /// `{"state": "trusted"|"unsigned", "key_id": …}`.
    pub signature: Value,
    /// The upload's size in bytes.
    pub bytes: u64,
}

/// What the confirmed operation expects: `toru plugin install` refuses an installed id and
/// `toru plugin update` one that is not; the UI takes either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Either.
    Any,
    /// Not installed yet.
    Install,
    /// Installed already.
    Update,
}

/// How a transaction ended well.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Done {
    /// `installed`, `updated` or `rolled-back` (an admin's rollback that passed probation).
    pub result: &'static str,
    /// The plugin id.
    pub id: String,
    /// The version that runs now.
    pub version: String,
}

/// The kept versions of a package, for `toru plugin versions` and the API.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Versions {
    /// The plugin id.
    pub id: String,
    /// The active version.
    pub active: String,
    /// Kept versions, newest install first.
    pub versions: Vec<Value>,
    /// An update under way.
    pub pending: Option<PendingView>,
    /// The last update's result.
    pub last_update: Option<UpdateOutcome>,
}

/// An update under way as the API shows it: what, from which version to which, since when. The
/// settings the store keeps for a rollback ([`PendingUpdate::settings_before`]) stay there: they
/// hold the plugin's secrets.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PendingView {
    /// `install`, `update` or `rollback`.
    pub kind: String,
    /// The version that ran before (`None` for an install).
    pub from: Option<String>,
    /// The version on probation.
    pub to: String,
    /// When the switch was made.
    pub began_at: chrono::DateTime<chrono::Utc>,
}

impl From<PendingUpdate> for PendingView {
    fn from(p: PendingUpdate) -> PendingView {
        PendingView {
            kind: p.kind,
            from: p.from,
            to: p.to,
            began_at: p.began_at,
        }
    }
}

fn event(kind: EventKind, message: String, details: Value) -> Option<NewEvent> {
    Some(NewEvent {
        kind,
        message,
        details,
    })
}

/// This host's version as semver (`CARGO_PKG_VERSION` always is).
pub(crate) fn host_version() -> semver::Version {
    semver::Version::parse(env!("CARGO_PKG_VERSION"))
        .unwrap_or_else(|_| semver::Version::new(0, 0, 0))
}

impl Packages {
    /// The service for `config`'s plugins dir.
    pub(crate) fn new(config: Config, store: Store, supervisor: Supervisor) -> Packages {
        Packages {
            inner: Rc::new(Inner {
                config,
                store,
                supervisor,
                staged: RefCell::new(BTreeMap::new()),
                busy: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// `<packages-dir>`: `<id>/<version>/` per kept version, and `.staging/`.
    fn root(&self) -> PathBuf {
        self.inner.config.packages_dir()
    }

    fn staging_root(&self) -> PathBuf {
        self.root().join(STAGING_DIR)
    }

    /// Whether unsigned packages are accepted (development).
    pub(crate) fn allow_unsigned(&self) -> bool {
        self.inner.config.packages.allow_unsigned
    }

    // ── receiving ────────────────────────────────────────────────────────────────────────────

    /// Start receiving a package, with the text of its `.minisig` (`None`: unsigned).
    pub(crate) fn begin_upload(&self, signature: Option<String>) -> Result<Upload, PackageError> {
        self.expire_uploads();
        if self.inner.staged.borrow().len() >= MAX_STAGED {
            return Err(PackageError::Refused {
                code: "too_many_uploads",
                message: format!(
                    "{MAX_STAGED} uploads are waiting for a confirmation; confirm or cancel one first"
                ),
            });
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.staging_root().join(&token);
        std::fs::create_dir_all(&dir)
            .and_then(|()| readable_dirs(&self.root(), &dir))
            .map_err(|e| PackageError::io("creating a staging folder", e))?;
        let dir = StagingDir(dir);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.0.join("package.toru"))
            .map_err(|e| PackageError::io("creating the upload file", e))?;
        Ok(Upload {
            token,
            dir,
            file,
            bytes: 0,
            limit: self.inner.config.packages.max_package_bytes,
            signature,
        })
    }

    fn expire_uploads(&self) {
        self.inner
            .staged
            .borrow_mut()
            .retain(|_, s| s.created.elapsed() < UPLOAD_TTL);
    }

    /// Check a received package (see the module doc, step 1) and hold it for a confirmation.
    pub(crate) async fn finish_upload(&self, upload: Upload) -> Result<Preview, PackageError> {
        let Upload {
            token,
            dir,
            file,
            bytes,
            signature,
            ..
        } = upload;
        drop(file);
        let package = dir.0.join("package.toru");
        let files = dir.0.join("files");
        let trusted: Vec<PublicKey> = self
            .inner
            .store
            .trusted_keys()?
            .values()
            .filter_map(|k| PublicKey::parse(&k.public_key).ok())
            .collect();
        let allow_unsigned = self.allow_unsigned();
        let limits = Limits {
            max_unpacked_bytes: self.inner.config.packages.max_unpacked_bytes,
            ..Limits::default()
        };
        // Signature first (nothing in an untrusted package is parsed), then extraction; both
        // read and write files, so off the runtime thread.
        let checked = tokio::task::spawn_blocking(move || {
            let key_id = match signature {
                Some(sig) => Some(sign::verify(&package, &sig, &trusted)?.key_id),
                None if allow_unsigned => None,
                None => return Err(PackageError::unsigned()),
            };
            let extracted = archive::extract(&package, &files, &limits)?;
            Ok::<_, PackageError>((key_id, extracted))
        })
        .await
        .map_err(|e| PackageError::Io(format!("checking the package failed: {e}")))??;
        let (key_id, extracted) = checked;
        let manifest = extracted.manifest;
        let entry = manifest.entry_for(HOST_TRIPLE)?.to_owned();
        manifest.check_host(&host_version())?;
        let record = self.inner.store.package(&manifest.id)?;
        self.check_publisher(&manifest, key_id.as_deref(), record.as_ref())?;
        self.check_route(&manifest)?;
        let entry_path = dir.0.join("files").join(&entry);
        let found = discovery::read_metadata(
            &entry_path,
            self.inner.config.supervisor.metadata_timeout,
            &crate::supervisor::isolation::HostIsolation::new(&self.inner.config),
        )
        .await
        .map_err(|why| PackageError::Refused {
            code: "bad_metadata",
            message: format!("the package's executable {entry}: {why}"),
        })?;
        manifest.agrees_with(&found.metadata)?;
        let (action, installed) = action_for(&manifest, record.as_ref());
        let preview = Preview {
            upload: token.clone(),
            action,
            installed_version: installed,
            manifest: json!({
                "id": manifest.id,
                "name": manifest.name,
                "version": manifest.version.to_string(),
                "author": manifest.author,
                "description": manifest.description,
                "icon": manifest.icon,
                "route": manifest.route,
                "protocol": manifest.protocol,
                "min_host": manifest.min_host.to_string(),
                "frontend": manifest.frontend,
                "permissions": manifest.permissions,
                "limits": manifest.limits,
                "has_settings": manifest.settings.is_some(),
                "skipped": extracted.skipped,
            }),
            signature: match &key_id {
                Some(k) => json!({"state": "trusted", "key_id": k}),
                None => json!({"state": "unsigned", "key_id": null}),
            },
            bytes,
        };
        self.inner.staged.borrow_mut().insert(
            token,
            Staged {
                dir,
                manifest,
                key_id,
                entry,
                created: Instant::now(),
            },
        );
        Ok(preview)
    }

    /// Drop an upload that was not confirmed; `false` if there was none.
    pub(crate) fn cancel(&self, token: &str) -> bool {
        self.inner.staged.borrow_mut().remove(token).is_some()
    }

    /// The id may be taken by this publisher only: the one of the installed version, of a
    /// removed package whose data was kept, and never a `*.binary` file's.
    fn check_publisher(
        &self,
        m: &Manifest,
        key_id: Option<&str>,
        record: Option<&PackageRecord>,
    ) -> Result<(), PackageError> {
        let show =
            |k: Option<&str>| k.map_or("no key (unsigned)".to_string(), |k| format!("key {k}"));
        if let Some(rec) = record {
            if rec.key_id.as_deref() != key_id {
                return Err(PackageError::Refused {
                    code: "other_publisher",
                    message: format!(
                        "{} is installed signed by {}, this package by {}: an update must come \
                         from the same publisher (remove {} first to install this one)",
                        m.id,
                        show(rec.key_id.as_deref()),
                        show(key_id),
                        m.id
                    ),
                });
            }
            return Ok(());
        }
        let binding = self.inner.store.plugin_bindings()?.remove(&m.id);
        match binding {
            None => Ok(()),
            Some(b) if b.file.starts_with(PACKAGE_CLAIM) => {
                if b.key_id.as_deref() == key_id {
                    Ok(())
                } else {
                    Err(PackageError::Refused {
                        code: "other_publisher",
                        message: format!(
                            "the id {:?} belongs to a removed package signed by {}, whose data \
                             is kept; this package is signed by {} (run `toru plugin remove {} \
                             --purge-data` to free the id)",
                            m.id,
                            show(b.key_id.as_deref()),
                            show(key_id),
                            m.id
                        ),
                    })
                }
            }
            Some(b) => Err(PackageError::Refused {
                code: "id_taken",
                message: format!(
                    "the id {:?} is used by the unpackaged plugin {}: delete that file, run `toru \
                     plugins unbind {}`, then install the package",
                    m.id, b.file, m.id
                ),
            }),
        }
    }

    /// Another plugin serving the manifest's route would keep it: refuse now rather than fail
    /// the probation.
    fn check_route(&self, m: &Manifest) -> Result<(), PackageError> {
        match self
            .inner
            .supervisor
            .plugins()
            .into_iter()
            .find(|p| p.route == m.route && p.id != m.id)
        {
            Some(p) => Err(PackageError::Refused {
                code: "route_taken",
                message: format!("the route {} is served by the plugin {}", m.route, p.id),
            }),
            None => Ok(()),
        }
    }

    // ── transactions ─────────────────────────────────────────────────────────────────────────

    /// Install or update from upload `token` (see the module doc, steps 2–6). Returns once the
    /// probation ended; a version that failed it is rolled back and reported as
    /// [`PackageError::RolledBack`].
    pub(crate) async fn confirm(
        &self,
        token: &str,
        expect: Expect,
        allow_downgrade: bool,
    ) -> Result<Done, PackageError> {
        let (this, token) = (self.clone(), token.to_owned());
        detached(async move { this.confirm_now(&token, expect, allow_downgrade).await }).await
    }

    async fn confirm_now(
        &self,
        token: &str,
        expect: Expect,
        allow_downgrade: bool,
    ) -> Result<Done, PackageError> {
        let staged = self
            .inner
            .staged
            .borrow_mut()
            .remove(token)
            .ok_or_else(|| PackageError::NoUpload(token.to_owned()))?;
        let _busy = self.inner.busy.lock().await;
        let m = &staged.manifest;
        let id = m.id.clone();
        let version = m.version.to_string();
        // Checked again: the device may have changed since the upload.
        let record = self.inner.store.package(&id)?;
        self.check_publisher(m, staged.key_id.as_deref(), record.as_ref())?;
        let (action, installed) = action_for(m, record.as_ref());
        match (expect, &installed) {
            (Expect::Install, Some(v)) => {
                return Err(PackageError::Refused {
                    code: "installed",
                    message: format!(
                        "{id} is installed already (version {v}); use `toru plugin update`"
                    ),
                });
            }
            (Expect::Update, None) => {
                return Err(PackageError::Refused {
                    code: "not_installed",
                    message: format!("{id} is not installed; use `toru plugin install`"),
                });
            }
            _ => {}
        }
        match action {
            "reinstall" => {
                return Err(PackageError::Refused {
                    code: "same_version",
                    message: format!("{id} {version} is the installed version already"),
                });
            }
            "downgrade" if !allow_downgrade => {
                return Err(PackageError::Refused {
                    code: "downgrade",
                    message: format!(
                        "{id} {version} is older than the installed {}: allow the downgrade \
                         (--allow-downgrade) to install it",
                        installed.unwrap_or_default()
                    ),
                });
            }
            _ => {}
        }
        // Step 2: the files move into place.
        let target = package_dir(&self.root(), &id, &version);
        if target.exists() {
            std::fs::remove_dir_all(&target)
                .map_err(|e| PackageError::io("replacing an old copy of this version", e))?;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .and_then(|()| readable_dirs(&self.root(), parent))
                .map_err(|e| PackageError::io("creating the package's folder", e))?;
        }
        std::fs::rename(staged.dir.0.join("files"), &target)
            .map_err(|e| PackageError::io("moving the package into place", e))?;
        sync_dir(target.parent());
        fault_step("moved");
        let new = PackageVersion {
            version: version.clone(),
            installed_at: crate::clock::now(),
            key_id: staged.key_id.clone(),
            entry: staged.entry.clone(),
            manifest: serde_json::to_value(m).unwrap_or(Value::Null),
        };
        let kind = if record.is_some() {
            "update"
        } else {
            "install"
        };
        drop(staged);
        self.switch(&id, record, new, kind).await
    }

    /// Make the version before the active one active again, through the same probation.
    pub(crate) async fn rollback(&self, id: &str) -> Result<Done, PackageError> {
        let (this, id) = (self.clone(), id.to_owned());
        detached(async move { this.rollback_now(&id).await }).await
    }

    async fn rollback_now(&self, id: &str) -> Result<Done, PackageError> {
        let _busy = self.inner.busy.lock().await;
        let record = self.installed(id)?;
        let Some(previous) = record.versions.iter().find(|v| v.version != record.active) else {
            return Err(PackageError::Refused {
                code: "no_previous_version",
                message: format!("{id} keeps no version other than {}", record.active),
            });
        };
        let previous = previous.clone();
        self.switch(id, Some(record), previous, "rollback").await
    }

    /// Steps 3–6 of the module doc.
    async fn switch(
        &self,
        id: &str,
        before: Option<PackageRecord>,
        new: PackageVersion,
        kind: &str,
    ) -> Result<Done, PackageError> {
        let store = &self.inner.store;
        let supervisor = &self.inner.supervisor;
        let from = before.as_ref().map(|r| r.active.clone());
        let to = new.version.clone();
        let settings_before = store.plugin_settings(id)?;
        // The new version's schema decides what its settings may hold (written with the switch).
        let settings_after = match schema_of(&new)? {
            Some(schema) => {
                let fitted = fit_settings(&schema, settings_before.as_ref());
                (Some(&fitted) != settings_before.as_ref()).then_some(fitted)
            }
            None => None,
        };

        // Step 3: the running version stops.
        supervisor.hold(id).await;
        fault_step("held");

        // Step 4: the switch.
        let mut versions = vec![new.clone()];
        if let Some(b) = &before {
            versions.extend(b.versions.iter().filter(|v| v.version != to).cloned());
        }
        let mut rec = PackageRecord {
            id: id.to_owned(),
            key_id: new.key_id.clone(),
            active: to.clone(),
            versions,
            pending: Some(PendingUpdate {
                kind: kind.to_owned(),
                from: from.clone(),
                to: to.clone(),
                began_at: crate::clock::now(),
                settings_before: settings_before.clone(),
            }),
            last_update: before.as_ref().and_then(|b| b.last_update.clone()),
        };
        if let Err(e) = store
            .begin_package_switch(rec.clone(), settings_after, None)
            .await
        {
            // Nothing changed: the old version starts again.
            supervisor.release(id).await;
            if before.as_ref().is_none_or(|b| b.version(&to).is_none()) {
                remove_dir(&package_dir(&self.root(), id, &to));
            }
            return Err(e.into());
        }
        fault_step("switched");

        // Step 5: the new version runs its probation (its reason for failing quotes its own
        // stderr, not the lines the version before wrote).
        let log_mark = supervisor.log_mark(id);
        supervisor.release(id).await;
        let probation = self.inner.config.packages.probation;
        let outcome = supervisor.probation(id, probation, log_mark).await;
        fault_step("probation");

        match outcome {
            Ok(()) => {
                // Step 6: keep it.
                let (result, ev_kind) = match kind {
                    "install" => ("installed", EventKind::Installed),
                    _ => ("updated", EventKind::Updated),
                };
                let pruned = prune(&mut rec.versions, &to);
                rec.pending = None;
                rec.last_update = Some(UpdateOutcome {
                    result: result.to_owned(),
                    from: from.clone(),
                    to: to.clone(),
                    reason: None,
                    at: crate::clock::now(),
                });
                let message = match &from {
                    Some(f) if kind == "rollback" => format!("rolled back from {f} to {to}"),
                    Some(f) => format!("updated from {f} to {to}"),
                    None => format!("installed {to}"),
                };
                store
                    .finish_package_switch(
                        rec,
                        event(
                            ev_kind,
                            message,
                            json!({"from": from, "to": to, "kind": kind}),
                        ),
                    )
                    .await?;
                fault_step("finished");
                for v in pruned {
                    remove_dir(&package_dir(&self.root(), id, &v));
                }
                Ok(Done {
                    result: if kind == "rollback" {
                        "rolled-back"
                    } else {
                        result
                    },
                    id: id.to_owned(),
                    version: to,
                })
            }
            Err(reason) => {
                log::warn!("[{id}] {to} failed its probation: {reason}; rolling back");
                supervisor.hold(id).await;
                fault_step("rolling-back");
                self.undo(id, before, &to, settings_before, &reason).await?;
                supervisor.release(id).await;
                Err(PackageError::RolledBack(reason))
            }
        }
    }

    /// The rollback commit (step 6's other branch, and recovery): the KV namespace and settings
    /// as they were, the old version active (or the install forgotten), the new version's folder
    /// deleted unless the old record keeps it.
    async fn undo(
        &self,
        id: &str,
        before: Option<PackageRecord>,
        to: &str,
        settings_before: Option<Value>,
        reason: &str,
    ) -> Result<(), PackageError> {
        let from = before.as_ref().map(|b| b.active.clone());
        let restored = before.map(|mut b| {
            b.pending = None;
            b.last_update = Some(UpdateOutcome {
                result: "rolled-back".into(),
                from: from.clone(),
                to: to.to_owned(),
                reason: Some(reason.to_owned()),
                at: crate::clock::now(),
            });
            b
        });
        let keeps_new = restored.as_ref().is_some_and(|b| b.version(to).is_some());
        let message = match &from {
            Some(f) => format!("{to} was rolled back to {f}: {reason}"),
            None => format!("the install of {to} was undone: {reason}"),
        };
        self.inner
            .store
            .roll_back_package_switch(
                id,
                restored,
                settings_before,
                event(
                    EventKind::UpdateRolledBack,
                    message,
                    json!({"from": from, "to": to, "reason": reason}),
                ),
            )
            .await?;
        if !keeps_new {
            remove_dir(&package_dir(&self.root(), id, to));
        }
        if from.is_none() {
            remove_empty_dir(&self.root().join(id));
        }
        Ok(())
    }

    /// At start, before any plugin runs: roll back every update the last run left pending, and
    /// remove staging folders and version folders no record names. Errors are logged.
    pub(crate) async fn recover(&self) {
        remove_dir(&self.staging_root());
        let records = match self.inner.store.packages() {
            Ok(r) => r,
            Err(e) => {
                log::error!("cannot read the installed packages: {e}");
                return;
            }
        };
        for rec in records.values() {
            let Some(p) = rec.pending.clone() else {
                continue;
            };
            let before = p.from.as_ref().map(|f| PackageRecord {
                active: f.clone(),
                pending: None,
                // The versions kept before the switch: all but a version new with it.
                versions: rec
                    .versions
                    .iter()
                    .filter(|v| v.version != p.to || p.kind == "rollback")
                    .cloned()
                    .collect(),
                ..rec.clone()
            });
            let reason = "the host stopped during the probation";
            log::warn!(
                "[{}] {} was on probation when the host stopped; rolling back",
                rec.id,
                p.to
            );
            if let Err(e) = self
                .undo(&rec.id, before, &p.to, p.settings_before.clone(), reason)
                .await
            {
                log::error!("[{}] cannot roll back the unfinished update: {e}", rec.id);
            }
        }
        // Version folders no record names (a host stopped between moving files and the switch).
        let records = self.inner.store.packages().unwrap_or_default();
        let root = self.root();
        let Ok(ids) = std::fs::read_dir(&root) else {
            return;
        };
        for id_dir in ids.flatten() {
            let id = id_dir.file_name().to_string_lossy().into_owned();
            if id.starts_with('.') {
                continue;
            }
            let kept: Vec<&str> = records
                .get(&id)
                .map(|r| r.versions.iter().map(|v| v.version.as_str()).collect())
                .unwrap_or_default();
            if let Ok(versions) = std::fs::read_dir(id_dir.path()) {
                for v in versions.flatten() {
                    let name = v.file_name().to_string_lossy().into_owned();
                    if !kept.contains(&name.as_str()) {
                        log::info!("removing {} (no record names it)", v.path().display());
                        remove_dir(&v.path());
                    }
                }
            }
            remove_empty_dir(&id_dir.path());
        }
    }

    /// Remove package `id`: stop it, forget it, delete its files; with `purge`, its KV data,
    /// settings, state, private folder (`TORU_PLUGIN_DATA`) and uid too (else they wait for the
    /// same publisher's package).
    pub(crate) async fn remove(&self, id: &str, purge: bool) -> Result<(), PackageError> {
        let (this, id) = (self.clone(), id.to_owned());
        detached(async move { this.remove_now(&id, purge).await }).await
    }

    async fn remove_now(&self, id: &str, purge: bool) -> Result<(), PackageError> {
        let _busy = self.inner.busy.lock().await;
        let rec = self.installed(id)?;
        self.inner.supervisor.hold(id).await;
        let message = if purge {
            format!("removed {} with its data", rec.active)
        } else {
            format!("removed {}; its data is kept", rec.active)
        };
        let result = self
            .inner
            .store
            .remove_package(
                id,
                purge,
                event(
                    EventKind::Removed,
                    message,
                    json!({"version": rec.active, "purge_data": purge}),
                ),
            )
            .await;
        if result.is_ok() {
            remove_dir(&self.root().join(id));
            if purge {
                // Its private folder goes with its data, and its uid is free again.
                let data = crate::supervisor::isolation::data_root(&self.inner.config.data_dir);
                remove_dir(&data.join(id));
                if let Err(e) = self.inner.store.release_plugin_uid(id).await {
                    log::warn!("plugin {id}: its uid stays allocated: {e}");
                }
            }
        }
        self.inner.supervisor.release(id).await;
        result.map_err(Into::into)
    }

    /// The installed package `id`, or why there is none.
    fn installed(&self, id: &str) -> Result<PackageRecord, PackageError> {
        match self.inner.store.package(id)? {
            Some(r) => Ok(r),
            None if self.inner.supervisor.plugin(id).is_some() => Err(PackageError::Refused {
                code: "unpackaged",
                message: format!(
                    "{id} is an unpackaged plugin (a *.binary file): delete its file from the \
                     plugins folder to remove it"
                ),
            }),
            None => Err(PackageError::NotInstalled(id.to_owned())),
        }
    }

    /// The kept versions of `id`.
    pub(crate) fn versions(&self, id: &str) -> Result<Versions, PackageError> {
        let rec = self.installed(id)?;
        Ok(Versions {
            id: rec.id.clone(),
            active: rec.active.clone(),
            versions: rec
                .versions
                .iter()
                .map(|v| {
                    json!({"version": v.version, "installed_at": v.installed_at, "key_id": v.key_id})
                })
                .collect(),
            pending: rec.pending.map(PendingView::from),
            last_update: rec.last_update,
        })
    }

    /// What the plugin list shows of plugin `id`'s package (`null`: unpackaged).
    pub(crate) fn summary(&self, id: &str) -> Value {
        match self.inner.store.package(id) {
            Ok(Some(rec)) => summary_of(&rec),
            _ => Value::Null,
        }
    }

    /// [`Packages::summary`] of every installed package, by id, from one read of the store.
    pub(crate) fn summaries(&self) -> BTreeMap<String, Value> {
        self.inner
            .store
            .packages()
            .unwrap_or_default()
            .iter()
            .map(|(id, rec)| (id.clone(), summary_of(rec)))
            .collect()
    }

    /// The frontend bundle of package `id`'s active version, if its manifest names one.
    pub(crate) fn frontend(&self, id: &str) -> Option<PathBuf> {
        let rec = self.inner.store.package(id).ok()??;
        let v = rec.active_version()?;
        let bundle = v.manifest.get("frontend")?.as_str()?;
        Some(package_dir(&self.root(), id, &v.version).join(bundle))
    }
}

/// What the plugin list shows of an installed package.
fn summary_of(rec: &PackageRecord) -> Value {
    let has_settings = rec
        .active_version()
        .is_some_and(|v| v.manifest.get("settings").is_some_and(|s| !s.is_null()));
    json!({
        "version": rec.active,
        "key_id": rec.key_id,
        "unsigned": rec.key_id.is_none(),
        "versions": rec.versions.iter().map(|v| v.version.clone()).collect::<Vec<_>>(),
        "has_settings": has_settings,
        "update": rec.pending.as_ref().map(|p| json!({"state": "probation", "from": p.from, "to": p.to, "kind": p.kind})),
        "last_update": rec.last_update,
    })
}

/// Run `work` on its own task and wait for it: a caller that goes away (an HTTP client that
/// closed the page, a CLI interrupted, a request over the server's time limit) stops waiting, but
/// never stops a transaction half-way — it runs to its end, its result recorded in the store.
async fn detached<T: 'static>(
    work: impl std::future::Future<Output = Result<T, PackageError>> + 'static,
) -> Result<T, PackageError> {
    tokio::task::spawn_local(work)
        .await
        .map_err(|e| PackageError::Io(format!("the package operation failed: {e}")))?
}

/// What installing `m` does given the installed `record`, and the installed version.
fn action_for(m: &Manifest, record: Option<&PackageRecord>) -> (&'static str, Option<String>) {
    let Some(rec) = record else {
        return ("install", None);
    };
    let action = match semver::Version::parse(&rec.active) {
        Ok(active) if m.version > active => "update",
        Ok(active) if m.version == active => "reinstall",
        Ok(_) => "downgrade",
        Err(_) => "update",
    };
    (action, Some(rec.active.clone()))
}

/// Keep the active version and the newest other one; return the versions dropped.
fn prune(versions: &mut Vec<PackageVersion>, active: &str) -> Vec<String> {
    let mut kept_other = false;
    let mut dropped = Vec::new();
    versions.retain(|v| {
        if v.version == active {
            return true;
        }
        if !kept_other {
            kept_other = true;
            return true;
        }
        dropped.push(v.version.clone());
        false
    });
    dropped
}

/// Make `dir` and its ancestors up to and including `root` (the packages folder) `0755`, whatever
/// the host's umask: plugins running under their own uids (and `--metadata` runs) must reach
/// their files, which are root-owned and read-only to them.
fn readable_dirs(root: &Path, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for d in dir.ancestors() {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        if d == root || !d.starts_with(root) {
            break;
        }
    }
    Ok(())
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!("cannot remove {}: {e}", dir.display());
    }
}

fn remove_empty_dir(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}

/// fsync a directory so that a rename in it survives a power cut (best effort).
fn sync_dir(dir: Option<&Path>) {
    if let Some(d) = dir
        && let Ok(f) = std::fs::File::open(d)
    {
        let _ = f.sync_all();
    }
}

/// A test hook between the transaction's steps: with `TORU_FAULT_PACKAGE_STEP=<step>` in its
/// environment a debug build aborts there, as a `kill -9` would stop it. Nothing in release.
fn fault_step(step: &str) {
    #[cfg(debug_assertions)]
    crate::fault::package_step(step);
    #[cfg(not(debug_assertions))]
    let _ = step;
}
