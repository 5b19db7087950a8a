//! The admin API's resources under `/api/v1`: merchants, networks, conversions (search,
//! timeline), the review queue, balances and jobs. Reading needs the read scope; changes
//! need write (reviews, job runs) or admin (merchants, networks).

use super::admin::require;
use super::page::{self, IdPage, Page, cut, int_cursor, of_sorted, page_of};
use super::{ApiError, AppState};
use crate::auth::Scope;
use crate::conversions::{ReviewAction, Status};
use crate::ingest::{self, InboundAuth, Network};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;

/// The resource routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/merchants", get(list_merchants))
        .route("/api/v1/merchants/{merchant}", get(get_merchant).put(put_merchant))
        .route("/api/v1/networks", get(list_networks))
        .route("/api/v1/networks/{network}", get(get_network).put(put_network))
        .route("/api/v1/conversions", get(search_conversions))
        .route("/api/v1/conversions/{id}", get(conversion_timeline))
        .route("/api/v1/conversions/{id}/review", post(review))
        .route("/api/v1/review", get(review_queue))
        .route("/api/v1/balances", get(balances))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{name}/runs", get(job_runs))
        .route("/api/v1/jobs/{name}/run", post(run_job))
        .route("/api/v1/partners", get(list_partners))
        .route("/api/v1/partners/{partner}", axum::routing::put(put_partner))
        .route("/api/v1/callbacks/endpoints/{id}", axum::routing::put(put_endpoint))
}

fn db_failed(e: sqlx::Error) -> ApiError {
    ApiError::unavailable("the database is unavailable", &e)
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} {id:?}"))
}

/// A merchant as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MerchantView {
    id: String,
    name: String,
    /// `automatic` or `manual` (every conversion reviewed).
    processing_mode: String,
    /// Days from approval until the cashback is available.
    reward_delay_days: i64,
    /// UTC milliseconds.
    created_at: i64,
    /// Its rule chain, in order.
    rules: Vec<RuleView>,
}

/// One place of a merchant's rule chain.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RuleView {
    position: i64,
    /// The plugin's name.
    plugin: String,
    version: String,
    digest: String,
}

page_of!(
    /// `GET /api/v1/merchants`.
    MerchantsPage, merchants: MerchantView
);

/// `GET /api/v1/merchants?cursor=&limit=`: by id, a page at a time.
async fn list_merchants(
    State(st): State<AppState>,
    Query(q): Query<Page>,
    headers: HeaderMap,
) -> Result<Json<MerchantsPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let limit = page::limit(q.limit)?;
    let rows = sqlx::query(
        "SELECT id, name, processing_mode, reward_delay_days, created_at FROM merchants WHERE id > $1 \
         ORDER BY id LIMIT $2",
    )
    .bind(q.cursor.unwrap_or_default())
    .bind(limit + 1)
    .fetch_all(&st.service.db().pool)
    .await
    .map_err(db_failed)?;
    let mut merchants = Vec::new();
    for r in &rows {
        merchants.push(merchant_json(&st, r).await?);
    }
    let (merchants, next_cursor) = cut(merchants, limit, |m| m.id.clone());
    Ok(Json(MerchantsPage { merchants, next_cursor }))
}

async fn merchant_json(st: &AppState, r: &sqlx::any::AnyRow) -> Result<MerchantView, ApiError> {
    let id: String = r.try_get(0).map_err(db_failed)?;
    let chain = sqlx::query(
        "SELECT r.position, p.name, p.version, r.plugin_digest FROM merchant_rules r \
         JOIN plugins p ON p.digest = r.plugin_digest WHERE r.merchant_id = $1 ORDER BY r.position",
    )
    .bind(&id)
    .fetch_all(&st.service.db().pool)
    .await
    .map_err(db_failed)?
    .iter()
    .map(|c| {
        Ok(RuleView { position: c.try_get(0)?, plugin: c.try_get(1)?, version: c.try_get(2)?, digest: c.try_get(3)? })
    })
    .collect::<Result<Vec<RuleView>, sqlx::Error>>()
    .map_err(db_failed)?;
    Ok(MerchantView {
        id,
        name: r.try_get(1).map_err(db_failed)?,
        processing_mode: r.try_get(2).map_err(db_failed)?,
        reward_delay_days: r.try_get(3).map_err(db_failed)?,
        created_at: r.try_get(4).map_err(db_failed)?,
        rules: chain,
    })
}

