//! The demo's past, so that a newcomer sees seed 000's story on the Delays page: orders
//! reported by S2S postback seconds after the purchase, by the hourly API import hours
//! after it, and by an offline report file days after it, each with its click before the
//! purchase and the purchase before the report. And a partner whose callbacks show on
//! the Deliveries page.
//!
//! Everything goes through the paths a real deployment uses: postbacks over HTTP to the
//! demo's own server, the `json-api` adapter paging through a network's reporting API (an
//! import job run by the scheduler), the `csv-report` adapter reading a report file, the
//! delivery worker calling the partner. The network's API and the partner's receiver are
//! played by a small server of the demo's own on 127.0.0.1, which is why the demo lets
//! adapters and callbacks reach loopback addresses (a production server does not, unless
//! told to). Only the clicks are recorded with a clock set in the past: a click through
//! the HTTP route happens now, and these purchases happened hours or days ago.

use crate::callbacks::{self, EndpointSpec, sign::Secret};
use crate::clock::ManualClock;
use crate::conversions::{NewClick, Service, ServiceConfig};
use crate::ingest::{self, InboundAuth, Network};
use crate::plugin::PluginRuntime;
use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;

/// The demo network's reporting API key (a demo; the adapter never sees it, the host
/// adds it to each request).
const API_KEY: &str = "demo-api-key";

/// The network `demo-api`, imported hourly through its reporting API.
pub const API_NETWORK: &str = "demo-api";
/// The network `demo-files`, whose reports come as files.
pub const FILE_NETWORK: &str = "demo-files";
/// The import job of `demo-api`.
pub const IMPORT_JOB: &str = "import-demo-api";
/// The partner whose endpoint receives the demo's callbacks.
pub const PARTNER: &str = "demo-partner";
/// Its endpoint.
pub const ENDPOINT: &str = "demo-partner-cb";

/// One past order: how long before now it was reported to us would be its delay; the
/// click was `click_before` before the purchase.
struct Order {
    delay: i64,
    click_before: i64,
    amount: i64,
    status: &'static str,
}

const fn order(delay: i64, click_before: i64, amount: i64, status: &'static str) -> Order {
    Order { delay, click_before, amount, status }
}

/// Postbacks arrive seconds to minutes after the purchase (seed 000: "faster").
const BY_POSTBACK: [Order; 8] = [
    order(4 * SECOND, 12 * MINUTE, 4_990, "pending"),
    order(7 * SECOND, 25 * MINUTE, 12_900, "pending"),
    order(12 * SECOND, 6 * MINUTE, 2_490, "approved"),
    order(18 * SECOND, 38 * MINUTE, 8_750, "pending"),
    order(26 * SECOND, 9 * MINUTE, 15_400, "pending"),
    order(41 * SECOND, 17 * MINUTE, 3_300, "approved"),
    order(75 * SECOND, 44 * MINUTE, 6_120, "pending"),
    order(3 * MINUTE, 21 * MINUTE, 21_000, "pending"),
];

/// The hourly API import reads them hours after the purchase ("a couple of hours").
const BY_API: [Order; 6] = [
    order(40 * MINUTE, 15 * MINUTE, 5_600, "pending"),
    order(90 * MINUTE, 50 * MINUTE, 11_250, "pending"),
    order(150 * MINUTE, 20 * MINUTE, 3_990, "approved"),
    order(4 * HOUR, 75 * MINUTE, 18_800, "pending"),
    order(7 * HOUR, 30 * MINUTE, 7_400, "pending"),
    order(13 * HOUR, 2 * HOUR, 9_950, "approved"),
];

/// Offline reports come days later ("even 72 hours").
const BY_FILE: [Order; 6] = [
    order(26 * HOUR, 40 * MINUTE, 6_450, "approved"),
    order(31 * HOUR, 90 * MINUTE, 13_300, "pending"),
    order(44 * HOUR, 25 * MINUTE, 2_990, "approved"),
    order(52 * HOUR, 3 * HOUR, 24_500, "pending"),
    order(66 * HOUR, 35 * MINUTE, 4_200, "declined"),
    order(71 * HOUR, 55 * MINUTE, 10_800, "approved"),
];

/// The shoppers of the past orders (demo-store's, like the live stream's).
const USERS: [&str; 3] = ["dave", "erin", "frank"];

/// The network's reporting API and the partner's callback receiver, on 127.0.0.1.
#[derive(Clone)]
pub struct FakeNetwork {
    base: String,
    transactions: Arc<Mutex<Vec<Value>>>,
    callbacks: Arc<AtomicUsize>,
}

