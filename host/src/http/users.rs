//! The admin API for what a site does with its users, and for what an operator does with
//! conversions that wait: user accounts (`/api/v1/users`), processing parked and failed
//! conversions again, attributing one by hand, and mapping a network's merchant
//! references (each parking reason's action: docs/INGEST.md, "Parked conversions").

use super::admin::require;
use super::{ApiError, AppState};
use crate::auth::Scope;
use crate::conversions::{Assignment, Outcome, Status};
use crate::users::{self, CursorError, Profile};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", get(list_users))
        .route("/api/v1/users/{user}", get(get_user).put(put_user))
        .route("/api/v1/users/{user}/conversions", get(user_conversions))
        .route("/api/v1/conversions/reprocess", post(reprocess_all))
        .route("/api/v1/conversions/{id}/reprocess", post(reprocess_one))
        .route("/api/v1/conversions/{id}/attribute", post(attribute))
        .route("/api/v1/networks/{network}/merchant-refs", get(list_refs))
        .route("/api/v1/networks/{network}/merchant-refs/{merchant_ref}", put(put_ref))
}

fn db_failed(e: sqlx::Error) -> ApiError {
    ApiError::unavailable("the database is unavailable", &e)
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} {id:?}"))
}

/// Most rows a page holds; the default is smaller.
const MAX_LIMIT: i64 = 500;

fn limit(asked: Option<i64>) -> Result<i64, ApiError> {
    match asked {
        None => Ok(50),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request("bad_limit", format!("limit: 1 to {MAX_LIMIT}, got {n}"))),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// 1 to 500; default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// A page of a user's conversions: the cursor is `reported_at:id` (`next_cursor`).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConversionsPageQuery {
    /// `next_cursor` of the previous page.
    #[param(pattern = "^(|-?[0-9]{1,18}:.*)$")]
    cursor: Option<String>,
    /// 1 to 500; default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

super::page::page_of!(
    /// `GET /api/v1/users`.
    UsersPage, users: users::User
);

super::page::page_of!(
    /// `GET /api/v1/users/{user}/conversions`.
    UserConversionsPage, conversions: users::UserConversion
);

/// `GET /api/v1/users?cursor=&limit=`: accounts by id; `next_cursor` gives the next page.
async fn list_users(
    State(st): State<AppState>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Result<Json<UsersPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let limit = limit(q.limit)?;
    let mut page = users::list(st.service.db(), q.cursor.as_deref().filter(|c| !c.is_empty()), limit + 1)
        .await
        .map_err(db_failed)?;
    let next_cursor = if page.len() as i64 > limit {
        page.truncate(limit as usize);
        page.last().map(|u| u.id.clone())
    } else {
        None
    };
    Ok(Json(UsersPage { users: page, next_cursor }))
}

/// `GET /api/v1/users/{user}`: the account, its balances per currency and kind, and how
/// many of its conversions are parked.
async fn get_user(
    State(st): State<AppState>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Result<Json<users::User>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let u = users::get(st.service.db(), &user).await.map_err(db_failed)?.ok_or_else(|| not_found("user", &user))?;
    Ok(Json(u))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserBody {
    #[schema(
        max_length = 254,
        pattern = r"^(?=[^@]{1,64}@)[A-Za-z0-9_+-]+(\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$"
    )]
    email: Option<String>,
    #[schema(max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    name: Option<String>,
    #[serde(default = "yes")]
    notify: bool,
}

fn yes() -> bool {
    true
}

/// `PUT /api/v1/users/{user}`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UserSaved {
    user: users::User,
    /// The conversions that were parked for this user and were processed now.
    processed: Vec<String>,
}

/// `PUT /api/v1/users/{user}` `{"email"?, "name"?, "notify"?}` (write): creates the account
/// or replaces its profile. Conversions parked for the user are processed before the
/// answer, which lists them.
async fn put_user(
    State(st): State<AppState>,
    Path(user): Path<String>,
    headers: HeaderMap,
    Json(body): Json<UserBody>,
) -> Result<(StatusCode, Json<UserSaved>), ApiError> {
    require(&st, &headers, Scope::Write).await?;
    users::check_id(&user).map_err(|e| ApiError::bad_request("bad_id", e))?;
    let profile = Profile { email: body.email, name: body.name, notify: body.notify };
    profile.check().map_err(|e| ApiError::bad_request("bad_user", e))?;
    let existed = users::get(st.service.db(), &user).await.map_err(db_failed)?.is_some();
    let outcome = st.service.put_user(&user, &profile, "api").await.map_err(ApiError::from)?;
    let processed = match outcome {
        Outcome::Registered { unparked } => unparked,
        _ => Vec::new(),
    };
    let u = users::get(st.service.db(), &user).await.map_err(db_failed)?.ok_or_else(|| not_found("user", &user))?;
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(UserSaved { user: u, processed })))
}

