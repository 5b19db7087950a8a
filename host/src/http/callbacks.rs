//! The admin API of partner callbacks, under `/api/v1`: endpoints, the delivery log,
//! replay, the callback tester and alerts. Reading needs the read scope, every action the
//! write scope. Secrets never appear in an answer (they are masked).

use super::admin::require;
use super::{ApiError, AppState};
use crate::auth::Scope;
use crate::callbacks::deliver::{self, DeliveryFilter};
use crate::callbacks::{self, CallbackError, Deliverer, DeliveryConfig};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/callbacks/endpoints", get(list_endpoints))
        .route("/api/v1/callbacks/endpoints/{id}/enable", post(enable))
        .route("/api/v1/callbacks/endpoints/{id}/disable", post(disable))
        .route("/api/v1/callbacks/endpoints/{id}/test", post(test))
        .route("/api/v1/callbacks/endpoints/{id}/attempts", get(endpoint_attempts))
        .route("/api/v1/callbacks/deliveries", get(list_deliveries))
        .route("/api/v1/callbacks/deliveries/{id}", get(show_delivery))
        .route("/api/v1/callbacks/deliveries/{id}/replay", post(replay_one))
        .route("/api/v1/callbacks/replay", post(replay_range))
        .route("/api/v1/alerts", get(list_alerts))
}

fn error(e: CallbackError) -> ApiError {
    match e {
        CallbackError::Invalid(why) => ApiError::bad_request("invalid", why),
        CallbackError::NotFound(why) => ApiError::new(StatusCode::NOT_FOUND, "not_found", why),
        CallbackError::Conflict(why) => ApiError::new(StatusCode::CONFLICT, "conflict", why),
        CallbackError::Db(e) => ApiError::unavailable("cannot read or write callbacks", &e),
    }
}

super::page::page_of!(
    /// `GET /api/v1/callbacks/endpoints`.
    EndpointsPage, endpoints: callbacks::EndpointView
);

super::page::page_of!(
    /// `GET /api/v1/callbacks/endpoints/{id}/attempts`.
    AttemptsPage, attempts: deliver::AttemptView
);

super::page::page_of!(
    /// `GET /api/v1/callbacks/deliveries`.
    DeliveriesPage, deliveries: deliver::DeliveryView
);

super::page::page_of!(
    /// `GET /api/v1/alerts`.
    AlertsPage, alerts: callbacks::Alert
);

/// `POST /api/v1/callbacks/endpoints/{id}/enable|disable`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Toggled {
    /// The endpoint's id.
    endpoint: String,
    enabled: bool,
    /// Deliveries waiting, sent from now on in order (enable only).
    #[serde(skip_serializing_if = "Option::is_none")]
    backlog: Option<i64>,
    /// Deliveries given up during the failures, queued again (enable only).
    #[serde(skip_serializing_if = "Option::is_none")]
    requeued: Option<u64>,
}

/// `GET /api/v1/callbacks/deliveries/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DeliveryDetail {
    delivery: deliver::DeliveryView,
    /// Its attempts, oldest first.
    attempts: Vec<deliver::AttemptView>,
}

/// `POST /api/v1/callbacks/deliveries/{id}/replay`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ReplayedOne {
    /// The delivery queued again.
    replayed: Vec<i64>,
}

/// `POST /api/v1/callbacks/replay`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ReplayedRange {
    /// How many deliveries were queued again.
    replayed: u64,
}

fn body_json(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("invalid_json", "the body must be a JSON object"));
    }
    Ok(v)
}

fn int_param(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::bad_request("invalid_parameter", format!("{name}: {v:?} is not an integer")))
        })
        .transpose()
}

/// `GET /api/v1/callbacks/endpoints?cursor=&limit=`: by id.
async fn list_endpoints(
    State(st): State<AppState>,
    Query(q): Query<super::page::Page>,
    headers: HeaderMap,
) -> Result<Json<EndpointsPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let limit = super::page::limit(q.limit)?;
    // Configured by hand, a handful: read whole.
    let all = callbacks::endpoints(st.service.db()).await.map_err(error)?;
    let (endpoints, next_cursor) = super::page::of_sorted(all, q.cursor.as_deref(), limit, |e| e.id.clone());
    Ok(Json(EndpointsPage { endpoints, next_cursor }))
}

async fn enable(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Toggled>, ApiError> {
    require(&st, &headers, Scope::Write).await?;
    let body = body_json(&body)?;
    let replay_failed = match body.get("replay_failed") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("invalid_parameter", "replay_failed: true or false")),
    };
    let done = callbacks::enable(st.service.db(), &id, replay_failed, st.service.now()).await.map_err(error)?;
    Ok(Json(Toggled { endpoint: id, enabled: true, backlog: Some(done.backlog), requeued: Some(done.requeued) }))
}

