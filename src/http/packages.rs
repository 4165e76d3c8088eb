//! Handlers for packages, trusted keys and settings (`/api/packages/…`, `/api/trust…`,
//! `/api/plugins/{id}/{versions|rollback|remove|settings}`): HTTP in, `install::Packages` calls,
//! JSON out. An upload is read frame by frame straight into the staging file, never held whole.
//!
//! A handler beside `api` and `session` (none imports another); uses `request`, `resp`, the
//! router's role checks and `crate::install`.

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use hyper::body::{Body as _, Incoming};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::request::{Ctx, read_json, read_json_or_default};
use super::resp::{ApiError, Resp, json_response, method_not_allowed, ok_json};
use super::router::{Server, need_admin};
use crate::auth::Identity;
use crate::install::{Expect, PackageError};

/// An upload must keep arriving: a gap longer than this between two chunks ends it (`408`).
const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `.minisig` text accepted in `X-Toru-Signature` (decoded).
const MAX_SIGNATURE_BYTES: usize = 4096;

fn package_error(e: PackageError) -> ApiError {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        return ApiError::internal("the package operation", &e);
    }
    let message = e.to_string();
    match e {
        PackageError::InvalidSettings(errors) => ApiError::new(status, "invalid_settings", message)
            .with_details(json!({"errors": errors})),
        other => ApiError::new(status, other.code(), message),
    }
}

/// `POST /api/packages/upload` (admin): the body is the package, the `X-Toru-Signature` header
/// its `.minisig` text in base64. `201` with the preview, `413` past the size limit, `422` when
/// refused (the message says why).
pub(crate) async fn upload(
    srv: &Server,
    ctx: &Ctx,
    who: &Identity,
    mut body: Incoming,
) -> Result<Resp, ApiError> {
    need_admin(who)?;
    let signature = match ctx.header("x-toru-signature") {
        None => None,
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| {
                    ApiError::bad_request(format!("X-Toru-Signature is not base64: {e}"))
                })?;
            if bytes.len() > MAX_SIGNATURE_BYTES {
                return Err(ApiError::bad_request("X-Toru-Signature is too long"));
            }
            Some(String::from_utf8(bytes).map_err(|_| {
                ApiError::bad_request("X-Toru-Signature is not the text of a .minisig file")
            })?)
        }
    };
    let packages = &srv.app.packages;
    let limit = srv.app.config.packages.max_package_bytes;
    if body.size_hint().lower() > limit {
        return Err(package_error(PackageError::TooLarge(limit)));
    }
    let mut up = packages.begin_upload(signature).map_err(package_error)?;
    loop {
        let next = tokio::time::timeout(
            UPLOAD_IDLE_TIMEOUT,
            poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)),
        )
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the upload stopped arriving",
            )
        })?;
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| ApiError::bad_request(format!("bad request body: {e}")))?;
        if let Ok(data) = frame.into_data()
            && let Err(e) = up.write(&data)
        {
            // Refused part-way (too large, disk full): the upload and its staging folder go at
            // once, but the client is still sending. Read on a little before answering, so that
            // the answer reaches a client that writes its whole body before reading (a browser):
            // closing with unread data would reset the connection and lose the reason.
            drop(up);
            drain(&mut body).await;
            return Err(package_error(e));
        }
    }
    let preview = packages.finish_upload(up).await.map_err(package_error)?;
    Ok(json_response(StatusCode::CREATED, &preview))
}

/// After a refusal, at most this much more of an upload is read and thrown away (or for at most
/// [`DRAIN_TIME`]) so the answer is not lost in a reset connection.
const DRAIN_BYTES: u64 = 16 * 1024 * 1024;
/// See [`DRAIN_BYTES`].
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Read and discard what is left of `body`, within [`DRAIN_BYTES`] and [`DRAIN_TIME`].
async fn drain(body: &mut Incoming) {
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            if n >= left {
                return;
            }
            left -= n;
        }
    })
    .await;
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Confirm {
    #[serde(default)]
    allow_downgrade: bool,
}