impl FakeNetwork {
    /// Starts it on a free port; it runs as long as the process.
    pub async fn start() -> anyhow::Result<FakeNetwork> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("starting the demo's network")?;
        let fake = FakeNetwork {
            base: format!("http://{}", listener.local_addr()?),
            transactions: Arc::default(),
            callbacks: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/v1/transactions", axum::routing::get(transactions))
            .route("/partner/callback", axum::routing::get(callback).post(callback))
            .with_state(fake.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "the demo's network stopped");
            }
        });
        Ok(fake)
    }

    /// The reporting API's base URL (json-api's `base_url`).
    pub fn api_url(&self) -> String {
        format!("{}/v1", self.base)
    }

    /// Callbacks the partner received.
    pub fn callbacks_received(&self) -> usize {
        self.callbacks.load(Ordering::Relaxed)
    }
}

/// `GET /v1/transactions?from&to&limit&cursor`: the reference reporting API
/// (`plugins/json-api/README.md`), paged by offset, for the host-held key only.
async fn transactions(
    State(fake): State<FakeNetwork>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {API_KEY}")) {
        return (StatusCode::UNAUTHORIZED, "unknown API key").into_response();
    }
    let number = |name: &str| q.get(name).and_then(|v| v.parse::<i64>().ok());
    let (from, to) = (number("from").unwrap_or(i64::MIN), number("to").unwrap_or(i64::MAX));
    let (limit, offset) = (number("limit").unwrap_or(100).max(1) as usize, number("cursor").unwrap_or(0) as usize);
    let all = fake.transactions.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let window: Vec<Value> =
        all.into_iter().filter(|t| t["date"].as_i64().is_some_and(|d| (from..to).contains(&d))).collect();
    let page: Vec<Value> = window.iter().skip(offset).take(limit).cloned().collect();
    let next = (offset + limit < window.len()).then(|| (offset + limit).to_string());
    axum::Json(json!({ "transactions": page, "next_cursor": next })).into_response()
}

/// The partner's endpoint: takes every callback (only a 200 counts as delivered).
async fn callback(State(fake): State<FakeNetwork>) -> &'static str {
    fake.callbacks.fetch_add(1, Ordering::Relaxed);
    "ok"
}

/// The networks reported by API and by file, the hourly import job, and the partner with
/// its endpoint (before any traffic, so that every change is called back).
pub async fn configure(service: &Service, plugins: &Path, fake: &FakeNetwork) -> anyhow::Result<()> {
    let read = |name: &str| {
        let path = plugins.join(name);
        std::fs::read(&path).with_context(|| format!("{} not found: build the plugins first", path.display()))
    };
    let api = crate::registry::upload(service, &read("json_api.wasm")?).await?.plugin;
    let files = crate::registry::upload(service, &read("csv_report.wasm")?).await?.plugin;
    let now = service.now();
    let api_network = Network {
        id: API_NETWORK.into(),
        name: "Demo Network API".into(),
        adapter_digest: Some(api.digest.to_string()),
        adapter_config: json!({ "base_url": fake.api_url(), "api_key": API_KEY, "page_size": 4 }),
        auth: InboundAuth::None,
    };
    ingest::upsert_network(service.db(), &api_network, now).await?;
    let file_network = Network {
        id: FILE_NETWORK.into(),
        name: "Demo Network reports".into(),
        adapter_digest: Some(files.digest.to_string()),
        adapter_config: json!({
            "columns": { "transaction_id": "Transaction ID", "click_id": "Click Ref", "order_id": "Order ID",
                         "amount": "Sale Value", "commission": "Commission", "state": "Status",
                         "event_time": "Transaction Date" },
            "states": { "pending": "PENDING", "approved": "COMPLETED", "declined": "REJECTED" },
            "default_currency": "EUR"
        }),
        auth: InboundAuth::None,
    };
    ingest::upsert_network(service.db(), &file_network, now).await?;
    crate::scheduler::upsert_job(
        service,
        IMPORT_JOB,
        "0 * * * *",
        &crate::scheduler::JobKind::Import { network: API_NETWORK.into() },
    )
    .await
    .map_err(anyhow::Error::msg)?;

    callbacks::upsert_partner(service.db(), PARTNER, "Demo Partner", now).await?;
    let mut endpoint = EndpointSpec::new(
        ENDPOINT,
        PARTNER,
        &format!(
            "{}/partner/callback?state=[%CASHBACK:STATE%]&tx={{transaction_id}}&cid={{click_id}}&payout={{payout}}\
             &currency={{currency}}&id={{delivery_id}}",
            fake.base
        ),
    );
    endpoint.secrets = vec![Secret::generate()];
    callbacks::save_endpoint(service.db(), &endpoint, now).await?;
    Ok(())
}

/// How many past orders went each way.
#[derive(Debug, Default, Clone, Copy)]
pub struct Replayed {
    /// By postback.
    pub postbacks: usize,
    /// By the API import.
    pub imported: u64,
    /// By the report file.
    pub from_file: u64,
}