/// `GET /api/v1/merchants/{merchant}`.
async fn get_merchant(
    State(st): State<AppState>,
    Path(merchant): Path<String>,
    headers: HeaderMap,
) -> Result<Json<MerchantView>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let row =
        sqlx::query("SELECT id, name, processing_mode, reward_delay_days, created_at FROM merchants WHERE id = $1")
            .bind(&merchant)
            .fetch_optional(&st.service.db().pool)
            .await
            .map_err(db_failed)?
            .ok_or_else(|| not_found("merchant", &merchant))?;
    Ok(Json(merchant_json(&st, &row).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MerchantBody {
    #[schema(pattern = r"\S")]
    name: String,
    #[serde(default)]
    manual_review: bool,
    #[serde(default = "thirty")]
    #[schema(minimum = 0, maximum = 3650)]
    reward_delay_days: i64,
}

fn thirty() -> i64 {
    30
}

/// `PUT /api/v1/merchants/{merchant}` `{"name", "manual_review"?, "reward_delay_days"?}`:
/// creates or updates (admin). Its rules are set through the plugin registry.
async fn put_merchant(
    State(st): State<AppState>,
    Path(merchant): Path<String>,
    headers: HeaderMap,
    Json(body): Json<MerchantBody>,
) -> Result<Json<MerchantView>, ApiError> {
    require(&st, &headers, Scope::Admin).await?;
    if merchant.is_empty() || merchant.chars().count() > 64 {
        return Err(ApiError::bad_request("bad_id", "merchant id: 1 to 64 characters"));
    }
    if body.name.trim().is_empty() {
        return Err(ApiError::bad_request("bad_name", "name: required"));
    }
    st.service
        .upsert_merchant(&merchant, &body.name, body.manual_review, body.reward_delay_days)
        .await
        .map_err(ApiError::from)?;
    get_merchant(State(st), Path(merchant), headers).await
}

/// A network as the API shows it: the inbound secret is never returned.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct NetworkView {
    id: String,
    name: String,
    /// Its import adapter's digest; null: postbacks only.
    adapter_digest: Option<String>,
    /// The adapter's configuration.
    #[schema(schema_with = super::schema::any_json)]
    adapter_config: Value,
    /// How its postbacks authenticate.
    auth: AuthView,
}

/// How a network's postbacks authenticate, the secret masked (`***`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum AuthView {
    /// No check.
    None,
    /// A shared token.
    Token {
        /// Always `***`.
        secret: String,
    },
    /// An HMAC signature.
    Hmac {
        /// Always `***`.
        secret: String,
    },
    /// The sender's address.
    Ip {
        /// The addresses allowed.
        ips: Vec<String>,
    },
}

page_of!(
    /// `GET /api/v1/networks`.
    NetworksPage, networks: NetworkView
);

fn network_json(n: &Network) -> NetworkView {
    let masked = || "***".to_string();
    let auth = match &n.auth {
        InboundAuth::None => AuthView::None,
        InboundAuth::Token(_) => AuthView::Token { secret: masked() },
        InboundAuth::Hmac(_) => AuthView::Hmac { secret: masked() },
        InboundAuth::IpAllowList(ips) => AuthView::Ip { ips: ips.iter().map(ToString::to_string).collect() },
    };
    NetworkView {
        id: n.id.clone(),
        name: n.name.clone(),
        adapter_digest: n.adapter_digest.clone(),
        adapter_config: n.adapter_config.clone(),
        auth,
    }
}

