//! The admin API under `/api/v1`: bearer tokens with scopes on every route.

use super::{ApiError, AppState};
use crate::auth::{self, AuthError, Scope};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

/// Default largest report file accepted by upload (`http.max_import_bytes`).
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;

/// The admin routes; a report file may be up to `max_import` bytes.
pub fn routes(max_import: usize) -> Router<AppState> {
    Router::new()
        .route("/api/v1/networks/{network}/imports", post(upload_import).layer(DefaultBodyLimit::max(max_import)))
        .route("/api/v1/networks/{network}/rejects", get(list_rejects))
}

/// Checks the request's bearer token against `scope`.
pub(super) async fn require(st: &AppState, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
    let header = headers.get("authorization").and_then(|v| v.to_str().ok());
    auth::authorize(st.service.db(), header, scope, st.service.now()).await.map(|_| ()).map_err(refused)
}

/// [`require`], answering who the token is (its name is recorded with what it does).
pub(super) async fn require_caller(st: &AppState, headers: &HeaderMap, scope: Scope) -> Result<auth::Caller, ApiError> {
    let header = headers.get("authorization").and_then(|v| v.to_str().ok());
    let token = header.and_then(|h| h.strip_prefix("Bearer ")).ok_or(AuthError::Missing).map_err(refused)?;
    auth::caller(st.service.db(), token, scope, st.service.now()).await.map_err(refused)
}

fn refused(e: AuthError) -> ApiError {
    let status = match e {
        AuthError::Scope { .. } => StatusCode::FORBIDDEN,
        AuthError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    ApiError::new(status, "unauthorized", e.to_string())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UploadQuery {
    name: Option<String>,
}

/// `POST /api/v1/networks/{network}/imports?name=report.csv` with the file as the body:
/// imports it through the network's adapter and answers the summary (write scope).
async fn upload_import(
    State(st): State<AppState>,
    Path(network): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<crate::imports::FileSummary>, ApiError> {
    require(&st, &headers, Scope::Write).await?;
    if body.is_empty() {
        return Err(ApiError::bad_request("empty_file", "the request body (the file) is empty"));
    }
    let name = q.name.unwrap_or_else(|| "upload".into());
    if crate::ingest::network(st.service.db(), &network)
        .await
        .map_err(|e| ApiError::unavailable("cannot read the network", &e))?
        .is_none()
    {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_network", format!("no network {network:?}")));
    }
    let summary = crate::imports::import_from(
        &st.service,
        &st.runtime,
        &network,
        &name,
        Box::new(std::io::Cursor::new(body)),
        |_, _| {},
    )
    .await
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "import_failed", e))?;
    Ok(Json(summary))
}

/// A refused postback with its id (the cursor of the list).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct RejectRow {
    id: i64,
    #[serde(flatten)]
    reject: crate::ingest::Reject,
}

super::page::page_of!(
    /// `GET /api/v1/networks/{network}/rejects`.
    RejectsPage, rejects: RejectRow
);

/// `GET /api/v1/networks/{network}/rejects?cursor=&limit=`: refused postbacks, newest
/// first, a page at a time (read scope).
async fn list_rejects(
    State(st): State<AppState>,
    Path(network): Path<String>,
    Query(q): Query<super::page::IdPage>,
    headers: HeaderMap,
) -> Result<Json<RejectsPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let (limit, before) = q.checked()?;
    let rows = crate::ingest::rejects_before(st.service.db(), &network, before, limit + 1)
        .await
        .map_err(|e| ApiError::unavailable("cannot read the rejects", &e))?;
    let (rows, next_cursor) = super::page::cut(rows, limit, |(id, _)| id.to_string());
    let rejects = rows.into_iter().map(|(id, reject)| RejectRow { id, reject }).collect();
    Ok(Json(RejectsPage { rejects, next_cursor }))
}
