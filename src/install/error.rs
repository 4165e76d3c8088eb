//! [`PackageError`]: why a package operation was refused or failed, with the HTTP status and the
//! short code the API answers it with (the CLI prints the message).

use crate::package::archive::ArchiveError;
use crate::package::manifest::ManifestError;
use crate::package::sign::SignError;
use crate::settings::FieldError;
use crate::store::StoreError;

/// Why a package operation did not happen (or was undone).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PackageError {
    /// The package or request is not acceptable; `code` names the rule (`untrusted_key`,
    /// `bad_manifest`, `downgrade` …), the message says what to do.
    #[error("{message}")]
    Refused {
        /// Short machine-readable reason.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// The package is larger than `[packages] max_package_bytes`.
    #[error("the package is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// No upload with this token (used, cancelled or expired).
    #[error("no upload {0}: it was confirmed, cancelled or expired (uploads wait 10 minutes)")]
    NoUpload(String),
    /// No plugin with this id is installed.
    #[error("no plugin {0} is installed")]
    NotInstalled(String),
    /// The key is not trusted.
    #[error("the key {0} is not trusted")]
    NotTrusted(String),
    /// No licence is installed for this plugin.
    #[error("no licence is installed for {0}")]
    NoLicense(String),
    /// The new version failed its probation and was rolled back.
    #[error("rolled back: {0}")]
    RolledBack(String),
    /// The settings do not match the schema.
    #[error("the settings are not valid: {}", summary(.0))]
    InvalidSettings(Vec<FieldError>),
    /// The disk is full.
    #[error("the disk is full ({0}); nothing was changed")]
    DiskFull(String),
    /// A file operation failed.
    #[error("{0}")]
    Io(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn summary(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| {
            if e.path.is_empty() {
                e.message.clone()
            } else {
                format!("{}: {}", e.path, e.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl PackageError {
    pub(crate) fn io(doing: &str, e: std::io::Error) -> PackageError {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            PackageError::DiskFull(doing.to_owned())
        } else {
            PackageError::Io(format!("{doing}: {e}"))
        }
    }

    pub(crate) fn unsigned() -> PackageError {
        PackageError::Refused {
            code: "unsigned",
            message: "the package is not signed (no .minisig was given), and this device accepts \
                      only signed packages"
                .into(),
        }
    }

    /// The HTTP status this error answers with.
    pub(crate) fn status(&self) -> u16 {
        match self {
            PackageError::Refused { .. } | PackageError::InvalidSettings(_) => 422,
            PackageError::TooLarge(_) => 413,
            PackageError::NoUpload(_)
            | PackageError::NotInstalled(_)
            | PackageError::NotTrusted(_)
            | PackageError::NoLicense(_) => 404,
            PackageError::RolledBack(_) => 409,
            PackageError::DiskFull(_) => 507,
            PackageError::Io(_) => 500,
            PackageError::Store(StoreError::DiskFull(_)) => 507,
            PackageError::Store(StoreError::Degraded | StoreError::Unavailable) => 503,
            PackageError::Store(_) => 500,
        }
    }

    /// The short code the API answers with.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            PackageError::Refused { code, .. } => code,
            PackageError::TooLarge(_) => "too_large",
            PackageError::NoUpload(_) => "no_upload",
            PackageError::NotInstalled(_)
            | PackageError::NotTrusted(_)
            | PackageError::NoLicense(_) => "not_found",
            PackageError::RolledBack(_) => "rolled_back",
            PackageError::InvalidSettings(_) => "invalid_settings",
            PackageError::DiskFull(_) | PackageError::Store(StoreError::DiskFull(_)) => {
                "storage_full"
            }
            PackageError::Io(_) | PackageError::Store(_) => "internal",
        }
    }
}

impl From<SignError> for PackageError {
    fn from(e: SignError) -> PackageError {
        let code = match &e {
            SignError::Malformed(_) => "bad_signature",
            SignError::UntrustedKey { .. } => "untrusted_key",
            SignError::Mismatch { .. } => "signature_mismatch",
            SignError::Legacy { .. } => "legacy_signature",
            _ => "bad_signature",
        };
        PackageError::Refused {
            code,
            message: e.to_string(),
        }
    }
}

impl From<ArchiveError> for PackageError {
    fn from(e: ArchiveError) -> PackageError {
        match e {
            ArchiveError::DiskFull { .. } => {
                PackageError::DiskFull("extracting the package".into())
            }
            ArchiveError::Manifest(m) => m.into(),
            e => PackageError::Refused {
                code: "bad_package",
                message: e.to_string(),
            },
        }
    }
}

impl From<ManifestError> for PackageError {
    fn from(e: ManifestError) -> PackageError {
        let code = match &e {
            ManifestError::Toml(_) | ManifestError::Field { .. } => "bad_manifest",
            ManifestError::WrongTarget { .. } => "wrong_target",
            ManifestError::HostTooOld { .. } => "host_too_old",
            ManifestError::Disagrees { .. } => "metadata_mismatch",
        };
        PackageError::Refused {
            code,
            message: e.to_string(),
        }
    }
}
