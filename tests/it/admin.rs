//! The admin API's authentication, and report uploads through it.

use crate::backends;
use crate::common::*;
use crate::ledger::{balance, world};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cashbackd::auth::{self, Scope};
use cashbackd::ingest::{self, InboundAuth, Network};
use serde_json::json;
use tower::ServiceExt;

async fn call(app: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn upload(token: Option<&str>, body: &str) -> Request<Body> {
    let mut r = Request::post("/api/v1/networks/csv-net/imports?name=report.csv");
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.body(Body::from(body.to_string())).expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_missing_wrong_expired_revoked_and_underscoped_tokens_and_imports_an_uploaded_report() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let s = &w.service;
        let adapter =
            cashbackd::registry::upload(s, &plugin_bytes(WASIP2, "csv_report")).await.expect("adapter").plugin;
        let config = json!({"columns": {"transaction_id": "tx", "click_id": "click", "amount": "sale", "commission": "comm",
                                        "state": "status", "event_time": "date"},
                            "states": {"open": "PENDING"}, "default_currency": "EUR"});
        let network = Network {
            id: "csv-net".into(),
            name: "CSV".into(),
            adapter_digest: Some(adapter.digest.to_string()),
            adapter_config: config,
            auth: InboundAuth::None,
        };
        ingest::upsert_network(s.db(), &network, s.now()).await.expect("network");
        let app = crate::common::app(s);
        let now = s.now();
        let write = auth::create_token(s.db(), "ops", Scope::Write, now, None).await.expect("token");
        let read = auth::create_token(s.db(), "viewer", Scope::Read, now, None).await.expect("token");
        let expired = auth::create_token(s.db(), "old", Scope::Admin, now, Some(now + 1000)).await.expect("token");
        let revoked = auth::create_token(s.db(), "gone", Scope::Admin, now, None).await.expect("token");
        let revoked_id =
            format!("tok_{}", &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(revoked.as_bytes()))[..12]);
        assert!(auth::revoke(s.db(), &revoked_id, now).await.expect("revoke"));
        w.clock.advance(2000);

        let file =
            "tx,click,sale,comm,status,date\nU1,c1,40.00,2.00,open,2026-01-01\nU2,c1,oops,2.00,open,2026-01-01\n";
        for (token, status, reason) in [
            (None, StatusCode::UNAUTHORIZED, "missing bearer token"),
            (Some("cbk_not-a-token"), StatusCode::UNAUTHORIZED, "invalid token"),
            (Some(expired.as_str()), StatusCode::UNAUTHORIZED, "token expired"),
            (Some(revoked.as_str()), StatusCode::UNAUTHORIZED, "token revoked"),
            (Some(read.as_str()), StatusCode::FORBIDDEN, "needs the write scope"),
        ] {
            let (got, body) = call(&app, upload(token, file)).await;
            assert_eq!(got, status, "{}: {body}", t.name);
            assert!(body.contains(reason), "{body}");
            assert!(!body.contains("cbk_"), "a token never appears in a response: {body}");
        }
        assert_eq!(balance(s, "u1", "pending").await, 0, "nothing imported by a refused request");

        let (status, body) = call(&app, upload(Some(&write), file)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let summary: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(summary["tally"]["created"], 1, "{body}");
        assert_eq!(summary["rejected_rows"][0]["row"], 3, "{body}");
        assert_eq!(balance(s, "u1", "pending").await, 400);

        let rejects = Request::get("/api/v1/networks/csv-net/rejects")
            .header("authorization", format!("Bearer {read}"))
            .body(Body::empty())
            .expect("request");
        let (status, body) = call(&app, rejects).await;
        assert_eq!(status, StatusCode::OK, "a read token reads: {body}");
        t.cleanup().await;
    }
}
