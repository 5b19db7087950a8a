//! `cashbackd demo`: a running cashbackd on a fresh SQLite file with something to see. A
//! merchant with a rule plugin, a network with an adapter, a tracked link and users; then
//! real clicks and postbacks through the real HTTP server: credited, adjusted, completed,
//! held for review, and one parked because its click is unknown. Then the past
//! (`history.rs`): orders reported by postback, API import and file, seconds, hours and
//! days after their purchase (seed 000), and a partner receiving their callbacks.

mod history;

use crate::conversions::{Service, Status};
use crate::http::AppState;
use crate::ingest::{self, InboundAuth, Link, Network};
use crate::plugin::PluginRuntime;
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

/// The demo network's postback token (a demo; never use a known token in production).
pub const DEMO_TOKEN: &str = "demo-token";

/// Seeds the demo configuration from the built plugins in `plugins`.
pub async fn seed(service: &Service, plugins: &Path) -> anyhow::Result<()> {
    let read = |name: &str| {
        let path = plugins.join(name);
        std::fs::read(&path).with_context(|| {
            format!("{} not found: build the plugins first (scripts/build-plugins.sh)", path.display())
        })
    };
    // Through the registry, as `plugin upload` stores them: compiled, checked, fixtures run.
    let rule = crate::registry::upload(service, &read("flat_rate.wasm")?).await?.plugin;
    let adapter = crate::registry::upload(service, &read("generic_s2s.wasm")?).await?.plugin;
    service.upsert_merchant("demo-shop", "Demo Shop", false, 30).await?;
    let rule_config = serde_json::json!({
        "rate_bps": 350, "excluded_categories": ["gift-cards"], "max_cashback": 2500, "hold_above": 50000
    });
    service.set_rules("demo-shop", &[(rule.digest.to_string(), rule_config)]).await?;
    let network = Network {
        id: "demo-net".into(),
        name: "Demo Network".into(),
        adapter_digest: Some(adapter.digest.to_string()),
        // A network that reports in euros only, with the purchase time (`ts`, Unix seconds
        // or milliseconds, or RFC 3339): the Delays page measures from it.
        adapter_config: serde_json::json!({
            "params": { "transaction_id": "tid", "click_id": "clickref", "amount": "sale", "commission": "comm",
                        "state": "status", "order_id": "oid", "event_time": "ts" },
            "states": { "pending": "PENDING", "adjusted": "ADJUSTED", "approved": "COMPLETED", "declined": "REJECTED",
                        "reversed": "REVERSED" },
            "default_currency": "EUR"
        }),
        auth: InboundAuth::Token(DEMO_TOKEN.into()),
    };
    ingest::upsert_network(service.db(), &network, service.now()).await?;
    let link = Link {
        id: "demo-link".into(),
        merchant_id: "demo-shop".into(),
        network_id: "demo-net".into(),
        url_template: "https://shop.example/landing?clickref={click_id}&sub1={sub1}".into(),
    };
    ingest::upsert_link(service.db(), &link, service.now()).await?;
    // carol has no orders yet: the new customer of docs/TUTORIAL-RULE.md.
    for user in ["alice", "bob", "carol"] {
        service.register_user(user, Some(&format!("{user}@example.com"))).await?;
    }
    // A second merchant on the config-only `rate-table` rule, where the steady stream of
    // the running demo goes (demo-shop stays as the tutorial expects it).
    let table = crate::registry::upload(service, &read("rate_table.wasm")?).await?.plugin;
    service.upsert_merchant("demo-store", "Demo Store", false, 14).await?;
    let table_config = serde_json::json!({
        "default_bps": 200, "categories": {"books": {"bps": 500}}, "gift_card_categories": ["gift-cards"],
        "tiers": [{"above": 10000, "bps": 300}], "max_cashback": 3000, "hold_above": 40000
    });
    service.set_rules("demo-store", &[(table.digest.to_string(), table_config)]).await?;
    let store_link = Link {
        id: "demo-store-link".into(),
        merchant_id: "demo-store".into(),
        network_id: "demo-net".into(),
        url_template: "https://store.example/go?clickref={click_id}&sub1={sub1}".into(),
    };
    ingest::upsert_link(service.db(), &store_link, service.now()).await?;
    for user in STREAM_USERS {
        service.register_user(user, Some(&format!("{user}@example.com"))).await?;
    }
    Ok(())
}

/// The shoppers of the steady stream.
const STREAM_USERS: [&str; 3] = ["dave", "erin", "frank"];