/// `GET /api/v1/networks?cursor=&limit=`: by id, a page at a time.
async fn list_networks(
    State(st): State<AppState>,
    Query(q): Query<Page>,
    headers: HeaderMap,
) -> Result<Json<NetworksPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let limit = page::limit(q.limit)?;
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM networks WHERE id > $1 ORDER BY id LIMIT $2")
        .bind(q.cursor.unwrap_or_default())
        .bind(limit + 1)
        .fetch_all(&st.service.db().pool)
        .await
        .map_err(db_failed)?;
    let (ids, next_cursor) = cut(ids, limit, Clone::clone);
    let mut networks = Vec::new();
    for id in ids {
        if let Some(n) = ingest::network(st.service.db(), &id).await.map_err(db_failed)? {
            networks.push(network_json(&n));
        }
    }
    Ok(Json(NetworksPage { networks, next_cursor }))
}

/// `GET /api/v1/networks/{network}`.
async fn get_network(
    State(st): State<AppState>,
    Path(network): Path<String>,
    headers: HeaderMap,
) -> Result<Json<NetworkView>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let n = ingest::network(st.service.db(), &network)
        .await
        .map_err(db_failed)?
        .ok_or_else(|| not_found("network", &network))?;
    Ok(Json(network_json(&n)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetworkBody {
    name: String,
    /// `name@version` or digest of a stored adapter.
    adapter: Option<String>,
    #[serde(default)]
    #[schema(schema_with = super::schema::any_json)]
    adapter_config: Value,
    /// `none`, `token`, `hmac` or `ip`.
    #[schema(schema_with = super::schema::inbound_auth)]
    auth: String,
    secret: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
}

/// `PUT /api/v1/networks/{network}` (admin): creates or updates a network; the adapter's
/// configuration is checked against its schema.
async fn put_network(
    State(st): State<AppState>,
    Path(network): Path<String>,
    headers: HeaderMap,
    Json(body): Json<NetworkBody>,
) -> Result<Json<NetworkView>, ApiError> {
    require(&st, &headers, Scope::Admin).await?;
    let auth = match (body.auth.as_str(), body.secret) {
        ("none", _) => InboundAuth::None,
        ("token", Some(s)) if !s.is_empty() => InboundAuth::Token(s),
        ("hmac", Some(s)) if !s.is_empty() => InboundAuth::Hmac(s),
        ("ip", _) => {
            let mut ips = Vec::new();
            for ip in &body.ips {
                ips.push(
                    ip.parse()
                        .map_err(|_| ApiError::bad_request("bad_ip", format!("ips: {ip:?} is not an address")))?,
                );
            }
            if ips.is_empty() {
                return Err(ApiError::bad_request("bad_auth", "ips: at least one address for auth \"ip\""));
            }
            InboundAuth::IpAllowList(ips)
        }
        ("token" | "hmac", _) => return Err(ApiError::bad_request("bad_auth", "secret: required for token and hmac")),
        (other, _) => {
            return Err(ApiError::bad_request("bad_auth", format!("auth: {other:?} is not none, token, hmac or ip")));
        }
    };
    let adapter = match &body.adapter {
        Some(r) => {
            let plugin = crate::registry::resolve(&st.service, r).await.map_err(ApiError::from)?;
            if plugin.kind() != crate::plugin::PluginKind::NetworkAdapter {
                return Err(ApiError::bad_request(
                    "bad_adapter",
                    format!("adapter: {} is a {}, not a network adapter", plugin.label(), plugin.kind()),
                ));
            }
            plugin
                .manifest
                .validate_config(&body.adapter_config)
                .map_err(|e| ApiError::bad_request("bad_config", format!("adapter_config: {e}")))?;
            // As for every activation: a stored version must still pass its own fixtures.
            st.service.prove_plugin(&plugin).await.map_err(ApiError::from)?;
            Some(plugin.digest.to_string())
        }
        None => None,
    };
    let n = Network {
        id: network.clone(),
        name: body.name,
        adapter_digest: adapter,
        adapter_config: body.adapter_config,
        auth,
    };
    ingest::upsert_network(st.service.db(), &n, st.service.now()).await.map_err(db_failed)?;
    Ok(Json(network_json(&n)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SearchQuery {
    #[param(schema_with = super::schema::conversion_status)]
    status: Option<String>,
    network: Option<String>,
    merchant: Option<String>,
    user: Option<String>,
    transaction: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^(|-?[0-9]{1,18}:.*)$")]
    cursor: Option<String>,
    /// Rows per page: 1 to 1,000; default 50.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The most conversions a search page holds (their rows are small).
const MAX_SEARCH: i64 = 1000;

/// A `reported_at:id` cursor (conversion pages).
fn at_id_cursor(cursor: Option<&str>) -> Result<Option<(i64, String)>, ApiError> {
    page::at_id_cursor(cursor).map_err(|why| ApiError::bad_request("bad_cursor", why))
}

page_of!(
    /// `GET /api/v1/conversions`.
    ConversionsPage, conversions: crate::conversions::decide::ConversionRow
);

/// `GET /api/v1/conversions?status=&network=&merchant=&user=&transaction=&cursor=&limit=`:
/// newest first (by report time, then id), a page at a time.
async fn search_conversions(
    State(st): State<AppState>,
    Query(q): Query<SearchQuery>,
    headers: HeaderMap,
) -> Result<Json<ConversionsPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    if let Some(s) = &q.status
        && Status::parse(s).is_none()
    {
        return Err(ApiError::bad_request("bad_status", format!("status: {s:?} is not a status")));
    }
    let limit = match q.limit {
        None => page::DEFAULT_LIMIT,
        Some(n) if (1..=MAX_SEARCH).contains(&n) => n,
        Some(n) => return Err(ApiError::bad_request("bad_limit", format!("limit: 1 to {MAX_SEARCH}, got {n}"))),
    };
    let (before_at, after_id) = at_id_cursor(q.cursor.as_deref())?.unwrap_or((i64::MAX, String::new()));
    let rows = sqlx::query(
        "SELECT id, reported_at FROM conversions WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR network_id = $2) \
         AND ($3 IS NULL OR merchant_id = $3) AND ($4 IS NULL OR user_id = $4) AND ($5 IS NULL OR transaction_id = $5) \
         AND (reported_at < $7 OR (reported_at = $7 AND id > $8)) \
         ORDER BY reported_at DESC, id LIMIT $6",
    )
    .bind(&q.status)
    .bind(&q.network)
    .bind(&q.merchant)
    .bind(&q.user)
    .bind(&q.transaction)
    .bind(limit + 1)
    .bind(before_at)
    .bind(after_id)
    .fetch_all(&st.service.db().pool)
    .await
    .map_err(db_failed)?;
    let keys = rows
        .iter()
        .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(db_failed)?;
    let (keys, next_cursor) = cut(keys, limit, |(id, at)| format!("{at}:{id}"));
    let mut conversions = Vec::new();
    for (id, _) in &keys {
        if let Some(c) = st.service.conversion(id).await.map_err(ApiError::from)? {
            conversions.push(c);
        }
    }
    Ok(Json(ConversionsPage { conversions, next_cursor }))
}

/// `GET /api/v1/conversions/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Timeline {
    conversion: crate::conversions::decide::ConversionRow,
    stages: Stages,
    /// Every step, oldest first.
    history: Vec<crate::conversions::service::HistoryEntry>,
    /// Its ledger postings, oldest first.
    postings: Vec<PostingRow>,
}

/// When a conversion reached each stage (UTC milliseconds; null: not yet).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Stages {
    clicked_at: Option<i64>,
    event_time: i64,
    reported_at: i64,
    /// `postback`, `api_import` or `file`.
    reported_via: String,
    rule_at: Option<i64>,
    ledger_at: Option<i64>,
    completed_at: Option<i64>,
    matured_at: Option<i64>,
}

/// One ledger posting of a conversion, with the plugin that computed it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PostingRow {
    id: i64,
    cause: String,
    reason: Option<String>,
    operator: Option<String>,
    plugin_name: Option<String>,
    plugin_version: Option<String>,
    plugin_digest: Option<String>,
    /// UTC milliseconds.
    at: i64,
}

/// `GET /api/v1/conversions/{id}`: the conversion, its history (every stage with its
/// time) and its ledger postings with the plugins that computed them.
async fn conversion_timeline(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Timeline>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let c = st.service.conversion(&id).await.map_err(ApiError::from)?.ok_or_else(|| not_found("conversion", &id))?;
    let history = st.service.history(&id).await.map_err(ApiError::from)?;
    let postings = sqlx::query(
        "SELECT id, cause, reason, operator, plugin_name, plugin_version, plugin_digest, created_at \
         FROM ledger_transactions WHERE conversion_id = $1 ORDER BY id",
    )
    .bind(&id)
    .fetch_all(&st.service.db().pool)
    .await
    .map_err(db_failed)?
    .iter()
    .map(|r| {
        Ok(PostingRow {
            id: r.try_get(0)?,
            cause: r.try_get(1)?,
            reason: r.try_get(2)?,
            operator: r.try_get(3)?,
            plugin_name: r.try_get(4)?,
            plugin_version: r.try_get(5)?,
            plugin_digest: r.try_get(6)?,
            at: r.try_get(7)?,
        })
    })
    .collect::<Result<Vec<PostingRow>, sqlx::Error>>()
    .map_err(db_failed)?;
    let stages = Stages {
        clicked_at: c.clicked_at,
        event_time: c.event_time,
        reported_at: c.reported_at,
        reported_via: c.reported_via.clone(),
        rule_at: c.rule_at,
        ledger_at: c.ledger_at,
        completed_at: c.completed_at,
        matured_at: c.matured_at,
    };
    Ok(Json(Timeline { conversion: c, stages, history, postings }))
}

page_of!(
    /// `GET /api/v1/review`.
    ReviewPage, queue: crate::conversions::decide::ConversionRow
);

/// `GET /api/v1/review?cursor=&limit=`: conversions awaiting review (pending review and
/// held), oldest report first, a page at a time.
async fn review_queue(
    State(st): State<AppState>,
    Query(q): Query<ReviewQuery>,
    headers: HeaderMap,
) -> Result<Json<ReviewPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let limit = page::limit(q.limit)?;
    let after = at_id_cursor(q.cursor.as_deref())?;
    let rows = st.service.review_queue(after, limit + 1).await.map_err(ApiError::from)?;
    let (queue, next_cursor) = cut(rows, limit, |c| format!("{}:{}", c.reported_at, c.id));
    Ok(Json(ReviewPage { queue, next_cursor }))
}

/// `GET /api/v1/review`'s page: the cursor is `reported_at:id`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReviewQuery {
    /// `next_cursor` of the previous page.
    #[param(pattern = "^(|-?[0-9]{1,18}:.*)$")]
    cursor: Option<String>,
    /// Rows per page: 1 to 500; default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReviewBody {
    /// `approve`, `reject` or `hold`.
    #[schema(schema_with = super::schema::review_action)]
    action: String,
    #[schema(pattern = r"\S")]
    operator: String,
    #[serde(default)]
    reason: String,
}