async fn disable(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Toggled>, ApiError> {
    require(&st, &headers, Scope::Write).await?;
    let body = body_json(&body)?;
    let reason = body.get("reason").and_then(Value::as_str).unwrap_or("disabled by an operator");
    callbacks::disable(st.service.db(), &id, reason, st.service.now()).await.map_err(error)?;
    Ok(Json(Toggled { endpoint: id, enabled: false, backlog: None, requeued: None }))
}

async fn test(
    State(st): State<AppState>,
    deliverer: Option<Extension<Deliverer>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<deliver::TestReport>, ApiError> {
    require(&st, &headers, Scope::Write).await?;
    let deliverer = match deliverer {
        Some(Extension(d)) => d,
        None => Deliverer::new(st.service.db().clone(), st.service.clock(), DeliveryConfig::default(), "api-tester")
            .map_err(error)?
            .with_plugins(st.service.runtime().clone()),
    };
    let report = deliverer.test(&id).await.map_err(error)?;
    Ok(Json(report))
}

async fn endpoint_attempts(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<AttemptsPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    callbacks::endpoint(st.service.db(), &id).await.map_err(error)?;
    let limit = super::page::limit(int_param(&q, "limit")?)?;
    let after = super::page::int_cursor(q.get("cursor").map(String::as_str))?;
    let attempts = deliver::attempts_after(st.service.db(), None, Some(&id), after, limit + 1).await.map_err(error)?;
    let (attempts, next_cursor) = super::page::cut(attempts, limit, |a| a.id.to_string());
    Ok(Json(AttemptsPage { attempts, next_cursor }))
}

async fn list_deliveries(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<DeliveriesPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let limit = super::page::limit(int_param(&q, "limit")?)?;
    let filter = DeliveryFilter {
        endpoint_id: q.get("endpoint").cloned(),
        state: q.get("state").cloned(),
        conversion_id: q.get("conversion").cloned(),
        click_id: q.get("click").cloned(),
        from: int_param(&q, "from")?,
        to: int_param(&q, "to")?,
        limit: Some(limit + 1),
        before: super::page::int_cursor(q.get("cursor").map(String::as_str))?,
    };
    let deliveries = deliver::deliveries(st.service.db(), &filter).await.map_err(error)?;
    let (deliveries, next_cursor) = super::page::cut(deliveries, limit, |d| d.id.to_string());
    Ok(Json(DeliveriesPage { deliveries, next_cursor }))
}

fn delivery_id(raw: &str) -> Result<i64, ApiError> {
    raw.trim_start_matches("cbk_d")
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_parameter", format!("delivery id: {raw:?} is not a delivery id")))
}

async fn show_delivery(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<DeliveryDetail>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let (delivery, attempts) = deliver::delivery(st.service.db(), delivery_id(&id)?).await.map_err(error)?;
    Ok(Json(DeliveryDetail { delivery, attempts }))
}

async fn replay_one(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ReplayedOne>, ApiError> {
    require(&st, &headers, Scope::Write).await?;
    let id = delivery_id(&id)?;
    deliver::replay(st.service.db(), id, st.service.now()).await.map_err(error)?;
    Ok(Json(ReplayedOne { replayed: vec![id] }))
}

async fn replay_range(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ReplayedRange>, ApiError> {
    require(&st, &headers, Scope::Write).await?;
    let body = body_json(&body)?;
    let time = |name: &str| {
        body.get(name).and_then(Value::as_i64).ok_or_else(|| {
            ApiError::bad_request("invalid_parameter", format!("{name}: required, milliseconds since the epoch"))
        })
    };
    let (from, to) = (time("from")?, time("to")?);
    let endpoint = match body.get("endpoint") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(ApiError::bad_request("invalid_parameter", "endpoint: a string")),
    };
    let n = deliver::replay_range(st.service.db(), endpoint, from, to, st.service.now()).await.map_err(error)?;
    Ok(Json(ReplayedRange { replayed: n }))
}

/// `GET /api/v1/alerts?cursor=&limit=`: newest first.
async fn list_alerts(
    State(st): State<AppState>,
    Query(q): Query<super::page::IdPage>,
    headers: HeaderMap,
) -> Result<Json<AlertsPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let (limit, before) = q.checked()?;
    let alerts = callbacks::alerts_before(st.service.db(), before, limit + 1).await.map_err(error)?;
    let (alerts, next_cursor) = super::page::cut(alerts, limit, |a| a.id.to_string());
    Ok(Json(AlertsPage { alerts, next_cursor }))
}
