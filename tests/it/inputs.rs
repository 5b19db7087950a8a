//! Issue 13, points 5 and 6: one way into the plugin registry, and input that used to be
//! accepted and must be refused (a 4xx with the reason, nothing stored); through the CLI
//! and the public ingress, on SQLite and PostgreSQL.

use crate::backends;
use crate::common::*;
use crate::ingress::{get, send};
use crate::ledger::{World, balance, world};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cashbackd::conversions::{State, Status, conversion_id};
use cashbackd::imports::{Retry, import_file, import_network};
use cashbackd::ingest::{self, InboundAuth, Link, Network};
use cashbackd::registry::{self, Target};
use serde_json::json;
use std::process::Command;

fn cashbackd(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cashbackd"))
        .args(args)
        .env("CASHBACKD_PLUGIN_STORE", shared_store())
        .output()
        .expect("run cashbackd");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The reason an `error: ...` line of the CLI gives.
fn reason(out: &str) -> String {
    out.lines().find_map(|l| l.strip_prefix("error: ")).unwrap_or_else(|| panic!("no error in:\n{out}")).to_string()
}

async fn count(w: &World, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&w.service.db().pool).await.expect("count")
}

// ---- 5. One way into the registry --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchant_add_refuses_a_rule_without_fixtures_with_plugin_uploads_reason_and_stores_nothing() {
    for t in backends::all().await {
        let url = t.url().to_string();
        let hostile = plugin_path(WASIP2, "hostile_rule");
        let hostile = hostile.to_str().expect("utf8");
        let (ok, upload) = cashbackd(&["--database-url", &url, "plugin", "upload", hostile]);
        assert!(!ok, "{upload}");
        let why = reason(&upload);
        assert!(why.contains("hostile-rule@0.1.0") && why.contains("embeds no fixtures"), "{why}");

        let (ok, out) =
            cashbackd(&["--database-url", &url, "merchant", "add", "shop2", "--name", "Shop 2", "--rule", hostile]);
        assert!(!ok, "{out}");
        assert_eq!(reason(&out), format!("--rule: {why}"), "the same reason as plugin upload, naming the flag");
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM plugins WHERE name = 'hostile-rule'")
            .fetch_one(&t.db.pool)
            .await
            .expect("plugins");
        let merchants: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM merchants WHERE id = 'shop2'")
            .fetch_one(&t.db.pool)
            .await
            .expect("merchants");
        assert_eq!((stored, merchants), (0, 0), "{}: nothing stored, not even the merchant", t.name);

        // The same for an adapter, and a component that proves itself goes in.
        let adapter = plugin_path(WASIP2, "hostile_adapter");
        let (ok, out) = cashbackd(&[
            "--database-url",
            &url,
            "network",
            "add",
            "n2",
            "--name",
            "N2",
            "--adapter",
            adapter.to_str().expect("utf8"),
            "--auth",
            "none",
            "--config",
            r#"{"mode": "fetch"}"#,
        ]);
        assert!(!ok, "{out}");
        assert!(reason(&out).starts_with("--adapter: hostile-adapter@0.1.0"), "{out}");
        assert!(out.contains("embeds no fixtures"), "{out}");
        let flat = plugin_path(WASIP2, "flat_rate");
        let (ok, out) = cashbackd(&[
            "--database-url",
            &url,
            "merchant",
            "add",
            "shop2",
            "--name",
            "Shop 2",
            "--rule",
            flat.to_str().expect("utf8"),
            "--rule-config",
            r#"{"rate_bps": 300}"#,
        ]);
        assert!(ok, "{out}");
        let (ok, out) =
            cashbackd(&["--database-url", &url, "merchant", "add", "shop3", "--name", "S", "--rule", hostile]);
        assert!(!ok && reason(&out) == format!("--rule: {why}"), "{out}");
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_plugin_without_fixtures_can_be_activated_by_no_path() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let s = &w.service;
        // As a database written before the registry checked fixtures may hold it.
        let digest = store_unproven(s, "hostile_rule").await;
        let hostile = registry::resolve(s, "hostile-rule@0.1.0").await.expect("stored");
        let shop = Target::Merchant { id: "shop".into(), position: Some(0) };
        let config = Some(json!({"mode": "ok"}));
        let e = registry::activate(s, &shop, &hostile, config.clone(), "test").await.expect_err("activate");
        assert!(e.to_string().contains("embeds no fixtures"), "{}: {e}", t.name);
        let e = registry::set_shadow(s, "shop", &hostile, config, None, "test").await.expect_err("shadow");
        assert!(e.to_string().contains("embeds no fixtures"), "{e}");
        let e = s.set_rules("shop", &[(digest.clone(), json!({"mode": "ok"}))]).await.expect_err("set_rules");
        assert!(e.to_string().contains("embeds no fixtures"), "{e}");

        // The CLI says the same, and the chain is still the flat rate.
        let (ok, out) = cashbackd(&[
            "--database-url",
            t.url(),
            "plugin",
            "activate",
            "hostile-rule@0.1.0",
            "--merchant",
            "shop",
            "--config",
            r#"{"mode": "ok"}"#,
        ]);
        assert!(!ok && out.contains("embeds no fixtures"), "{out}");
        let chain: Vec<String> =
            sqlx::query_scalar("SELECT plugin_digest FROM merchant_rules WHERE merchant_id = 'shop'")
                .fetch_all(&s.db().pool)
                .await
                .expect("chain");
        assert_eq!(chain, vec![w.rule.clone()]);

        // Nor can a rollback put one back where it had been placed behind the registry's back.
        install_unproven_rule(s, "shop", "hostile_rule", json!({"mode": "ok"})).await;
        let flat = registry::resolve(s, "flat-rate@0.1.0").await.expect("flat");
        registry::activate(s, &shop, &flat, Some(json!({"rate_bps": 100})), "test").await.expect("replace it");
        let e = registry::rollback(s, &shop, "test").await.expect_err("rollback");
        assert!(e.to_string().contains("embeds no fixtures"), "{e}");

        // Nor a network's adapter through the admin API.
        store_unproven(s, "hostile_adapter").await;
        let admin = cashbackd::auth::create_token(s.db(), "ops", cashbackd::auth::Scope::Admin, s.now(), None)
            .await
            .expect("token");
        let app = crate::common::app(s);
        let body = json!({"name": "N", "adapter": "hostile-adapter@0.1.0", "adapter_config": {"mode": "fetch"}, "auth": "none"});
        let request = Request::put("/api/v1/networks/n2")
            .header("authorization", format!("Bearer {admin}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        let (status, _, text) = send(&app, request).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
        assert!(text.contains("embeds no fixtures"), "{text}");
        assert_eq!(count(&w, "SELECT COUNT(*) FROM networks WHERE id = 'n2'").await, 0);
        t.cleanup().await;
    }
}

// ---- 6. Input that must be refused ---------------------------------------------------------

/// Network `net` on generic-s2s with every state mapped (token `t0ken`), tracked link
/// `shoe-sale` to `shop`, and the router. The world's click `c1` belongs to user `u1`.
async fn app(w: &World) -> Router {
    let s = &w.service;
    let adapter = registry::upload(s, &plugin_bytes(WASIP2, "generic_s2s")).await.expect("adapter").plugin;
    let network = Network {
        id: "net".into(),
        name: "Net".into(),
        adapter_digest: Some(adapter.digest.to_string()),
        adapter_config: json!({
            "params": { "transaction_id": "tid", "click_id": "subid", "order_id": "oid", "amount": "sale",
                        "commission": "comm", "state": "status" },
            "states": { "pending": "PENDING", "adjusted": "ADJUSTED", "approved": "COMPLETED",
                        "declined": "REJECTED", "refunded": "REVERSED" },
            "default_currency": "EUR"
        }),
        auth: InboundAuth::Token("t0ken".into()),
    };
    ingest::upsert_network(s.db(), &network, s.now()).await.expect("network");
    let link = Link {
        id: "shoe-sale".into(),
        merchant_id: "shop".into(),
        network_id: "net".into(),
        url_template: "https://shop.example/landing?clickref={click_id}&s1={sub1}&partner={ref_id}".into(),
    };
    ingest::upsert_link(s.db(), &link, s.now()).await.expect("link");
    crate::common::app(s)
}

fn postback(query: &str) -> String {
    format!("/postback/net?{query}&token=t0ken")
}

async fn exists(w: &World, tid: &str) -> bool {
    w.service.conversion(&conversion_id("net", tid)).await.expect("load").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_sale_on_a_pending_or_completed_postback_is_refused_and_corrections_are_not() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let app = app(&w).await;
        for (query, field, state) in [
            ("tid=N-1&subid=c1&oid=O-1&sale=-25.00&comm=-2.50&status=pending", "amount: -2500", "PENDING"),
            ("tid=N-2&subid=c1&oid=O-2&sale=25.00&comm=-2.50&status=pending", "commission: -250", "PENDING"),
            ("tid=N-3&subid=c1&oid=O-3&sale=-25.00&comm=2.50&status=approved", "amount: -2500", "COMPLETED"),
            ("tid=N-4&subid=c1&oid=O-4&sale=-25.00&comm=-2.50&status=adjusted", "amount: -2500", "ADJUSTED"),
        ] {
            let (status, _, body) = send(&app, get(&postback(query))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{}: {query}: {body}", t.name);
            assert!(body.contains(&format!("{field} minor units on a {state} event")), "{body}");
            assert!(body.contains("REVERSED or REJECTED"), "the reason says what to send instead: {body}");
            let tid = &query[4..7];
            assert!(!exists(&w, tid).await, "{tid} stored");
        }
        assert_eq!(count(&w, "SELECT COUNT(*) FROM conversions").await, 0, "nothing stored");
        let rejects = ingest::rejects(w.service.db(), "net", 10).await.expect("rejects");
        assert_eq!(rejects.len(), 4, "each refusal is kept with its reason");

        // Corrections stay accepted: an ADJUSTED to a lower amount, then a refund row
        // written with negative amounts.
        for query in [
            "tid=K-1&subid=c1&oid=O-K1&sale=100.00&comm=8.00&status=pending",
            "tid=K-1&subid=c1&oid=O-K1&sale=60.00&comm=4.80&status=adjusted",
        ] {
            let (status, _, body) = send(&app, get(&postback(query))).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
        }
        assert_eq!(balance(&w.service, "u1", "pending").await, 600, "10 % of the adjusted 60.00");
        let (status, _, body) =
            send(&app, get(&postback("tid=K-1&subid=c1&oid=O-K1&sale=-60.00&comm=-4.80&status=declined"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let k1 = w.service.conversion(&conversion_id("net", "K-1")).await.expect("load").expect("K-1");
        assert_eq!((k1.state, k1.status), (State::Rejected, Status::Rejected));
        assert_eq!(balance(&w.service, "u1", "pending").await, 0, "the credit is taken back");
        // A refund after completion, reported as a negative correction.
        for query in [
            "tid=K-2&subid=c1&oid=O-K2&sale=50.00&comm=4.00&status=approved",
            "tid=K-2&subid=c1&oid=O-K2&sale=-50.00&comm=-4.00&status=refunded",
        ] {
            let (status, _, body) = send(&app, get(&postback(query))).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
        }
        let k2 = w.service.conversion(&conversion_id("net", "K-2")).await.expect("load").expect("K-2");
        assert_eq!(k2.state, State::Reversed);
        crate::ledger::sound(&w.service, t.name).await;
        t.cleanup().await;
    }
}

/// A network's reporting API, played by a local server: one page.
async fn report_api(page: serde_json::Value) -> String {
    let app = axum::Router::new()
        .route("/v1/transactions", axum::routing::get(move || async move { axum::Json(page.clone()) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}/v1", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_import_and_a_report_file_refuse_negative_amounts_by_the_same_rule() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let tx = |id: &str, status: &str, amount: &str, commission: &str| {
            json!({"id": id, "click_id": "c1", "status": status, "amount": amount, "commission": commission,
                   "currency": "EUR", "date": "2025-12-31T20:00:00Z"})
        };
        let base = report_api(json!({"transactions": [
            tx("A-1", "pending", "-10.00", "-1.00"),
            tx("A-2", "pending", "10.00", "1.00"),
            tx("A-2", "reversed", "-10.00", "-1.00"),
            tx("A-3", "approved", "10.00", "-0.01"),
        ], "next_cursor": null}))
        .await;
        crate::jobs::add_network(&w, "api-net", "json_api", json!({"base_url": base, "api_key": "k"})).await;
        let retry = Retry { attempts: 1, first_backoff: std::time::Duration::from_millis(1) };
        let summary = import_network(&w.service, runtime(), "api-net", &retry).await.expect("import");
        assert_eq!((summary.tally.created, summary.tally.updated, summary.tally.rejected), (1, 1, 2), "{summary:?}");
        let errors = summary.tally.errors.join("\n");
        assert!(errors.contains(r#"transaction "A-1": amount: -1000 minor units on a PENDING event"#), "{errors}");
        assert!(errors.contains(r#"transaction "A-3": commission: -1 minor units on a COMPLETED event"#), "{errors}");
        let stored: Vec<String> = sqlx::query_scalar("SELECT transaction_id FROM conversions ORDER BY transaction_id")
            .fetch_all(&w.service.db().pool)
            .await
            .expect("stored");
        assert_eq!(stored, vec!["A-2".to_string()], "{}", t.name);

        crate::jobs::add_network(
            &w,
            "csv-net",
            "csv_report",
            json!({
                "columns": {"transaction_id": "Transaction", "click_id": "Click", "amount": "Sale", "commission": "Commission",
                            "state": "Status", "event_time": "Date"},
                "default_currency": "EUR"
            }),
        )
        .await;
        let file = "Transaction,Click,Sale,Commission,Status,Date\n\
                    F-1,c1,-5.00,-0.50,PENDING,2025-12-30\n\
                    F-2,c1,5.00,0.50,COMPLETED,2025-12-30\n";
        let summary = import_file(&w.service, runtime(), "csv-net", "r1.csv", file.as_bytes().to_vec(), |_, _| {})
            .await
            .expect("import");
        assert_eq!((summary.tally.created, summary.tally.rejected), (1, 1), "{summary:?}");
        assert!(summary.tally.errors[0].contains(r#"transaction "F-1": amount: -500 minor units on a PENDING"#));
        // The report's correction row for F-2, a month later, negative by nature.
        let correction = "Transaction,Click,Sale,Commission,Status,Date\nF-2,c1,-5.00,-0.50,REVERSED,2026-01-30\n";
        let summary =
            import_file(&w.service, runtime(), "csv-net", "r2.csv", correction.as_bytes().to_vec(), |_, _| {})
                .await
                .expect("import");
        assert_eq!((summary.tally.updated, summary.tally.rejected), (1, 0), "{summary:?}");
        let f2 = w.service.conversion(&conversion_id("csv-net", "F-2")).await.expect("load").expect("F-2");
        assert_eq!(f2.state, State::Reversed);
        assert!(w.service.conversion(&conversion_id("csv-net", "F-1")).await.expect("load").is_none());
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_utf8_are_refused_alike_in_a_query_a_form_body_and_a_click() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let app = app(&w).await;
        let rest = "subid=c1&oid=O-1&sale=10.00&comm=1.00&status=pending";
        let (status, _, query) = send(&app, get(&postback(&format!("tid=A%FF%FE&{rest}")))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{}: {query}", t.name);
        let form = |body: Vec<u8>| {
            Request::post("/postback/net?token=t0ken")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .expect("request")
        };
        let (status, _, body) = send(&app, form(format!("tid=A%FE%FF&{rest}").into_bytes())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let v = |text: &str| serde_json::from_str::<serde_json::Value>(text).expect("json")["error"].clone();
        let (q, b) = (v(&query), v(&body));
        assert_eq!((q["code"].as_str(), b["code"].as_str()), (Some("invalid_encoding"), Some("invalid_encoding")));
        assert_eq!(
            q["message"],
            r#"query string: parameter "tid": the value is not UTF-8 once percent-decoded ("A%FF%FE")"#
        );
        assert_eq!(
            b["message"],
            r#"form body: parameter "tid": the value is not UTF-8 once percent-decoded ("A%FE%FF")"#
        );
        let mut raw = b"tid=A".to_vec();
        raw.extend([0xFF, 0xFE]);
        raw.extend(format!("&{rest}").into_bytes());
        let (status, _, body) = send(&app, form(raw)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("form body: not UTF-8"), "{body}");
        assert_eq!(count(&w, "SELECT COUNT(*) FROM conversions").await, 0, "nothing stored");

        // The same bytes as UTF-8 are an id like any other.
        let (status, _, body) = send(&app, get(&postback(&format!("tid=A%C3%BF&{rest}")))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(exists(&w, "Aÿ").await);

        // Clicks: the user, the ref_id and the sub ids alike.
        let clicks = count(&w, "SELECT COUNT(*) FROM clicks").await;
        for q in ["user=bob%FF", "user=bob&ref_id=%FE", "user=bob&sub1=a%C3"] {
            let (status, _, body) = send(&app, get(&format!("/c/shoe-sale?{q}"))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
            assert!(body.contains("invalid_encoding") && body.contains("not UTF-8"), "{body}");
        }
        assert_eq!(count(&w, "SELECT COUNT(*) FROM clicks").await, clicks, "no click recorded");
        t.cleanup().await;
    }
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_limited_in_characters_so_seed_003s_64_character_ids_fit_in_any_script() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let app = app(&w).await;
        let rest = "subid=c1&sale=10.00&comm=1.00&status=pending";
        // 64 characters of 4 bytes: 256 bytes, refused before under a 255-byte cap.
        let party = "🎉".repeat(64);
        let (status, _, body) = send(&app, get(&postback(&format!("tid={}&oid=O&{rest}", encode(&party))))).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", t.name);
        assert!(exists(&w, &party).await);
        let long_order = "é".repeat(255);
        let (status, _, body) =
            send(&app, get(&postback(&format!("tid=T-2&oid={}&{rest}", encode(&long_order))))).await;
        assert_eq!(status, StatusCode::OK, "255 characters, 510 bytes: {body}");

        for (query, why) in [
            (
                format!("tid={}&oid=O&{rest}", "x".repeat(256)),
                "transaction id: 256 characters, at most 255 (at most 1020 bytes",
            ),
            (format!("tid=T-3&oid={}&{rest}", encode(&"é".repeat(256))), "order id: 256 characters, at most 255"),
            // PostgreSQL cannot store U+0000: this was a 503 there, a stored id on SQLite.
            (format!("tid=T%004&oid=O&{rest}"), "transaction id: a control character (U+0000)"),
            (format!("tid=T-5%0A&oid=O&{rest}"), "transaction id: a control character (U+000A)"),
        ] {
            let (status, _, body) = send(&app, get(&postback(&query))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
            assert!(body.contains(why), "{why:?} in {body}");
        }
        assert_eq!(count(&w, "SELECT COUNT(*) FROM conversions").await, 2);

        // Clicks: ref_id at most 32 characters (seed 003), in any script; the user 128.
        let (status, _, body) =
            send(&app, get(&format!("/c/shoe-sale?user=u2&ref_id={}", encode(&"🎉".repeat(32))))).await;
        assert_eq!(status, StatusCode::FOUND, "{body}");
        for (query, why) in [
            (
                format!("user=u2&ref_id={}", encode(&"🎉".repeat(33))),
                "ref_id: 33 characters, at most 32 (at most 128 bytes",
            ),
            (format!("user={}", "u".repeat(129)), "user: 129 characters, at most 128"),
            ("user=u%002".to_string(), "user: a control character (U+0000)"),
            (format!("user=u2&sub3={}", "s".repeat(256)), "sub3: 256 characters, at most 255"),
        ] {
            let (status, _, body) = send(&app, get(&format!("/c/shoe-sale?{query}"))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
            assert!(body.contains(why), "{why:?} in {body}");
        }
        assert_eq!(count(&w, "SELECT COUNT(*) FROM clicks WHERE user_id <> 'u1'").await, 1);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postback_without_a_click_id_is_refused_and_kept_never_silently_parked() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let app = app(&w).await;
        for (query, why) in [
            (
                "tid=P-1&subid=&oid=O-1&sale=10.00&comm=1.00&status=pending",
                r#"parameter \"subid\" (click_id): is empty"#,
            ),
            ("tid=P-2&oid=O-2&sale=10.00&comm=1.00&status=pending", r#"missing parameter \"subid\" (click_id)"#),
            ("tid=P-3&subid=c1&sale=10.00&comm=1.00&status=pending", r#"missing parameter \"oid\" (order_id)"#),
        ] {
            let (status, _, body) = send(&app, get(&postback(query))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{}: {query}: {body}", t.name);
            assert!(body.contains(why), "{why} in {body}");
        }
        assert_eq!(count(&w, "SELECT COUNT(*) FROM conversions").await, 0, "none parked: none stored");
        let rejects = ingest::rejects(w.service.db(), "net", 10).await.expect("rejects");
        assert_eq!(rejects.len(), 3, "the operator sees each in the rejects log");
        assert!(rejects.iter().any(|r| r.reason.contains("cannot be attributed to a user")), "{rejects:#?}");
        // A click id cashbackd does not know (yet) is another matter: the conversion waits.
        let (status, _, body) =
            send(&app, get(&postback("tid=P-4&subid=c-later&oid=O-4&sale=10.00&comm=1.00&status=pending"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        t.cleanup().await;
    }
}
