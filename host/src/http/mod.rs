//! The public HTTP ingress: tracked clicks (`GET /c/{link}`), S2S postbacks
//! (`GET|POST /postback/{network}`) and health. Every refusal is a 4xx whose JSON body
//! says why; internals never leak.

mod admin;
mod api;
mod backtests;
mod callbacks;
mod guard;
mod idempotency;
mod ingress;
pub mod openapi;
mod ops;
pub(crate) mod page;
mod payouts;
mod plugins;
pub mod ratelimit;
mod schema;
mod users;

use crate::conversions::Service;
use crate::plugin::PluginRuntime;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

pub use ops::MetricsAccess;
pub use ratelimit::IngressLimiter;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The conversion service.
    pub service: Service,
    /// The plugin runtime.
    pub runtime: Arc<PluginRuntime>,
}

/// Default largest request body (postbacks are small; files go through imports).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The largest request bodies accepted (`http.max_*_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Every route but the two uploads: postbacks, admin API requests, dashboard forms.
    pub body: usize,
    /// Report files, `POST /api/v1/networks/{network}/imports`.
    pub import: usize,
    /// Plugin components, `POST /api/v1/plugins`.
    pub plugin: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits { body: MAX_BODY_BYTES, import: admin::MAX_UPLOAD_BYTES, plugin: plugins::MAX_COMPONENT_BYTES }
    }
}

impl BodyLimits {
    /// The cap of a route (by its template) and the setting that sets it.
    fn of_route(&self, route: Option<&str>) -> (usize, &'static str) {
        match route {
            // The routes of the two uploads (admin.rs, plugins.rs).
            Some("/api/v1/networks/{network}/imports") => (self.import, "http.max_import_bytes"),
            Some("/api/v1/plugins") => (self.plugin, "http.max_plugin_bytes"),
            _ => (self.body, "http.max_body_bytes"),
        }
    }

    /// The largest of them (what a middleware that buffers any route's body may take).
    pub fn largest(&self) -> usize {
        self.body.max(self.import).max(self.plugin)
    }
}

/// How the router is set up: body caps, and the public ingress's rate limits (none: not
/// limited).
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// Request body caps.
    pub bodies: BodyLimits,
    /// Rate limits of `/c/{link}` and `/postback/{network}`.
    pub ingress: Option<Arc<IngressLimiter>>,
    /// What a click may do: create accounts, and whether it must be signed.
    pub clicks: ClickPolicy,
    /// What a callback endpoint made through the admin API gets for the settings it
    /// leaves out (`callbacks.*`, as `cashbackd endpoint add`).
    pub endpoint_defaults: crate::callbacks::EndpointDefaults,
}

/// What `/c/{link}` does with the user id it is given (`ingress.create_users_on_click`,
/// `ingress.click_secret`).
#[derive(Clone, PartialEq, Eq)]
pub struct ClickPolicy {
    /// A click for an unknown user creates the account.
    pub create_users: bool,
    /// Every click carries the site's signature of the link and user id.
    pub secret: Option<String>,
}

impl Default for ClickPolicy {
    fn default() -> Self {
        ClickPolicy { create_users: true, secret: None }
    }
}

impl std::fmt::Debug for ClickPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickPolicy")
            .field("create_users", &self.create_users)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish()
    }
}

impl HttpConfig {
    /// As the settings say (`[http]`, `[ingress]`): what `serve` and `demo` run.
    pub fn from_settings(settings: &crate::config::Settings) -> HttpConfig {
        let h = &settings.http;
        HttpConfig {
            bodies: BodyLimits { body: h.max_body_bytes, import: h.max_import_bytes, plugin: h.max_plugin_bytes },
            ingress: IngressLimiter::from_settings(&settings.ingress),
            clicks: ClickPolicy {
                create_users: settings.ingress.create_users_on_click,
                secret: settings.ingress.click_secret.clone(),
            },
            endpoint_defaults: settings.callbacks.endpoint_defaults(),
        }
    }
}

/// The router set up as `config` says, with `pages` (the dashboard's) behind the same
/// authentication, limits and request log; `server::Server::router` passes them, and adds
/// the workers and policies the handlers reach through extensions.
pub(crate) fn router_with(state: AppState, config: HttpConfig, pages: Router<AppState>) -> Router {
    let mut ingress = Router::new()
        .route("/c/{link}", get(ingress::click))
        .route("/postback/{network}", get(ingress::postback).post(ingress::postback));
    if let Some(limiter) = config.ingress {
        // Before the handler: a throttled request costs no body read and no query.
        ingress = ingress.route_layer(axum::middleware::from_fn_with_state(limiter, ratelimit::guard));
    }
    let bodies = config.bodies;
    Router::new()
        .merge(ingress)
        .route("/healthz", get(|| async { "ok" }))
        .merge(ops::routes())
        .merge(admin::routes(bodies.import))
        .merge(callbacks::routes())
        .merge(plugins::routes(bodies.plugin))
        .merge(backtests::routes())
        .merge(api::routes())
        .merge(users::routes())
        .merge(payouts::routes())
        .route("/api/v1/openapi.json", get(openapi::serve))
        .merge(pages)
        .layer(axum::middleware::from_fn_with_state(bodies, integral_numbers))
        .layer(axum::middleware::from_fn_with_state(bodies, too_large_as_json))
        // Every route's cap but the uploads', whose own (inner) layers set theirs.
        .layer(DefaultBodyLimit::max(bodies.body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), idempotency::guard))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard::authenticated))
        // Outermost: every request's span, log line and metrics, refusals included.
        .layer(axum::middleware::from_fn(ops::observe))
        .layer(axum::Extension(bodies))
        .layer(axum::Extension(config.clicks))
        .layer(axum::Extension(config.endpoint_defaults))
        .with_state(state)
}

