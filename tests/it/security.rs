//! Security (issue 8): the public ingress is rate-limited per client address and per
//! network with a clear 429; request bodies are capped with a 413 that says which cap;
//! outbound calls (plugins' `http.fetch` and partner callbacks) cannot reach private
//! addresses unless allowed, not by a literal, a name or a redirect; the admin API
//! refuses missing, wrong, expired, revoked and under-scoped tokens on every route; and a
//! plugin cannot read another plugin's configuration, secrets or leftover memory.

use crate::backends;
use crate::callbacks::{add_endpoint, deliverer};
use crate::common::*;
use crate::ingress::send;
use crate::ledger::world;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cashbackd::auth::{self, Scope};
use cashbackd::callbacks::EndpointSpec;
use cashbackd::config::{IngressSettings, NetworkRateSettings, Settings};
use cashbackd::conversions::rules::{Link, RuleInputs, run_chain};
use cashbackd::http::{BodyLimits, HttpConfig, IngressLimiter};
use cashbackd::ingest::InboundAuth;
use cashbackd::plugin::wit::latest::ImportRequest;
use cashbackd::plugin::{CallError, LimitsOverride, PluginRuntime, RuntimeConfig};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---- servers ----------------------------------------------------------------------------

/// A router served on 127.0.0.1 with connect info (the peer address the limits key on).
async fn serve(app: Router) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cashbackd::http::serve_router(app, listener, async {
        let _ = stopped.await;
    }));
    (base, stop)
}

/// What a fake server on 127.0.0.1 received: path and query, and the headers.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    headers: String,
}

