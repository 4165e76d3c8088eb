//! KV on behalf of one plugin: a protocol `kv` request in, the protocol's reply out.
//!
//! The one function both ways in call: the plugin socket (`supervisor::conn`, a plugin's own
//! `kv` frames) and the REST API (`http::api`, `POST /api/plugins/{id}/kv`). So both apply the
//! same limits (the protocol's `MAX_KV_*`, checked by [`Store`]), clamp `limit` the same way and
//! map a store error to the same protocol code ([`error_code`]); the socket sends that code in an
//! `error` frame, the HTTP layer turns it into a status. This module knows neither caller.

use toru_plugin_api::protocol::{ErrorCode, ErrorReply, KvReply, KvRequest, MAX_KV_LIST_LIMIT};

use super::{Store, StoreError};
use crate::error_chain::error_chain;

/// Answer one KV request from `plugin`'s namespace. A `list` without `limit` returns up to
/// [`MAX_KV_LIST_LIMIT`] keys; a larger `limit` is read as that, 0 as 1.
pub async fn serve(store: &Store, plugin: &str, req: KvRequest) -> Result<KvReply, StoreError> {
    match req {
        KvRequest::Get { key } => {
            let value = store.kv_get(plugin, &key)?;
            Ok(KvReply::Get { key, value })
        }
        KvRequest::Set { key, value } => {
            store.kv_set(plugin, &key, &value).await?;
            Ok(KvReply::Set { key })
        }
        KvRequest::Delete { key } => {
            let existed = store.kv_delete(plugin, &key).await?;
            Ok(KvReply::Delete { key, existed })
        }
        KvRequest::List {
            prefix,
            start_after,
            limit,
        } => {
            let limit = limit
                .unwrap_or(MAX_KV_LIST_LIMIT)
                .clamp(1, MAX_KV_LIST_LIMIT);
            let (keys, truncated) =
                store.kv_list(plugin, &prefix, start_after.as_deref(), limit)?;
            Ok(KvReply::List { keys, truncated })
        }
    }
}

/// The protocol code for a failed KV request: the caller's fault (`bad_request`, `too_large`,
/// `quota_exceeded`), the store's state (`unavailable`), or the host's (`internal`).
pub fn error_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::EmptyKey => ErrorCode::BadRequest,
        StoreError::KeyTooLong(_) | StoreError::ValueTooLarge(_) => ErrorCode::TooLarge,
        StoreError::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
        StoreError::Degraded
        | StoreError::Closed
        | StoreError::Unavailable
        | StoreError::DiskFull(_) => ErrorCode::Unavailable,
        StoreError::NameTaken(_) | StoreError::Storage(_) => ErrorCode::Internal,
    }
}

/// The `error` frame payload answering a plugin's failed KV request.
pub fn error_reply(e: &StoreError) -> ErrorReply {
    if error_code(e) == ErrorCode::Internal {
        log::error!("KV request failed: {}", error_chain(e));
    }
    ErrorReply::new(error_code(e), e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use toru_plugin_api::protocol::{MAX_KV_KEY_LEN, MAX_KV_VALUE_LEN};

    use super::*;
    use crate::store::tests::{TempDir, open};

    fn get(key: &str) -> KvRequest {
        KvRequest::Get { key: key.into() }
    }

    fn set(key: &str, value: &str) -> KvRequest {
        KvRequest::Set {
            key: key.into(),
            value: value.into(),
        }
    }

    fn list(limit: Option<usize>) -> KvRequest {
        KvRequest::List {
            prefix: String::new(),
            start_after: None,
            limit,
        }
    }

    #[tokio::test]
    async fn requests_are_served_and_limits_map_to_protocol_codes() {
        let dir = TempDir::new();
        let store = open(&dir);
        assert_eq!(
            serve(&store, "p", set("a", "1")).await.unwrap(),
            KvReply::Set { key: "a".into() }
        );
        assert_eq!(
            serve(&store, "p", get("a")).await.unwrap(),
            KvReply::Get {
                key: "a".into(),
                value: Some("1".into())
            }
        );
        let code = |r: Result<KvReply, StoreError>| error_code(&r.unwrap_err());
        assert_eq!(
            code(serve(&store, "p", get("")).await),
            ErrorCode::BadRequest
        );
        let long_key = "k".repeat(MAX_KV_KEY_LEN + 1);
        assert_eq!(
            code(serve(&store, "p", get(&long_key)).await),
            ErrorCode::TooLarge
        );
        let big = "v".repeat(MAX_KV_VALUE_LEN + 1);
        assert_eq!(
            code(serve(&store, "p", set("b", &big)).await),
            ErrorCode::TooLarge
        );
    }

    #[tokio::test]
    async fn list_limit_is_clamped_to_one_through_the_protocol_maximum() {
        let dir = TempDir::new();
        let store = open(&dir);
        for k in ["a", "b", "c"] {
            serve(&store, "p", set(k, "x")).await.unwrap();
        }
        for (limit, want, more) in [
            (Some(0), 1, true),
            (Some(2), 2, true),
            (Some(usize::MAX), 3, false),
            (None, 3, false),
        ] {
            let KvReply::List { keys, truncated } = serve(&store, "p", list(limit)).await.unwrap()
            else {
                panic!("not a list reply");
            };
            assert_eq!((keys.len(), truncated), (want, more), "limit {limit:?}");
        }
    }
}
