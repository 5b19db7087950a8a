//! The payouts' admin API under `/api/v1`: the site requests a payout of a user's
//! available cashback; operators list, approve, reject, and mark payouts paid or failed.
//! Reading needs the read scope, every step the write scope. Refusals name the field or
//! the figure at fault: 400 (malformed, below the minimum), 404, 409 (the payout's status
//! does not allow the step, or it changed since the caller read it), 422 (more than the
//! available balance, an idempotency key reused for another request).

use super::admin::{require, require_caller};
use super::{ApiError, AppState};
use crate::auth::Scope;
use crate::payouts::{self, NewPayout, PayoutAction, PayoutError, PayoutFilter, PayoutPolicy, PayoutStatus, Refusal};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users/{id}/payouts", post(request))
        .route("/api/v1/payouts", get(list))
        .route("/api/v1/payouts/{id}", get(show))
        .route("/api/v1/payouts/{id}/approve", post(approve))
        .route("/api/v1/payouts/{id}/reject", post(reject))
        .route("/api/v1/payouts/{id}/paid", post(paid))
        .route("/api/v1/payouts/{id}/failed", post(failed))
}

/// One mapping of payout refusals to statuses, for every route.
pub(super) fn error(e: PayoutError) -> ApiError {
    match e {
        PayoutError::Refused(r) => {
            let (status, code) = match &r {
                Refusal::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
                // Well-formed, refused by the policy (the currency's minimum): 422.
                Refusal::BelowMinimum { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "below_minimum"),
                Refusal::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                Refusal::Insufficient { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds"),
                Refusal::KeyReused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
                Refusal::Transition { .. } => (StatusCode::CONFLICT, "conflict"),
                Refusal::Stale { .. } => (StatusCode::CONFLICT, "stale"),
            };
            ApiError::new(status, code, r.to_string())
        }
        PayoutError::Db(e) => ApiError::unavailable("the database is unavailable", &e),
        PayoutError::Unavailable(why) => ApiError::unavailable_because("the payout could not be written", &why),
    }
}

/// A JSON object body into `T` (an empty body is `{}`); an unknown or malformed field is
/// refused naming it.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let text = if bytes.iter().all(u8::is_ascii_whitespace) { &b"{}"[..] } else { &bytes[..] };
    serde_json::from_slice(text).map_err(|e| ApiError::bad_request("invalid_json", format!("the body: {e}")))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestBody {
    /// ISO 4217.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: String,
    /// Minor units; absent: all of the available balance.
    #[schema(minimum = 1)]
    amount: Option<i64>,
}

/// `POST /api/v1/users/{id}/payouts`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Requested {
    payout: payouts::Payout,
    /// False when the `Idempotency-Key` had made this payout already.
    created: bool,
}

/// A step's answer (approve, reject, paid, failed).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Stepped {
    /// The payout as it is now.
    payout: payouts::Payout,
    /// False when the payout was where the step leads already (a retry).
    changed: bool,
}

/// `GET /api/v1/payouts/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PayoutDetail {
    payout: payouts::Payout,
    /// Every step, oldest first.
    history: Vec<payouts::store::HistoryEntry>,
    /// Its ledger postings, oldest first.
    postings: Vec<payouts::store::PostingView>,
}

/// `POST /api/v1/users/{id}/payouts` `{"currency", "amount"?}` (write): the site requests a
/// payout of `amount` (all of the available balance without one). The `Idempotency-Key`
/// header is also the payout's key: the same key for the same user is the same payout,
/// whoever sends it and however late. 201 with the payout; 200 when the key had made it.
async fn request(
    State(st): State<AppState>,
    policy: Option<Extension<PayoutPolicy>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let caller = require_caller(&st, &headers, Scope::Write).await?;
    let b: RequestBody = body(&bytes)?;
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let policy = policy.map(|Extension(p)| p).unwrap_or_default();
    let new =
        NewPayout { user_id: user, currency: b.currency, amount: b.amount, key, requested_by: caller.name.clone() };
    let (payout, created) = payouts::service::request(&st.service, &policy, new).await.map_err(error)?;
    tracing::info!(payout = %payout.id, user = %payout.user_id, amount = payout.amount, currency = %payout.currency,
        by = %caller.name, created, "payout requested");
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(Requested { payout, created })).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    #[param(schema_with = super::schema::payout_status)]
    status: Option<String>,
    user: Option<String>,
    /// 1 to 500.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next` of the previous page.
    #[param(pattern = r"^(|-?[0-9]{1,18}\.po_.*)$")]
    after: Option<String>,
    /// `oldest` (a queue) or `newest` (default).
    #[param(schema_with = super::schema::payout_order)]
    order: Option<String>,
}