/// Replays the past: the clicks (recorded at their time), then the networks' reports of
/// the purchases, now, each the way its network reports.
pub async fn replay(
    service: &Service,
    runtime: &Arc<PluginRuntime>,
    base: &str,
    fake: &FakeNetwork,
    scheduler: &crate::scheduler::Scheduler,
) -> anyhow::Result<Replayed> {
    let now = service.now();
    let clock = ManualClock::at(now);
    let past = Service::new(service.db().clone(), runtime.clone(), clock.clone(), ServiceConfig::default());
    let mut n = 0usize;
    let mut click = |network: &str, purchase: i64, o: &Order| {
        n += 1;
        let click = NewClick {
            click_id: format!("{:032x}", rand::random::<u128>()),
            user_id: USERS[n % USERS.len()].into(),
            merchant_id: Some("demo-store".into()),
            network_id: Some(network.into()),
            link_id: Some("demo-store-link".into()),
            subs: vec![Some(["newsletter", "instagram", "search"][n % 3].into())],
            ..NewClick::default()
        };
        (click, purchase - o.click_before, n)
    };

    // S2S postbacks: the network calls the demo's server seconds after each purchase.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let mut replayed = Replayed::default();
    for o in &BY_POSTBACK {
        let purchase = now - o.delay;
        let (c, at, i) = click("demo-net", purchase, o);
        clock.set(at);
        past.register_click(c.clone()).await?;
        let (sale, comm) = (decimal(o.amount), decimal(o.amount * 8 / 100));
        let url = format!(
            "{base}/postback/demo-net?tid=H-P{i}&oid=O-H-P{i}&clickref={}&sale={sale}&comm={comm}&status={}&ts={purchase}\
             &token={}",
            c.click_id,
            o.status,
            super::DEMO_TOKEN
        );
        let answer = http.get(url).send().await?;
        anyhow::ensure!(answer.status().is_success(), "a past postback was refused: {}", answer.text().await?);
        replayed.postbacks += 1;
    }

    // The reporting API lists purchases hours old; the import job reads them now.
    let mut listed = Vec::new();
    for o in &BY_API {
        let purchase = now - o.delay;
        let (c, at, i) = click(API_NETWORK, purchase, o);
        clock.set(at);
        past.register_click(c.clone()).await?;
        listed.push(json!({
            "id": format!("H-A{i}"), "click_id": c.click_id, "order_id": format!("O-H-A{i}"), "status": o.status,
            "amount": decimal(o.amount), "commission": decimal(o.amount * 8 / 100), "currency": "EUR",
            "date": purchase, "merchant_id": "demo-store", "reason": null
        }));
    }
    *fake.transactions.lock().unwrap_or_else(|p| p.into_inner()) = listed;
    let run = scheduler.run_now(IMPORT_JOB).await.map_err(anyhow::Error::msg)?;
    anyhow::ensure!(run.outcome == "ok", "the demo's API import failed: {:?}", run.detail);
    replayed.imported = run.counts["tally"]["created"].as_u64().unwrap_or(0);

    // The offline report covers purchases days old; the operator imports it now.
    let mut csv = String::from("Transaction ID,Click Ref,Order ID,Sale Value,Commission,Status,Transaction Date\n");
    for o in &BY_FILE {
        let purchase = now - o.delay;
        let (c, at, i) = click(FILE_NETWORK, purchase, o);
        clock.set(at);
        past.register_click(c.clone()).await?;
        let date = chrono::DateTime::from_timestamp_millis(purchase)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        csv.push_str(&format!(
            "H-F{i},{},O-H-F{i},{},{},{},{date}\n",
            c.click_id,
            decimal(o.amount),
            decimal(o.amount * 8 / 100),
            o.status
        ));
    }
    let summary =
        crate::imports::import_file(service, runtime, FILE_NETWORK, "demo-report.csv", csv.into_bytes(), |_, _| {})
            .await
            .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(summary.rejected_rows.is_empty(), "the demo's report had refused rows: {summary:?}");
    replayed.from_file = summary.tally.created;
    Ok(replayed)
}

/// Waits until the partner has been called for every change so far (or `within` ran
/// out): `--once` exits right after, and its database must show the deliveries.
pub async fn deliver_all(deliverer: &callbacks::Deliverer, within: std::time::Duration) -> anyhow::Result<usize> {
    let until = tokio::time::Instant::now() + within;
    loop {
        deliverer.run_due().await?;
        let filter = callbacks::deliver::DeliveryFilter { state: Some("pending".into()), ..Default::default() };
        let waiting = callbacks::deliver::deliveries(deliverer.db(), &filter).await?;
        if waiting.is_empty() || tokio::time::Instant::now() >= until {
            let delivered = callbacks::deliver::DeliveryFilter {
                state: Some("delivered".into()),
                limit: Some(10_000),
                ..Default::default()
            };
            return Ok(callbacks::deliver::deliveries(deliverer.db(), &delivered).await?.len());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Minor units as the decimal a network writes (`12.34`).
fn decimal(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}
