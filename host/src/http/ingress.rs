//! Clicks and postbacks.

use super::{ApiError, AppState};
use crate::conversions::service::ServiceError;
use crate::conversions::{ApplyError, NewClick, Outcome, Via};
use crate::ingest::{self, Inbound, Reject};
use crate::input;
use crate::plugin::CallError;
use crate::plugin::boundary;
use crate::plugin::wit::latest::{self, PluginError};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;

/// `GET /c/{link}?user=U[&ref_id=R][&sub1..sub5=S]`: records a click, then redirects (302)
/// to the merchant with the click id and sub ids filled in.
pub async fn click(
    State(st): State<AppState>,
    Path(link): Path<String>,
    policy: Option<axum::Extension<super::ClickPolicy>>,
    RawQuery(query): RawQuery,
) -> Response {
    let policy = policy.map(|p| p.0).unwrap_or_default();
    match record_click(&st, &policy, &link, query.as_deref().unwrap_or("")).await {
        Ok(location) => {
            crate::metrics::click("recorded");
            (StatusCode::FOUND, [(header::LOCATION, location), (header::CACHE_CONTROL, "no-store".into())])
                .into_response()
        }
        Err(e) => {
            crate::metrics::click(if e.status().is_client_error() { "rejected" } else { "failed" });
            e.into_response()
        }
    }
}

async fn record_click(
    st: &AppState,
    policy: &super::ClickPolicy,
    link_id: &str,
    query: &str,
) -> Result<String, ApiError> {
    // Refused like a postback's query: an id is never stored with U+FFFD in it.
    let params = input::form_pairs(query).map_err(|why| ApiError::bad_request("invalid_encoding", why))?;
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let user = get("user")
        .ok_or_else(|| ApiError::bad_request("missing_user", "user: required (the id of the user who clicks)"))?;
    crate::users::check_id(&user).map_err(|why| ApiError::bad_request("invalid_user", why))?;
    if let Some(secret) = &policy.secret {
        crate::ingest::signed::verify(
            secret,
            link_id,
            &user,
            get("sig").as_deref(),
            get("exp").as_deref(),
            st.service.now(),
        )
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "bad_signature", e.to_string()))?;
    }
    let ref_id = get("ref_id");
    if let Some(r) = &ref_id {
        input::REF_ID.check(r).map_err(|why| ApiError::bad_request("invalid_ref_id", why))?;
    }
    let mut subs = Vec::with_capacity(5);
    for i in 1..=5 {
        let sub = get(&format!("sub{i}"));
        if let Some(s) = &sub {
            let limit = input::IdLimit { field: ["sub1", "sub2", "sub3", "sub4", "sub5"][i - 1], ..input::SUB_ID };
            limit.check(s).map_err(|why| ApiError::bad_request("invalid_sub", why))?;
        }
        subs.push(sub);
    }
    let db = st.service.db();
    let link = ingest::link(db, link_id)
        .await
        .map_err(|e| ApiError::unavailable("cannot read the link", &e))?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown_link", format!("no tracked link {link_id:?}")))?;
    let click_id = format!("{:032x}", rand::random::<u128>());
    st.service
        .record_click(
            NewClick {
                click_id: click_id.clone(),
                user_id: user,
                merchant_id: Some(link.merchant_id.clone()),
                network_id: Some(link.network_id.clone()),
                ref_id: ref_id.clone(),
                link_id: Some(link.id.clone()),
                subs: subs.clone(),
            },
            policy.create_users,
        )
        .await
        .map_err(|e| ApiError::unavailable("cannot record the click", &e))?;
    Ok(ingest::render_click_url(&link.url_template, &click_id, ref_id.as_deref(), &subs))
}

/// `GET|POST /postback/{network}`: authenticates the postback, has the network's adapter
/// parse it, and records each event. Answers 200 only once every event is durably
/// recorded; a refusal is a 4xx with the reason, kept in the rejects log.
pub async fn postback(State(st): State<AppState>, Path(network): Path<String>, request: Request) -> Response {
    let started = std::time::Instant::now();
    let remote = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let method = request.method().as_str().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let headers = request.headers().clone();
    let cap = request.extensions().get::<super::BodyLimits>().copied().unwrap_or_default().body;
    // Set when the ingress is rate limited: a network that exists is named in its metrics.
    let limiter = request.extensions().get::<std::sync::Arc<super::IngressLimiter>>().cloned();
    let body = match axum::body::to_bytes(request.into_body(), cap).await {
        Ok(b) => b,
        Err(_) => {
            let e = ApiError::too_large((cap, "http.max_body_bytes"));
            observe_refusal(&network, &e, started);
            return e.into_response();
        }
    };
    // A postback parsed by an adapter that was swapped before its write is parsed again
    // by the new one (see `catalog`): rare, and bounded.
    let mut handled =
        handle_postback(&st, &network, &method, &query, &headers, &body, remote, limiter.as_deref()).await;
    for _ in 0..2 {
        match &handled {
            Err(e) if e.code == STALE => {
                handled =
                    handle_postback(&st, &network, &method, &query, &headers, &body, remote, limiter.as_deref()).await
            }
            _ => break,
        }
    }
    match handled {
        Ok(results) => {
            crate::metrics::postback(&network, "accepted", started.elapsed());
            (StatusCode::OK, axum::Json(serde_json::json!({ "results": results }))).into_response()
        }
        Err(e) => {
            observe_refusal(&network, &e, started);
            if e.status().is_client_error() || e.status() == StatusCode::SERVICE_UNAVAILABLE {
                let reject = Reject {
                    network_id: network.clone(),
                    received_at: st.service.now(),
                    method,
                    query: ingest::strip_secret_params(&query),
                    body: String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned(),
                    remote_addr: remote.map(|ip| ip.to_string()),
                    status: i64::from(e.status().as_u16()),
                    reason: e.message().to_string(),
                };
                if let Err(db) = ingest::record_reject(st.service.db(), &reject).await {
                    tracing::error!(error = %db, "cannot record a refused postback");
                }
                tracing::info!(network, status = e.status().as_u16(), reason = e.message(), "postback refused");
            }
            e.into_response()
        }
    }
}

