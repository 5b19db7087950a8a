//! HTTP ingress: tracked clicks and S2S postbacks through a network's adapter plugin,
//! run against SQLite and PostgreSQL.

use crate::backends;
use crate::common::*;
use crate::ledger::{balance, world};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cashbackd::ingest::{self, InboundAuth, Link, Network};
use hmac::{Hmac, Mac};
use serde_json::json;
use tower::ServiceExt;

pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Option<String>, String) {
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, location, String::from_utf8_lossy(&body).into_owned())
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

pub async fn app(w: &crate::ledger::World, auth: InboundAuth) -> Router {
    let s = &w.service;
    let adapter =
        cashbackd::registry::upload(s, &plugin_bytes(WASIP2, "generic_s2s")).await.expect("store adapter").plugin;
    let network = Network {
        id: "net".into(),
        name: "Test Network".into(),
        adapter_digest: Some(adapter.digest.to_string()),
        adapter_config: json!({
            "params": { "transaction_id": "tid", "click_id": "subid", "amount": "amount", "commission": "comm",
                        "state": "status", "currency": "cur" },
            "states": { "pending": "PENDING", "approved": "COMPLETED", "declined": "REJECTED" },
            "default_currency": "EUR"
        }),
        auth,
    };
    ingest::upsert_network(s.db(), &network, s.now()).await.expect("network");
    let link = Link {
        id: "shoe-sale".into(),
        merchant_id: "shop".into(),
        network_id: "net".into(),
        url_template: "https://shop.example/landing?clickref={click_id}&s1={sub1}&s2={sub2}&partner={ref_id}".into(),
    };
    ingest::upsert_link(s.db(), &link, s.now()).await.expect("link");
    crate::common::app(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_is_recorded_and_redirected_with_every_parameter_encoded_exactly_once() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let app = app(&w, InboundAuth::Token("t0ken".into())).await;
        let (status, location, body) =
            send(&app, get("/c/shoe-sale?user=u1&ref_id=lead-42&sub1=a%20b%26c%3Dd&sub2=%2541%E2%82%AC")).await;
        assert_eq!(status, StatusCode::FOUND, "{body}");
        let location = location.expect("Location");
        let url = url::Url::parse(&location).expect("absolute URL");
        let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["s1"], "a b&c=d", "{location}");
        assert_eq!(q["s2"], "%41€", "decoded once by us, encoded once for the merchant: {location}");
        assert_eq!(q["partner"], "lead-42");
        let click_id = q["clickref"].clone();
        assert_eq!(click_id.len(), 32);
        let row: (String, Option<String>, Option<String>, Option<String>) =
            sqlx::query_as("SELECT user_id, ref_id, sub1, sub2 FROM clicks WHERE click_id = $1")
                .bind(&click_id)
                .fetch_one(&w.service.db().pool)
                .await
                .expect("click stored");
        assert_eq!(row, ("u1".into(), Some("lead-42".into()), Some("a b&c=d".into()), Some("%41€".into())));

        let long = "x".repeat(33);
        let (status, _, body) = send(&app, get(&format!("/c/shoe-sale?user=u1&ref_id={long}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("ref_id: 33 characters, at most 32"), "{body}");
        let (status, _, body) = send(&app, get("/c/shoe-sale")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("user: required"), "{body}");
        let (status, _, _) = send(&app, get("/c/nope?user=u1")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postback_is_acknowledged_only_once_recorded_and_a_bad_one_is_refused_and_kept() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let app = app(&w, InboundAuth::Token("t0ken".into())).await;
        let ok = "/postback/net?tid=T-1&subid=c1&amount=100.00&comm=8.00&cur=EUR&status=pending&token=t0ken";
        let (status, _, body) = send(&app, get(ok)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("\"applied\""), "{body}");
        assert_eq!(balance(&w.service, "u1", "pending").await, 1_000, "credited before the 200");
        let c = w
            .service
            .conversion(&cashbackd::conversions::conversion_id("net", "T-1"))
            .await
            .expect("load")
            .expect("row");
        assert_eq!(c.reported_via, "postback");
        assert!(c.clicked_at.is_some() && c.rule_at.is_some() && c.ledger_at.is_some(), "stage timestamps: {c:?}");

        let (status, _, body) = send(&app, get(ok)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"duplicate\""), "the same postback twice changes nothing: {body}");
        assert_eq!(balance(&w.service, "u1", "pending").await, 1_000);

        let (status, _, body) = send(&app, get("/postback/net?tid=T-2&status=pending&token=wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("wrong token"), "{body}");
        let (status, _, body) = send(&app, get("/postback/net?subid=c1&status=pending&token=t0ken")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("tid"), "the reason names the missing parameter: {body}");
        let (status, _, _) = send(&app, get("/postback/other?tid=1&token=t0ken")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let rejects = ingest::rejects(w.service.db(), "net", 10).await.expect("rejects");
        assert_eq!(rejects.len(), 2, "{rejects:#?}");
        assert!(rejects.iter().all(|r| !r.query.contains("token")), "credentials never reach the log: {rejects:#?}");
        assert_eq!(rejects[1].status, 401);
        assert_eq!(rejects[0].status, 400);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_postback_is_checked_with_the_host_held_secret() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let app = app(&w, InboundAuth::Hmac("sh4red".into())).await;
        let query = "tid=T-9&subid=c1&amount=50.00&comm=2.00&cur=EUR&status=approved";
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"sh4red").expect("key");
        mac.update(query.as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        let request = Request::get(format!("/postback/net?{query}"))
            .header("x-cashbackd-signature", &signature)
            .body(Body::empty());
        let (status, _, body) = send(&app, request.expect("request")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let forged = Request::get("/postback/net?tid=T-9&subid=c1&amount=5000.00&comm=2.00&cur=EUR&status=approved")
            .header("x-cashbackd-signature", &signature)
            .body(Body::empty())
            .expect("request");
        let (status, _, body) = send(&app, forged).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("signature does not match"), "{body}");
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_then_its_postback_credits_the_user_over_real_http_with_an_ip_allow_list() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let app = app(&w, InboundAuth::IpAllowList(vec!["127.0.0.1".parse().expect("ip")])).await;
        drop(app);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let assembled = crate::common::server(&w.service);
        let server = tokio::spawn(async move {
            assembled
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        });
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        let click = client.get(format!("{base}/c/shoe-sale?user=u1&sub1=spring")).send().await.expect("click");
        assert_eq!(click.status(), 302);
        let location = click.headers()["location"].to_str().expect("location").to_string();
        let click_id = url::Url::parse(&location)
            .expect("url")
            .query_pairs()
            .find(|(k, _)| k == "clickref")
            .expect("clickref")
            .1
            .into_owned();
        let postback = client
            .post(format!("{base}/postback/net"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("tid=T-77&subid={click_id}&amount=80.00&comm=4.00&cur=EUR&status=pending"))
            .send()
            .await
            .expect("postback");
        assert_eq!(postback.status(), 200, "{}", postback.text().await.unwrap_or_default());
        assert_eq!(balance(&w.service, "u1", "pending").await, 800, "the click's user is credited");
        let _ = stop.send(());
        server.await.expect("server task").expect("server");
        t.cleanup().await;
    }
}
