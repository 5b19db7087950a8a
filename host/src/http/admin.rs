//! The admin API under `/api/v1`: bearer tokens with scopes on every route.

use super::{ApiError, AppState};
use crate::auth::{self, AuthError, Scope};
use axum::Extension;
use axum::body::{Body, HttpBody};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::io::{Seek, Write};

/// Default largest report file accepted by upload (`http.max_import_bytes`).
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;
/// An upload is written to its temporary file in runs of this many bytes (the one part
/// of it held in memory).
const SPOOL_RUN: usize = 1 << 20;

/// The admin routes; a report file may be up to `max_import` bytes.
pub fn routes(max_import: usize) -> Router<AppState> {
    Router::new()
        .route("/api/v1/networks/{network}/imports", post(upload_import).layer(Extension(ImportCap(max_import))))
        .route("/api/v1/networks/{network}/rejects", get(list_rejects))
}

/// The largest upload, `http.max_import_bytes`: the handler counts the body itself, as it
/// streams it to disk (axum's body limit applies to bodies read whole).
#[derive(Debug, Clone, Copy)]
struct ImportCap(usize);

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
///
/// The body is never held whole: it goes to an unnamed temporary file as it arrives (in
/// the directory `TMPDIR` names, removed by the system when the file is closed, crash
/// or not), and the import reads that file a piece at a time as `cashbackd import` reads
/// one on disk. A report larger than memory imports; `max_import` (`http.max_import_bytes`)
/// is the only cap, checked against `Content-Length` before a byte is read and against
/// the bytes as they come.
async fn upload_import(
    State(st): State<AppState>,
    Path(network): Path<String>,
    Query(q): Query<UploadQuery>,
    Extension(ImportCap(max_import)): Extension<ImportCap>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<crate::imports::FileSummary>, ApiError> {
    require(&st, &headers, Scope::Write).await?;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_import as u64) {
        return Err(ApiError::too_large((max_import, "http.max_import_bytes")));
    }
    let name = q.name.unwrap_or_else(|| "upload".into());
    if crate::ingest::network(st.service.db(), &network)
        .await
        .map_err(|e| ApiError::unavailable("cannot read the network", &e))?
        .is_none()
    {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_network", format!("no network {network:?}")));
    }
    let (file, bytes) = spool(body, max_import).await?;
    if bytes == 0 {
        return Err(ApiError::bad_request("empty_file", "the request body (the file) is empty"));
    }
    let summary = crate::imports::import_from(&st.service, &st.runtime, &network, &name, Box::new(file), |_, _| {})
        .await
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "import_failed", e))?;
    Ok(Json(summary))
}

/// Writes `body` to a new unnamed temporary file as it arrives, at most `cap` bytes (413
/// beyond, naming `http.max_import_bytes`), and answers the file, rewound, and its size.
/// What is held in memory is one run of [`SPOOL_RUN`] bytes; the writes go to a blocking
/// thread, as every file access of the server does.
async fn spool(mut body: Body, cap: usize) -> Result<(std::fs::File, u64), ApiError> {
    let failed = |e: std::io::Error| ApiError::unavailable("cannot store the uploaded file", &e);
    let blocking = |e: tokio::task::JoinError| ApiError::unavailable("cannot store the uploaded file", &e);
    let mut file = tokio::task::spawn_blocking(tempfile::tempfile).await.map_err(blocking)?.map_err(failed)?;
    let mut run: Vec<u8> = Vec::new();
    let mut total = 0u64;
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        let last = match frame {
            None => true,
            Some(Err(e)) => {
                // The client went away or sent a broken body: nothing was imported.
                return Err(ApiError::bad_request("bad_body", format!("reading the request body: {e}")));
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    total += data.len() as u64;
                    if total > cap as u64 {
                        return Err(ApiError::too_large((cap, "http.max_import_bytes")));
                    }
                    run.extend_from_slice(&data);
                }
                false
            }
        };
        if run.len() >= SPOOL_RUN || (last && !run.is_empty()) {
            let written = std::mem::take(&mut run);
            file = tokio::task::spawn_blocking(move || file.write_all(&written).map(|()| file))
                .await
                .map_err(blocking)?
                .map_err(failed)?;
        }
        if last {
            break;
        }
    }
    let file =
        tokio::task::spawn_blocking(move || file.rewind().map(|()| file)).await.map_err(blocking)?.map_err(failed)?;
    Ok((file, total))
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
