//! The admin API as a whole: every route is in the OpenAPI document and refuses a caller
//! without a token, the document validates, the resources answer, and `Idempotency-Key`
//! replays a write instead of repeating it.

use crate::backends;
use crate::ledger::{event, world};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cashbackd::auth::{self, Scope};
use cashbackd::http::openapi::{ROUTES, document};
use cashbackd::plugin::wit::latest::ConversionState::Pending;
use serde_json::{Value, json};
use tower::ServiceExt;

/// (method, path) of every `.route("/api/v1...", ...)` in the HTTP modules' source.
fn routes_in_source() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("src/http") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("source");
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(\"/api/v1") {
            let call = &rest[at + ".route(".len()..];
            // The call's arguments: up to the parenthesis that closes `.route(`.
            let (mut depth, mut end) = (1, 0);
            for (i, c) in call.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = i;
                    break;
                }
            }
            let args = &call[..end];
            let path = args[1..].split('"').next().unwrap_or_default().to_string();
            let handlers = &args[path.len() + 2..];
            for method in ["get", "post", "put", "delete"] {
                let mut h = handlers;
                while let Some(i) = h.find(&format!("{method}(")) {
                    let before = h[..i].chars().last();
                    if before.is_none_or(|c| !c.is_alphanumeric() && c != '_') {
                        found.push((method.to_uppercase(), path.clone()));
                        break;
                    }
                    h = &h[i + 1..];
                }
            }
            rest = &call[end..];
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn the_openapi_document_lists_every_admin_route_of_the_routers() {
    let in_source = routes_in_source();
    assert!(in_source.len() >= 30, "the scan found the routes: {in_source:?}");
    let listed: Vec<(String, String)> = ROUTES.iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
    for route in &in_source {
        assert!(listed.contains(route), "{route:?} is served but missing from http/openapi.rs ROUTES");
    }
    for route in &listed {
        assert!(in_source.contains(route), "{route:?} is documented but no router serves it");
    }
    let doc = serde_json::to_value(document()).expect("json");
    for r in ROUTES {
        assert!(doc["paths"][r.path][r.method.to_lowercase()].is_object(), "{} {} in the document", r.method, r.path);
    }
}