/// `GET /api/v1/payouts?status=&user=&order=oldest|newest&limit=&after=`: a page of
/// payouts (newest first by default) and the cursor of the next (`next`, null at the end).
async fn list(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<payouts::store::Page>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(PayoutStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid",
                format!("status: {s:?} is not requested, approved, rejected, paid or failed"),
            )
        })?),
    };
    let limit = q
        .limit
        .map(|l| {
            l.parse::<i64>().map_err(|_| ApiError::bad_request("invalid", format!("limit: {l:?} is not an integer")))
        })
        .transpose()?;
    let oldest_first = match q.order.as_deref() {
        None | Some("newest") => false,
        Some("oldest") => true,
        Some(other) => {
            return Err(ApiError::bad_request("invalid", format!("order: {other:?} is not oldest or newest")));
        }
    };
    let filter = PayoutFilter {
        status,
        user: q.user.filter(|u| !u.is_empty()),
        oldest_first,
        limit,
        after: q.after.filter(|a| !a.is_empty()),
    };
    let page = payouts::service::list(&st.service, &filter).await.map_err(error)?;
    Ok(Json(page))
}

/// `GET /api/v1/payouts/{id}`: the payout, its history (every step, who, why) and its
/// ledger postings.
async fn show(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<PayoutDetail>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let payout = payouts::service::get(&st.service, &id).await.map_err(error)?;
    let db = st.service.db();
    let history = payouts::store::history(db, &id).await.map_err(|e| error(e.into()))?;
    let postings = payouts::store::postings(db, &id).await.map_err(|e| error(e.into()))?;
    Ok(Json(PayoutDetail { payout, history, postings }))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StepBody {
    /// Who, when the token acts for several people (recorded with the token's name);
    /// default: the token's name.
    operator: Option<String>,
    /// The version the caller saw: refused (409) if the payout changed since.
    version: Option<i64>,
    reason: Option<String>,
    reference: Option<String>,
}

/// The body of a step that needs a reason (reject, failed).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReasonBody {
    /// Why (shown to the user's site and in the payout's history).
    #[serde(default)] // missing: refused by the policy, naming the field
    #[schema(required = true, pattern = r"\S")]
    reason: String,
    /// As for every step.
    operator: Option<String>,
    /// As for every step.
    version: Option<i64>,
}

/// The body of marking a payout paid.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PaidBody {
    /// The external payment's reference.
    #[serde(default)] // missing: refused by the policy, naming the field
    #[schema(required = true, pattern = r"\S")]
    reference: String,
    /// As for every step.
    operator: Option<String>,
    /// As for every step.
    version: Option<i64>,
}

impl From<ReasonBody> for StepBody {
    fn from(b: ReasonBody) -> StepBody {
        StepBody { operator: b.operator, version: b.version, reason: Some(b.reason), reference: None }
    }
}

impl From<PaidBody> for StepBody {
    fn from(b: PaidBody) -> StepBody {
        StepBody { operator: b.operator, version: b.version, reason: None, reference: Some(b.reference) }
    }
}

async fn step<B: DeserializeOwned + Into<StepBody>>(
    st: AppState,
    id: String,
    headers: HeaderMap,
    bytes: Bytes,
    action: impl FnOnce(&StepBody) -> PayoutAction,
) -> Result<Json<Stepped>, ApiError> {
    let caller = require_caller(&st, &headers, Scope::Write).await?;
    let b: StepBody = body::<B>(&bytes)?.into();
    // The operator a back office names is recorded with the token it acted through: the
    // name alone could be anyone's.
    let operator = match b.operator.as_deref().map(str::trim).filter(|o| !o.is_empty()) {
        Some(o) if o != caller.name => format!("{o} (token {})", caller.name),
        _ => caller.name,
    };
    let t = payouts::Transition { action: action(&b), operator, expected_version: b.version };
    let name = t.action.name();
    let (payout, changed) = payouts::service::transition(&st.service, &id, t).await.map_err(error)?;
    tracing::info!(payout = %payout.id, action = name, status = %payout.status, changed, "payout step");
    Ok(Json(Stepped { payout, changed }))
}

/// `POST /api/v1/payouts/{id}/approve` `{"operator"?, "version"?}` (write).
async fn approve(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Stepped>, ApiError> {
    step::<StepBody>(st, id, headers, bytes, |_| PayoutAction::Approve).await
}

/// `POST /api/v1/payouts/{id}/reject` `{"reason", "operator"?, "version"?}` (write): the
/// amount returns to the user's available balance.
async fn reject(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Stepped>, ApiError> {
    step::<ReasonBody>(st, id, headers, bytes, |b| PayoutAction::Reject {
        reason: b.reason.clone().unwrap_or_default(),
    })
    .await
}

/// `POST /api/v1/payouts/{id}/paid` `{"reference", "operator"?, "version"?}` (write): the
/// payment went out with this external reference.
async fn paid(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Stepped>, ApiError> {
    step::<PaidBody>(st, id, headers, bytes, |b| PayoutAction::MarkPaid {
        reference: b.reference.clone().unwrap_or_default(),
    })
    .await
}

/// `POST /api/v1/payouts/{id}/failed` `{"reason", "operator"?, "version"?}` (write): the
/// payment failed or came back; the amount returns to the user's available balance.
async fn failed(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Stepped>, ApiError> {
    step::<ReasonBody>(st, id, headers, bytes, |b| PayoutAction::MarkFailed {
        reason: b.reason.clone().unwrap_or_default(),
    })
    .await
}