/// `POST /api/v1/conversions/{id}/review` `{"action": "approve|reject|hold", "operator", "reason"?}` (write).
async fn review(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ReviewBody>,
) -> Result<Json<crate::conversions::Outcome>, ApiError> {
    require(&st, &headers, Scope::Write).await?;
    let action = match body.action.as_str() {
        "approve" => ReviewAction::Approve,
        "reject" => ReviewAction::Reject,
        "hold" => ReviewAction::Hold,
        other => {
            return Err(ApiError::bad_request(
                "bad_action",
                format!("action: {other:?} is not approve, reject or hold"),
            ));
        }
    };
    // An unknown conversion is a 404, and one that is not awaiting review a 409 (its state
    // refuses the request, which is well-formed); the writer would refuse both as invalid.
    let Some(c) = st.service.conversion(&id).await.map_err(ApiError::from)? else {
        return Err(not_found("conversion", &id));
    };
    if !matches!(c.status, Status::PendingReview | Status::Held) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("conversion {id} is {}, not awaiting review", c.status),
        ));
    }
    let outcome = st.service.review(&id, action, &body.operator, &body.reason).await.map_err(ApiError::from)?;
    Ok(Json(outcome))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct BalanceQuery {
    /// Only this user's accounts.
    user: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^(|[0-9]{1,18})$")]
    cursor: Option<String>,
    /// Rows per page: 1 to 500; default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

page_of!(
    /// `GET /api/v1/balances`.
    BalancesPage, balances: crate::ledger::Balance
);

/// `GET /api/v1/balances[?user=U]`: every account's balance, or one user's.
async fn balances(
    State(st): State<AppState>,
    Query(q): Query<BalanceQuery>,
    headers: HeaderMap,
) -> Result<Json<BalancesPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let limit = page::limit(q.limit)?;
    let after = int_cursor(q.cursor.as_deref())?.unwrap_or(0);
    // By the accounts' ids: a user's accounts are read through UNIQUE (owner, kind, currency).
    let rows = sqlx::query(
        "SELECT id, owner, kind, currency, balance FROM accounts WHERE ($1 IS NULL OR owner = $1) AND id > $2 \
         ORDER BY id LIMIT $3",
    )
    .bind(&q.user)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&st.service.db().pool)
    .await
    .map_err(db_failed)?;
    let accounts = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>(0)?,
                crate::ledger::Balance {
                    owner: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    currency: r.try_get(3)?,
                    balance: r.try_get(4)?,
                },
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(db_failed)?;
    let (accounts, next_cursor) = cut(accounts, limit, |(id, _)| id.to_string());
    let balances = accounts.into_iter().map(|(_, b)| b).collect();
    Ok(Json(BalancesPage { balances, next_cursor }))
}

