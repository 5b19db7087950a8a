//! The scheduler, scheduled API imports and file imports, against SQLite and PostgreSQL.

use crate::backends;
use crate::common::*;
use crate::ledger::{World, balance, world};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use cashbackd::clock::DAY_MS;
use cashbackd::imports::{Retry, import_file, import_network};
use cashbackd::ingest::{self, InboundAuth, Network};
use cashbackd::scheduler::{self, JobKind, Scheduler};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const HOUR: i64 = 3_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tick_runs_once_across_replicas_and_missed_ticks_are_caught_up_by_one_run() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        scheduler::upsert_job(&w.service, "hourly-mature", "0 * * * *", &JobKind::Mature).await.expect("job");
        // Three replicas tick at the same moment: each has its own connection pool (as a
        // process of its own would), runs on its own task, and is released by a barrier, so
        // all three read the due job before any has claimed it. Ticked one after another,
        // the later ones would find nothing due and prove nothing about the claim. The
        // manual clock (shared, so the tick is the same moment for all three) is why these
        // are tasks and not `cashbackd serve` processes. Twenty ticks in a row, so that the
        // race is run many times, not once.
        let mut replicas = Vec::new();
        for i in 0..3 {
            let db = cashbackd::db::Db::connect(t.url()).await.expect("replica's own pool");
            let service =
                cashbackd::conversions::Service::new(db, runtime().clone(), w.clock.clone(), Default::default());
            replicas.push(Arc::new(Scheduler::new(service, runtime().clone(), format!("replica-{i}"))));
        }
        const TICKS: usize = 20;
        let mut winners = Vec::new();
        for tick in 0..TICKS {
            let job = scheduler::list(&w.service).await.expect("list").into_iter().find(|j| j.name == "hourly-mature");
            w.clock.set(job.expect("job").next_run_at);
            let ran = tick_together(&replicas).await;
            let won: Vec<usize> = (0..3).filter(|&i| ran[i].contains(&"hourly-mature".to_string())).collect();
            assert_eq!(won.len(), 1, "{}: tick {tick} ran {} times: {ran:?}", t.name, won.len());
            winners.push(won[0]);
        }
        let runs = scheduler::runs(&w.service, "hourly-mature", 100).await.expect("runs");
        assert_eq!(runs.len(), TICKS, "{}: one run per tick", t.name);
        assert!(runs.iter().all(|r| (r.outcome.as_str(), r.missed) == ("ok", 0)), "{runs:?}");
        eprintln!("{}: the {TICKS} ticks were won by replicas {winners:?}", t.name);

        // Five hours of downtime: one catch-up run, which says how many ticks it covers.
        w.clock.advance(5 * HOUR + 60_000);
        let ran = replicas[1].tick().await.expect("tick");
        assert_eq!(ran, vec!["hourly-mature".to_string()]);
        let runs = scheduler::runs(&w.service, "hourly-mature", 100).await.expect("runs");
        assert_eq!(runs.len(), TICKS + 1);
        assert_eq!(runs[0].missed, 4, "the ticks between the missed one and now: {runs:?}");
        let next = scheduler::list(&w.service)
            .await
            .expect("list")
            .into_iter()
            .find(|j| j.name == "hourly-mature")
            .expect("job");
        assert!(next.next_run_at > w.service.now(), "the next run is in the future");
        assert!(replicas[2].tick().await.expect("tick").is_empty(), "nothing due");
        t.cleanup().await;
    }
}

/// Each replica ticks on a task of its own, all released at once; what each one ran.
async fn tick_together(replicas: &[Arc<Scheduler>]) -> Vec<Vec<String>> {
    let start = Arc::new(tokio::sync::Barrier::new(replicas.len()));
    let tasks: Vec<_> = replicas
        .iter()
        .map(|s| {
            let (s, start) = (s.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                s.tick().await.expect("tick")
            })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.expect("replica task"));
    }
    out
}

