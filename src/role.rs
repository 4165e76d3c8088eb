//! [`Role`]: what an account or an API token may do. A leaf: the store keeps it in user and token
//! records, `auth` checks it, the HTTP layer and the admin commands show it. It lives here, not in
//! `auth`, because the store must not import `auth` (which calls the store).
//!
//! Its text form (`"admin"`, `"viewer"`) is what the store file, the REST API and the control
//! socket have always carried; serde uses exactly that text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What an account or token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Read only (and log out, and change its own password).
    Viewer,
}

impl Role {
    /// `admin` or `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name other than `admin` or `viewer`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (use admin or viewer)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "admin" => Ok(Role::Admin),
            "viewer" => Ok(Role::Viewer),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text form is the one stored users, the API and the control socket already carry.
    #[test]
    fn text_form_is_unchanged() {
        for (role, text) in [(Role::Admin, "admin"), (Role::Viewer, "viewer")] {
            assert_eq!(serde_json::to_value(role).unwrap(), text);
            assert_eq!(serde_json::from_value::<Role>(text.into()).unwrap(), role);
            assert_eq!(text.parse::<Role>().unwrap(), role);
            assert_eq!(role.to_string(), text);
        }
        assert_eq!(
            "root".parse::<Role>().unwrap_err().to_string(),
            "unknown role \"root\" (use admin or viewer)"
        );
        assert!(serde_json::from_value::<Role>("Admin".into()).is_err());
    }
}