/// `GET /api/v1/users/{user}/conversions?cursor=&limit=`: the user's conversions, newest
/// first, as a site shows them to its customer.
async fn user_conversions(
    State(st): State<AppState>,
    Path(user): Path<String>,
    Query(q): Query<ConversionsPageQuery>,
    headers: HeaderMap,
) -> Result<Json<UserConversionsPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let limit = limit(q.limit)?;
    if users::get(st.service.db(), &user).await.map_err(db_failed)?.is_none() {
        return Err(not_found("user", &user));
    }
    let (conversions, next_cursor) =
        users::conversions(st.service.db(), &user, q.cursor.as_deref().filter(|c| !c.is_empty()), limit)
            .await
            .map_err(|e| match e {
                CursorError::Bad => ApiError::bad_request("bad_cursor", e.to_string()),
                CursorError::Db(e) => db_failed(e),
            })?;
    Ok(Json(UserConversionsPage { conversions, next_cursor }))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReprocessBody {
    #[serde(default)]
    operator: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

fn reason_of(operator: Option<&str>, reason: Option<&str>) -> String {
    match (operator.filter(|o| !o.trim().is_empty()), reason.filter(|r| !r.trim().is_empty())) {
        (Some(o), Some(r)) => format!("processed again by {o}: {r}"),
        (Some(o), None) => format!("processed again by {o}"),
        (None, Some(r)) => format!("processed again: {r}"),
        (None, None) => "processed again by an operator".to_string(),
    }
}

/// `POST /api/v1/conversions/{id}/reprocess` `{"operator"?, "reason"?}` (write): a parked or
/// failed conversion is processed again with the current rules. The answer says what
/// came of it; a conversion that is neither is left alone (409).
async fn reprocess_one(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<ReprocessBody>>,
) -> Result<Json<Outcome>, ApiError> {
    require(&st, &headers, Scope::Write).await?;
    let body = body.map(|b| b.0).unwrap_or_default();
    let reason = reason_of(body.operator.as_deref(), body.reason.as_deref());
    let outcome = st.service.reprocess_with(&id, Some(&reason), None).await.map_err(ApiError::from)?;
    if let Outcome::Ignored { reason, .. } = &outcome {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_reprocessable", format!("conversion {id}: {reason}")));
    }
    Ok(Json(outcome))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReprocessAllBody {
    /// `failed` or `parked`.
    #[schema(schema_with = super::schema::reprocess_status)]
    status: String,
    merchant: Option<String>,
    operator: Option<String>,
    reason: Option<String>,
}

/// `POST /api/v1/conversions/reprocess`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Reprocessed {
    /// Conversions processed again.
    reprocessed: usize,
    /// Conversions still in `status` afterwards.
    still: usize,
    /// The status asked for.
    status: Status,
}

/// `POST /api/v1/conversions/reprocess` `{"status": "failed|parked", "merchant"?}` (write):
/// every such conversion (of the merchant) processed again; answers how many were
/// processed and how many are still parked or failed.
async fn reprocess_all(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<ReprocessAllBody>,
) -> Result<Json<Reprocessed>, ApiError> {
    require(&st, &headers, Scope::Write).await?;
    let status = match Status::parse(&body.status) {
        Some(s @ (Status::Failed | Status::Parked)) => s,
        _ => {
            return Err(ApiError::bad_request(
                "bad_status",
                format!("status: {:?} is not failed or parked", body.status),
            ));
        }
    };
    let reason = reason_of(body.operator.as_deref(), body.reason.as_deref());
    let (reprocessed, still) =
        st.service.reprocess_all(body.merchant.as_deref(), status, &reason).await.map_err(ApiError::from)?;
    Ok(Json(Reprocessed { reprocessed, still, status }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttributeBody {
    click_id: Option<String>,
    user_id: Option<String>,
    merchant_id: Option<String>,
    /// Who (recorded in the conversion's history).
    #[schema(pattern = r"\S")]
    operator: String,
}

/// `POST /api/v1/conversions/{id}/attribute` `{"click_id"} | {"user_id", "merchant_id"} |
/// {"merchant_id"}, "operator"` (write): a parked conversion is attributed by hand, then
/// processed.
async fn attribute(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<AttributeBody>,
) -> Result<Json<Outcome>, ApiError> {
    require(&st, &headers, Scope::Write).await?;
    let body = Assignment {
        click_id: body.click_id,
        user_id: body.user_id,
        merchant_id: body.merchant_id,
        operator: body.operator,
    };
    let c = st.service.conversion(&id).await.map_err(ApiError::from)?.ok_or_else(|| not_found("conversion", &id))?;
    if c.status != Status::Parked {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_parked",
            format!("conversion {id} is {}: only a parked conversion is attributed by hand", c.status),
        ));
    }
    let reason = format!("attributed by hand by {}", body.operator);
    let outcome = st.service.reprocess_with(&id, Some(&reason), Some(body)).await.map_err(ApiError::from)?;
    Ok(Json(outcome))
}

/// A network's merchant reference and the merchant it means.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MerchantRef {
    merchant_ref: String,
    /// The merchant's id.
    merchant: String,
}

/// `GET /api/v1/networks/{network}/merchant-refs`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MerchantRefsPage {
    network: String,
    merchant_refs: Vec<MerchantRef>,
    /// The next page's cursor (pass it as `cursor`); null on the last page.
    next_cursor: Option<String>,
}

