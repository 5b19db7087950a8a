//! Soak: a real `cashbackd serve` process under a steady, open-loop load for a long time
//! (clicks, new postbacks, conversions moving to ADJUSTED / COMPLETED / REJECTED, and a
//! partner callback for every change), reporting per window the requests, errors,
//! p50 / p99 latency, the server's resident memory (VmRSS) and the callback backlog.
//! The baseline is the run itself: the first window after warm-up against the last.
//! Memory is flat when it stops growing once caches are warm; p99 is stable when the
//! last window's is within the noise of the first's.
//!
//! ```sh
//! scripts/build-plugins.sh && SOAK_MINUTES=30 cargo bench -p cashbackd --bench soak
//! ```
//!
//! Settings (environment): `SOAK_MINUTES` (10), `SOAK_RATE` (requests per second, 150),
//! `SOAK_WINDOW_SECS` (60), `SOAK_POSTGRES` (an admin URL: run on a fresh PostgreSQL
//! database instead of a SQLite file), `SOAK_DOC` (docs/RELIABILITY.md; `-` to leave it
//! alone). The section between `<!-- soak:begin -->` and `<!-- soak:end -->` is rewritten.

use anyhow::{Context, bail};
use axum::http::StatusCode;
use cashbackd::callbacks::{self, EndpointSpec};
use cashbackd::clock::SystemClock;
use cashbackd::conversions::{Service, ServiceConfig};
use cashbackd::db::Db;
use cashbackd::plugin::{PluginRuntime, RuntimeConfig};
use sqlx::{Connection, Executor};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USERS: u64 = 500;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run())
}

/// One window's figures.
#[derive(Debug, Clone, Default)]
struct Window {
    requests: u64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    rss_mib: f64,
    backlog: i64,
}

/// Conversions that can take another step: transaction, click, amount, steps taken.
type Open = Mutex<Vec<(String, String, i64, u8)>>;

/// What the clients record: latencies of the current window, errors.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
}