/// A network's reporting API, played by a local server: checks the API key the host
/// injects, pages with a cursor, and fails the first request for page 2 once.
async fn fake_network() -> (String, Arc<AtomicUsize>) {
    #[derive(Clone)]
    struct Fake {
        calls: Arc<AtomicUsize>,
    }
    async fn transactions(
        State(f): State<Fake>,
        headers: HeaderMap,
        Query(q): Query<HashMap<String, String>>,
    ) -> axum::response::Response {
        let n = f.calls.fetch_add(1, Ordering::SeqCst);
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer k3y-secret") {
            return (StatusCode::UNAUTHORIZED, "bad key").into_response();
        }
        let tx = |id: &str, status: &str, amount: &str| {
            json!({"id": id, "click_id": "c1", "order_id": format!("o-{id}"), "status": status, "amount": amount,
                   "commission": "1.00", "currency": "EUR", "date": "2026-01-01T10:00:00Z", "merchant_id": "m1", "reason": null, "items": []})
        };
        match q.get("cursor").map(String::as_str) {
            None => axum::Json(json!({"transactions": [tx("A1", "pending", "10.00"), tx("A2", "approved", "20.00")], "next_cursor": "page-2"})).into_response(),
            Some("page-2") if n == 1 => (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response(),
            Some("page-2") => {
                axum::Json(json!({"transactions": [tx("A3", "declined", "30.00"), tx("A4", "pending", "3O.00")], "next_cursor": null}))
                    .into_response()
            }
            Some(other) => (StatusCode::BAD_REQUEST, format!("unknown cursor {other}")).into_response(),
        }
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route("/v1/transactions", axum::routing::get(transactions))
        .with_state(Fake { calls: calls.clone() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}/v1", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, calls)
}

pub async fn add_network(w: &World, id: &str, plugin: &str, config: serde_json::Value) {
    let adapter = cashbackd::registry::upload(&w.service, &plugin_bytes(WASIP2, plugin)).await.expect("adapter").plugin;
    let network = Network {
        id: id.into(),
        name: id.into(),
        adapter_digest: Some(adapter.digest.to_string()),
        adapter_config: config,
        auth: InboundAuth::None,
    };
    ingest::upsert_network(w.service.db(), &network, w.service.now()).await.expect("network");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_import_pages_through_the_report_with_the_host_held_key_and_retries_a_failed_page() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let (base, calls) = fake_network().await;
        add_network(&w, "api-net", "json_api", json!({"base_url": base, "page_size": 2, "api_key": "k3y-secret"}))
            .await;
        let retry = Retry { attempts: 3, first_backoff: Duration::from_millis(10) };
        let summary = import_network(&w.service, runtime(), "api-net", &retry).await.expect("import");
        assert_eq!((summary.pages, summary.events, summary.retries), (2, 3, 1), "{}: {summary:?}", t.name);
        assert_eq!((summary.tally.created, summary.tally.rejected), (3, 0), "{summary:?}");
        assert_eq!(summary.rejected_items.len(), 1, "one bad transaction does not fail its page: {summary:?}");
        assert!(summary.rejected_items[0].0 == "A4" && summary.rejected_items[0].1.contains("3O.00"), "{summary:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let a1 = w
            .service
            .conversion(&cashbackd::conversions::conversion_id("api-net", "A1"))
            .await
            .expect("load")
            .expect("row");
        assert_eq!(a1.reported_via, "api_import", "delay analytics know the integration type");
        // A1 pending 10.00 at 10 %, A2 completed 20.00 (not matured), A3 declined.
        assert_eq!(balance(&w.service, "u1", "pending").await, 100 + 200);
        let (start, end, cursor) =
            cashbackd::imports::import_state(&w.service, "api-net").await.expect("state").expect("saved");
        assert_eq!((end, cursor), (None, None), "the window is finished");
        assert_eq!(start, summary.window.1 - 3 * DAY_MS, "the next window looks back for late updates");

        // The next run re-reads the overlap: nothing is counted twice.
        w.clock.advance(HOUR);
        let again = import_network(&w.service, runtime(), "api-net", &retry).await.expect("import again");
        assert_eq!((again.tally.created, again.tally.duplicates), (0, 3), "{again:?}");
        assert_eq!(balance(&w.service, "u1", "pending").await, 300);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_import_that_fails_is_recorded_with_its_reason() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        add_network(&w, "dead-net", "json_api", json!({"base_url": "http://127.0.0.1:9/v1", "api_key": "k"})).await;
        scheduler::upsert_job(&w.service, "import-dead", "@hourly", &JobKind::Import { network: "dead-net".into() })
            .await
            .expect("job");
        let s = Scheduler::new(w.service.clone(), runtime().clone(), "r1")
            .with_retry(Retry { attempts: 2, first_backoff: Duration::from_millis(5) });
        let run = s.run_now("import-dead").await.expect("run");
        assert_eq!(run.outcome, "failed");
        assert!(run.detail.as_deref().unwrap_or("").contains("json-api@0.1.0"), "{run:?}");
        assert!(s.run_now("nope").await.expect_err("unknown").contains("cashbackd jobs list"));
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_file_is_imported_with_a_summary_and_rejected_rows_with_reasons() {
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        add_network(
            &w,
            "csv-net",
            "csv_report",
            json!({
                "columns": {"transaction_id": "Transaction", "click_id": "Click", "amount": "Sale", "commission": "Commission",
                            "state": "Status", "currency": "Currency", "event_time": "Date"},
                "states": {"open": "PENDING", "paid": "COMPLETED"},
                "default_currency": "EUR"
            }),
        )
        .await;
        let file = "Transaction,Click,Sale,Commission,Status,Currency,Date\n\
                    F1,c1,\"1,000.00\",5.00,open,EUR,2026-01-01\n\
                    F2,c1,50.00,5.00,open,EUR,2026-01-01 10:00:00\n\
                    F3,c1,70.00,5.00,weird,EUR,2026-01-01\n\
                    F2,c1,50.00,5.00,open,EUR,2026-01-01 10:00:00\n";
        let progress = std::sync::Mutex::new(Vec::new());
        let summary = import_file(&w.service, runtime(), "csv-net", "report.csv", file.as_bytes().to_vec(), |d, n| {
            progress.lock().expect("lock").push((d, n));
        })
        .await
        .expect("import");
        assert_eq!(summary.tally.created, 1, "{}: {summary:?}", t.name);
        assert_eq!(summary.rejected_rows.len(), 3, "{summary:?}");
        assert!(summary.rejected_rows.iter().any(|r| r.row == Some(2) && r.reason.contains("1,000.00")), "{summary:?}");
        assert!(summary.rejected_rows.iter().any(|r| r.row == Some(4) && r.reason.contains("weird")), "{summary:?}");
        assert!(
            summary.rejected_rows.iter().any(|r| r.row == Some(5) && r.reason.contains("already on row 3")),
            "{summary:?}"
        );
        assert_eq!(progress.lock().expect("lock").last().copied(), Some((1, 1)));
        let f2 = w
            .service
            .conversion(&cashbackd::conversions::conversion_id("csv-net", "F2"))
            .await
            .expect("load")
            .expect("row");
        assert_eq!(f2.reported_via, "file");
        assert_eq!(balance(&w.service, "u1", "pending").await, 500);
        // The same file again: every event is a duplicate, nothing changes.
        let again = import_file(&w.service, runtime(), "csv-net", "report.csv", file.as_bytes().to_vec(), |_, _| {})
            .await
            .expect("again");
        assert_eq!((again.tally.created, again.tally.duplicates), (0, 1), "{again:?}");
        assert_eq!(balance(&w.service, "u1", "pending").await, 500);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_batch_keeps_each_conversions_order_and_skips_known_events_in_bulk() {
    use crate::ledger::event;
    use cashbackd::conversions::{State, Via, conversion_id};
    use cashbackd::plugin::wit::latest::ConversionState::{Completed, Pending};
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        // Many conversions at once, and one (B0) listed three times: PENDING, a repeat of
        // that row, then COMPLETED. They must apply in that order whatever runs alongside.
        let mut batch = vec![event("B0", Pending, 10_000, 800)];
        batch.extend((1..40).map(|i| event(&format!("B{i}"), Pending, 10_000, 800)));
        batch.push(event("B0", Pending, 10_000, 800));
        batch.push(event("B0", Completed, 10_000, 800));
        let progress = std::sync::Mutex::new(Vec::new());
        let tally = cashbackd::imports::record_events(&w.service, batch.clone(), Via::File, |d, n| {
            progress.lock().expect("lock").push((d, n))
        })
        .await;
        assert_eq!(
            (tally.created, tally.updated, tally.duplicates, tally.rejected),
            (40, 1, 1, 0),
            "{}: {tally:?}",
            t.name
        );
        assert_eq!(progress.lock().expect("lock").last().copied(), Some((42, 42)));
        let b0 = w.service.conversion(&conversion_id("net", "B0")).await.expect("load").expect("B0");
        assert_eq!(b0.state, State::Completed, "{}", t.name);
        assert_eq!(balance(&w.service, "u1", "pending").await, 40 * 1_000);
        let history = w.service.history(&b0.id).await.expect("history").len();

        // The same batch again: every event is known, counted without a write.
        let again = cashbackd::imports::record_events(&w.service, batch, Via::File, |_, _| {}).await;
        assert_eq!((again.created, again.updated, again.duplicates), (0, 0, 42), "{}: {again:?}", t.name);
        assert_eq!(w.service.history(&b0.id).await.expect("history").len(), history, "no history line per re-read row");
        assert_eq!(balance(&w.service, "u1", "pending").await, 40 * 1_000);
        crate::ledger::sound(&w.service, t.name).await;
        t.cleanup().await;
    }
}
