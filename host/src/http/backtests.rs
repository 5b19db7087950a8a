//! Backtests under `/api/v1` (issue 16, point 6): `POST /api/v1/merchants/{merchant}/backtest`
//! queues a job and answers `202 Accepted` with it and its URL; `GET /api/v1/backtests/{id}`
//! shows its progress and, once done, the comparison; `GET /api/v1/backtests` lists them.
//! A worker of any `serve` replica runs it ([`crate::backtests`]). Read scope: a backtest
//! writes nothing but its own job.

use super::admin::require_caller;
use super::page::{self, cut, int_cursor};
use super::{ApiError, AppState};
use crate::auth::Scope;
use crate::backtests::{self, Backtest};
use crate::registry;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/merchants/{merchant}/backtest", post(start))
        .route("/api/v1/backtests", get(list))
        .route("/api/v1/backtests/{id}", get(show))
}

/// `POST /api/v1/merchants/{merchant}/backtest`'s body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BacktestBody {
    /// The candidate version (`name@version` or a digest).
    #[schema(schema_with = super::schema::plugin_reference)]
    plugin: String,
    /// From (UTC milliseconds or RFC 3339; default: the beginning).
    #[schema(schema_with = super::schema::ms_or_rfc3339)]
    from: Option<Value>,
    /// To, excluded (UTC milliseconds or RFC 3339; default: now).
    #[schema(schema_with = super::schema::ms_or_rfc3339)]
    to: Option<Value>,
    /// Its place in the chain (default: that of the version of the same name).
    #[schema(maximum = 1_000_000)]
    position: Option<usize>,
    /// Its configuration (default: that of the version it replaces).
    #[schema(schema_with = super::schema::any_json)]
    config: Option<Value>,
    /// How many differences the result lists (default 100, at most 10,000).
    #[schema(maximum = 1_000_000)]
    limit: Option<usize>,
}

fn when(field: &str, v: Option<Value>) -> Result<Option<i64>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_i64().map(Some).ok_or_else(|| ApiError::bad_request("bad_time", format!("{field}: not an integer")))
        }
        Some(Value::String(s)) => crate::clock::parse_instant(field, &s)
            .map(Some)
            .map_err(|e| ApiError::bad_request("bad_time", e.to_string())),
        Some(_) => Err(ApiError::bad_request("bad_time", format!("{field}: milliseconds or RFC 3339 text"))),
    }
}

/// `POST /api/v1/merchants/{merchant}/backtest`: checks the request, queues the job and
/// answers `202` with it (`state` `queued`) and `Location: /api/v1/backtests/{id}`.
async fn start(
    State(st): State<AppState>,
    Path(merchant): Path<String>,
    headers: HeaderMap,
    Json(body): Json<BacktestBody>,
) -> Result<Response, ApiError> {
    let caller = require_caller(&st, &headers, Scope::Read).await?;
    let from = when("from", body.from)?.unwrap_or(i64::MIN);
    let to = when("to", body.to)?.unwrap_or_else(|| st.service.now() + 1);
    let plugin = registry::resolve(&st.service, &body.plugin).await.map_err(ApiError::from)?;
    let request = backtests::Request {
        merchant,
        plugin,
        config: body.config,
        position: body.position,
        from,
        to,
        limit: body.limit.unwrap_or(100).min(10_000),
        actor: caller.name,
    };
    let job = backtests::queue(&st.service, request, None).await.map_err(ApiError::from)?;
    let location = format!("/api/v1/backtests/{}", job.id);
    let mut response = (StatusCode::ACCEPTED, Json(job)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// `GET /api/v1/backtests`' filters and page.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only this merchant's.
    merchant: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^(|[0-9]{1,18})$")]
    cursor: Option<String>,
    /// Rows per page: 1 to 500; default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// A page of backtests (without their results), newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BacktestPage {
    backtests: Vec<Backtest>,
    /// The next page's cursor; null on the last page.
    next_cursor: Option<String>,
}

/// `GET /api/v1/backtests?merchant=&cursor=&limit=`.
async fn list(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<BacktestPage>, ApiError> {
    require_caller(&st, &headers, Scope::Read).await?;
    let limit = page::limit(q.limit)?;
    let before = int_cursor(q.cursor.as_deref())?;
    let rows = backtests::list(&st.service, q.merchant.as_deref().filter(|m| !m.is_empty()), before, limit + 1)
        .await
        .map_err(ApiError::from)?;
    let (backtests, next_cursor) = cut(rows, limit, |b| b.id.to_string());
    Ok(Json(BacktestPage { backtests, next_cursor }))
}

/// `GET /api/v1/backtests/{id}`: its state, progress and (so far, or final) result.
async fn show(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Backtest>, ApiError> {
    require_caller(&st, &headers, Scope::Read).await?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no backtest {id:?}"));
    let n: i64 = id.parse().map_err(|_| not_found())?;
    let job = backtests::get(&st.service, n).await.map_err(ApiError::from)?.ok_or_else(not_found)?;
    Ok(Json(job))
}
