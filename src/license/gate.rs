//! The licence gate: whether a plugin may start on this device, from what the store holds (its
//! package, the trusted keys, its licence, the instance key, the clock's high-water mark). Called
//! by the supervisor before every spawn and at every licence check, and by `install::licenses`
//! before a licence is stored. Decides; does not act.

use chrono::{DateTime, Utc};

use super::{Claims, Document, Expected, Publisher, Refusal};
use crate::package::manifest::LicenseRequirement;
use crate::package::sign::{self, PublicKey};
use crate::store::{PackageRecord, Store, StoreError};

/// The instance's licensing identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instance {
    /// 32 lowercase hex digits (see the module doc of `license`).
    pub(crate) licensing_id: String,
    /// The instance's public key, minisign's base64 line.
    pub(crate) public_key: String,
}

/// What a plugin may do, licence-wise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It needs no licence; the claims of a valid one installed anyway (they reach `init`).
    NotRequired(Option<Claims>),
    /// It needs one, and has a valid one.
    Valid(Claims),
    /// It needs one and has none that is valid: why.
    Needed(Refusal),
}

impl Verdict {
    /// The claims the plugin gets in `init`.
    pub(crate) fn claims(&self) -> Option<&Claims> {
        match self {
            Verdict::NotRequired(c) => c.as_ref(),
            Verdict::Valid(c) => Some(c),
            Verdict::Needed(_) => None,
        }
    }
}

fn store_error(e: &StoreError) -> Refusal {
    Refusal::Store(crate::error_chain::error_chain(e))
}

/// The instance's licensing identity from the stored key (`None`: no key stored yet).
pub(crate) fn instance(store: &Store) -> Option<Instance> {
    let text = store.instance_key().ok()??;
    instance_of(&text)
}

fn instance_of(sk_text: &str) -> Option<Instance> {
    let public = sign::public_key_of_text(sk_text).ok()?;
    Some(Instance {
        licensing_id: super::licensing_id(&public),
        public_key: public.base64,
    })
}

/// The instance's licensing identity, making and storing the key on first use. `None` only when
/// the store refuses the write (degraded): licences cannot be checked then.
pub(crate) async fn ensure_instance(store: &Store) -> Option<Instance> {
    if let Some(i) = instance(store) {
        return Some(i);
    }
    let (sk_text, _) = match sign::generate_in_memory() {
        Ok(k) => k,
        Err(e) => {
            log::error!("cannot make the instance key: {e}");
            return None;
        }
    };
    match store.ensure_instance_key(sk_text).await {
        Ok(kept) => instance_of(&kept),
        Err(e) => {
            log::error!(
                "cannot store the instance key (licences cannot be checked): {}",
                crate::error_chain::error_chain(&e)
            );
            None
        }
    }
}

/// The time licences are judged at: the wall clock, never earlier than the stored `last_seen`.
pub(crate) fn now(store: &Store) -> DateTime<Utc> {
    super::effective_now(crate::clock::now(), store.last_seen().ok().flatten())
}

/// Whether the active version of `rec` requires a licence.
pub(crate) fn required(rec: &PackageRecord) -> bool {
    rec.active_version()
        .and_then(|v| v.manifest.get("license"))
        .and_then(|l| serde_json::from_value::<LicenseRequirement>(l.clone()).ok())
        == Some(LicenseRequirement::Required)
}

/// Verify the licence `text` for `plugin` (`None`: the plugin its claims name) on this device:
/// the claims when valid, else why not.
pub(crate) fn verify(store: &Store, text: &str, plugin: Option<&str>) -> Result<Claims, Refusal> {
    let doc = Document::parse(text)?;
    let plugin = plugin.unwrap_or(&doc.claims.plugin).to_owned();
    let rec = store
        .package(&plugin)
        .map_err(|e| store_error(&e))?
        .ok_or_else(|| Refusal::NotInstalled(plugin.clone()))?;
    let trusted_key = match &rec.key_id {
        None => None,
        Some(k) => store
            .trusted_keys()
            .map_err(|e| store_error(&e))?
            .remove(k)
            .and_then(|t| PublicKey::parse(&t.public_key).ok()),
    };
    let publisher = match (&rec.key_id, &trusted_key) {
        (None, _) => Publisher::Unsigned,
        (Some(_), Some(k)) => Publisher::Trusted(k),
        (Some(id), None) => Publisher::Untrusted(id),
    };
    let instance = instance(store).ok_or(Refusal::NoInstanceKey)?;
    doc.verify(&Expected {
        plugin: &plugin,
        instance: &instance.licensing_id,
        publisher,
        now: now(store),
    })
}

/// Whether plugin `id` may start, and with which claims. `is_package`: it runs from its installed
/// package (a plain `*.binary` needs no licence).
pub(crate) fn check(store: &Store, id: &str, is_package: bool) -> Verdict {
    if !is_package {
        return Verdict::NotRequired(None);
    }
    let rec = match store.package(id) {
        Ok(Some(rec)) => rec,
        Ok(None) => return Verdict::NotRequired(None),
        Err(e) => return Verdict::Needed(store_error(&e)),
    };
    let required = required(&rec);
    let text = match store.license(id) {
        Ok(Some(l)) => l.text,
        Ok(None) if required => return Verdict::Needed(Refusal::Missing(id.into())),
        Ok(None) => return Verdict::NotRequired(None),
        Err(e) if required => return Verdict::Needed(store_error(&e)),
        Err(_) => return Verdict::NotRequired(None),
    };
    match (verify(store, &text, Some(id)), required) {
        (Ok(c), true) => Verdict::Valid(c),
        (Ok(c), false) => Verdict::NotRequired(Some(c)),
        (Err(r), true) => Verdict::Needed(r),
        (Err(_), false) => Verdict::NotRequired(None),
    }
}