/// A fake outside server: `/echo` answers the `Authorization` it got, `/redirect?to=URL`
/// answers 302 to URL, `/v1/transactions` an empty page of the reference API (with a
/// marker in it, for the leftover-memory check), anything else `ok`. It records every
/// request.
async fn fake_server(page_marker: &str) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let (log, marker) = (seen.clone(), page_marker.to_string());
    let app = Router::new().fallback(move |req: Request<Body>| {
        let (log, marker) = (log.clone(), marker.clone());
        async move {
            use axum::response::IntoResponse;
            let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            let headers = format!("{:?}", req.headers());
            log.lock().expect("lock").push(Seen { target: target.clone(), headers });
            let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            match req.uri().path() {
                "/echo" => (StatusCode::OK, format!("auth={auth}")).into_response(),
                "/redirect" => {
                    let to = req.uri().query().and_then(|q| q.strip_prefix("to=")).unwrap_or("/").to_string();
                    (StatusCode::FOUND, [("location", to)], "moved").into_response()
                }
                "/v1/transactions" => {
                    axum::Json(json!({"transactions": [], "next_cursor": null, "note": marker})).into_response()
                }
                _ => (StatusCode::OK, "ok").into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

fn marker(what: &str) -> String {
    format!("XSECRET-{what}-{:016x}", rand::random::<u64>())
}

// ---- rate limits ------------------------------------------------------------------------

fn limits(edit: impl FnOnce(&mut IngressSettings)) -> HttpConfig {
    let mut s = Settings::default().ingress;
    edit(&mut s);
    HttpConfig { bodies: BodyLimits::default(), ingress: IngressLimiter::from_settings(&s), ..Default::default() }
}

/// Sends `n` requests one after the other; the answers' statuses, the first 429's
/// `Retry-After` and body, and how long the burst took.
async fn burst(
    client: &reqwest::Client,
    n: usize,
    url: &str,
    xff: Option<&str>,
) -> (Vec<u16>, Option<(u64, Value)>, Duration) {
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..n {
        let mut request = client.get(url);
        if let Some(xff) = xff {
            request = request.header("x-forwarded-for", xff);
        }
        let response = request.send().await.expect("answer");
        let status = response.status().as_u16();
        if status == 429 && refused.is_none() {
            let retry = response.headers()["retry-after"].to_str().expect("ascii").parse::<u64>().expect("seconds");
            refused = Some((retry, json_of(response).await));
        }
        statuses.push(status);
    }
    (statuses, refused, started.elapsed())
}

async fn json_of(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Exactly the burst passes, give or take what refilled while the requests ran.
fn assert_burst_then_429(statuses: &[u16], ok: u16, burst: usize, rate: u64, took: Duration) {
    let passed = statuses.iter().filter(|s| **s == ok).count();
    let refilled = (took.as_secs_f64() * rate as f64).ceil() as usize;
    assert!(statuses[..burst].iter().all(|s| *s == ok), "the first {burst} pass: {statuses:?}");
    assert!(
        passed <= burst + refilled,
        "{passed} passed in {took:?} at {rate}/s after a burst of {burst}: {statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == ok || *s == 429), "{statuses:?}");
}

fn rejects(rows: &[(String,)], network: &str) -> usize {
    rows.iter().filter(|(n,)| n == network).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_is_rate_limited_per_client_address_and_per_network_with_a_clear_429_and_no_database_write() {
    cashbackd::metrics::install();
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let _ = crate::ingress::app(&w, InboundAuth::None).await; // network `net`, link `shoe-sale`
        let state = w.service.clone();
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");

        // Clicks: a burst of 3 per client address at 1 per second.
        let config = limits(|s| {
            s.click_rate_per_address = 1;
            s.click_burst_per_address = 3;
            s.trusted_proxies = vec!["127.0.0.1".into()];
        });
        let (base, _stop) = serve(with_limits(&state, config)).await;
        let click = format!("{base}/c/shoe-sale?user=u1");
        let (statuses, refused, took) = burst(&client, 8, &click, None).await;
        assert_burst_then_429(&statuses, 302, 3, 1, took);
        let (retry_after, body) = refused.expect("a 429");
        assert!(retry_after >= 1, "Retry-After in whole seconds");
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains("too many clicks from this client address"), "{message}");
        assert!(message.contains("at most 1 per second (bursts of 3)"), "which limit and its rate: {message}");
        assert!(message.contains("ingress.click_rate_per_address"), "the setting: {message}");
        // From a trusted proxy, each forwarded client has its own bucket.
        let (statuses, _, _) = burst(&client, 3, &click, Some("198.51.100.7, 127.0.0.1")).await;
        assert_eq!(statuses, vec![302, 302, 302], "another client behind the proxy");

        // Nothing trusted: X-Forwarded-For is never believed, a spoofed address gains nothing.
        let config = limits(|s| {
            s.click_rate_per_address = 1;
            s.click_burst_per_address = 2;
            s.trusted_proxies = Vec::new();
        });
        let (base, _stop2) = serve(with_limits(&state, config)).await;
        let click = format!("{base}/c/shoe-sale?user=u1");
        let mut statuses = Vec::new();
        for i in 0..6 {
            let (s, _, _) = burst(&client, 1, &click, Some(&format!("203.0.113.{i}"))).await;
            statuses.extend(s);
        }
        assert_eq!(&statuses[..2], &[302, 302], "{statuses:?}");
        assert!(statuses[2..].contains(&429), "a forged X-Forwarded-For is ignored: {statuses:?}");

        // Postbacks: a burst of 2 per network at 1 per second; an address limit far above.
        let config = limits(|s| {
            s.postback_rate_per_network = 1;
            s.postback_burst_per_network = 2;
        });
        let (base, _stop3) = serve(with_limits(&state, config)).await;
        let pb =
            |tid: &str| format!("{base}/postback/net?tid={tid}&subid=c1&amount=10.00&comm=1.00&cur=EUR&status=pending");
        let started = Instant::now();
        let mut statuses = Vec::new();
        let mut refused = None;
        for i in 0..6 {
            let response = client.get(pb(&format!("RL-{i}"))).send().await.expect("answer");
            statuses.push(response.status().as_u16());
            if response.status() == 429 && refused.is_none() {
                refused = Some(json_of(response).await);
            }
        }
        assert_burst_then_429(&statuses, 200, 2, 1, started.elapsed());
        let message = refused.expect("429")["error"]["message"].as_str().expect("message").to_string();
        assert!(message.contains(r#"too many postbacks for network "net""#), "{message}");
        assert!(message.contains("ingress.postback_rate_per_network"), "{message}");
        let recorded: Vec<(String,)> = sqlx::query_as(
            "SELECT transaction_id FROM conversions WHERE network_id = 'net' AND transaction_id LIKE 'RL-%'",
        )
        .fetch_all(&w.service.db().pool)
        .await
        .expect("conversions");
        assert_eq!(recorded.len(), statuses.iter().filter(|s| **s == 200).count(), "a 429 recorded nothing");

        // A flood at a network that does not exist: refused 404s go to the rejects log, the
        // throttled ones do not (a flood must not become database writes).
        let before: Vec<(String,)> = sqlx::query_as("SELECT network_id FROM postback_rejects")
            .fetch_all(&w.service.db().pool)
            .await
            .expect("rejects");
        let (statuses, _, _) = burst(&client, 8, &format!("{base}/postback/no-such-net?tid=X"), None).await;
        let not_found = statuses.iter().filter(|s| **s == 404).count();
        assert!(not_found >= 2 && statuses.contains(&429), "{statuses:?}");
        let after: Vec<(String,)> = sqlx::query_as("SELECT network_id FROM postback_rejects")
            .fetch_all(&w.service.db().pool)
            .await
            .expect("rejects");
        assert_eq!(
            rejects(&after, "no-such-net") - rejects(&before, "no-such-net"),
            not_found,
            "only the 404s are logged"
        );

        // Counted, with bounded labels: a network that exists by name, any other `unknown`.
        let metrics = cashbackd::metrics::handle().expect("recorder").render();
        for series in [
            r#"cashbackd_ingress_throttled_total{route="click",limit="address",network="none"}"#,
            r#"cashbackd_ingress_throttled_total{route="postback",limit="network",network="net"}"#,
            r#"cashbackd_ingress_throttled_total{route="postback",limit="network",network="unknown"}"#,
        ] {
            assert!(metrics.contains(series), "{series} in:\n{metrics}");
        }
        assert!(!metrics.contains(r#"network="no-such-net""#), "a name a sender invents is never a label");

        // Off: nothing is throttled.
        let (base, _stop4) = serve(with_limits(&state, limits(|s| s.rate_limit = false))).await;
        let (statuses, _, _) = burst(&client, 120, &format!("{base}/c/no-such-link?user=u1"), None).await;
        assert!(statuses.iter().all(|s| *s == 404), "rate_limit = false: {statuses:?}");
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_with_limits_of_its_own_is_limited_by_them() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let _ = crate::ingress::app(&w, InboundAuth::None).await;
        let state = w.service.clone();
        let config = limits(|s| {
            s.postback_rate_per_network = 1;
            s.postback_burst_per_network = 1;
            s.networks.insert("net".into(), NetworkRateSettings { postback_rate: 0, postback_burst: 0 });
        });
        let (base, _stop) = serve(with_limits(&state, config)).await;
        let client = reqwest::Client::new();
        let (statuses, _, _) = burst(&client, 10, &format!("{base}/postback/net?tid=OWN"), None).await;
        assert!(statuses.iter().all(|s| *s != 429), "net's own limit is none: {statuses:?}");
        let (statuses, _, _) = burst(&client, 3, &format!("{base}/postback/other?tid=X"), None).await;
        assert!(statuses.contains(&429), "the others keep the default: {statuses:?}");
        t.cleanup().await;
    }
}

// ---- body caps --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_with_the_cap_and_its_setting_on_ingress_the_admin_api_and_uploads() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let _ = crate::ingress::app(&w, InboundAuth::None).await;
        let s = &w.service;
        let admin = auth::create_token(s.db(), "ops", Scope::Admin, s.now(), None).await.expect("token");
        let bodies = BodyLimits { body: 2048, import: 8192, plugin: 16384 };
        let app =
            crate::common::server(s).with_http(HttpConfig { bodies, ingress: None, ..Default::default() }).router();
        let request = |method: &str, uri: &str, token: Option<&str>, size: usize, key: Option<&str>| {
            let mut r = Request::builder().method(method).uri(uri).header("content-type", "application/json");
            if let Some(token) = token {
                r = r.header("authorization", format!("Bearer {token}"));
            }
            if let Some(key) = key {
                r = r.header("idempotency-key", key);
            }
            let mut body = format!("{{\"pad\": \"{}\"}}", "x".repeat(size));
            body.truncate(size.max(16));
            r.body(Body::from(body)).expect("request")
        };
        let too_large = |(status, _, body): (StatusCode, Option<String>, String), setting: &str, cap: usize| {
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("a JSON reason: {body}"));
            assert_eq!(v["error"]["code"], "too_large", "{body}");
            let message = v["error"]["message"].as_str().expect("message");
            assert!(message.contains(&format!("over {cap} bytes")) && message.contains(setting), "{message}");
        };
        let admin = Some(admin.as_str());
        // Ingress.
        too_large(send(&app, request("POST", "/postback/net", None, 3000, None)).await, "http.max_body_bytes", 2048);
        // The admin API: its JSON routes, with or without an Idempotency-Key.
        for key in [None, Some("k-1")] {
            let r = request("PUT", "/api/v1/merchants/big", admin, 3000, key);
            too_large(send(&app, r).await, "http.max_body_bytes", 2048);
        }
        // ...but the token first: without one, nothing is read.
        let (status, _, _) = send(&app, request("PUT", "/api/v1/merchants/big", None, 3000, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // The dashboard's forms.
        let form = Request::post("/dashboard/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={}", "x".repeat(3000))))
            .expect("request");
        let (status, _, body) = send(&app, form).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        // Uploads have their own caps: over the body cap is fine, over theirs is not.
        let import = "/api/v1/networks/net/imports?name=r.csv";
        let (status, _, body) = send(&app, request("POST", import, admin, 4000, None)).await;
        assert_ne!(status, StatusCode::PAYLOAD_TOO_LARGE, "under the import cap: {body}");
        too_large(send(&app, request("POST", import, admin, 9000, None)).await, "http.max_import_bytes", 8192);
        too_large(send(&app, request("POST", import, admin, 9000, Some("k-2"))).await, "http.max_import_bytes", 8192);
        let (status, _, body) = send(&app, request("POST", "/api/v1/plugins", admin, 10_000, None)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "under the plugin cap, and not a component: {body}");
        too_large(
            send(&app, request("POST", "/api/v1/plugins", admin, 17_000, None)).await,
            "http.max_plugin_bytes",
            16384,
        );
        t.cleanup().await;
    }
}

// ---- outbound: private addresses ----------------------------------------------------------

/// A runtime whose adapters may not reach private addresses (the default).
fn strict_runtime() -> PluginRuntime {
    let mut cfg = RuntimeConfig::new(shared_store());
    cfg.overrides
        .insert("hostile-adapter".into(), LimitsOverride { max_http_requests: Some(16), ..Default::default() });
    PluginRuntime::new(cfg).expect("runtime")
}

fn import_with(runtime: &PluginRuntime, crate_name: &str, config: Value) -> Result<String, CallError> {
    let plugin = runtime.load(&plugin_bytes(WASIP2, crate_name)).expect("load");
    let cfg = plugin.manifest.validate_config(&config).expect("config");
    let request = ImportRequest { window_start: 0, window_end: 1, cursor: None };
    runtime.import_page(&plugin, &cfg, &request).result.map(|p| p.next_cursor.unwrap_or_default())
}

fn expect_denied(result: Result<String, CallError>, what: &str) -> String {
    match result {
        Err(e @ CallError::Denied { .. }) => {
            let message = e.to_string();
            assert!(message.contains(what), "{message}");
            message
        }
        other => panic!("expected a denial ({what}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_reach_a_private_address_by_literal_by_name_or_by_redirect_unless_allowed() {
    let (base, seen) = fake_server("-").await;
    let port = base.rsplit(':').next().expect("port").to_string();
    let strict = strict_runtime();
    // A literal private address (declared by the manifest) is refused before sending.
    let url = format!("{base}/echo");
    let message = tokio::task::block_in_place(|| {
        expect_denied(
            import_with(&strict, "hostile_adapter", json!({"mode": "fetch", "url": url, "api_key": "k"})),
            "127.0.0.1",
        )
    });
    assert!(
        message.contains("private, loopback or link-local") && message.contains("plugin.http_allow_private"),
        "{message}"
    );
    // Other private ranges, through an operator-configured host (json-api's base_url).
    for url in ["http://10.1.2.3:9/v1", "http://169.254.169.254/latest", "http://[::1]:9/v1", "http://2130706433:9/v1"]
    {
        tokio::task::block_in_place(|| {
            expect_denied(import_with(&strict, "json_api", json!({"base_url": url, "api_key": "k"})), "private")
        });
    }
    // A name that resolves to loopback: refused when it is resolved.
    let by_name = format!("http://localhost:{port}/v1");
    tokio::task::block_in_place(|| {
        expect_denied(
            import_with(&strict, "json_api", json!({"base_url": by_name, "api_key": "k"})),
            "localhost resolves only to private, loopback or link-local addresses",
        )
    });
    assert!(seen.lock().expect("lock").is_empty(), "nothing reached the private server: {:?}", seen.lock());

    // Allowed by the operator: the same requests go through (the shared runtime allows).
    let cursor = tokio::task::block_in_place(|| {
        import_with(
            runtime(),
            "hostile_adapter",
            json!({"mode": "fetch", "url": format!("{base}/echo"), "api_key": "k"}),
        )
    })
    .expect("allowed");
    assert_eq!(cursor, "200 auth=Bearer k");
    tokio::task::block_in_place(|| import_with(runtime(), "json_api", json!({"base_url": by_name, "api_key": "k"})))
        .expect("a name resolving to loopback, allowed");

    // A redirect is never followed: not to a private address, not anywhere. The plugin
    // gets the 302 itself; the target never hears of it.
    let (canary, canary_seen) = fake_server("-").await;
    let redirect = format!("{base}/redirect?to={canary}/steal");
    let cursor = tokio::task::block_in_place(|| {
        import_with(runtime(), "hostile_adapter", json!({"mode": "fetch", "url": redirect, "api_key": "k"}))
    })
    .expect("answered");
    assert!(cursor.starts_with("302 "), "{cursor}");
    let redirect = format!("{base}/redirect?to=http://169.254.169.254/latest/meta-data");
    let cursor = tokio::task::block_in_place(|| {
        import_with(runtime(), "hostile_adapter", json!({"mode": "fetch", "url": redirect, "api_key": "k"}))
    })
    .expect("answered");
    assert!(cursor.starts_with("302 "), "{cursor}");
    assert!(canary_seen.lock().expect("lock").is_empty(), "the redirect was not followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_redirected_to_a_private_address_is_not_followed() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let (base, _) = fake_server("-").await;
        let (canary, canary_seen) = fake_server("-").await;
        for (id, to) in [("to-loopback", format!("{canary}/steal")), ("to-metadata", "http://169.254.169.254/".into())]
        {
            add_endpoint(&w, EndpointSpec::new(id, "p1", &format!("{base}/redirect?to={to}"))).await;
            // Allowed to reach the first hop (loopback here), so only the redirect is at stake.
            let report = deliverer(&w, "redirects").test(id).await.expect("tester");
            assert!(!report.delivered, "a 302 is not delivered: {report:?}");
            assert_eq!(report.response.as_ref().map(|r| r.status), Some(302), "{report:?}");
        }
        assert!(canary_seen.lock().expect("lock").is_empty(), "the redirects were not followed");
        t.cleanup().await;
    }
}

// ---- tokens -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_refuses_wrong_expired_revoked_and_under_scoped_tokens() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let s = &w.service;
        let now = s.now();
        let token = |name: &'static str, scope, expires| {
            let s = s.clone();
            async move { auth::create_token(s.db(), name, scope, now, expires).await.expect("token") }
        };
        let read = token("viewer", Scope::Read, None).await;
        let write = token("ops", Scope::Write, None).await;
        let expired = token("old", Scope::Admin, Some(now + 1000)).await;
        let revoked = token("gone", Scope::Admin, None).await;
        let revoked_id =
            format!("tok_{}", &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(revoked.as_bytes()))[..12]);
        assert!(auth::revoke(s.db(), &revoked_id, now).await.expect("revoke"));
        w.clock.advance(2000);
        let wrong = "cbk_00000000000000000000000000000000000000000000000000000000000000ff";
        let app = crate::common::app(s);
        let mut checked = 0;
        for r in cashbackd::http::openapi::ROUTES {
            let Some(needed) = r.scope else { continue };
            let uri = r.path.replace('{', "x").replace('}', "");
            let call = |token: Option<&str>| {
                let mut b = Request::builder().method(r.method).uri(&uri).header("content-type", "application/json");
                if let Some(token) = token {
                    b = b.header("authorization", format!("Bearer {token}"));
                }
                b.body(Body::from("{}")).expect("request")
            };
            for (token, why) in [
                (None, "missing bearer token"),
                (Some(wrong), "invalid token"),
                (Some(expired.as_str()), "token expired"),
                (Some(revoked.as_str()), "token revoked"),
            ] {
                let (status, _, body) = send(&app, call(token)).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{}: {} {uri} with {why}: {body}", t.name, r.method);
                assert!(body.contains(why), "{} {uri}: {body}", r.method);
            }
            for (token, scope) in [(&read, Scope::Read), (&write, Scope::Write)] {
                if scope < needed {
                    let (status, _, body) = send(&app, call(Some(token))).await;
                    assert_eq!(status, StatusCode::FORBIDDEN, "{}: {} {uri} as {scope:?}: {body}", t.name, r.method);
                    assert!(body.contains(&format!("needs the {} scope", needed.as_str())), "{body}");
                }
            }
            checked += 1;
        }
        assert!(checked >= 30, "every route with a scope: {checked}");
        t.cleanup().await;
    }
}

// ---- plugin isolation ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_read_another_plugins_config_secrets_or_leftover_memory() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        // The host's own admin API, with data behind it, on loopback.
        let admin =
            auth::create_token(w.service.db(), "ops", Scope::Admin, w.service.now(), None).await.expect("token");
        let (api, _stop) = serve(crate::common::app(&w.service)).await;

        let secret_b = marker("network-b-api-key");
        let config_b = marker("network-b-config");
        let page_b = marker("network-b-page");
        let rule_config = marker("rule-config");
        let (base, seen) = fake_server(&page_b).await;

        // One process, one call slot: every call reuses the memory the previous one had.
        let mut cfg = RuntimeConfig::new(shared_store());
        cfg.max_concurrent_calls = 1;
        cfg.http_allow_private = true; // the fake network and the admin API are on loopback
        cfg.overrides
            .insert("hostile-adapter".into(), LimitsOverride { max_http_requests: Some(16), ..Default::default() });
        let rt = PluginRuntime::new(cfg).expect("runtime");

        // Network B's adapter runs first, with its secret, its config and its page in memory.
        let config = json!({"base_url": format!("{base}/v1"), "api_key": secret_b, "network": config_b});
        tokio::task::block_in_place(|| import_with(&rt, "json_api", config)).expect("network B imports");
        let to_b: Vec<Seen> = seen.lock().expect("lock").clone();
        assert!(to_b.iter().any(|s| s.headers.contains(&secret_b)), "B's key went to B's host only: {to_b:?}");
        // A merchant's rules run too, with their config in memory.
        let flat = rt.load(&plugin_bytes(WASIP2, "flat_rate")).expect("flat");
        let hostile_rule = rt.load(&plugin_bytes(WASIP2, "hostile_rule")).expect("hostile rule");
        let rule_b = rt.load(&plugin_bytes(WASIP2, "rate_table")).expect("rate table");
        let inputs = RuleInputs { order: order("o-1", vec![line("l1", "books", 10_000)]), now: 0, prior_orders: 0 };
        let chain = vec![
            Link {
                plugin: rule_b.clone(),
                config: json!({"default_bps": 100, "excluded_skus": [rule_config]}).to_string(),
            },
            Link { plugin: flat.clone(), config: json!({"rate_bps": 200, "excluded_skus": [rule_config]}).to_string() },
            Link {
                plugin: hostile_rule.clone(),
                config:
                    json!({"mode": "exfiltrate", "probe_paths": [shared_store(), t.url().trim_start_matches("sqlite://")]})
                        .to_string(),
            },
        ];
        let decision = tokio::task::block_in_place(|| run_chain(&rt, &chain, &inputs)).expect("the chain runs");
        let rule_report = decision.notes.join("\n");

        // Then the hostile adapter of network H, in the same process and slot.
        let config = json!({
            "mode": "exfiltrate",
            "url": format!("{base}/echo"),
            "api_key": "h-own-key",
            "probe_paths": [shared_store(), t.url().trim_start_matches("sqlite://"), target_dir()],
            "probe_urls": [format!("{api}/api/v1/networks"), format!("{api}/api/v1/plugins"), "https://evil.example/"],
            "probe_credentials": ["api-key", "api", "token"],
        });
        let plugin = rt.load(&plugin_bytes(WASIP2, "hostile_adapter")).expect("hostile adapter");
        let cfg = plugin.manifest.validate_config(&config).expect("config");
        let request = ImportRequest { window_start: 0, window_end: 1, cursor: None };
        let outcome = tokio::task::block_in_place(|| rt.import_page(&plugin, &cfg, &request));
        let report = outcome.result.expect("the probes ran").next_cursor.expect("report");
        let logs: Vec<String> = outcome.logs.iter().map(|l| l.message.clone()).collect();
        let from_h: Vec<Seen> = seen.lock().expect("lock").iter().skip(to_b.len()).cloned().collect();

        assert!(from_h.iter().all(|s| s.target == "/echo"), "H reached only what it asked for: {from_h:?}");
        // What each probe got: nothing that is not its own.
        for (what, expected) in [
            ("env: 0 variables", "no environment"),
            ("args: []", "no arguments"),
            ("file /: dir Err", "no file system"),
            ("file /proc/self/environ: dir Err", "not the host's environment"),
            ("401", "the admin API wants a token"),
            (r#"credential api-key at"#, "json-api's credential asked for"),
            (r#"credential \"api-key\" is not declared in the manifest"#, "...and refused"),
            ("credential api at", "its own"),
            ("auth=Bearer h-own-key", "...is its own secret"),
            (r#"\"evil.example\" is not declared"#, "an undeclared host"),
            ("memory: 0 leftovers", "its memory holds nothing of the calls before"),
        ] {
            assert!(report.contains(what), "{expected}: {what:?} not in\n{report}");
        }
        for line in report.lines().filter(|l| l.starts_with("file ")) {
            assert!(line.contains("dir Err") && line.contains("read Err"), "no file is readable: {line}");
        }
        assert!(rule_report.contains("env: []") && rule_report.contains("memory: 0 leftovers"), "{rule_report}");
        assert!(rule_report.contains("file /: dir Err"), "{rule_report}");

        // And nowhere, not in its answers, its logs or the requests it made, anything of the
        // others: not B's API key, B's config, B's page, the rules' config, or the admin token.
        let everything = [report.as_str(), &rule_report, &logs.join("\n"), &format!("{from_h:?}")].join("\n");
        for secret in [&secret_b, &config_b, &page_b, &rule_config, &admin] {
            assert!(!everything.contains(secret.as_str()), "{secret} leaked:\n{everything}");
        }
        assert!(!everything.contains("XSECRET"), "no trace of another plugin's values:\n{everything}");

        // The control: the same scan finds a marker that is in the plugin's own memory (its
        // own config), so "0 leftovers" above is a finding, not a blind scanner.
        let own = json!({"mode": "exfiltrate", "probe_paths": [marker("own-config")]});
        let plugin = hostile_rule.clone();
        let cfg = plugin.manifest.validate_config(&own).expect("config");
        let context = cashbackd::plugin::sample::context(0);
        let seen_own = tokio::task::block_in_place(|| rt.evaluate(&plugin, &cfg, &inputs.order, &context))
            .result
            .expect("runs")
            .notes
            .join("\n");
        assert!(seen_own.contains("memory now: [\"0x") && seen_own.contains("XSECRET-own-config"), "{seen_own}");
        t.cleanup().await;
    }
}

/// The server's assembly with the given ingress limits.
fn with_limits(service: &cashbackd::conversions::Service, config: HttpConfig) -> axum::Router {
    crate::common::server(service).with_http(config).router()
}
