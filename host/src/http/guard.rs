//! The admin API's gate: every `/api/v1` request is authenticated against the scope the
//! route table (`openapi::ROUTES`) gives its route, before its handler or its body is
//! looked at. Above the route table and the handlers, so that neither needs the other.

use super::AppState;
use super::admin::require;
use crate::auth::Scope;
use axum::extract::State;

/// Every `/api/v1` route but the OpenAPI document needs a valid token of the route's scope
/// (from the route table, [`super::openapi::ROUTES`]) before anything else: a caller
/// without one, or with too low a scope, learns nothing about the route (not even that
/// its body is malformed) and claims no idempotency key. Each handler checks its own
/// scope again.
pub(super) async fn authenticated(
    State(st): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = request.uri().path();
    if path.starts_with("/api/v1/") && path != "/api/v1/openapi.json" {
        let route = request.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str());
        let method = request.method().as_str();
        // A path no route serves still needs a token (it answers 404 only to one).
        let scope = super::openapi::ROUTES
            .iter()
            .find(|r| Some(r.path) == route && r.method == method)
            .and_then(|r| r.scope)
            .unwrap_or(Scope::Read);
        if let Err(refused) = require(&st, request.headers(), scope).await {
            return refused.into_response();
        }
    }
    next.run(request).await
}