/// What the running demo keeps doing, like a small live network: every few seconds a
/// shopper clicks demo-store's link and the network reports the purchase; older orders
/// are adjusted now and then, then completed (or declined), so the dashboard's figures
/// move. Failures are logged and the stream goes on.
pub async fn stream(base: String, every: std::time::Duration) {
    let client = match reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "demo stream not started");
            return;
        }
    };
    // (transaction, click, amount, purchase time): a network's later postbacks for an
    // order carry its purchase time again (the transaction's date), not their own.
    let mut open: std::collections::VecDeque<(String, String, i64, i64)> = std::collections::VecDeque::new();
    // Clicked, bought (a second later), reported two ticks later: a postback's seconds.
    let mut bought: std::collections::VecDeque<(String, i64)> = std::collections::VecDeque::new();
    let mut tick = tokio::time::interval(every);
    for n in 1u64.. {
        tick.tick().await;
        let user = STREAM_USERS[(n % 3) as usize];
        let step = async {
            let response = client.get(format!("{base}/c/demo-store-link?user={user}&sub1=stream")).send().await?;
            let location = response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default();
            let click = url::Url::parse(location)?
                .query_pairs()
                .find(|(k, _)| k == "clickref")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            bought.push_back((click, now_ms() + 1_000));
            let amount = 1_500 + (n as i64 * 7_919) % 48_000;
            let send = |tid: &str, click: &str, minor: i64, status: &str, at: i64| {
                let url = format!(
                    "{base}/postback/demo-net?tid={tid}&oid=O-{tid}&clickref={click}&sale={}.{:02}&comm={}.{:02}\
                     &status={status}&ts={at}&token={DEMO_TOKEN}",
                    minor / 100,
                    minor % 100,
                    minor * 8 / 10_000,
                    minor * 8 / 100 % 100
                );
                client.get(url).send()
            };
            if bought.len() <= 2 {
                return anyhow::Ok(());
            }
            let Some((click, purchased)) = bought.pop_front() else { return anyhow::Ok(()) };
            let tid = format!("LIVE-{n}");
            send(&tid, &click, amount, "pending", purchased).await?;
            open.push_back((tid, click, amount, purchased));
            if open.len() > 5
                && let Some((tid, click, amount, purchased)) = open.pop_front()
            {
                let amount = if n % 4 == 0 {
                    send(&tid, &click, amount * 8 / 10, "adjusted", purchased).await?;
                    amount * 8 / 10
                } else {
                    amount
                };
                send(&tid, &click, amount, if n % 9 == 0 { "declined" } else { "approved" }, purchased).await?;
            }
            anyhow::Ok(())
        };
        if let Err(e) = step.await {
            tracing::warn!(error = %e, "demo stream step failed");
        }
    }
}

/// Drives clicks and postbacks through the server at `base`.
pub async fn simulate(base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let click = |user: &'static str, sub: &'static str| {
        let client = client.clone();
        async move {
            let response = client.get(format!("{base}/c/demo-link?user={user}&sub1={sub}")).send().await?;
            let location =
                response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let url = url::Url::parse(&location).context("the click did not redirect")?;
            let id = url.query_pairs().find(|(k, _)| k == "clickref").map(|(_, v)| v.into_owned()).unwrap_or_default();
            anyhow::Ok(id)
        }
    };
    let postback = |query: String| {
        let client = client.clone();
        async move {
            let response = client.get(format!("{base}/postback/demo-net?{query}&token={DEMO_TOKEN}")).send().await?;
            anyhow::Ok(response.status().as_u16())
        }
    };
    let alice = click("alice", "spring-newsletter").await?;
    let bob = click("bob", "instagram").await?;
    // They buy as soon as they land; the network reports each purchase (`ts`) at once.
    let at = now_ms();
    for q in [
        format!("tid=T-1001&oid=O-1&clickref={alice}&sale=120.00&comm=9.60&status=pending&ts={at}"),
        format!("tid=T-1001&oid=O-1&clickref={alice}&sale=120.00&comm=9.60&status=pending&ts={at}"),
        format!("tid=T-1001&oid=O-1&clickref={alice}&sale=90.00&comm=7.20&status=adjusted&ts={at}"),
        format!("tid=T-1002&oid=O-2&clickref={bob}&sale=45.50&comm=3.64&status=approved&ts={at}"),
        format!("tid=T-1003&oid=O-3&clickref={bob}&sale=899.00&comm=71.92&status=pending&ts={at}"),
        format!("tid=T-1004&oid=O-4&clickref=unknown-click&sale=30.00&comm=2.40&status=pending&ts={at}"),
        format!("tid=T-1005&oid=O-5&clickref={alice}&sale=60.00&comm=4.80&status=declined&ts={at}"),
    ] {
        postback(q).await?;
    }
    Ok(())
}