/// `POST /api/packages/upload/{token}/confirm` (admin): install or update; answers once the
/// probation ended (`409 rolled_back` with the reason when it failed).
pub(crate) async fn confirm(
    srv: &Server,
    who: &Identity,
    token: &str,
    body: Incoming,
) -> Result<Resp, ApiError> {
    need_admin(who)?;
    let c: Confirm = read_json_or_default(body, srv.app.config.http.max_api_body_bytes).await?;
    let done = srv
        .app
        .packages
        .confirm(token, Expect::Any, c.allow_downgrade)
        .await
        .map_err(package_error)?;
    ok_json(&done)
}

/// `DELETE /api/packages/upload/{token}` (admin).
pub(crate) fn cancel(srv: &Server, who: &Identity, token: &str) -> Result<Resp, ApiError> {
    need_admin(who)?;
    if srv.app.packages.cancel(token) {
        ok_json(&json!({"cancelled": token}))
    } else {
        Err(package_error(PackageError::NoUpload(token.to_owned())))
    }
}

/// `GET /api/plugins/{id}/versions`.
pub(crate) fn versions(srv: &Server, id: &str) -> Result<Resp, ApiError> {
    ok_json(&srv.app.packages.versions(id).map_err(package_error)?)
}

/// `POST /api/plugins/{id}/rollback` (admin).
pub(crate) async fn rollback(srv: &Server, who: &Identity, id: &str) -> Result<Resp, ApiError> {
    need_admin(who)?;
    ok_json(&srv.app.packages.rollback(id).await.map_err(package_error)?)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Remove {
    #[serde(default)]
    purge_data: bool,
}

/// `POST /api/plugins/{id}/remove` (admin), body `{"purge_data": bool}`.
pub(crate) async fn remove(
    srv: &Server,
    who: &Identity,
    id: &str,
    body: Incoming,
) -> Result<Resp, ApiError> {
    need_admin(who)?;
    let r: Remove = read_json_or_default(body, srv.app.config.http.max_api_body_bytes).await?;
    srv.app
        .packages
        .remove(id, r.purge_data)
        .await
        .map_err(package_error)?;
    ok_json(&json!({"removed": id, "purge_data": r.purge_data}))
}

/// `GET` (anyone) and `PUT` (admin) `/api/plugins/{id}/settings`.
pub(crate) async fn settings(
    srv: &Server,
    ctx: &Ctx,
    who: &Identity,
    id: &str,
    body: Incoming,
) -> Result<Resp, ApiError> {
    let packages = &srv.app.packages;
    match ctx.method {
        Method::GET | Method::HEAD => ok_json(&packages.settings(id).map_err(package_error)?),
        Method::PUT => {
            need_admin(who)?;
            let values: serde_json::Value =
                read_json(body, srv.app.config.http.max_api_body_bytes).await?;
            ok_json(
                &packages
                    .set_settings(id, values)
                    .await
                    .map_err(package_error)?,
            )
        }
        _ => Err(method_not_allowed("GET, PUT")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddKey {
    public_key: String,
    #[serde(default)]
    comment: String,
}

/// `GET` (anyone) and `POST` (admin) `/api/trust`.
pub(crate) async fn trust(
    srv: &Server,
    ctx: &Ctx,
    who: &Identity,
    body: Incoming,
) -> Result<Resp, ApiError> {
    let packages = &srv.app.packages;
    match ctx.method {
        Method::GET | Method::HEAD => ok_json(&packages.trusted().map_err(package_error)?),
        Method::POST => {
            need_admin(who)?;
            let add: AddKey = read_json(body, srv.app.config.http.max_api_body_bytes).await?;
            let key = packages
                .trust(&add.public_key, &add.comment)
                .await
                .map_err(package_error)?;
            Ok(json_response(StatusCode::CREATED, &key))
        }
        _ => Err(method_not_allowed("GET, POST")),
    }
}

/// `DELETE /api/trust/{key_id}` (admin).
pub(crate) async fn distrust(srv: &Server, who: &Identity, key_id: &str) -> Result<Resp, ApiError> {
    need_admin(who)?;
    srv.app
        .packages
        .distrust(key_id)
        .await
        .map_err(package_error)?;
    ok_json(&json!({"removed": key_id}))
}