page_of!(
    /// `GET /api/v1/jobs`.
    JobsPage, jobs: crate::scheduler::JobInfo
);

page_of!(
    /// `GET /api/v1/jobs/{name}/runs`.
    RunsPage, runs: crate::scheduler::RunInfo
);

/// `GET /api/v1/jobs?cursor=&limit=`: the jobs by name, their schedules and last runs.
async fn jobs(
    State(st): State<AppState>,
    Query(q): Query<Page>,
    headers: HeaderMap,
) -> Result<Json<JobsPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let limit = page::limit(q.limit)?;
    // A few system jobs and one per scheduled network import: read whole.
    let all = crate::scheduler::list(&st.service).await.map_err(db_failed)?;
    let (jobs, next_cursor) = of_sorted(all, q.cursor.as_deref(), limit, |j| j.name.clone());
    Ok(Json(JobsPage { jobs, next_cursor }))
}

/// `GET /api/v1/jobs/{name}/runs?cursor=&limit=`: its runs, newest first.
async fn job_runs(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<IdPage>,
    headers: HeaderMap,
) -> Result<Json<RunsPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let (limit, before) = q.checked()?;
    let runs = crate::scheduler::runs_before(&st.service, &name, before, limit + 1).await.map_err(db_failed)?;
    let (runs, next_cursor) = cut(runs, limit, |r| r.id.to_string());
    Ok(Json(RunsPage { runs, next_cursor }))
}

