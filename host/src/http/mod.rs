//! The public HTTP ingress: tracked clicks (`GET /c/{link}`), S2S postbacks
//! (`GET|POST /postback/{network}`) and health. Every refusal is a 4xx whose JSON body
//! says why; internals never leak.

mod admin;
mod api;
mod callbacks;
mod idempotency;
mod ingress;
pub mod openapi;
mod ops;
mod plugins;

use crate::conversions::Service;
use crate::plugin::PluginRuntime;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

pub use ops::MetricsAccess;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The conversion service.
    pub service: Service,
    /// The plugin runtime.
    pub runtime: Arc<PluginRuntime>,
}

/// Largest request body accepted (postbacks are small; files go through imports).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/c/{link}", get(ingress::click))
        .route("/postback/{network}", get(ingress::postback).post(ingress::postback))
        .route("/healthz", get(|| async { "ok" }))
        .merge(ops::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .merge(admin::routes())
        .merge(callbacks::routes())
        .merge(plugins::routes())
        .merge(api::routes())
        .route("/api/v1/openapi.json", get(openapi::serve))
        .merge(crate::dashboard::routes())
        .layer(axum::middleware::from_fn_with_state(state.clone(), idempotency::guard))
        .layer(axum::middleware::from_fn_with_state(state.clone(), admin::authenticated))
        // Outermost: every request's span, log line and metrics, refusals included.
        .layer(axum::middleware::from_fn(ops::observe))
        .with_state(state)
}

/// The router with the delivery worker the callback tester sends through (its outbound
/// settings: whether private addresses are allowed). Without it, the tester uses the
/// defaults.
pub fn router_with_callbacks(state: AppState, deliverer: crate::callbacks::Deliverer) -> Router {
    router(state).layer(axum::Extension(deliverer))
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

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
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

    /// 503: the caller should retry later; details are logged, not returned.
    pub fn unavailable(context: &str, error: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %error, "{context}");
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
            other => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, axum::Json(body)).into_response()
    }
}
