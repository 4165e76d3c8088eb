//! Instance-bound plugin licences: the document's format, its verification and its issuing, and
//! the instance's licensing id. Pure (text in, verdict out; the clock is a parameter): the gate
//! that reads the store is [`gate`]; installing and removing licences is `install::licenses`'.
//!
//! ```text
//! NAME.license   CLAIMS ‖ SIGNATURE
//! CLAIMS         one line of JSON, then "\n"  (the bytes signed)
//!                {"format":1,"plugin":"hello","publisher":"8E2C1D4B6A0F3E57",
//!                 "instance":"<licensing id>","features":["pro"],
//!                 "not_before":"2025-01-01T00:00:00Z","expires":null,
//!                 "issued_at":"2025-01-01T12:00:00Z"}
//! SIGNATURE      a minisign signature (prehashed, `ED`) of CLAIMS by the publisher's package
//!                key: the four lines of a `.minisig` file
//! ```
//!
//! So a publisher can make one without Toru: `printf '%s\n' "$CLAIMS" > c; minisign -S -s
//! alice.key -m c; cat c c.minisig > hello.license` (docs/LICENSES.md).
//!
//! The licensing id is the first 16 bytes of SHA-256 over the instance key's 32-byte Ed25519
//! public key, as 32 lowercase hex digits: 128 bits, so two devices share one only by design (a
//! copied store), never by chance.
//!
//! A licence is valid for a plugin on this device when, in this order: it parses; it is signed by
//! the key that signed the installed package; that key is trusted; the signature matches; the
//! claims name that key, the plugin and this device; and `not_before <= now < expires`, where
//! `now` is [`effective_now`]: never earlier than the last time the host saw (`gate`).

pub(crate) mod gate;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::package::sign::{self, PublicKey, SignError};

/// The claims format this host reads and writes.
pub(crate) const FORMAT: u32 = 1;
/// Largest licence file accepted, in bytes.
pub(crate) const MAX_LICENSE_BYTES: usize = 16 * 1024;
/// Most features a licence may list.
const MAX_FEATURES: usize = 64;
/// Longest feature name, in bytes.
const MAX_FEATURE_BYTES: usize = 64;
/// Hex digits of a licensing id.
const LICENSING_ID_HEX: usize = 32;

/// What a licence says (the signed JSON line). Unknown fields are refused: a claim this host does
/// not understand must not be ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Claims {
    /// The format ([`FORMAT`]).
    pub(crate) format: u32,
    /// The plugin id.
    pub(crate) plugin: String,
    /// The key id of the publisher's key that signs the licence (and the package).
    pub(crate) publisher: String,
    /// The licensing id of the one device it is for.
    pub(crate) instance: String,
    /// What it unlocks (the plugin decides what each means).
    #[serde(default)]
    pub(crate) features: Vec<String>,
    /// Valid from.
    pub(crate) not_before: DateTime<Utc>,
    /// Valid until (exclusive); `None`: does not expire.
    pub(crate) expires: Option<DateTime<Utc>>,
    /// When issued.
    pub(crate) issued_at: DateTime<Utc>,
}

impl Claims {
    /// The claims as the plugin API carries them in `init`.
    pub(crate) fn to_api(&self) -> toru_plugin_api::License {
        toru_plugin_api::License {
            plugin: self.plugin.clone(),
            publisher: self.publisher.clone(),
            instance: self.instance.clone(),
            features: self.features.clone(),
            not_before: self.not_before,
            expires: self.expires,
            issued_at: self.issued_at,
        }
    }
}

