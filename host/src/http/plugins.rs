//! The plugin registry under `/api/v1/plugins`, `/api/v1/merchants/{id}/...`,
//! `/api/v1/networks/{id}/adapter/...` and `/api/v1/callbacks/endpoints/{id}/plugin/...`: the
//! same operations as `cashbackd plugin ...`. Reading needs the read scope; changing
//! what runs (upload, activate, rollback, shadow, delete) the admin scope.

use super::admin::require;
use super::{ApiError, AppState};
use crate::auth::Scope;
use crate::registry::{self, Target};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default largest component accepted (`http.max_plugin_bytes`).
pub const MAX_COMPONENT_BYTES: usize = 32 << 20;

/// The registry routes; a component may be up to `max_component` bytes.
pub fn routes(max_component: usize) -> Router<AppState> {
    Router::new()
        .route("/api/v1/plugins", get(list).post(upload).layer(DefaultBodyLimit::max(max_component)))
        .route("/api/v1/plugins/{reference}", delete(remove))
        .route("/api/v1/merchants/{merchant}/rules/activate", post(activate_merchant))
        .route("/api/v1/merchants/{merchant}/rules/rollback", post(rollback_merchant))
        .route("/api/v1/merchants/{merchant}/rules/history", get(history_merchant))
        .route("/api/v1/merchants/{merchant}/shadow", get(shadow_diff).put(shadow_set).delete(shadow_clear))
        .route("/api/v1/networks/{network}/adapter/activate", post(activate_network))
        .route("/api/v1/networks/{network}/adapter/rollback", post(rollback_network))
        .route("/api/v1/callbacks/endpoints/{id}/plugin/activate", post(activate_endpoint))
        .route("/api/v1/callbacks/endpoints/{id}/plugin/rollback", post(rollback_endpoint))
        .route("/api/v1/callbacks/endpoints/{id}/plugin/history", get(history_endpoint))
}

fn actor(headers: &HeaderMap) -> String {
    // The token's name is not needed for a trail: record that the API did it.
    headers.get("user-agent").and_then(|v| v.to_str().ok()).map_or("api".into(), |ua| format!("api ({ua})"))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    name: Option<String>,
    /// `next_cursor` of the previous page (`name@version`).
    cursor: Option<String>,
    /// Rows per page: 1 to 500; default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

super::page::page_of!(
    /// `GET /api/v1/plugins`.
    PluginsPage, plugins: registry::PluginVersion
);

/// `GET /api/v1/merchants/{merchant}/rules/history` and an endpoint's plugin history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ActivationsList {
    /// Newest first, at most 200.
    activations: Vec<registry::Activation>,
}

/// `GET /api/v1/plugins[?name=N&cursor=&limit=]`: stored versions (by name and version)
/// and where each is used.
async fn list(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<PluginsPage>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let limit = super::page::limit(q.limit)?;
    let versions = registry::versions(&st.service, q.name.as_deref()).await.map_err(ApiError::from)?;
    let (plugins, next_cursor) =
        super::page::of_sorted(versions, q.cursor.as_deref(), limit, |v| format!("{}@{}", v.name, v.version));
    Ok(Json(PluginsPage { plugins, next_cursor }))
}

/// `POST /api/v1/plugins` with the component as the body: validate and store.
async fn upload(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<registry::Uploaded>), ApiError> {
    require(&st, &headers, Scope::Admin).await?;
    if body.is_empty() {
        return Err(ApiError::bad_request("empty_body", "the request body must be the component (.wasm)"));
    }
    let uploaded = registry::upload(&st.service, &body).await.map_err(ApiError::from)?;
    let status = if uploaded.already_stored { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(uploaded)))
}

/// `DELETE /api/v1/plugins/{name@version|digest}`: only an unused version.
async fn remove(
    State(st): State<AppState>,
    Path(reference): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    require(&st, &headers, Scope::Admin).await?;
    let plugin = registry::resolve(&st.service, &reference).await.map_err(ApiError::from)?;
    registry::delete(&st.service, &plugin).await.map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActivateBody {
    /// `name@version` or a digest.
    #[schema(schema_with = super::schema::plugin_reference)]
    plugin: String,
    #[schema(maximum = 1_000_000)]
    position: Option<usize>,
    #[schema(schema_with = super::schema::any_json)]
    config: Option<Value>,
}

/// An endpoint's activation: an endpoint has one plugin, not a chain, so there is no
/// position (a body with one is refused, 422, as any unknown field).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointActivateBody {
    /// `name@version` or a digest.
    #[schema(schema_with = super::schema::plugin_reference)]
    plugin: String,
    #[schema(schema_with = super::schema::any_json)]
    config: Option<Value>,
}

async fn activate(
    st: &AppState,
    headers: &HeaderMap,
    target: Target,
    body: ActivateBody,
) -> Result<Json<registry::Activation>, ApiError> {
    require(st, headers, Scope::Admin).await?;
    let plugin = registry::resolve(&st.service, &body.plugin).await.map_err(ApiError::from)?;
    let a = registry::activate(&st.service, &target, &plugin, body.config, &actor(headers))
        .await
        .map_err(ApiError::from)?;
    Ok(Json(a))
}

/// `POST /api/v1/merchants/{merchant}/rules/activate` `{"plugin": "rate-table@1.2.0", "position"?, "config"?}`.
async fn activate_merchant(
    State(st): State<AppState>,
    Path(merchant): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ActivateBody>,
) -> Result<Json<registry::Activation>, ApiError> {
    let target = Target::Merchant { id: merchant, position: body.position };
    activate(&st, &headers, target, body).await
}

