//! API tokens: `toru_` + 256 random bits (base64url), shown once at creation; the store keeps only
//! their SHA-256, a name and a role. Valid until revoked.
//!
//! Called by the admin commands (`toru token create|list|revoke`) and by `login` to authenticate a
//! request's `Authorization: Bearer …` header.

use super::sessions::{Identity, Unauthenticated, Via};
use super::{AuthError, b64url, check_name, random_bytes, secret_hash};
use crate::role::Role;
use crate::store::{Store, TokenRecord};

/// Prefix of API tokens (helps secret scanners and humans).
const TOKEN_PREFIX: &str = "toru_";

/// Create an API token called `name` with `role`; returns the token text (shown once; only its
/// hash is stored).
pub(crate) async fn create_token(
    store: &Store,
    name: &str,
    role: Role,
) -> Result<String, AuthError> {
    check_name(name)?;
    let token = format!("{TOKEN_PREFIX}{}", b64url(&random_bytes::<32>()?));
    store
        .put_token(
            &secret_hash(&token),
            TokenRecord {
                name: name.to_string(),
                role,
                created: crate::clock::now(),
            },
        )
        .await?;
    Ok(token)
}

/// Every API token (name, role, creation time; never the secret).
pub(crate) fn list_tokens(store: &Store) -> Result<Vec<TokenRecord>, AuthError> {
    Ok(store.tokens()?)
}

/// Delete the token called `name`; `true` if it existed.
pub(crate) async fn revoke_token(store: &Store, name: &str) -> Result<bool, AuthError> {
    Ok(store.revoke_token(name).await?)
}

/// Who an `Authorization` header value (`Bearer <token>`) belongs to.
pub(super) fn authenticate_bearer(
    store: &Store,
    authorization: &str,
) -> Result<Identity, Unauthenticated> {
    let token = authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(Unauthenticated::Invalid)?;
    let rec = store
        .token(&secret_hash(token))
        .map_err(|_| Unauthenticated::StoreFailed)?
        .ok_or(Unauthenticated::Invalid)?;
    Ok(Identity {
        role: rec.role,
        via: Via::Token(rec.name.clone()),
        name: rec.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::testing::TempDir;
    use crate::store::StoreOptions;

    /// The store file never holds a token's text, only its hash (docs/SECURITY.md).
    #[tokio::test]
    async fn only_the_tokens_hash_reaches_the_store_file() {
        let dir = TempDir::new("tok");
        let store = Store::open(dir.path(), StoreOptions::default()).expect("open");
        let token = create_token(&store, "ci", Role::Viewer)
            .await
            .expect("create");
        assert!(authenticate_bearer(&store, &format!("Bearer {token}")).is_ok());
        store.close();
        drop(store);
        let file = std::fs::read(dir.path().join("toru.redb")).expect("read the store");
        let secret = token.trim_start_matches(TOKEN_PREFIX).as_bytes();
        assert!(
            !file.windows(secret.len()).any(|w| w == secret),
            "the token's text is in the store file"
        );
        let hash = secret_hash(&token);
        assert!(file.windows(hash.len()).any(|w| w == hash.as_bytes()));
    }
}