/// Every success answer of the admin API has a typed schema (issue 16, point 1): a `$ref`
/// to a component with properties (or a `oneOf`/`allOf` of such), never a free-form
/// object; a 204 has no body. The schemas come from the types the handlers return, and
/// the contract test (schemathesis, `contract.rs`) checks the live bodies against them.
/// Every `$ref` in the document resolves.
#[test]
fn every_success_answer_in_the_openapi_document_has_a_typed_schema() {
    let doc = serde_json::to_value(document()).expect("json");
    let schemas = doc["components"]["schemas"].as_object().expect("components").clone();
    let typed = |s: &Value| -> bool {
        s["properties"].as_object().is_some_and(|p| !p.is_empty())
            || ["oneOf", "allOf", "anyOf"].iter().any(|k| s[*k].as_array().is_some_and(|a| !a.is_empty()))
    };
    let mut untyped = Vec::new();
    for r in ROUTES {
        let op = &doc["paths"][r.path][r.method.to_lowercase()];
        let responses = op["responses"].as_object().expect("responses");
        let successes: Vec<_> = responses.iter().filter(|(status, _)| status.starts_with('2')).collect();
        assert!(!successes.is_empty(), "{} {} has no success answer", r.method, r.path);
        for (status, response) in successes {
            if status == "204" {
                assert!(response.get("content").is_none(), "{} {}: a 204 has no body", r.method, r.path);
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"];
            let resolved = match schema["$ref"].as_str() {
                Some(to) => {
                    let name = to.strip_prefix("#/components/schemas/").expect("a component");
                    schemas.get(name).unwrap_or_else(|| panic!("{to} is not in the document"))
                }
                None => schema,
            };
            if !typed(resolved) {
                untyped.push(format!("{} {} {status}: {resolved}", r.method, r.path));
            }
        }
    }
    assert!(untyped.is_empty(), "success answers without a typed schema: {untyped:#?}");
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 50, "the walk found the references: {}", all.len());
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r}: not a schema reference"));
        assert!(schemas.contains_key(name), "{r} does not resolve");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_validates_and_every_admin_route_refuses_a_caller_without_a_token() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let app = crate::common::app(&w.service);
        for r in ROUTES {
            let uri = r.path.replace('{', "x").replace('}', "");
            let request = Request::builder().method(r.method).uri(&uri).body(Body::empty()).expect("request");
            let status = app.clone().oneshot(request).await.expect("response").status();
            match r.scope {
                Some(_) => assert_eq!(status, StatusCode::UNAUTHORIZED, "{} {uri} without a token", r.method),
                None => assert_eq!(status, StatusCode::OK, "{} {uri} is public", r.method),
            }
        }
        // The served document is the document, and it validates against the OpenAPI schema
        // (openapi-spec-validator, which .ci/run installs).
        let request = Request::get("/api/v1/openapi.json").body(Body::empty()).expect("request");
        let body = axum::body::to_bytes(app.clone().oneshot(request).await.expect("doc").into_body(), 1 << 22)
            .await
            .expect("body");
        let served: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(served, serde_json::to_value(document()).expect("json"));
        assert_eq!(served["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let file = tempfile::NamedTempFile::with_suffix(".json").expect("temp");
        std::fs::write(file.path(), &body).expect("write");
        let out =
            std::process::Command::new("python3").args(["-m", "openapi_spec_validator"]).arg(file.path()).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o)
                if String::from_utf8_lossy(&o.stderr).contains("No module named")
                    && std::env::var_os("CI").is_none() =>
            {
                crate::common::skip(
                    "the OpenAPI validation",
                    "no openapi-spec-validator (pip install openapi-spec-validator)",
                );
            }
            Ok(o) => panic!(
                "openapi-spec-validator refused the document:\n{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("python3: {e}"),
        }
        t.cleanup().await;
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: &str,
    key: Option<&str>,
    body: Value,
) -> (StatusCode, bool, Value) {
    let mut r = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    if let Some(k) = key {
        r = r.header("idempotency-key", k);
    }
    let body = if body.is_null() { Body::empty() } else { Body::from(body.to_string()) };
    let response = app.clone().oneshot(r.body(body).expect("request")).await.expect("response");
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await.expect("body");
    (status, replayed, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_resources_answer_and_an_idempotency_key_replays_a_write_instead_of_repeating_it() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let s = &w.service;
        let app = crate::common::app(s);
        let admin = auth::create_token(s.db(), "ops", Scope::Admin, s.now(), None).await.expect("token");
        let read = auth::create_token(s.db(), "viewer", Scope::Read, s.now(), None).await.expect("token");

        // A manual-mode merchant through the API, with a key: the retry is a replay.
        let body = json!({"name": "Manual Shop", "manual_review": true, "reward_delay_days": 14});
        let (status, replayed, first) =
            call(&app, "PUT", "/api/v1/merchants/shop", &admin, Some("k-1"), body.clone()).await;
        assert_eq!((status, replayed), (StatusCode::OK, false), "{}: {first}", t.name);
        assert_eq!(first["processing_mode"], "manual");
        let (status, replayed, again) = call(&app, "PUT", "/api/v1/merchants/shop", &admin, Some("k-1"), body).await;
        assert_eq!((status, replayed), (StatusCode::OK, true));
        assert_eq!(again, first);
        let other = json!({"name": "Another"});
        let (status, _, refused) = call(&app, "PUT", "/api/v1/merchants/shop", &admin, Some("k-1"), other).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
        assert_eq!(refused["error"]["code"], "idempotency_key_reused");
        let (status, _, bad) = call(&app, "PUT", "/api/v1/merchants/shop", &admin, None, json!({"nmae": "x"})).await;
        assert!(status.is_client_error(), "unknown field refused: {status} {bad}");

        // An order lands in the review queue; approving it twice with one key acts once.
        s.ingest(event("A1", Pending, 10_000, 800)).await.expect("ingest");
        let (status, _, queue) = call(&app, "GET", "/api/v1/review", &read, None, Value::Null).await;
        assert_eq!(status, StatusCode::OK);
        let id = queue["queue"][0]["id"].as_str().expect("queued").to_string();
        let approve = json!({"action": "approve", "operator": "alice", "reason": "looks fine"});
        let uri = format!("/api/v1/conversions/{id}/review");
        let (status, _, _) = call(&app, "POST", &uri, &read, Some("r-1"), approve.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "a read token cannot review");
        let (status, replayed, done) = call(&app, "POST", &uri, &admin, Some("r-1"), approve.clone()).await;
        assert_eq!((status, replayed), (StatusCode::OK, false), "{done}");
        let (status, replayed, twice) = call(&app, "POST", &uri, &admin, Some("r-1"), approve.clone()).await;
        assert_eq!((status, replayed, &twice), (StatusCode::OK, true, &done));
        let (status, _, without_key) = call(&app, "POST", &uri, &admin, None, approve).await;
        // The conversion is no longer awaiting review: its state refuses it (409).
        assert_eq!(status, StatusCode::CONFLICT, "without a key the second approval is refused: {without_key}");

        // Timeline, search, balances, jobs.
        let (status, _, timeline) =
            call(&app, "GET", &format!("/api/v1/conversions/{id}"), &read, None, Value::Null).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(timeline["conversion"]["status"], "processed");
        assert!(timeline["stages"]["rule_at"].is_i64() && timeline["stages"]["ledger_at"].is_i64(), "{timeline}");
        assert!(timeline["history"].as_array().is_some_and(|h| h.len() >= 2), "{timeline}");
        assert_eq!(timeline["postings"][0]["plugin_name"], "flat-rate");
        let (_, _, found) = call(&app, "GET", "/api/v1/conversions?transaction=A1", &read, None, Value::Null).await;
        assert_eq!(found["conversions"].as_array().map(Vec::len), Some(1));
        let (status, _, _) = call(&app, "GET", "/api/v1/conversions?status=nonsense", &read, None, Value::Null).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (_, _, balances) = call(&app, "GET", "/api/v1/balances?user=u1", &read, None, Value::Null).await;
        assert!(
            balances["balances"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["kind"] == "pending" && b["balance"] == 1_000))
        );
        cashbackd::scheduler::ensure_system_jobs(s).await.expect("jobs");
        let (_, _, jobs) = call(&app, "GET", "/api/v1/jobs", &read, None, Value::Null).await;
        assert!(jobs["jobs"].as_array().is_some_and(|j| !j.is_empty()), "{jobs}");
        let (status, _, run) = call(&app, "POST", "/api/v1/jobs/mature/run", &admin, None, Value::Null).await;
        assert_eq!(status, StatusCode::OK, "{run}");

        // A partner and a signed POST endpoint; the secret never comes back.
        let (status, _, _) = call(&app, "PUT", "/api/v1/partners/p1", &admin, None, json!({"name": "Partner"})).await;
        assert_eq!(status, StatusCode::OK);
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let endpoint = json!({"partner_id": "p1", "url_template": "https://partner.example/cb?s={status}",
                              "method": "POST", "secret": secret, "backoff": "exponential", "max_attempts": 5});
        let (status, _, view) = call(&app, "PUT", "/api/v1/callbacks/endpoints/e1", &admin, None, endpoint).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["retry"]["max_attempts"], 5);
        assert!(!view.to_string().contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "{view}");
        let bad = json!({"partner_id": "p1", "url_template": "https://partner.example/cb", "backoff": "sometimes"});
        let (status, _, why) = call(&app, "PUT", "/api/v1/callbacks/endpoints/e2", &admin, None, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(why["error"]["message"].as_str().is_some_and(|m| m.starts_with("backoff")), "{why}");

        // A network's inbound secret never comes back.
        let put = json!({"name": "Net", "auth": "token", "secret": "s3cret-inbound"});
        let (status, _, net) = call(&app, "PUT", "/api/v1/networks/net2", &admin, None, put).await;
        assert_eq!(status, StatusCode::OK, "{net}");
        let (_, _, listed) = call(&app, "GET", "/api/v1/networks", &read, None, Value::Null).await;
        assert!(!listed.to_string().contains("s3cret-inbound") && !net.to_string().contains("s3cret-inbound"));
        t.cleanup().await;
    }
}