/// Prints balances and conversions.
pub async fn report(service: &Service) -> anyhow::Result<()> {
    println!("\nbalances (EUR):");
    for user in ["alice", "bob"] {
        let b = crate::ledger::user_balances(&service.db().pool, user).await?;
        let get = |kind: &str| b.iter().find(|x| x.kind == kind).map_or(0, |x| x.balance);
        println!("  {user:<6} pending {:>8}  available {:>8}", money(get("pending")), money(get("available")));
    }
    println!("\nconversions:");
    for status in [Status::Processed, Status::Held, Status::Parked, Status::Rejected] {
        for c in service.by_status(status, 50).await? {
            println!(
                "  {} {:<9} {:<14} order {:>9}  cashback {:>7}  {}",
                c.transaction_id,
                c.state.as_str(),
                c.status.as_str(),
                money(c.amount),
                money(c.cashback),
                c.status_reason.unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    use crate::clock::Clock;
    crate::clock::SystemClock.now()
}

fn money(minor: i64) -> String {
    format!("{}{}.{:02}", if minor < 0 { "-" } else { "" }, minor.abs() / 100, minor.abs() % 100)
}

/// Runs the demo: seed, serve, simulate, report; then keep serving unless `once`. The
/// callback worker is running already; the scheduler runs its retries and the
/// notification batches.
///
/// The server runs with the operator's settings (`http`: body caps, ingress rate limits);
/// the demo's own traffic stays far below the default limits (a few requests at start,
/// then a click and a postback every few seconds).
pub async fn run(
    service: Service,
    runtime: Arc<PluginRuntime>,
    (deliverer, notifier, http): (crate::callbacks::Deliverer, crate::notify::Notifier, crate::http::HttpConfig),
    plugins: &Path,
    listen: std::net::SocketAddr,
    database: &str,
    once: bool,
) -> anyhow::Result<()> {
    let fake = history::FakeNetwork::start().await?;
    seed(&service, plugins).await?;
    history::configure(&service, plugins, &fake).await?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let base = format!("http://{}", listener.local_addr()?);
    let state = AppState { service: service.clone(), runtime: runtime.clone() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The dashboard runs jobs with the server's own notifier.
    let app = crate::http::router_with(state, http)
        .layer(axum::Extension(deliverer.clone()))
        .layer(axum::Extension(notifier.clone()));
    let server = tokio::spawn(crate::http::serve_router(app, listener, async {
        tokio::select! { _ = stopped => (), _ = tokio::signal::ctrl_c() => () }
    }));
    // The dashboard's and the API's backtests run here, as in `serve`.
    tokio::spawn(crate::backtests::Worker::new(service.clone(), "demo").run());
    let scheduler = crate::scheduler::Scheduler::new(service.clone(), runtime.clone(), "demo")
        .with_callbacks(deliverer.clone())
        .with_notifier(notifier);
    crate::scheduler::ensure_system_jobs(&service).await.map_err(anyhow::Error::msg)?;
    simulate(&base).await?;
    let past = history::replay(&service, &runtime, &base, &fake, &scheduler).await?;
    report(&service).await?;
    let delivered = history::deliver_all(&deliverer, std::time::Duration::from_secs(20)).await?;
    println!(
        "\nthe past (Delays page): {} orders reported by postback, seconds after the purchase; {} by {}'s hourly API \
         import, hours after; {} by a report file of {}, days after",
        past.postbacks,
        past.imported,
        history::API_NETWORK,
        past.from_file,
        history::FILE_NETWORK
    );
    println!(
        "partner {} (Deliveries page): {delivered} callbacks delivered to its endpoint {}, {} received",
        history::PARTNER,
        history::ENDPOINT,
        fake.callbacks_received()
    );
    println!("\ncashbackd is running on {base} (database {})", crate::db::redact(database));
    // A fresh admin token for the demo only: every demo database is new, so is its token.
    let token =
        crate::auth::create_token(service.db(), "demo-operator", crate::auth::Scope::Admin, service.now(), None)
            .await?;
    println!("dashboard: {base}/dashboard (sign in with the demo's admin token below)");
    println!("  {token}");
    println!("try:");
    println!("  curl -i '{base}/c/demo-link?user=alice&sub1=try-me'");
    println!(
        "  curl \"{base}/postback/demo-net?tid=T-2001&oid=O-2001&clickref=CLICK_ID&sale=50.00&comm=4.00&status=pending\
         &ts=$(date +%s)&token={DEMO_TOKEN}\""
    );
    println!("  cashbackd --database-url {database} jobs list");
    if once {
        let _ = stop.send(());
    } else {
        println!("a steady stream of clicks and postbacks for demo-store runs every 3 s; Ctrl-C to stop.");
        tokio::spawn(stream(base.clone(), std::time::Duration::from_secs(3)));
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut server = server;
        loop {
            tokio::select! {
                _ = tick.tick() => { let _ = scheduler.tick().await; }
                done = &mut server => { done??; return Ok(()); }
            }
        }
    }
    server.await??;
    Ok(())
}
