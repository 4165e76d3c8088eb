//! Handlers for packages, trusted keys and settings (`/api/packages/…`, `/api/trust…`,
//! `/api/plugins/{id}/{versions|rollback|remove|settings}`): HTTP in, `install::Packages` calls,
//! JSON out. An upload is read frame by frame straight into the staging file, never held whole.
//!
//! A handler beside `api` and `session` (none imports another); uses `request`, `resp`, the
//! router's role checks and `crate::install`.

use base64::Engine as _;
use hyper::body::{Body as _, Incoming};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::request::{Ctx, read_body, read_json, read_json_or_default, stream_upload};
use super::resp::{ApiError, Resp, json_response, method_not_allowed, ok_json};
use super::router::{Server, need_admin};
use crate::auth::Identity;
use crate::install::{Expect, PackageError};

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
    let up = packages.begin_upload(signature).map_err(package_error)?;
    // Refused part-way (too large, disk full): the upload and its staging folder go at once.
    let up = stream_upload(&mut body, up, |u, chunk| u.write(chunk), package_error).await?;
    let preview = packages.finish_upload(up).await.map_err(package_error)?;
    Ok(json_response(StatusCode::CREATED, &preview))
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

/// `GET` (anyone) and `POST` (admin) `/api/licenses`. `POST`: the body is the licence file's text
/// (`?plugin=ID`: it must be for that plugin); `201` with the licence once it is valid here and
/// stored, `422` with the reason's code (`wrong_instance`, `expired`, `bad_signature` …) when
/// refused: nothing is stored then.
pub(crate) async fn licenses(
    srv: &Server,
    ctx: &Ctx,
    who: &Identity,
    body: Incoming,
) -> Result<Resp, ApiError> {
    let packages = &srv.app.packages;
    match ctx.method {
        Method::GET | Method::HEAD => ok_json(&packages.licenses().map_err(package_error)?),
        Method::POST => {
            need_admin(who)?;
            let bytes = read_body(body, crate::license::MAX_LICENSE_BYTES).await?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ApiError::bad_request("the licence is not UTF-8 text"))?;
            let plugin = ctx.query_param("plugin");
            let view = packages
                .install_license(text, plugin.as_deref())
                .await
                .map_err(package_error)?;
            Ok(json_response(StatusCode::CREATED, &view))
        }
        _ => Err(method_not_allowed("GET, POST")),
    }
}

/// `DELETE /api/licenses/{plugin}` (admin): a plugin that requires a licence stops.
pub(crate) async fn remove_license(
    srv: &Server,
    who: &Identity,
    plugin: &str,
) -> Result<Resp, ApiError> {
    need_admin(who)?;
    srv.app
        .packages
        .remove_license(plugin)
        .await
        .map_err(package_error)?;
    ok_json(&json!({"removed": plugin}))
}