/// Why a licence is not valid here. Each names the case; the API answers with [`Refusal::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Refusal {
    /// Not a licence document (its claims or its signature are misshapen).
    #[error("the licence is malformed: {0}")]
    Malformed(String),
    /// The signature does not match the claims (a byte changed).
    #[error(
        "the licence's signature by key {key_id} does not match its claims (altered or corrupt)"
    )]
    BadSignature {
        /// The signing key.
        key_id: String,
    },
    /// Signed by the package's publisher key, which this device does not trust (any more).
    #[error(
        "the licence is signed by key {key_id}, the publisher of the package, which this device does not trust"
    )]
    UntrustedPublisher {
        /// The signing key.
        key_id: String,
    },
    /// Signed by a key other than the one that signed the installed package.
    #[error(
        "the licence is signed by key {key_id}, but the installed package {plugin} is signed by {package_key_id}: only its publisher can license it"
    )]
    OtherPublisher {
        /// The key that signed the licence.
        key_id: String,
        /// The plugin.
        plugin: String,
        /// The key that signed the package.
        package_key_id: String,
    },
    /// For another plugin than the one it was given for.
    #[error("the licence is for plugin {licensed}, not {plugin}")]
    OtherPlugin {
        /// The plugin it names.
        licensed: String,
        /// The plugin it was given for.
        plugin: String,
    },
    /// The plugin it names is not an installed package.
    #[error("the licence is for plugin {0}, which is not an installed package here")]
    NotInstalled(String),
    /// The plugin's package is unsigned: no publisher key to check a licence against.
    #[error("the package {0} is unsigned: there is no publisher key to check a licence against")]
    UnsignedPackage(String),
    /// For another device.
    #[error("the licence is for instance {licensed}, not this one ({this})")]
    WrongInstance {
        /// The licensing id it names.
        licensed: String,
        /// This device's.
        this: String,
    },
    /// Its validity ended.
    #[error("the licence expired at {expires} (the time here is {now})")]
    Expired {
        /// When it ended (RFC 3339).
        expires: String,
        /// The time it was judged at (RFC 3339).
        now: String,
    },
    /// Its validity has not begun.
    #[error("the licence is not valid yet: it starts at {not_before} (the time here is {now})")]
    NotYetValid {
        /// When it begins (RFC 3339).
        not_before: String,
        /// The time it was judged at (RFC 3339).
        now: String,
    },
    /// This device has no instance key (its store refuses writes).
    #[error(
        "this device has no licensing key (its store cannot be written: see the store's health)"
    )]
    NoInstanceKey,
    /// The plugin needs a licence and none is installed.
    #[error("no licence is installed for {0}")]
    Missing(String),
    /// What the check needs could not be read from the store.
    #[error("the licence cannot be checked: {0}")]
    Store(String),
}

impl Refusal {
    /// The short machine-readable code (API `code`, event details).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::BadSignature { .. } => "bad_signature",
            Refusal::UntrustedPublisher { .. } => "untrusted_publisher",
            Refusal::OtherPublisher { .. } => "other_publisher",
            Refusal::OtherPlugin { .. } => "other_plugin",
            Refusal::NotInstalled(_) => "not_installed",
            Refusal::UnsignedPackage(_) => "unsigned_package",
            Refusal::WrongInstance { .. } => "wrong_instance",
            Refusal::Expired { .. } => "expired",
            Refusal::NotYetValid { .. } => "not_yet_valid",
            Refusal::NoInstanceKey => "no_instance_key",
            Refusal::Missing(_) => "missing",
            Refusal::Store(_) => "store",
        }
    }
}

/// A licence file read but not yet verified.
#[derive(Debug, Clone)]
pub(crate) struct Document {
    /// What it claims (not to be trusted before [`Document::verify`]).
    pub(crate) claims: Claims,
    /// The signed bytes: the claims line with its `\n`.
    signed: String,
    /// The `.minisig` text.
    signature: String,
    /// The key id the signature names.
    pub(crate) key_id: String,
}

/// The publisher of the installed package a licence is checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Publisher<'a> {
    /// Signed by this key, which the device trusts.
    Trusted(&'a PublicKey),
    /// Signed by this key id, which the device does not trust (any more).
    Untrusted(&'a str),
    /// Unsigned (a development install).
    Unsigned,
}

/// What a licence must match to be valid here.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected<'a> {
    /// The plugin it is for.
    pub(crate) plugin: &'a str,
    /// This device's licensing id.
    pub(crate) instance: &'a str,
    /// The key that signed the plugin's installed package.
    pub(crate) publisher: Publisher<'a>,
    /// The time to judge it at ([`effective_now`]).
    pub(crate) now: DateTime<Utc>,
}

