//! Handlers for whole-device updates (`/api/system/update…`, `/api/system/reboot`): HTTP in,
//! `update::Updates` calls, JSON out. A bundle upload is read frame by frame straight into its
//! staging file, never held whole (as a package upload is, `packages`).
//!
//! A handler beside `api`, `packages` and `session` (none imports another); uses `request`
//! (its streamed upload), `resp`, the router's role checks and `crate::update`.

use hyper::StatusCode;
use hyper::body::{Body as _, Incoming};
use serde_json::json;

use super::request::stream_upload;
use super::resp::{ApiError, Resp, json_response, ok_json};
use super::router::{Server, need_admin};
use crate::auth::Identity;
use crate::update::UpdateError;

fn update_error(e: UpdateError) -> ApiError {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        return ApiError::internal("the update operation", &e);
    }
    ApiError::new(status, e.code(), e.to_string())
}

/// `GET /api/system/update`: slots, the health gate, the pending update, the last result, the
/// install under way and the staged bundle (see docs/API.md).
pub(crate) async fn status(srv: &Server) -> Result<Resp, ApiError> {
    ok_json(&srv.app.updates.status().await)
}

/// `POST /api/system/update/upload` (admin): the body is the bundle. `201` with the preview
/// (`token`, `version`, `compatible`, `signer`), `413` past `[update] max_bundle_bytes`, `422`
/// when RAUC refuses it or it is for another device (nothing installed), `507` on a full disk.
pub(crate) async fn upload(
    srv: &Server,
    who: &Identity,
    mut body: Incoming,
) -> Result<Resp, ApiError> {
    need_admin(who)?;
    let updates = &srv.app.updates;
    let limit = srv.app.config.update.max_bundle_bytes;
    if updates.enabled() && body.size_hint().lower() > limit {
        return Err(update_error(UpdateError::TooLarge(limit)));
    }
    // Refused part-way (too large, disk full): the upload and its file go at once.
    let up = updates.begin_upload().map_err(update_error)?;
    let up = stream_upload(&mut body, up, |u, chunk| u.write(chunk), update_error).await?;
    let preview = updates.finish_upload(up).await.map_err(update_error)?;
    Ok(json_response(StatusCode::CREATED, &preview))
}

/// `POST /api/system/update/upload/{token}/install` (admin): `202` once `rauc install` started;
/// its progress is in `GET /api/system/update` (`install`).
pub(crate) async fn install(srv: &Server, who: &Identity, token: &str) -> Result<Resp, ApiError> {
    need_admin(who)?;
    let view = srv
        .app
        .updates
        .start_install(token)
        .await
        .map_err(update_error)?;
    Ok(json_response(StatusCode::ACCEPTED, &view))
}

/// `DELETE /api/system/update/upload/{token}` (admin): forget the staged bundle.
pub(crate) fn cancel(srv: &Server, who: &Identity, token: &str) -> Result<Resp, ApiError> {
    need_admin(who)?;
    if srv.app.updates.cancel(token) {
        ok_json(&json!({"cancelled": token}))
    } else {
        Err(update_error(UpdateError::NoUpload(token.to_owned())))
    }
}

/// `POST /api/system/reboot` (admin): run `[update] reboot_command` (only where updates are
/// enabled: the image's own setting). `202` once it ran.
pub(crate) async fn reboot(srv: &Server, who: &Identity) -> Result<Resp, ApiError> {
    need_admin(who)?;
    srv.app.updates.reboot().await.map_err(update_error)?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"rebooting": true}),
    ))
}
