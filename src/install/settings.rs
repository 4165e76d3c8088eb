//! Plugin settings: the schema from the active version's manifest, values validated by the host
//! (`crate::settings`), secrets write-only, changes handed to the running plugin; and fitting
//! stored settings to a new version's schema when it is switched to.

use serde::Serialize;
use serde_json::{Value, json};

use super::{PackageError, Packages, detached, event};
use crate::settings::Schema;
use crate::store::{EventKind, PackageVersion};
use crate::supervisor::ConfigOutcome;

/// A plugin's settings as the API shows them: secrets replaced by `null`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SettingsView {
    /// The schema (`null`: the plugin has no settings).
    pub schema: Option<Value>,
    /// The values, secrets redacted.
    pub values: Value,
    /// Paths of the secrets that are set.
    pub secrets_set: Vec<String>,
    /// What the running plugin did with a change (`applied`, `restarted`, …); absent on reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
}

impl Packages {
    fn schema(&self, id: &str) -> Result<Option<Schema>, PackageError> {
        match self.inner.store.package(id)? {
            Some(rec) => match rec.active_version() {
                Some(v) => schema_of(v),
                None => Ok(None),
            },
            None if self.inner.supervisor.plugin(id).is_some() => Ok(None),
            None => Err(PackageError::NotInstalled(id.to_owned())),
        }
    }

    /// Plugin `id`'s settings, secrets redacted.
    pub(crate) fn settings(&self, id: &str) -> Result<SettingsView, PackageError> {
        let schema = self.schema(id)?;
        let stored = self.inner.store.plugin_settings(id)?;
        Ok(match schema {
            None => SettingsView {
                schema: None,
                values: stored.unwrap_or_else(|| json!({})),
                secrets_set: Vec::new(),
                delivery: None,
            },
            Some(s) => {
                let values = stored.unwrap_or_else(|| s.defaults());
                let (values, secrets_set) = s.redact(&values);
                SettingsView {
                    schema: Some(s.as_json().clone()),
                    values,
                    secrets_set,
                    delivery: None,
                }
            }
        })
    }

    /// Validate and store plugin `id`'s settings (a secret left `null` keeps its value), then
    /// hand them to the running plugin.
    pub(crate) async fn set_settings(
        &self,
        id: &str,
        values: Value,
    ) -> Result<SettingsView, PackageError> {
        let (this, id) = (self.clone(), id.to_owned());
        detached(async move { this.set_settings_now(&id, values).await }).await
    }

    async fn set_settings_now(
        &self,
        id: &str,
        values: Value,
    ) -> Result<SettingsView, PackageError> {
        let Some(schema) = self.schema(id)? else {
            return Err(PackageError::Refused {
                code: "no_settings",
                message: format!("{id} has no settings"),
            });
        };
        let stored = self
            .inner
            .store
            .plugin_settings(id)?
            .unwrap_or_else(|| schema.defaults());
        let merged = schema.merge_secrets(&values, &stored);
        let valid = schema
            .validate(&merged)
            .map_err(PackageError::InvalidSettings)?;
        let changed: Vec<String> = match (&valid, &stored) {
            (Value::Object(new), Value::Object(old)) => new
                .iter()
                .filter(|(k, v)| old.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .collect(),
            _ => Vec::new(),
        };
        self.inner
            .store
            .set_plugin_settings(
                id,
                valid.clone(),
                event(
                    EventKind::SettingsChanged,
                    if changed.is_empty() {
                        "settings saved unchanged".into()
                    } else {
                        format!("settings changed: {}", changed.join(", "))
                    },
                    json!({"changed": changed}),
                ),
            )
            .await?;
        let delivery = match self.inner.supervisor.configure(id, valid.clone()).await {
            Ok(ConfigOutcome::Applied) => "applied".to_string(),
            Ok(ConfigOutcome::Restarted) => "restarted".to_string(),
            Ok(ConfigOutcome::NotRunning) => "at-next-start".to_string(),
            Ok(ConfigOutcome::Rejected(why)) => {
                // The plugin keeps its previous settings: so does the store.
                self.inner
                    .store
                    .set_plugin_settings(id, stored, None)
                    .await?;
                return Err(PackageError::Refused {
                    code: "settings_rejected",
                    message: format!("{id} refused the settings: {why}"),
                });
            }
            Err(e) => format!("not delivered: {e}"),
        };
        let (values, secrets_set) = schema.redact(&valid);
        Ok(SettingsView {
            schema: Some(schema.as_json().clone()),
            values,
            secrets_set,
            delivery: Some(delivery),
        })
    }
}

/// The settings schema in a version's manifest.
pub(super) fn schema_of(v: &PackageVersion) -> Result<Option<Schema>, PackageError> {
    match v.manifest.get("settings") {
        None | Some(Value::Null) => Ok(None),
        Some(s) => Schema::parse(s)
            .map(Some)
            .map_err(|e| PackageError::Refused {
                code: "bad_settings_schema",
                message: e.to_string(),
            }),
    }
}

/// Settings fit for `schema`: the stored ones (`None`: the defaults) as its validator normalises
/// them; failing that, without the fields the schema does not know (a version that dropped or
/// renamed a setting — a secret among them must not stay stored where nothing redacts it) and
/// without those whose values it refuses (they take their defaults); failing that, the defaults.
/// Logged when settings are dropped.
pub(super) fn fit_settings(schema: &Schema, stored: Option<&Value>) -> Value {
    let Some(stored) = stored else {
        return schema.defaults();
    };
    if let Ok(v) = schema.validate(stored) {
        return v;
    }
    let known = schema
        .as_json()
        .get("properties")
        .and_then(Value::as_object);
    if let (Value::Object(values), Some(known)) = (stored, known) {
        let mut kept: serde_json::Map<String, Value> = values
            .iter()
            .filter(|(k, _)| known.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Then without the settings whose values the new version refuses (they take defaults).
        for _ in 0..2 {
            match schema.validate(&Value::Object(kept.clone())) {
                Ok(v) => {
                    log::warn!("settings the new version does not accept were reset");
                    return v;
                }
                Err(errors) => {
                    for e in errors {
                        let top = e.path.split(['.', '[']).next().unwrap_or_default();
                        kept.remove(top);
                    }
                }
            }
        }
    }
    log::warn!("the stored settings do not fit the new version's schema; using its defaults");
    schema.defaults()
}