impl Document {
    /// Read a licence file's text: the claims line, then a minisign signature. Nothing is trusted
    /// yet.
    pub(crate) fn parse(text: &str) -> Result<Document, Refusal> {
        let bad = |why: String| Refusal::Malformed(why);
        if text.len() > MAX_LICENSE_BYTES {
            return Err(bad(format!("larger than {MAX_LICENSE_BYTES} bytes")));
        }
        let Some((line, signature)) = text.split_once('\n') else {
            return Err(bad(
                "one line of JSON claims, then a minisign signature, was expected".into(),
            ));
        };
        let claims: Claims = serde_json::from_str(line)
            .map_err(|e| bad(format!("the first line is not the JSON claims: {e}")))?;
        let key_id = sign::signature_key_id(signature).map_err(|e| bad(e.to_string()))?;
        check_claims(&claims)?;
        Ok(Document {
            claims,
            signed: format!("{line}\n"),
            signature: signature.to_string(),
            key_id,
        })
    }

    /// Verify against what this device expects; the claims when valid.
    pub(crate) fn verify(&self, want: &Expected<'_>) -> Result<Claims, Refusal> {
        let key = match want.publisher {
            Publisher::Unsigned => return Err(Refusal::UnsignedPackage(want.plugin.into())),
            Publisher::Untrusted(id) if id == self.key_id => {
                return Err(Refusal::UntrustedPublisher {
                    key_id: self.key_id.clone(),
                });
            }
            Publisher::Untrusted(id) => {
                return Err(self.other_publisher(want.plugin, id));
            }
            Publisher::Trusted(k) if k.key_id != self.key_id => {
                return Err(self.other_publisher(want.plugin, &k.key_id));
            }
            Publisher::Trusted(k) => k,
        };
        sign::verify_bytes(
            self.signed.as_bytes(),
            &self.signature,
            std::slice::from_ref(key),
        )
        .map_err(|e| match e {
            SignError::Mismatch { key_id } => Refusal::BadSignature { key_id },
            other => Refusal::Malformed(other.to_string()),
        })?;
        let c = &self.claims;
        if c.publisher != self.key_id {
            return Err(Refusal::Malformed(format!(
                "its claims name publisher {}, but it is signed by key {}",
                c.publisher, self.key_id
            )));
        }
        if c.plugin != want.plugin {
            return Err(Refusal::OtherPlugin {
                licensed: c.plugin.clone(),
                plugin: want.plugin.into(),
            });
        }
        if !c.instance.eq_ignore_ascii_case(want.instance) {
            return Err(Refusal::WrongInstance {
                licensed: c.instance.clone(),
                this: want.instance.into(),
            });
        }
        check_time(c, want.now)?;
        Ok(c.clone())
    }

    fn other_publisher(&self, plugin: &str, package_key_id: &str) -> Refusal {
        Refusal::OtherPublisher {
            key_id: self.key_id.clone(),
            plugin: plugin.into(),
            package_key_id: package_key_id.into(),
        }
    }
}

/// `not_before <= now < expires`.
pub(crate) fn check_time(c: &Claims, now: DateTime<Utc>) -> Result<(), Refusal> {
    let show = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if now < c.not_before {
        return Err(Refusal::NotYetValid {
            not_before: show(c.not_before),
            now: show(now),
        });
    }
    if let Some(expires) = c.expires
        && now >= expires
    {
        return Err(Refusal::Expired {
            expires: show(expires),
            now: show(now),
        });
    }
    Ok(())
}

/// The claims' own rules (whoever signed them).
fn check_claims(c: &Claims) -> Result<(), Refusal> {
    let bad = |why: String| Err(Refusal::Malformed(why));
    if c.format != FORMAT {
        return bad(format!(
            "claims format {} (this host reads format {FORMAT})",
            c.format
        ));
    }
    let id_ok = (1..=63).contains(&c.plugin.len())
        && !c.plugin.starts_with('-')
        && c.plugin
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !id_ok {
        return bad(format!("plugin {:?} is not a plugin id", c.plugin));
    }
    if c.publisher.len() != 16 || !c.publisher.bytes().all(|b| b.is_ascii_hexdigit()) {
        return bad(format!(
            "publisher {:?} is not a key id (16 hex digits)",
            c.publisher
        ));
    }
    if parse_licensing_id(&c.instance).is_none() {
        return bad(format!(
            "instance {:?} is not a licensing id ({LICENSING_ID_HEX} hex digits)",
            c.instance
        ));
    }
    if c.features.len() > MAX_FEATURES {
        return bad(format!("more than {MAX_FEATURES} features"));
    }
    for f in &c.features {
        let ok = (1..=MAX_FEATURE_BYTES).contains(&f.len())
            && f.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if !ok {
            return bad(format!(
                "feature {f:?} is not 1-{MAX_FEATURE_BYTES} of [A-Za-z0-9._:-]"
            ));
        }
    }
    if let Some(e) = c.expires
        && e <= c.not_before
    {
        return bad("it expires before it begins".into());
    }
    Ok(())
}

