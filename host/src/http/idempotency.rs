//! `Idempotency-Key` on admin API writes (`POST`, `PUT`, `DELETE` under `/api/v1`): the
//! first request with a key runs; a retry with the same key, from the same caller, to the
//! same method and path, with the same body gets the first answer again (and the header
//! `Idempotent-Replayed: true`) instead of acting twice. Reusing a key for a different
//! body is refused (422); a retry while the first is still running gets 409. Keys live 24
//! hours. Answers of 5xx are not kept, so such a request may be retried with its key.

use super::{ApiError, AppState};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use sqlx::Row;

const HEADER: &str = "idempotency-key";
const TTL_MS: i64 = 24 * 3_600_000;
/// Larger answers are not kept; requests are read up to the largest body cap of the
/// routes (this, without the router's caps).
const MAX_KEPT: usize = 64 << 20;

fn hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The middleware.
pub async fn guard(State(st): State<AppState>, request: Request, next: Next) -> Response {
    let write = matches!(*request.method(), Method::POST | Method::PUT | Method::DELETE | Method::PATCH);
    let Some(key) = request.headers().get(HEADER).cloned() else { return next.run(request).await };
    if !write || !request.uri().path().starts_with("/api/v1/") {
        return next.run(request).await;
    }
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 => k.to_string(),
        _ => {
            return ApiError::bad_request("bad_idempotency_key", "Idempotency-Key: 1 to 255 visible ASCII characters")
                .into_response();
        }
    };
    // The largest body any route takes (an upload's): the route itself enforces its own.
    let cap = request.extensions().get::<super::BodyLimits>().map_or(MAX_KEPT, |b| b.largest());
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, cap).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body is over {cap} bytes, the largest any route takes"),
            )
            .into_response();
        }
    };
    let credential = parts.headers.get("authorization").map(|v| v.as_bytes()).unwrap_or_default();
    let scope = hash(&[credential, parts.method.as_str().as_bytes(), parts.uri.path().as_bytes()]);
    let request_hash = hash(&[&body]);
    let now = st.service.now();
    let pool = &st.service.db().pool;
    let unavailable = |e: sqlx::Error| ApiError::unavailable("idempotency keys are unavailable", &e).into_response();
    if let Err(e) =
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1").bind(now - TTL_MS).execute(pool).await
    {
        return unavailable(e);
    }
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (key, scope, request_hash, status, created_at) VALUES ($1, $2, $3, 0, $4) \
         ON CONFLICT (key, scope) DO NOTHING",
    )
    .bind(&key)
    .bind(&scope)
    .bind(&request_hash)
    .bind(now)
    .execute(pool)
    .await;
    match claimed {
        Err(e) => return unavailable(e),
        Ok(done) if done.rows_affected() == 0 => {
            let row = sqlx::query(
                "SELECT request_hash, status, content_type, body FROM idempotency_keys WHERE key = $1 AND scope = $2",
            )
            .bind(&key)
            .bind(&scope)
            .fetch_one(pool)
            .await;
            let row = match row {
                Ok(r) => r,
                Err(e) => return unavailable(e),
            };
            let stored_hash: String = row.try_get(0).unwrap_or_default();
            let status: i64 = row.try_get(1).unwrap_or_default();
            if stored_hash != request_hash {
                return ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for a different request body",
                )
                .into_response();
            }
            if status == 0 {
                return ApiError::new(
                    StatusCode::CONFLICT,
                    "in_progress",
                    "a request with this Idempotency-Key is still in progress; retry later",
                )
                .into_response();
            }
            let content_type: Option<String> = row.try_get(2).unwrap_or_default();
            let stored: Option<Vec<u8>> = row.try_get(3).unwrap_or_default();
            let mut response = Response::new(Body::from(stored.unwrap_or_default()));
            *response.status_mut() = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
            if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                response.headers_mut().insert("content-type", ct);
            }
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            return response;
        }
        Ok(_) => {}
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (parts, body) = response.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, MAX_KEPT).await.unwrap_or_default();
    let kept = if parts.status.is_server_error() {
        sqlx::query("DELETE FROM idempotency_keys WHERE key = $1 AND scope = $2")
            .bind(&key)
            .bind(&scope)
            .execute(pool)
            .await
    } else {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $3, content_type = $4, body = $5 WHERE key = $1 AND scope = $2",
        )
        .bind(&key)
        .bind(&scope)
        .bind(i64::from(parts.status.as_u16()))
        .bind(parts.headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string))
        .bind(bytes.to_vec())
        .execute(pool)
        .await
    };
    if let Err(e) = kept {
        // The action happened; only its replay is lost. Say so rather than hide it.
        tracing::error!(error = %e, "idempotency answer not stored");
    }
    Response::from_parts(parts, Body::from(bytes))
}
