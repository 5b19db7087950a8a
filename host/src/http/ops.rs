//! What operators' tools read: `GET /metrics` (Prometheus), `GET /readyz` (ready to
//! serve: the database answers, its migrations are applied, the plugin runtime is up), and
//! the request log and metrics every route gets from [`observe`]. `/healthz` (the process
//! answers) is in the router itself.

use super::{ApiError, AppState};
use crate::auth::Scope;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Who may read `/metrics`; without this extension, anyone (it holds no secret and no id).
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsAccess {
    /// Ask for an admin API token (any scope).
    pub require_token: bool,
}

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics)).route("/readyz", get(readyz))
}

/// `GET /metrics`: the recorder's metrics (if `serve` installed it) and the queue sizes,
/// counted now, in the Prometheus text format.
async fn metrics(
    State(st): State<AppState>,
    access: Option<Extension<MetricsAccess>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if access.is_some_and(|a| a.require_token) {
        super::admin::require(&st, &headers, Scope::Read).await?;
    }
    let mut body = crate::metrics::handle().map(|h| h.render()).unwrap_or_default();
    crate::metrics::render_queues(&mut body, &st.service.db().pool).await;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}

/// `GET /readyz`: 200 when this process can serve; otherwise 503 with the first reason
/// (details are logged, not returned).
async fn readyz(State(st): State<AppState>) -> Response {
    let db = st.service.db();
    let answered = tokio::time::timeout(Duration::from_secs(5), sqlx::query("SELECT 1").execute(&db.pool)).await;
    let database = match answered {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readyz: the database does not answer");
            Err("the database does not answer".to_string())
        }
        Err(_) => Err("the database did not answer within 5 s".to_string()),
    };
    let migrations = match &database {
        Err(_) => Err("not checked: no database".to_string()),
        Ok(()) => match db.pending_migrations().await {
            Ok(pending) if pending.is_empty() => Ok(()),
            Ok(pending) => Err(format!(
                "migrations not applied: {} (run `cashbackd migrate`)",
                pending.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
            )),
            Err(e) => {
                tracing::warn!(error = %e, "readyz: cannot read the applied migrations");
                Err("cannot read the applied migrations".to_string())
            }
        },
    };
    let runtime = st.runtime.health();
    let word = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_string(),
        Err(why) => why.clone(),
    };
    let checks = serde_json::json!({
        "database": word(&database),
        "migrations": word(&migrations),
        "plugin_runtime": word(&runtime),
    });
    match [database, migrations, runtime].into_iter().find_map(Result::err) {
        None => (StatusCode::OK, Json(serde_json::json!({ "status": "ready", "checks": checks }))).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unavailable", "reason": reason, "checks": checks })),
        )
            .into_response(),
    }
}

/// Every request: a span with its method and route template (the events inside carry
/// them), a log line with the status and latency, and the HTTP metrics. Never the query
/// string or the headers: postbacks carry tokens and signatures there.
pub async fn observe(request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    let span = tracing::info_span!("request", method, route = %route);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.in_scope(|| {
        tracing::info!(status, latency_ms = elapsed.as_secs_f64() * 1000.0, "request");
    });
    crate::metrics::http_request(method, &route, status, elapsed);
    response
}

/// The method as a label: the standard ones, anything else as `other`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
