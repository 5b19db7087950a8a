//! End to end: the same lifecycle (PENDING → ADJUSTED → COMPLETED → available after the
//! reward delay), with duplicates and a late, out-of-order event, through each of the
//! three ways a network reports (seed 000): postback, scheduled API import, file import.
//! On both databases; maturation is run by the scheduler's system job.

use crate::backends;
use crate::common::*;
use crate::ingress::{app, get, send};
use crate::jobs::add_network;
use crate::ledger::{World, balance, sound, world};
use axum::http::StatusCode;
use cashbackd::clock::DAY_MS;
use cashbackd::conversions::conversion_id;
use cashbackd::imports::{Retry, import_file, import_network};
use cashbackd::ingest::InboundAuth;
use cashbackd::scheduler::{self, Scheduler};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn mature(w: &World) {
    scheduler::ensure_system_jobs(&w.service).await.expect("system jobs");
    let run = Scheduler::new(w.service.clone(), runtime().clone(), "e2e").run_now("mature").await.expect("mature job");
    assert_eq!(run.outcome, "ok", "{run:?}");
}

async fn state_of(w: &World, network: &str, tx: &str) -> String {
    w.service.conversion(&conversion_id(network, tx)).await.expect("load").expect("row").state.as_str().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_through_a_click_and_postbacks() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let app = app(&w, InboundAuth::Token("tk".into())).await;
        let (status, location, _) = send(&app, get("/c/shoe-sale?user=u1&sub1=nl")).await;
        assert_eq!(status, StatusCode::FOUND);
        let click = url::Url::parse(&location.expect("location"))
            .expect("url")
            .query_pairs()
            .find(|(k, _)| k == "clickref")
            .expect("click id")
            .1
            .into_owned();
        let pb = |status: &str, amount: &str| {
            format!("/postback/net?tid=P1&subid={click}&amount={amount}&comm=5.00&cur=EUR&status={status}&token=tk")
        };
        for (uri, expected) in [
            (pb("pending", "100.00"), "PENDING"),
            (pb("pending", "100.00"), "PENDING"), // duplicate
            (pb("pending", "80.00"), "ADJUSTED"), // partial return
            (pb("approved", "80.00"), "COMPLETED"),
            (pb("pending", "80.00"), "COMPLETED"), // late and out of order: ignored
        ] {
            let (status, _, body) = send(&app, get(&uri)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(state_of(&w, "net", "P1").await, expected, "{}: after {uri}", t.name);
        }
        assert_eq!(balance(&w.service, "u1", "pending").await, 800);
        w.clock.advance(30 * DAY_MS);
        mature(&w).await;
        assert_eq!(
            (balance(&w.service, "u1", "pending").await, balance(&w.service, "u1", "available").await),
            (0, 800)
        );
        sound(&w.service, t.name).await;
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_through_scheduled_api_imports() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        // The network's report, changed between runs as the network processes the order.
        let report: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
        let served = report.clone();
        let api = axum::Router::new().route(
            "/v1/transactions",
            axum::routing::get(move || {
                let txs = served.lock().expect("lock").clone();
                async move { axum::Json(json!({ "transactions": txs, "next_cursor": null })) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}/v1", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, api).await });
        add_network(&w, "api-net", "json_api", json!({"base_url": base, "api_key": "k"})).await;
        let tx = |status: &str, amount: &str| json!({"id": "B1", "click_id": "c1", "status": status, "amount": amount, "commission": "5.00", "currency": "EUR", "date": "2026-01-01T08:00:00Z"});
        let retry = Retry { attempts: 2, first_backoff: Duration::from_millis(5) };
        for (txs, expected) in [
            (vec![tx("pending", "100.00")], "PENDING"),
            (vec![tx("pending", "100.00"), tx("pending", "100.00")], "PENDING"), // re-read and repeated
            (vec![tx("adjusted", "60.00")], "ADJUSTED"),
            (vec![tx("approved", "60.00")], "COMPLETED"),
            (vec![tx("pending", "60.00")], "COMPLETED"), // a stale page: ignored
        ] {
            *report.lock().expect("lock") = txs;
            w.clock.advance(3_600_000);
            import_network(&w.service, runtime(), "api-net", &retry).await.expect("import");
            assert_eq!(state_of(&w, "api-net", "B1").await, expected, "{}", t.name);
        }
        w.clock.advance(30 * DAY_MS);
        mature(&w).await;
        assert_eq!(balance(&w.service, "u1", "available").await, 600);
        sound(&w.service, t.name).await;
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_through_report_files() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        add_network(
            &w,
            "csv-net",
            "csv_report",
            json!({"columns": {"transaction_id": "tx", "click_id": "click", "amount": "sale", "commission": "comm",
                               "state": "status", "event_time": "date"},
                   "states": {"open": "PENDING", "changed": "ADJUSTED", "paid": "COMPLETED"}, "default_currency": "EUR"}),
        )
        .await;
        let file = |status: &str, amount: &str| {
            format!("tx,click,sale,comm,status,date\nF1,c1,{amount},5.00,{status},2026-01-01\n")
        };
        for (contents, expected) in [
            (file("open", "50.00"), "PENDING"),
            (file("open", "50.00"), "PENDING"), // the same file twice
            (file("changed", "40.00"), "ADJUSTED"),
            (file("paid", "40.00"), "COMPLETED"),
            (file("open", "40.00"), "COMPLETED"), // an old file imported late
        ] {
            import_file(&w.service, runtime(), "csv-net", "report.csv", contents.into_bytes(), |_, _| {})
                .await
                .expect("import");
            assert_eq!(state_of(&w, "csv-net", "F1").await, expected, "{}", t.name);
        }
        w.clock.advance(30 * DAY_MS);
        mature(&w).await;
        assert_eq!(balance(&w.service, "u1", "available").await, 400);
        sound(&w.service, t.name).await;
        t.cleanup().await;
    }
}

/// Seed 004: registration, deposit and purchase are different events, each mapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_events_stay_distinct_and_keep_their_names() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let adapter = cashbackd::registry::upload(&w.service, &plugin_bytes(WASIP2, "generic_s2s"))
            .await
            .expect("adapter")
            .plugin;
        let network = cashbackd::ingest::Network {
            id: "net".into(),
            name: "Net".into(),
            adapter_digest: Some(adapter.digest.to_string()),
            adapter_config: json!({"params": {"transaction_id": "tid", "click_id": "subid", "event_type": "goal", "amount": "amount",
                                              "state": "status"}, "states": {"ok": "PENDING"}, "default_currency": "EUR"}),
            auth: InboundAuth::None,
        };
        cashbackd::ingest::upsert_network(w.service.db(), &network, w.service.now()).await.expect("network");
        let app = crate::common::app(&w.service);
        for (tid, goal) in [("E1", "registration"), ("E2", "deposit"), ("E3", "purchase")] {
            let (status, _, body) =
                send(&app, get(&format!("/postback/net?tid={tid}&subid=c1&goal={goal}&amount=10.00&status=ok"))).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let c = w.service.conversion(&conversion_id("net", tid)).await.expect("load").expect("row");
            assert_eq!(c.event_type, goal);
        }
        t.cleanup().await;
    }
}