/// `POST /api/v1/networks/{network}/adapter/activate` `{"plugin": ..., "config"?}`.
async fn activate_network(
    State(st): State<AppState>,
    Path(network): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ActivateBody>,
) -> Result<Json<registry::Activation>, ApiError> {
    activate(&st, &headers, Target::Network { id: network }, body).await
}

/// `POST /api/v1/callbacks/endpoints/{id}/plugin/activate` `{"plugin": ..., "config"?}`: a
/// partner-callback plugin renders the endpoint's requests from its next delivery on.
async fn activate_endpoint(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<EndpointActivateBody>,
) -> Result<Json<registry::Activation>, ApiError> {
    let body = ActivateBody { plugin: body.plugin, position: None, config: body.config };
    activate(&st, &headers, Target::Endpoint { id }, body).await
}

/// `POST /api/v1/callbacks/endpoints/{id}/plugin/rollback`: the version the last activation
/// replaced, or the built-in template when it replaced none.
async fn rollback_endpoint(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<registry::Activation>, ApiError> {
    require(&st, &headers, Scope::Admin).await?;
    let target = Target::Endpoint { id };
    Ok(Json(registry::rollback(&st.service, &target, &actor(&headers)).await.map_err(ApiError::from)?))
}

/// `GET /api/v1/callbacks/endpoints/{id}/plugin/history`: activations, newest first.
async fn history_endpoint(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ActivationsList>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let target = Target::Endpoint { id };
    Ok(Json(ActivationsList {
        activations: registry::activations(&st.service, &target, 200).await.map_err(ApiError::from)?,
    }))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackBody {
    #[schema(maximum = 1_000_000)]
    position: Option<usize>,
}

/// `POST /api/v1/merchants/{merchant}/rules/rollback` `{"position"?}`.
async fn rollback_merchant(
    State(st): State<AppState>,
    Path(merchant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<registry::Activation>, ApiError> {
    require(&st, &headers, Scope::Admin).await?;
    // The body is optional: empty means the last activated place.
    let body: RollbackBody = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("bad_body", format!("rollback body: {e}")))?
    };
    let position = body.position;
    let target = Target::Merchant { id: merchant, position };
    Ok(Json(registry::rollback(&st.service, &target, &actor(&headers)).await.map_err(ApiError::from)?))
}

/// `POST /api/v1/networks/{network}/adapter/rollback`.
async fn rollback_network(
    State(st): State<AppState>,
    Path(network): Path<String>,
    headers: HeaderMap,
) -> Result<Json<registry::Activation>, ApiError> {
    require(&st, &headers, Scope::Admin).await?;
    let target = Target::Network { id: network };
    Ok(Json(registry::rollback(&st.service, &target, &actor(&headers)).await.map_err(ApiError::from)?))
}

/// `GET /api/v1/merchants/{merchant}/rules/history`: activations, newest first.
async fn history_merchant(
    State(st): State<AppState>,
    Path(merchant): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ActivationsList>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let target = Target::Merchant { id: merchant, position: None };
    Ok(Json(ActivationsList {
        activations: registry::activations(&st.service, &target, 200).await.map_err(ApiError::from)?,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShadowBody {
    #[schema(schema_with = super::schema::plugin_reference)]
    plugin: String,
    #[schema(maximum = 1_000_000)]
    position: Option<usize>,
    #[schema(schema_with = super::schema::any_json)]
    config: Option<Value>,
}

/// `PUT /api/v1/merchants/{merchant}/shadow` `{"plugin": ..., "position"?, "config"?}`.
async fn shadow_set(
    State(st): State<AppState>,
    Path(merchant): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ShadowBody>,
) -> Result<Json<registry::Activation>, ApiError> {
    require(&st, &headers, Scope::Admin).await?;
    let plugin = registry::resolve(&st.service, &body.plugin).await.map_err(ApiError::from)?;
    let a = registry::set_shadow(&st.service, &merchant, &plugin, body.config, body.position, &actor(&headers))
        .await
        .map_err(ApiError::from)?;
    Ok(Json(a))
}

/// `DELETE /api/v1/merchants/{merchant}/shadow`.
async fn shadow_clear(
    State(st): State<AppState>,
    Path(merchant): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    require(&st, &headers, Scope::Admin).await?;
    registry::clear_shadow(&st.service, &merchant).await.map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DiffQuery {
    #[param(schema_with = super::schema::plugin_reference)]
    plugin: Option<String>,
    #[param(maximum = 1_000_000)]
    limit: Option<usize>,
}

/// `GET /api/v1/merchants/{merchant}/shadow[?plugin=..&limit=..]`: what the candidate
/// decided differently (count, totals, delta, examples).
async fn shadow_diff(
    State(st): State<AppState>,
    Path(merchant): Path<String>,
    Query(q): Query<DiffQuery>,
    headers: HeaderMap,
) -> Result<Json<registry::Comparison>, ApiError> {
    require(&st, &headers, Scope::Read).await?;
    let candidate = match q.plugin {
        Some(p) => Some(registry::resolve(&st.service, &p).await.map_err(ApiError::from)?.digest.to_string()),
        None => None,
    };
    let c = registry::shadow_report(&st.service, &merchant, candidate.as_deref(), q.limit.unwrap_or(20).min(1000))
        .await
        .map_err(ApiError::from)?;
    Ok(Json(c))
}