/// `POST /api/v1/jobs/{name}/run` (write): runs the job now, once, under its lease.
async fn run_job(
    State(st): State<AppState>,
    Path(name): Path<String>,
    deliverer: Option<axum::Extension<crate::callbacks::Deliverer>>,
    notifier: Option<axum::Extension<crate::notify::Notifier>>,
    headers: HeaderMap,
) -> Result<Json<crate::scheduler::RunInfo>, ApiError> {
    require(&st, &headers, Scope::Write).await?;
    // An unknown job is a 404, as on the dashboard; a run that fails is the caller's 422.
    if !crate::scheduler::list(&st.service).await.map_err(db_failed)?.iter().any(|j| j.name == name) {
        return Err(not_found("job", &name));
    }
    // The server's own delivery worker and notifier (its SMTP settings), as the dashboard's
    // "run now" and the scheduler use: without them `notify` would say no SMTP server is
    // configured, whatever the configuration says.
    let mut scheduler =
        crate::scheduler::Scheduler::new(st.service.clone(), st.runtime.clone(), format!("api-{}", std::process::id()));
    if let Some(axum::Extension(d)) = deliverer {
        scheduler = scheduler.with_callbacks(d);
    }
    if let Some(axum::Extension(n)) = notifier {
        scheduler = scheduler.with_notifier(n);
    }
    let run =
        scheduler.run_now(&name).await.map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", e))?;
    Ok(Json(run))
}