async fn run() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let minutes: f64 = env_or("SOAK_MINUTES", 10.0)?;
    let rate: f64 = env_or("SOAK_RATE", 150.0)?;
    let window_secs: u64 = env_or("SOAK_WINDOW_SECS", 60)?;
    let doc = match std::env::var("SOAK_DOC") {
        Ok(v) if v == "-" => None,
        Ok(v) => Some(PathBuf::from(v)),
        Err(_) => Some(root.join("docs/RELIABILITY.md")),
    };
    let postgres = std::env::var("SOAK_POSTGRES").ok();
    let dir = target.join("bench-soak");
    std::fs::create_dir_all(&dir)?;

    // The database, seeded as the demo is, plus users with clicks and a partner endpoint.
    let (url, drop_pg) = match &postgres {
        Some(admin) => {
            let name = format!("cbsoak_{}", std::process::id());
            let mut conn = sqlx::PgConnection::connect(admin).await?;
            conn.execute(format!("DROP DATABASE IF EXISTS \"{name}\"").as_str()).await?;
            conn.execute(format!("CREATE DATABASE \"{name}\"").as_str()).await?;
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
            (format!("{base}/{name}"), Some((admin.clone(), name)))
        }
        None => {
            let file = dir.join("soak.db");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
            (format!("sqlite://{}", file.display()), None)
        }
    };
    let backend = if drop_pg.is_some() { "PostgreSQL" } else { "SQLite" };
    let sink_hits = Arc::new(AtomicU64::new(0));
    let sink = {
        let hits = sink_hits.clone();
        let app = axum::Router::new().fallback(move || {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::Relaxed);
                StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    };
    {
        let db = Db::connect(&url).await?;
        let runtime = Arc::new(PluginRuntime::new(RuntimeConfig::new(target.join("test-plugin-store")))?);
        let service = Service::new(db, runtime, Arc::new(SystemClock), ServiceConfig::default());
        cashbackd::demo::seed(&service, &target.join("plugins/wasm32-wasip2")).await?;
        for n in 0..USERS {
            service.register_user(&format!("soak-user-{n}"), None).await?;
        }
        let now = service.now();
        callbacks::upsert_partner(service.db(), "soak-partner", "Soak partner", now).await?;
        let spec = EndpointSpec::new("soak-hook", "soak-partner", &format!("{sink}/cb?tx={{transaction_id}}"));
        callbacks::save_endpoint(service.db(), &spec, now).await?;
        service.db().pool.close().await;
    }

    // The server, as an operator runs it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cashbackd"))
        .arg("--database-url")
        .arg(&url)
        .arg("--plugin-store")
        .arg(target.join("test-plugin-store"))
        .args(["--callbacks-allow-private", "serve", "--listen", "127.0.0.1:0"])
        .env("CASHBACKD_LOG", "warn")
        // One client address sends everything: the per-address ingress limits would
        // answer most of this load 429.
        .env("CASHBACKD_INGRESS_RATE_LIMIT", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start cashbackd serve")?;
    let pid = child.id();
    let mut lines = std::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let base = loop {
        let line = lines.next().context("cashbackd exited before listening")??;
        if let Some(u) = line.strip_prefix("cashbackd listening on ") {
            break u.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    // The load: open loop at `rate` requests per second, whatever the latency, so a slow
    // server shows as latency, not as a lower offered rate.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let open: Arc<Open> = Arc::default();
    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(minutes * 60.0);
    let pacer = {
        let (http, tally, open, seq, base) = (http.clone(), tally.clone(), open.clone(), seq.clone(), base.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while Instant::now() < until {
                tick.tick().await;
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let (http, tally, open, base) = (http.clone(), tally.clone(), open.clone(), base.clone());
                tokio::spawn(async move { one(&http, &base, n, &open, &tally).await });
            }
        })
    };

    let db = Db::connect(&url).await?;
    let mut windows = Vec::new();
    let mut next = started + Duration::from_secs(window_secs);
    while next <= until + Duration::from_millis(500) {
        tokio::time::sleep_until(next.into()).await;
        let t = std::mem::take(&mut *tally.lock().expect("lock"));
        let mut l = t.latencies_us;
        l.sort_unstable();
        let pct = |p: f64| l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or(0);
        let backlog: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM callback_deliveries WHERE state = 'pending'")
            .fetch_one(&db.pool)
            .await?;
        let w = Window {
            requests: l.len() as u64,
            errors: t.errors,
            p50_ms: pct(0.50) as f64 / 1000.0,
            p99_ms: pct(0.99) as f64 / 1000.0,
            rss_mib: rss_mib(pid)?,
            backlog,
        };
        eprintln!(
            "soak [{backend}] minute {:>5.1}: {} ok, {} errors, p50 {:.1} ms, p99 {:.1} ms, RSS {:.1} MiB, {} callbacks pending",
            (windows.len() + 1) as f64 * window_secs as f64 / 60.0,
            w.requests,
            w.errors,
            w.p50_ms,
            w.p99_ms,
            w.rss_mib,
            w.backlog
        );
        windows.push(w);
        next += Duration::from_secs(window_secs);
    }
    pacer.await?;
    // Let the last requests finish, then check that nothing acknowledged was lost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let conversions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM conversions").fetch_one(&db.pool).await?;
    let changes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM conversion_changes").fetch_one(&db.pool).await?;
    let _ = child.kill();
    let _ = child.wait();
    let problems = cashbackd::ledger::check_invariants(&db.pool).await?;
    db.pool.close().await;
    if let Some((admin, name)) = drop_pg
        && let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await
    {
        let _ = conn.execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str()).await;
    }
    if !problems.is_empty() {
        bail!("ledger invariants broken after the soak: {problems:?}");
    }
    if windows.len() < 3 {
        bail!("a soak needs at least 3 windows (SOAK_MINUTES, SOAK_WINDOW_SECS)");
    }
    let report =
        report(backend, minutes, rate, window_secs, &windows, conversions, changes, sink_hits.load(Ordering::Relaxed));
    println!("{report}");
    if let Some(doc) = doc {
        rewrite_section(&doc, &report)?;
        eprintln!("wrote {}", doc.display());
    }
    Ok(())
}

/// One request of the mix: a click and its first postback, or the next step of an open
/// conversion (ADJUSTED, then COMPLETED or REJECTED).
async fn one(http: &reqwest::Client, base: &str, n: u64, open: &Open, tally: &Mutex<Tally>) {
    let step = if n.is_multiple_of(3) { open.lock().expect("lock").pop() } else { None };
    let sent = Instant::now();
    let ok = match step {
        None => {
            let user = n % USERS;
            let click = http.get(format!("{base}/c/demo-link?user=soak-user-{user}")).send().await;
            let click_id = click
                .ok()
                .filter(|r| r.status() == StatusCode::FOUND)
                .and_then(|r| r.headers().get("location")?.to_str().ok()?.rsplit('=').next().map(str::to_string));
            match click_id {
                Some(click_id) => {
                    let tid = format!("S{n}");
                    let amount = 2_000 + (n % 50) as i64 * 100;
                    let ok = postback(http, base, &tid, &click_id, amount, "pending").await;
                    if ok {
                        open.lock().expect("lock").insert(0, (tid, click_id, amount, 0));
                    }
                    ok
                }
                None => false,
            }
        }
        Some((tid, click_id, amount, stage)) => {
            let (status, amount) = match (stage, n % 4) {
                (0, 0) => ("adjusted", amount - 500),
                (_, 1) => ("declined", amount),
                _ => ("approved", amount),
            };
            let ok = postback(http, base, &tid, &click_id, amount, status).await;
            if ok && status == "adjusted" {
                open.lock().expect("lock").insert(0, (tid, click_id, amount, 1));
            }
            ok
        }
    };
    let mut t = tally.lock().expect("lock");
    if ok {
        t.latencies_us.push(sent.elapsed().as_micros() as u64);
    } else {
        t.errors += 1;
    }
}

async fn postback(http: &reqwest::Client, base: &str, tid: &str, click: &str, amount: i64, status: &str) -> bool {
    let url = format!(
        "{base}/postback/demo-net?tid={tid}&oid=O-{tid}&clickref={click}&sale={}.{:02}&comm={}.{:02}&status={status}&token={}",
        amount / 100,
        amount % 100,
        amount / 1000,
        (amount / 10) % 100,
        cashbackd::demo::DEMO_TOKEN
    );
    match http.get(url).send().await {
        Ok(r) => r.status() == StatusCode::OK && r.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// The process's resident memory, from /proc.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS in /proc/PID/status")?;
    Ok(kib / 1024.0)
}

#[allow(clippy::too_many_arguments)]
fn report(
    backend: &str,
    minutes: f64,
    rate: f64,
    window_secs: u64,
    windows: &[Window],
    conversions: i64,
    changes: i64,
    callbacks: u64,
) -> String {
    let first = &windows[1.min(windows.len() - 1)];
    let last = windows.last().expect("windows");
    let half = &windows[windows.len() / 2];
    let total: u64 = windows.iter().map(|w| w.requests).sum();
    let errors: u64 = windows.iter().map(|w| w.errors).sum();
    let mut out = String::new();
    out.push_str(&format!(
        "Last run: {backend}, {minutes} min at {rate} requests/s offered (clicks, postbacks, state changes; a callback \
         per change), {window_secs} s windows; {total} requests answered, {errors} errors; {conversions} conversions, \
         {changes} state changes, {callbacks} callbacks received by the partner. Run on the project's 2-core machine.\n\n"
    ));
    out.push_str("| | window 2 (warm) | middle window | last window | change, warm to last |\n|---|---|---|---|---|\n");
    out.push_str(&format!(
        "| resident memory (MiB) | {:.1} | {:.1} | {:.1} | {:+.1} % |\n",
        first.rss_mib,
        half.rss_mib,
        last.rss_mib,
        (last.rss_mib / first.rss_mib - 1.0) * 100.0
    ));
    out.push_str(&format!(
        "| p99 latency (ms) | {:.1} | {:.1} | {:.1} | {:+.1} % |\n",
        first.p99_ms,
        half.p99_ms,
        last.p99_ms,
        (last.p99_ms / first.p99_ms - 1.0) * 100.0
    ));
    out.push_str(&format!("| p50 latency (ms) | {:.1} | {:.1} | {:.1} | |\n", first.p50_ms, half.p50_ms, last.p50_ms));
    out.push_str(&format!(
        "| requests answered | {} | {} | {} | |\n| callbacks pending at the window's end | {} | {} | {} | |\n\n",
        first.requests, half.requests, last.requests, first.backlog, half.backlog, last.backlog
    ));
    out.push_str("Every window:\n\n| minute | answered | errors | p50 ms | p99 ms | RSS MiB | callbacks pending |\n|---|---|---|---|---|---|---|\n");
    for (i, w) in windows.iter().enumerate() {
        out.push_str(&format!(
            "| {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {} |\n",
            (i + 1) as f64 * window_secs as f64 / 60.0,
            w.requests,
            w.errors,
            w.p50_ms,
            w.p99_ms,
            w.rss_mib,
            w.backlog
        ));
    }
    out
}

fn rewrite_section(doc: &Path, report: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(doc).with_context(|| format!("read {}", doc.display()))?;
    let (begin, end) = ("<!-- soak:begin -->", "<!-- soak:end -->");
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        bail!("{} has no {begin} ... {end} section", doc.display());
    };
    let new = format!("{}{begin}\n{report}{}", &text[..b], &text[e..]);
    std::fs::write(doc, new)?;
    Ok(())
}
