//! Installed licences: `toru license install|list|remove`, `/api/licenses`. A licence is
//! verified (`license::gate::verify`: the package's publisher, this device, the dates) before
//! anything is stored, so a refused one changes nothing; the plugin is then checked again by the
//! supervisor (a plugin waiting for a licence starts, one whose licence went stops).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::{PackageError, Packages, event};
use crate::license::gate;
use crate::license::{Claims, Document, MAX_LICENSE_BYTES, Refusal};
use crate::store::{EventKind, Store, StoredLicense};

/// One plugin's licence as the API and `toru license list` show it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LicenseView {
    /// The plugin.
    pub(crate) plugin: String,
    /// Its package's manifest says `license = "required"`.
    pub(crate) required: bool,
    /// `valid`, `missing` (required, none installed) or the refusal's code (`expired`, …).
    pub(crate) state: String,
    /// Why it is not valid (`None` when valid).
    pub(crate) reason: Option<String>,
    /// What the installed licence claims (`None`: none installed, or not readable).
    pub(crate) claims: Option<Claims>,
    /// When it was installed.
    pub(crate) installed_at: Option<DateTime<Utc>>,
}

fn refused(r: &Refusal) -> PackageError {
    PackageError::Refused {
        code: r.code(),
        message: r.to_string(),
    }
}

/// Every installed licence, and every installed package that requires one but has none, by
/// plugin id: whether each is valid here now, and why not.
pub(crate) fn list(store: &Store) -> Result<Vec<LicenseView>, PackageError> {
    let packages = store.packages()?;
    let licenses = store.licenses()?;
    let mut out = Vec::new();
    for (plugin, l) in &licenses {
        let required = packages.get(plugin).is_some_and(gate::required);
        let (state, reason) = match gate::verify(store, &l.text, Some(plugin)) {
            Ok(_) => ("valid".to_string(), None),
            Err(r) => (r.code().to_string(), Some(r.to_string())),
        };
        out.push(LicenseView {
            plugin: plugin.clone(),
            required,
            state,
            reason,
            claims: Document::parse(&l.text).ok().map(|d| d.claims),
            installed_at: Some(l.installed_at),
        });
    }
    for (plugin, rec) in &packages {
        if gate::required(rec) && !licenses.contains_key(plugin) {
            out.push(LicenseView {
                plugin: plugin.clone(),
                required: true,
                state: "missing".into(),
                reason: Some(Refusal::Missing(plugin.clone()).to_string()),
                claims: None,
                installed_at: None,
            });
        }
    }
    out.sort_by(|a, b| a.plugin.cmp(&b.plugin));
    Ok(out)
}

impl Packages {
    /// [`list`].
    pub(crate) fn licenses(&self) -> Result<Vec<LicenseView>, PackageError> {
        list(&self.inner.store)
    }

    /// Install the licence `text` for `plugin` (`None`: the plugin it names), replacing the one
    /// it had, once it is valid here; then the plugin is checked again (and starts if it waited).
    /// A refused licence is not stored.
    pub(crate) async fn install_license(
        &self,
        text: &str,
        plugin: Option<&str>,
    ) -> Result<LicenseView, PackageError> {
        if text.len() > MAX_LICENSE_BYTES {
            return Err(refused(&Refusal::Malformed(format!(
                "larger than {MAX_LICENSE_BYTES} bytes"
            ))));
        }
        let store = &self.inner.store;
        let claims = gate::verify(store, text, plugin).map_err(|r| refused(&r))?;
        let expires = claims
            .expires
            .map_or("never expires".to_string(), |e| format!("expires {e}"));
        let features = if claims.features.is_empty() {
            "no features".to_string()
        } else {
            format!("features {}", claims.features.join(", "))
        };
        let installed_at = crate::clock::now();
        store
            .put_license(
                &claims.plugin,
                StoredLicense {
                    text: text.to_owned(),
                    installed_at,
                },
                event(
                    EventKind::LicenseInstalled,
                    format!(
                        "licence installed (publisher {}, {features}, {expires})",
                        claims.publisher
                    ),
                    json!({"publisher": claims.publisher, "features": claims.features,
                           "not_before": claims.not_before, "expires": claims.expires}),
                ),
            )
            .await?;
        self.inner.supervisor.check_licence(&claims.plugin).await;
        Ok(LicenseView {
            plugin: claims.plugin.clone(),
            required: store
                .package(&claims.plugin)?
                .as_ref()
                .is_some_and(gate::required),
            state: "valid".into(),
            reason: None,
            claims: Some(claims),
            installed_at: Some(installed_at),
        })
    }

    /// Remove `plugin`'s licence; a plugin that requires one stops, saying why.
    pub(crate) async fn remove_license(&self, plugin: &str) -> Result<(), PackageError> {
        let removed = self
            .inner
            .store
            .remove_license(
                plugin,
                event(
                    EventKind::LicenseRemoved,
                    "licence removed".into(),
                    json!({}),
                ),
            )
            .await?;
        if !removed {
            return Err(PackageError::NoLicense(plugin.to_owned()));
        }
        self.inner.supervisor.check_licence(plugin).await;
        Ok(())
    }
}