fn callback_failed(e: crate::callbacks::CallbackError) -> ApiError {
    use crate::callbacks::CallbackError;
    match e {
        CallbackError::Invalid(why) => ApiError::bad_request("invalid", why),
        CallbackError::NotFound(why) => ApiError::new(StatusCode::NOT_FOUND, "not_found", why),
        CallbackError::Conflict(why) => ApiError::new(StatusCode::CONFLICT, "conflict", why),
        CallbackError::Db(e) => db_failed(e),
    }
}

page_of!(
    /// `GET /api/v1/partners`.
    PartnersPage, partners: crate::callbacks::Partner
);

/// `GET /api/v1/partners?cursor=&limit=`: by id.
async fn list_partners(
    State(st): State<AppState>,
    Query(q): Query<Page>,
    headers: HeaderMap,
) -> Result<Json<PartnersPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let limit = page::limit(q.limit)?;
    // Configured by hand, a handful: read whole.
    let all = crate::callbacks::partners(st.service.db()).await.map_err(callback_failed)?;
    let (partners, next_cursor) = of_sorted(all, q.cursor.as_deref(), limit, |p| p.id.clone());
    Ok(Json(PartnersPage { partners, next_cursor }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PartnerBody {
    #[schema(pattern = r"\S")]
    name: String,
}

/// `PUT /api/v1/partners/{partner}` `{"name"}` (admin): creates or renames a partner.
async fn put_partner(
    State(st): State<AppState>,
    Path(partner): Path<String>,
    headers: HeaderMap,
    Json(body): Json<PartnerBody>,
) -> Result<Json<crate::callbacks::Partner>, ApiError> {
    require(&st, &headers, Scope::Admin).await?;
    crate::callbacks::upsert_partner(st.service.db(), &partner, &body.name, st.service.now())
        .await
        .map_err(callback_failed)?;
    Ok(Json(crate::callbacks::Partner { id: partner, name: body.name }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointBody {
    partner_id: String,
    /// An `http` or `https` URL, with `{macros}`.
    #[schema(pattern = "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!-~]*)?$")]
    url_template: String,
    /// `GET` (default) or `POST`.
    #[schema(schema_with = super::schema::http_method)]
    method: Option<String>,
    #[serde(default)]
    params: std::collections::BTreeMap<String, String>,
    /// A signing secret (`whsec_...` for POST); none: unsigned.
    secret: Option<String>,
    signature_param: Option<String>,
    merchant_id: Option<String>,
    network_id: Option<String>,
    #[serde(default)]
    require_ref_id: bool,
    /// The states it receives (`["CREATED", "PENDING"]`, any case); absent or null:
    /// every state.
    states: Option<Vec<String>>,
    /// `["conversions"]` (default), `["payouts"]` or both.
    #[schema(schema_with = super::schema::callback_events)]
    events: Option<Vec<String>>,
    #[schema(minimum = 1, maximum = 50)]
    max_attempts: Option<u32>,
    /// `fixed` (default) or `exponential`.
    #[schema(schema_with = super::schema::backoff)]
    backoff: Option<String>,
    retry_delay_secs: Option<i64>,
    max_delay_secs: Option<i64>,
    #[schema(maximum = 100)]
    jitter_pct: Option<u32>,
    #[schema(minimum = 100, maximum = 120000)]
    timeout_ms: Option<i64>,
    #[schema(minimum = 1, maximum = 10000)]
    disable_after: Option<u32>,
}

/// `PUT /api/v1/callbacks/endpoints/{id}` (admin): creates or replaces a partner's
/// callback endpoint. Unset retry fields take the configured defaults (`callbacks.*`,
/// the same as `cashbackd endpoint add`; seed 003's 3 tries 5 minutes apart unless
/// configured otherwise). The answer masks the secret.
async fn put_endpoint(
    State(st): State<AppState>,
    axum::Extension(defaults): axum::Extension<crate::callbacks::EndpointDefaults>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(b): Json<EndpointBody>,
) -> Result<Json<crate::callbacks::EndpointView>, ApiError> {
    use crate::callbacks::{Backoff, EndpointSpec, Method, sign::Secret};
    require(&st, &headers, Scope::Admin).await?;
    let method = match b.method.as_deref() {
        None => Method::Get,
        Some(m) => Method::parse(m)
            .ok_or_else(|| ApiError::bad_request("invalid", format!("method: {m:?} is not GET or POST")))?,
    };
    let mut spec = EndpointSpec::with_defaults(&id, &b.partner_id, &b.url_template, &defaults);
    spec.method = method;
    spec.params = b.params;
    if let Some(secret) = &b.secret {
        spec.secrets = vec![
            Secret::parse(secret, method == Method::Post)
                .map_err(|e| ApiError::bad_request("invalid", format!("secret: {e}")))?,
        ];
    }
    if let Some(p) = b.signature_param {
        spec.signature_param = p;
    }
    spec.merchant_id = b.merchant_id;
    spec.network_id = b.network_id;
    spec.require_ref_id = b.require_ref_id;
    spec.states = b.states.as_deref().map(crate::callbacks::parse_states).transpose().map_err(callback_failed)?;
    if let Some(events) = &b.events {
        spec.events = crate::callbacks::Events::parse(events.iter().map(String::as_str)).map_err(callback_failed)?;
    }
    let d = spec.retry;
    spec.retry.max_attempts = b.max_attempts.unwrap_or(d.max_attempts);
    spec.retry.backoff = match b.backoff.as_deref() {
        None => d.backoff,
        Some("fixed") => Backoff::Fixed,
        Some("exponential") => Backoff::Exponential,
        Some(other) => {
            return Err(ApiError::bad_request("invalid", format!("backoff: {other:?} is not fixed or exponential")));
        }
    };
    spec.retry.delay_ms = b.retry_delay_secs.map_or(d.delay_ms, |s| s.saturating_mul(1000));
    spec.retry.max_delay_ms = b.max_delay_secs.map_or(d.max_delay_ms, |s| s.saturating_mul(1000));
    spec.retry.jitter_pct = b.jitter_pct.unwrap_or(d.jitter_pct);
    spec.timeout_ms = b.timeout_ms.unwrap_or(spec.timeout_ms);
    spec.disable_after = b.disable_after.unwrap_or(spec.disable_after);
    spec.validate().map_err(callback_failed)?;
    crate::callbacks::save_endpoint(st.service.db(), &spec, st.service.now()).await.map_err(callback_failed)?;
    // Read back as every list shows it (secrets masked). Gone already: another request
    // replaced it meanwhile and removed it, which is the caller's 404, not a null body.
    let view = crate::callbacks::endpoints(st.service.db())
        .await
        .map_err(callback_failed)?
        .into_iter()
        .find(|e| e.id == id)
        .ok_or_else(|| not_found("endpoint", &id))?;
    Ok(Json(view))
}