/// `GET /api/v1/networks/{network}/merchant-refs`: which merchant each of the network's
/// merchant references means.
async fn list_refs(
    State(st): State<AppState>,
    Path(network): Path<String>,
    Query(q): Query<super::page::Page>,
    headers: HeaderMap,
) -> Result<Json<MerchantRefsPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let limit = super::page::limit(q.limit)?;
    let rows = sqlx::query(
        "SELECT merchant_ref, merchant_id FROM merchant_refs WHERE network_id = $1 AND merchant_ref > $2 \
         ORDER BY merchant_ref LIMIT $3",
    )
    .bind(&network)
    .bind(q.cursor.unwrap_or_default())
    .bind(limit + 1)
    .fetch_all(&st.service.db().pool)
    .await
    .map_err(db_failed)?;
    let refs = rows
        .iter()
        .map(|r| Ok(MerchantRef { merchant_ref: r.try_get(0)?, merchant: r.try_get(1)? }))
        .collect::<Result<Vec<MerchantRef>, sqlx::Error>>()
        .map_err(db_failed)?;
    let (merchant_refs, next_cursor) = super::page::cut(refs, limit, |r| r.merchant_ref.clone());
    Ok(Json(MerchantRefsPage { network, merchant_refs, next_cursor }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefBody {
    merchant: String,
}

/// `PUT /api/v1/networks/{network}/merchant-refs/{merchant_ref}`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RefSaved {
    network: String,
    merchant_ref: String,
    merchant: String,
    /// Conversions parked for want of this mapping, processed now.
    processed: usize,
}

/// `PUT /api/v1/networks/{network}/merchant-refs/{merchant_ref}` `{"merchant"}` (admin):
/// maps the reference; conversions parked because it was not mapped are processed.
async fn put_ref(
    State(st): State<AppState>,
    Path((network, merchant_ref)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<RefBody>,
) -> Result<Json<RefSaved>, ApiError> {
    require(&st, &headers, Scope::Admin).await?;
    if crate::ingest::network(st.service.db(), &network).await.map_err(db_failed)?.is_none() {
        return Err(not_found("network", &network));
    }
    // A merchant that does not exist is a 404, like the network.
    let merchant = sqlx::query("SELECT 1 FROM merchants WHERE id = $1")
        .bind(&body.merchant)
        .fetch_optional(&st.service.db().pool)
        .await
        .map_err(db_failed)?;
    if merchant.is_none() {
        return Err(not_found("merchant", &body.merchant));
    }
    let processed =
        st.service.map_merchant_ref(&network, &merchant_ref, &body.merchant).await.map_err(ApiError::from)?;
    Ok(Json(RefSaved { network, merchant_ref, merchant: body.merchant, processed }))
}
