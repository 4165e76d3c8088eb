//! Trusted publisher keys: which keys may sign the packages this device installs (`toru trust`,
//! the Trust page). Kept in the store; a removed key's installed packages keep running.

use serde_json::json;

use super::{PackageError, Packages, event};
use crate::package::sign::PublicKey;
use crate::store::{EventKind, Store, TrustedKey};

impl Packages {
    /// The trusted keys.
    pub(crate) fn trusted(&self) -> Result<Vec<TrustedKey>, PackageError> {
        Ok(self.inner.store.trusted_keys()?.into_values().collect())
    }

    /// Trust the key in `text` (a `.pub` file's text or its base64 line).
    pub(crate) async fn trust(
        &self,
        text: &str,
        comment: &str,
    ) -> Result<TrustedKey, PackageError> {
        trust_stored(&self.inner.store, text, comment).await
    }

    /// Stop trusting `key_id`; installed packages it signed keep running.
    pub(crate) async fn distrust(&self, key_id: &str) -> Result<(), PackageError> {
        distrust_stored(&self.inner.store, key_id).await
    }
}

/// Trust the key in `text` (a `.pub` file's text or its base64 line), in `store` (also with the
/// daemon stopped).
pub(crate) async fn trust_stored(
    store: &Store,
    text: &str,
    comment: &str,
) -> Result<TrustedKey, PackageError> {
    let key = PublicKey::parse(text).map_err(|e| PackageError::Refused {
        code: "bad_key",
        message: format!("not a minisign public key: {e}"),
    })?;
    let comment: String = comment.chars().take(200).collect();
    let rec = TrustedKey {
        key_id: key.key_id.clone(),
        public_key: key.base64.clone(),
        comment,
        added_at: crate::clock::now(),
    };
    store
        .add_trusted_key(
            rec.clone(),
            event(
                EventKind::TrustAdded,
                format!("publisher key {} is trusted", rec.key_id),
                json!({"key_id": rec.key_id}),
            ),
        )
        .await?;
    Ok(rec)
}

/// Stop trusting `key_id` in `store`; installed packages it signed keep running.
pub(crate) async fn distrust_stored(store: &Store, key_id: &str) -> Result<(), PackageError> {
    let removed = store
        .remove_trusted_key(
            key_id,
            event(
                EventKind::TrustRemoved,
                format!("publisher key {key_id} is no longer trusted"),
                json!({"key_id": key_id}),
            ),
        )
        .await?;
    if removed {
        Ok(())
    } else {
        Err(PackageError::NotTrusted(key_id.to_owned()))
    }
}