/// A licensing id as typed (hex, any case, `-` or spaces between groups allowed), normalised to
/// 32 lowercase hex digits.
pub(crate) fn parse_licensing_id(text: &str) -> Option<String> {
    let id: String = text
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (id.len() == LICENSING_ID_HEX && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The licensing id of an instance key: SHA-256 of its Ed25519 public key, first 16 bytes, hex.
pub(crate) fn licensing_id(public: &PublicKey) -> String {
    let digest = Sha256::digest(public.ed25519_bytes());
    digest
        .iter()
        .take(LICENSING_ID_HEX / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The time a licence is judged at: the wall clock, but never earlier than the newest time the
/// host has seen (`last_seen`), so a clock set back does not revive an expired licence.
pub(crate) fn effective_now(
    wall: DateTime<Utc>,
    last_seen: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    match last_seen {
        Some(seen) if seen > wall => seen,
        _ => wall,
    }
}

/// A date as `toru license issue` takes it: `YYYY-MM-DD` (midnight UTC) or RFC 3339.
pub(crate) fn parse_date(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.to_utc());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("{text:?} is not a date (YYYY-MM-DD or RFC 3339)"))
}

/// What `toru license issue` is asked for.
#[derive(Debug, Clone)]
pub(crate) struct Issue {
    /// The plugin id.
    pub(crate) plugin: String,
    /// The device's licensing id (any case, groups allowed).
    pub(crate) instance: String,
    /// Features.
    pub(crate) features: Vec<String>,
    /// Valid from (`None`: the start of today, UTC, so a device whose clock lags a little
    /// accepts it).
    pub(crate) not_before: Option<DateTime<Utc>>,
    /// Valid until (`None`: never expires).
    pub(crate) expires: Option<DateTime<Utc>>,
}

/// Why a licence could not be issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum IssueError {
    /// The request breaks a rule of the format.
    #[error("{0}")]
    Invalid(String),
    /// The key cannot sign.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// Make a licence: the claims line signed with the secret key in `secret_key` (a `toru key
/// generate` key, the one that signs the plugin's packages). Returns the file's text and the
/// claims.
pub(crate) fn issue(
    secret_key: &std::path::Path,
    req: &Issue,
    now: DateTime<Utc>,
) -> Result<(String, Claims), IssueError> {
    let instance = parse_licensing_id(&req.instance).ok_or_else(|| {
        IssueError::Invalid(format!(
            "--instance {:?} is not a licensing id ({LICENSING_ID_HEX} hex digits; \
             `toru instance id` on the device prints it)",
            req.instance
        ))
    })?;
    let key = sign::public_key_of(secret_key)?;
    let not_before = req.not_before.unwrap_or_else(|| {
        now.date_naive()
            .and_hms_opt(0, 0, 0)
            .map_or(now, |t| t.and_utc())
    });
    let claims = Claims {
        format: FORMAT,
        plugin: req.plugin.clone(),
        publisher: key.key_id.clone(),
        instance,
        features: req.features.clone(),
        not_before,
        expires: req.expires,
        issued_at: now,
    };
    check_claims(&claims).map_err(|e| match e {
        Refusal::Malformed(why) => IssueError::Invalid(why),
        other => IssueError::Invalid(other.to_string()),
    })?;
    let line = serde_json::to_string(&claims)
        .map_err(|e| IssueError::Invalid(format!("cannot encode the claims: {e}")))?;
    let signed = format!("{line}\n");
    let comment = format!("licence for {} on {}", claims.plugin, claims.instance);
    let (sig, _) = sign::sign_bytes(signed.as_bytes(), secret_key, &comment)?;
    Ok((format!("{signed}{sig}"), claims))
}

#[cfg(test)]
mod tests;