/// Every JSON body of the admin API is an object (anything else is refused here, 400).
/// And JSON has one number type: `74.0` is the integer 74 to JSON Schema (and to the OpenAPI
/// document's `integer` fields), but serde refuses it for an `i64`. So an admin API JSON
/// body's numbers with no fractional part are rewritten as integers before any handler
/// reads it; a body that is not JSON passes unchanged (its handler names the error).
async fn integral_numbers(
    axum::extract::State(bodies): axum::extract::State<BodyLimits>,
    request: Request,
    next: Next,
) -> Response {
    let json =
        request.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json || !request.uri().path().starts_with("/api/v1/") {
        return next.run(request).await;
    }
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let cap = bodies.of_route(route.as_deref());
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, cap.0).await else {
        return ApiError::too_large(cap).into_response();
    };
    let bytes = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        // serde takes a struct from an array too (`[null, null]` would be a user): every
        // body of the admin API is an object.
        Ok(v) if !v.is_object() => {
            return ApiError::bad_request("invalid_json", "the body must be a JSON object").into_response();
        }
        Ok(mut v) => {
            if integral(&mut v) {
                serde_json::to_vec(&v).map(axum::body::Bytes::from).unwrap_or(bytes)
            } else {
                bytes
            }
        }
        Err(_) => bytes,
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

/// Rewrites the integral floats in `v` (within ±2^53, where a float is exact) as integers;
/// whether it changed anything.
fn integral(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => {
                *v = Value::from(f as i64);
                true
            }
            _ => false,
        },
        // Every element is visited (no short circuit): each may need rewriting.
        Value::Array(items) => {
            let mut changed = false;
            for i in items {
                changed |= integral(i);
            }
            changed
        }
        Value::Object(fields) => {
            let mut changed = false;
            for f in fields.values_mut() {
                changed |= integral(f);
            }
            changed
        }
        _ => false,
    }
}

/// axum's extractors refuse an oversized body with a plain-text 413; every refusal of
/// this server is JSON with the reason, here the cap and the setting that sets it. Under
/// `/api/` the other plain-text refusals of the extractors and the router (400, 404, 405,
/// 415, 422: a body that is not JSON, of the wrong shape, an unknown path) become the same
/// `{"error": {"code", "message"}}` body the OpenAPI document promises, with axum's
/// reason as the message.
async fn too_large_as_json(
    axum::extract::State(bodies): axum::extract::State<BodyLimits>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let api = request.uri().path().starts_with("/api/");
    let response = next.run(request).await;
    let status = response.status();
    let json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::too_large(bodies.of_route(route.as_deref())).into_response();
    }
    if !api {
        return response;
    }
    let code = match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        _ => "refused",
    };
    let allow = response.headers().get(header::ALLOW).cloned();
    // axum's rejection texts are short; a larger body is not one of them.
    let text = axum::body::to_bytes(response.into_body(), 16 << 10).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("refused").to_lowercase() } else { text };
    let mut json = ApiError::new(status, code, message).into_response();
    if let Some(allow) = allow {
        json.headers_mut().insert(header::ALLOW, allow);
    }
    json
}

/// Serves an already built router on `listener` until `shutdown` resolves.
pub async fn serve_router(
    app: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// An HTTP error with a reason.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with `status`, a machine code and a human reason.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    /// 400.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 413: the body is over `cap`, which `setting` sets.
    pub fn too_large((cap, setting): (usize, &'static str)) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is over {cap} bytes, the limit of this route ({setting})"),
        )
    }

    /// 503: the caller should retry later (the answer says when, `Retry-After`); details
    /// are logged, not returned, except a fault the operator must act on (a full disk).
    pub fn unavailable(context: &str, error: &(dyn std::error::Error + 'static)) -> ApiError {
        tracing::error!(error = %error, "{context}");
        let message = match crate::db::Fault::in_chain(error).and_then(crate::db::Fault::operator_action) {
            Some(fault) => format!("{context}: {fault}; retry later"),
            None => format!("{context}; retry later"),
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 503 for a reason that is not an error value (a missing configuration, a refusal
    /// text): logged, and said to the caller as `context`.
    pub fn unavailable_because(context: &str, reason: &str) -> ApiError {
        tracing::error!(reason, "{context}");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("{context}; retry later"))
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The reason.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A service refusal is the caller's (422 with the reason); database trouble is a 503
/// whose details are logged, not returned. One mapping for every admin route.
impl From<crate::conversions::service::ServiceError> for ApiError {
    fn from(e: crate::conversions::service::ServiceError) -> ApiError {
        match e {
            crate::conversions::service::ServiceError::Db(e) => {
                ApiError::unavailable("the database is unavailable", &e)
            }
            crate::conversions::service::ServiceError::NotFound(what) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
            }
            crate::conversions::service::ServiceError::Conflict(what) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", what)
            }
            other => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", other.to_string()),
        }
    }
}

/// When a 503's caller should try again, in seconds: a database restart or a failover
/// takes about this long, and a network's own retry schedule is usually longer anyway.
pub const RETRY_AFTER_SECS: u64 = 5;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECS.into());
        }
        response
    }
}