/// Counts a postback that was not accepted. Its network is a label only once known to
/// exist: the path is the sender's to choose, and a label per invented name would grow
/// without bound.
fn observe_refusal(network: &str, e: &ApiError, started: std::time::Instant) {
    // Refused before the network was looked up, or because it does not exist.
    let unknown = matches!(e.code, "unknown_network" | "too_large") || e.message.starts_with("cannot read the network");
    let network = if unknown { "unknown" } else { network };
    let outcome = match e.code {
        "unauthorized" => "refused",
        _ if e.status.is_client_error() => "rejected",
        _ => "failed",
    };
    crate::metrics::postback(network, outcome, started.elapsed());
    // The service counts each event it is given (invalid ones and storage failures too);
    // a postback refused before any event counts once here.
    if outcome != "failed" && e.code != "invalid_event" {
        crate::metrics::ingest_event(network, "postback", outcome);
    }
}

/// The code of a postback whose network changed while it was handled.
const STALE: &str = "stale_config";

#[allow(clippy::too_many_arguments)]
async fn handle_postback(
    st: &AppState,
    network_id: &str,
    method: &str,
    query: &str,
    headers: &HeaderMap,
    body: &Bytes,
    remote: Option<std::net::IpAddr>,
    limiter: Option<&super::IngressLimiter>,
) -> Result<Vec<serde_json::Value>, ApiError> {
    let tagged = st
        .service
        .catalog()
        .network(st.service.db(), network_id)
        .await
        .map_err(|e| ApiError::unavailable("cannot read the network", &e))?;
    let network = tagged
        .value
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown_network", format!("no network {network_id:?}")))?;
    if let Some(limiter) = limiter {
        limiter.note_network(&network.id);
    }
    {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let inbound = Inbound { method, query, header: &header, body, remote };
        ingest::authenticate(&network.auth, &inbound)
            .map_err(|why| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why))?;
    }

    check_encoding(query, headers, body)?;

    let digest = network
        .adapter_digest
        .clone()
        .ok_or_else(|| ApiError::unavailable_because("the network has no adapter configured", network_id))?;
    let plugin =
        st.service.plugin(&digest).await.map_err(|e| ApiError::unavailable("cannot load the network's adapter", &e))?;
    let config = plugin
        .manifest
        .validate_config(&network.adapter_config)
        .map_err(|e| ApiError::unavailable("the network's adapter configuration is invalid", &e))?;
    let request = latest::PostbackRequest {
        method: method.to_string(),
        path: String::new(),
        query: ingest::strip_secret_params(query),
        headers: headers
            .iter()
            .filter(|(k, _)| {
                !matches!(k.as_str(), "x-cashbackd-token" | "x-cashbackd-signature" | "authorization" | "cookie")
            })
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: body.to_vec(),
        received_at: st.service.now(),
    };
    let runtime = st.runtime.clone();
    let outcome = tokio::task::spawn_blocking(move || runtime.parse_postback(&plugin, &config, &request).result)
        .await
        .map_err(|e| ApiError::unavailable("the adapter call failed", &e))?;
    let events = match outcome {
        Ok(events) => events,
        Err(CallError::Plugin { error: PluginError::InvalidInput(why), .. }) => {
            return Err(ApiError::bad_request("invalid_postback", why));
        }
        // The adapter or its configuration is broken: the network should retry after the fix.
        Err(e) => return Err(ApiError::unavailable("the network's adapter failed", &e)),
    };
    // Every event is checked before any is recorded: a refused postback stores nothing.
    let events = events
        .into_iter()
        .map(|event| boundary::adopt_event(&network.id, event))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
    let mut results = Vec::with_capacity(events.len());
    for event in events {
        match st.service.ingest_parsed(event, Via::Postback, Some(tagged.version)).await {
            Ok(outcome) => results.push(describe(&outcome)),
            Err(ServiceError::Apply(ApplyError::StaleConfig { .. })) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    STALE,
                    "the network's configuration changed while the postback was handled; send it again",
                ));
            }
            Err(ServiceError::Apply(ApplyError::Invalid(why)) | ServiceError::Invalid(why)) => {
                return Err(ApiError::bad_request("invalid_event", why));
            }
            Err(e) => return Err(ApiError::unavailable("cannot record the postback", &e)),
        }
    }
    Ok(results)
}

/// The query string, and a body sent as `application/x-www-form-urlencoded`, must be UTF-8
/// once percent-decoded, whichever adapter reads them: `tid=A%FF%FE` was stored as
/// `A\u{FFFD}\u{FFFD}`, the same as `tid=A%FE%FF`, so two conversions became one. Refused
/// here, before the adapter, with the same answer for the query and the body.
fn check_encoding(query: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    let refuse = |why: String| ApiError::bad_request("invalid_encoding", why);
    input::form_pairs(query).map_err(|why| refuse(format!("query string: {why}")))?;
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if form {
        let text = std::str::from_utf8(body).map_err(|_| refuse("form body: not UTF-8".into()))?;
        input::form_pairs(text).map_err(|why| refuse(format!("form body: {why}")))?;
    }
    Ok(())
}

fn describe(outcome: &Outcome) -> serde_json::Value {
    serde_json::to_value(outcome).unwrap_or_default()
}
