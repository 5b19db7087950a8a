//! `cashbackd-load`: drives write load (manual ledger adjustments through the
//! group-commit writer) against a database and reports the throughput as one JSON line.
//!
//! ```sh
//! cashbackd-load --database-url sqlite:///tmp/load.db --concurrency 64 --seconds 5 --max-batch 1
//! ```
//!
//! Each of `--concurrency` tasks submits `Service::adjust` with unique keys
//! `{prefix}-{task}-{n}` until the time or the number of writes runs out. With
//! `--ack-log FILE`, every acknowledged key is appended to FILE as one line, written with
//! a single unbuffered `write` after the service answered (that is, after the commit):
//! a key in that file was acknowledged. The crash test (`tests/it/crash.rs`) relies on it.
//!
//! `--callbacks N` measures partner callbacks instead: N changes are put in the outbox
//! for one GET endpoint (macros, a static parameter, an HMAC signature) pointing at a
//! local sink answering 200, then delivered by the delivery worker (claim with a lease,
//! send concurrently, record every attempt), timed; in the same run, the same number of
//! GET requests to the same sink by a bare reqwest loop with the same concurrency, timed.
//! Rounds alternate the two; one JSON line per round and a summary.
//!
//! Then the isolation of endpoints (issue 15), one JSON line with `"mode":"isolation"`:
//! N changes told to five healthy endpoints (N/5 each, all due at once), delivered by
//! the worker with its default limits, and the healthy deliveries' p50 and p99 latency
//! from the start to their arrival at the sink; then the same again beside an endpoint
//! that never answers (the default 10 s timeout) and one that answers 500 at once, each
//! with as many deliveries, in the same run. Target: the healthy p99 within 2x.
//!
//! ```sh
//! cashbackd-load --database-url sqlite:///tmp/cb.db --callbacks 5000 --concurrency 32 --rounds 3
//! ```

use anyhow::{Context, bail};
use cashbackd::clock::SystemClock;
use cashbackd::conversions::writer::WriterConfig;
use cashbackd::conversions::{Outcome, Service, ServiceConfig};
use cashbackd::db::{Backend, Db, redact};
use cashbackd::plugin::{PluginRuntime, RuntimeConfig};
use clap::Parser;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Drive write load against a cashbackd database and report writes per second.
#[derive(Debug, Parser)]
#[command(name = "cashbackd-load", version, about)]
struct Args {
    /// `sqlite://PATH` or `postgres://USER@HOST/DB` (migrated on connect).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Tasks submitting writes at the same time.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Run for this many seconds (the default: 5).
    #[arg(long, conflicts_with = "writes")]
    seconds: Option<f64>,
    /// Stop after this many writes in total instead.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    writes: Option<u64>,
    /// Most writes per transaction; 1 commits every write on its own.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_batch: u32,
    /// Append every acknowledged key to this file, one per line.
    #[arg(long)]
    ack_log: Option<PathBuf>,
    /// Prefix of the idempotency keys (`{prefix}-{task}-{n}`); use a new one per run on
    /// the same database, or every write is a duplicate.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// The writes are spread over this many user ids.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    users: u32,
    /// Measure callback deliveries instead: this many per round (see the module doc).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), conflicts_with_all = ["writes", "seconds", "ack_log"])]
    callbacks: Option<u64>,
    /// Rounds of the callbacks benchmark (each: the bare loop, then the worker).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// The delivery worker's claim size (`callbacks.batch`); its default without it.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    callback_batch: Option<u32>,
    /// Plugin store of the (unused) plugin runtime the service needs.
    #[arg(long, env = "CASHBACKD_PLUGIN_STORE")]
    plugin_store: Option<PathBuf>,
}

/// When the load stops.
#[derive(Debug, Clone, Copy)]
enum Limit {
    Until(Instant),
    Writes(u64),
}

/// The line printed at the end (fields in this order).
#[derive(Debug, serde::Serialize)]
struct Report {
    backend: &'static str,
    max_batch: u32,
    concurrency: u32,
    /// Acknowledged writes that posted.
    writes: u64,
    /// Wall time from the first write to the last answer.
    seconds: f64,
    writes_per_sec: f64,
    /// Acknowledged writes whose key existed already.
    duplicates: u64,
    /// Failed writes.
    errors: u64,
}

/// What the tasks count together.
#[derive(Debug, Default)]
struct Counters {
    /// Writes claimed (for `--writes`).
    claimed: AtomicU64,
    /// Acknowledged writes that posted.
    posted: AtomicU64,
    /// Acknowledged writes whose key existed already (nothing posted).
    duplicates: AtomicU64,
    /// Refused or failed writes (each stops its task).
    errors: AtomicU64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CASHBACKD_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(n) = args.callbacks {
        return callbacks::run(&args, n).await;
    }
    let seconds = args.seconds.unwrap_or(5.0);
    if !(seconds.is_finite() && seconds > 0.0) {
        bail!("--seconds must be a positive number");
    }
    let db =
        Db::connect(&args.database_url).await.with_context(|| format!("opening {}", redact_any(&args.database_url)))?;
    let backend = match db.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let store = args.plugin_store.clone().unwrap_or_else(|| std::env::temp_dir().join("cashbackd-load-plugins"));
    let plugins = Arc::new(
        PluginRuntime::new(RuntimeConfig::new(&store))
            .with_context(|| format!("plugin runtime in {}", store.display()))?,
    );
    let service = Service::new(
        db,
        plugins,
        Arc::new(SystemClock),
        ServiceConfig {
            writer: WriterConfig { max_batch: args.max_batch as usize, queue: 4096 },
            ..ServiceConfig::default()
        },
    );
    let ack_log = match &args.ack_log {
        Some(path) => Some(Arc::new(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the ack log {}", path.display()))?,
        ))),
        None => None,
    };

    let started = Instant::now();
    let limit = match args.writes {
        Some(n) => Limit::Writes(n),
        None => Limit::Until(started + Duration::from_secs_f64(seconds)),
    };
    let counters = Arc::new(Counters::default());
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..args.concurrency {
        tasks.spawn(worker(
            service.clone(),
            task,
            args.prefix.clone(),
            args.users,
            limit,
            counters.clone(),
            ack_log.clone(),
        ));
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.context("a load task panicked")?;
        if let Err(e) = result
            && first_error.is_none()
        {
            first_error = Some(e);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let writes = counters.posted.load(Ordering::Relaxed);
    let duplicates = counters.duplicates.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let report = Report {
        backend,
        max_batch: args.max_batch,
        concurrency: args.concurrency,
        writes,
        seconds: round3(elapsed),
        writes_per_sec: round3(writes as f64 / elapsed.max(1e-9)),
        duplicates,
        errors,
    };
    println!("{}", serde_json::to_string(&report).context("encoding the report")?);
    service.db().pool.close().await;
    if let Some(e) = first_error {
        return Err(e);
    }
    if errors > 0 {
        eprintln!("error: {errors} writes failed (see the log above)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// One task: submits writes until the limit, one at a time.
async fn worker(
    service: Service,
    task: u32,
    prefix: String,
    users: u32,
    limit: Limit,
    counters: Arc<Counters>,
    ack_log: Option<Arc<Mutex<File>>>,
) -> anyhow::Result<()> {
    let mut n: u64 = 0;
    loop {
        match limit {
            Limit::Until(deadline) if Instant::now() >= deadline => return Ok(()),
            Limit::Writes(total) if counters.claimed.fetch_add(1, Ordering::Relaxed) >= total => {
                return Ok(());
            }
            _ => {}
        }
        let key = format!("{prefix}-{task}-{n}");
        let user = format!("user-{}", (u64::from(task) * 31 + n) % u64::from(users));
        let amount = 1 + (n % 999) as i64;
        n += 1;
        match service.adjust(&key, &user, "EUR", amount, "cashbackd-load", "load test").await {
            Ok(Outcome::Adjusted { posted, .. }) => {
                if posted {
                    counters.posted.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(log) = &ack_log {
                    acknowledge(log, &key)?;
                }
            }
            Ok(other) => bail!("adjustment {key}: unexpected outcome {other:?}"),
            Err(e) => {
                // Not retried: a load run must not hide failures. This task stops; the
                // others go on, and the run exits non-zero.
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(key, error = %e, "write failed; this task stops");
                return Ok(());
            }
        }
    }
}

/// Appends `key` and a newline with one `write` call on the (unbuffered) file, so a
/// process killed at any moment leaves whole lines, at most missing the last ones.
fn acknowledge(log: &Mutex<File>, key: &str) -> anyhow::Result<()> {
    let line = format!("{key}\n");
    let mut file = log.lock().map_err(|_| anyhow::anyhow!("ack log lock poisoned"))?;
    file.write_all(line.as_bytes()).context("writing the ack log")?;
    file.flush().context("flushing the ack log")?;
    Ok(())
}

fn redact_any(url: &str) -> String {
    if url.starts_with("sqlite:") { url.to_string() } else { redact(url) }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The callbacks benchmark: the delivery worker vs a bare reqwest loop, same sink.
mod callbacks {
    use super::{Args, round3};
    use anyhow::Context;
    use cashbackd::callbacks::sign::Secret;
    use cashbackd::callbacks::{self, Deliverer, DeliveryConfig, EndpointSpec};
    use cashbackd::clock::{Clock, SystemClock};
    use cashbackd::conversions::{State, Status};
    use cashbackd::db::{Backend, Db};
    use cashbackd::outbox::{Change, ChangeKind, Snapshot, enqueue};
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    #[derive(Debug, serde::Serialize)]
    struct Round {
        mode: &'static str,
        backend: &'static str,
        round: u32,
        deliveries: u64,
        concurrency: u32,
        worker_seconds: f64,
        worker_per_sec: f64,
        bare_seconds: f64,
        bare_per_sec: f64,
        ratio: f64,
        /// The at-least-once window: from each answer to its record's commit, mean and
        /// the histogram bucket holding the 99th percentile (its upper bound).
        unrecorded_mean_ms: f64,
        unrecorded_p99_ms: f64,
        /// The worker's steps (`cashbackd_callback_step_*`): how many, mean time (ms) and
        /// mean deliveries of each.
        records: u64,
        record_mean_ms: f64,
        record_mean_rows: f64,
        claims: u64,
        claim_mean_ms: f64,
        claim_mean_rows: f64,
    }

    /// Sum and count of a histogram of the process's recorder, for one `step` label.
    fn step_totals(text: &str, name: &str, step: &str) -> (f64, f64) {
        let label = format!("{{step=\"{step}\"}}");
        let value = |suffix: &str| {
            let key = format!("{name}_{suffix}{label} ");
            text.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
        };
        (value("sum"), value("count"))
    }

    /// The worker's steps as the recorder has them: (seconds, rows, count) of the record and
    /// of the claim.
    fn steps() -> [(f64, f64, f64); 2] {
        let text = cashbackd::metrics::handle().map(|h| h.render()).unwrap_or_default();
        ["record", "claim"].map(|step| {
            let (seconds, count) = step_totals(&text, cashbackd::metrics::CALLBACK_STEP_SECONDS, step);
            let (rows, _) = step_totals(&text, cashbackd::metrics::CALLBACK_STEP_ROWS, step);
            (seconds, rows, count)
        })
    }

    /// `cashbackd_callback_unrecorded_seconds` as the process's recorder has it: the
    /// sum, the count and the cumulative buckets (upper bound in seconds, count).
    struct Window {
        sum: f64,
        count: f64,
        buckets: Vec<(f64, f64)>,
    }

    impl Window {
        fn read() -> Window {
            let text = cashbackd::metrics::handle().map(|h| h.render()).unwrap_or_default();
            let name = cashbackd::metrics::CALLBACK_UNRECORDED;
            let mut w = Window { sum: 0.0, count: 0.0, buckets: Vec::new() };
            for line in text.lines().filter(|l| l.starts_with(name)) {
                let Some((key, value)) = line.rsplit_once(' ') else { continue };
                let Ok(value) = value.parse::<f64>() else { continue };
                if key == format!("{name}_sum") {
                    w.sum = value;
                } else if key == format!("{name}_count") {
                    w.count = value;
                } else if let Some(le) = key.split("le=\"").nth(1).and_then(|r| r.split('"').next()) {
                    w.buckets.push((le.parse().unwrap_or(f64::INFINITY), value));
                }
            }
            w
        }

        /// Mean and p99 bucket bound (ms) of what was recorded since `before`.
        fn since(&self, before: &Window) -> (f64, f64) {
            let count = self.count - before.count;
            if count <= 0.0 {
                return (0.0, 0.0);
            }
            let mean = (self.sum - before.sum) / count * 1000.0;
            let earlier = |le: f64| before.buckets.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, n)| *n);
            let p99 = self
                .buckets
                .iter()
                .find(|(le, n)| n - earlier(*le) >= 0.99 * count)
                .map_or(f64::INFINITY, |(le, _)| le * 1000.0);
            (mean, p99)
        }
    }

    async fn sink() -> anyhow::Result<(String, Arc<AtomicU64>)> {
        let hits = Arc::new(AtomicU64::new(0));
        let counted = hits.clone();
        let app = axum::Router::new().fallback(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the sink")?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((base, hits))
    }

    /// N changes of N conversions, each with its delivery to every endpoint.
    async fn fill(db: &Db, round: u32, n: u64, now: i64) -> anyhow::Result<()> {
        let mut i = 0;
        while i < n {
            let mut tx = cashbackd::db::begin(&db.pool).await?;
            let batch: Vec<Change> = (i..(i + 500).min(n))
                .map(|k| Change {
                    conversion_id: format!("cv_bench_{round}_{k}"),
                    version: 1,
                    journal_seq: None,
                    at: now,
                    snapshot: Snapshot {
                        kind: ChangeKind::Conversion,
                        state: State::Pending,
                        status: Status::Processed,
                        network_id: "bench-net".into(),
                        transaction_id: format!("T-{round}-{k}"),
                        click_id: Some(format!("click-{k}")),
                        user_id: Some(format!("user-{}", k % 100)),
                        merchant_id: Some("bench-shop".into()),
                        merchant_ref: Some("M-1".into()),
                        order_id: Some(format!("order {k}")),
                        event_type: "sale".into(),
                        reason: None,
                        currency: "EUR".into(),
                        amount: 10_000 + k as i64,
                        commission: 800,
                        cashback: 500,
                        reward_delay_days: Some(30),
                        line_ids: vec!["L1".into()],
                    },
                })
                .collect();
            enqueue(&mut tx, &batch, &mut 0).await?;
            tx.commit().await?;
            i += 500;
        }
        Ok(())
    }

    pub async fn run(args: &Args, n: u64) -> anyhow::Result<ExitCode> {
        let db = Db::connect(&args.database_url).await.context("opening the database")?;
        let backend = match db.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        // The process's recorder, for the at-least-once window the worker measures.
        cashbackd::metrics::install();
        let (base, hits) = sink().await?;
        let clock = Arc::new(SystemClock);
        let now = clock.now();
        callbacks::upsert_partner(&db, "bench", "Bench", now).await?;
        let template = format!(
            "{base}/pb?state=[%CASHBACK:STATE%]&cid={{click_id}}&tx={{transaction_id}}&pay={{payout}}&oid=[%CASHBACK:ORDER:ID%]&id={{delivery_id}}"
        );
        let mut spec = EndpointSpec::new("bench", "bench", &template);
        spec.params.insert("source".into(), "cashbackd".into());
        spec.secrets = vec![Secret::parse("bench-shared-secret-0123456789", false).map_err(anyhow::Error::msg)?];
        callbacks::save_endpoint(&db, &spec, now).await?;
        let concurrency = args.concurrency as usize;
        // The worker as `serve` runs it, but for the loopback sink and the in-flight limit.
        // One endpoint stands for every partner here: it may use the whole in-flight
        // limit, as the bare loop does (the isolation run below keeps the default share).
        let config = DeliveryConfig {
            allow_private: true,
            concurrency,
            endpoint_concurrency: concurrency,
            batch: args.callback_batch.map_or(DeliveryConfig::default().batch, |b| b as usize),
            ..DeliveryConfig::default()
        };
        let deliverer = Deliverer::new(db.clone(), clock.clone(), config, format!("load-{}", std::process::id()))?;
        let bare = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build()?;
        let mut ratios = Vec::new();
        for round in 0..args.rounds {
            fill(&db, round, n, clock.now()).await?;
            // PostgreSQL plans on the tables' statistics, which autovacuum keeps current
            // within a minute of a change like this one (thousands of rows from nothing).
            // Measured right after the fill, the first round would plan the claim on the
            // statistics of empty tables and measure that minute instead; so the
            // statistics are brought up to date first, as autovacuum would (not timed).
            if db.backend == Backend::Postgres {
                sqlx::query("ANALYZE callback_deliveries, conversion_changes, callback_endpoints, callback_attempts")
                    .execute(&db.pool)
                    .await?;
            }
            // The bare loop: the same number of GETs of the same shape, same concurrency.
            let started = Instant::now();
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..concurrency {
                let (client, next, base) = (bare.clone(), next.clone(), base.clone());
                tasks.spawn(async move {
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= n {
                            return Ok::<(), reqwest::Error>(());
                        }
                        let url = format!(
                            "{base}/pb?state=PENDING&cid=click-{k}&tx=T-{round}-{k}&pay=5.00&oid=order%20{k}&id=cbk_d{k}&source=cashbackd&signature=0"
                        );
                        let r = client.get(url).send().await?;
                        let _ = r.bytes().await?;
                    }
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.context("a bare task panicked")??;
            }
            let bare_seconds = started.elapsed().as_secs_f64();
            let before = hits.load(Ordering::Relaxed);
            let window_before = Window::read();
            let steps_before = steps();
            let started = Instant::now();
            let summary = deliverer.run_due().await?;
            let worker_seconds = started.elapsed().as_secs_f64();
            let (unrecorded_mean_ms, unrecorded_p99_ms) = Window::read().since(&window_before);
            let steps_after = steps();
            // (count, mean ms, mean rows) of each step during the worker's run.
            let step = |i: usize| {
                let ((s0, r0, c0), (s1, r1, c1)) = (steps_before[i], steps_after[i]);
                let n = (c1 - c0).max(0.0);
                let per = |x: f64| if n > 0.0 { x / n } else { 0.0 };
                (n as u64, round3(per(s1 - s0) * 1000.0), round3(per(r1 - r0)))
            };
            let ((records, record_mean_ms, record_mean_rows), (claims, claim_mean_ms, claim_mean_rows)) =
                (step(0), step(1));
            anyhow::ensure!(
                summary.delivered as u64 == n && hits.load(Ordering::Relaxed) - before == n,
                "round {round}: {} delivered, {} requests, of {n}",
                summary.delivered,
                hits.load(Ordering::Relaxed) - before
            );
            let worker_per_sec = n as f64 / worker_seconds.max(1e-9);
            let bare_per_sec = n as f64 / bare_seconds.max(1e-9);
            let ratio = worker_per_sec / bare_per_sec;
            ratios.push(ratio);
            let line = Round {
                mode: "callbacks",
                backend,
                round,
                deliveries: n,
                concurrency: args.concurrency,
                worker_seconds: round3(worker_seconds),
                worker_per_sec: round3(worker_per_sec),
                bare_seconds: round3(bare_seconds),
                bare_per_sec: round3(bare_per_sec),
                ratio: round3(ratio),
                unrecorded_mean_ms: round3(unrecorded_mean_ms),
                unrecorded_p99_ms: round3(unrecorded_p99_ms),
                records,
                record_mean_ms,
                record_mean_rows,
                claims,
                claim_mean_ms,
                claim_mean_rows,
            };
            println!("{}", serde_json::to_string(&line)?);
        }
        ratios.sort_by(f64::total_cmp);
        eprintln!("median ratio (worker / bare reqwest): {:.3}", ratios[ratios.len() / 2]);
        // The throughput endpoint is done with: the isolation run has its own.
        callbacks::disable(&db, "bench", "benchmark round over", clock.now()).await?;
        let isolation = isolation(&db, clock.clone(), backend, n, concurrency).await?;
        println!("{}", serde_json::to_string(&isolation)?);
        db.pool.close().await;
        Ok(ExitCode::SUCCESS)
    }

    #[derive(Debug, serde::Serialize)]
    struct Isolation {
        mode: &'static str,
        backend: &'static str,
        healthy_endpoints: usize,
        healthy_deliveries: u64,
        concurrency: usize,
        endpoint_concurrency: usize,
        alone_p50_ms: f64,
        alone_p99_ms: f64,
        beside_bad_p50_ms: f64,
        beside_bad_p99_ms: f64,
        /// The healthy p99 beside the bad endpoints over the healthy p99 alone.
        p99_ratio: f64,
    }

    /// A sink for the isolation run: `/ok/...` answers 200 and records when each request
    /// arrived, `/fail` answers 500, `/hang` never answers.
    async fn latency_sink() -> anyhow::Result<(String, Arc<std::sync::Mutex<Vec<Instant>>>)> {
        let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = arrivals.clone();
        let app = axum::Router::new()
            .route("/hang", axum::routing::get(std::future::pending::<&'static str>))
            .route("/fail", axum::routing::get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "no") }))
            .fallback(move || {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Instant::now());
                    "ok"
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the sink")?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((base, arrivals))
    }

    /// One latency run: endpoints `ok{tag}-0..5`, and with `bad` the hanging and failing
    /// ones; `n` changes told to every one of them. Returns the healthy latencies, ms,
    /// sorted.
    async fn latency_run(
        db: &Db,
        clock: Arc<SystemClock>,
        tag: &str,
        n: u64,
        bad: bool,
        concurrency: usize,
    ) -> anyhow::Result<Vec<f64>> {
        let (base, arrivals) = latency_sink().await?;
        let now = clock.now();
        let mut endpoints: Vec<(String, String)> =
            (0..5).map(|i| (format!("ok{tag}-{i}"), format!("{base}/ok/{i}?id={{delivery_id}}"))).collect();
        if bad {
            endpoints.push((format!("hang{tag}"), format!("{base}/hang?id={{delivery_id}}")));
            endpoints.push((format!("fail{tag}"), format!("{base}/fail?id={{delivery_id}}")));
        }
        for (id, url) in &endpoints {
            callbacks::save_endpoint(db, &EndpointSpec::new(id.as_str(), "bench", url.as_str()), now).await?;
        }
        // Each change goes to every enabled endpoint: the throughput round's is disabled.
        fill(db, 1000 + u32::from(bad), n, now).await?;
        let config = DeliveryConfig { allow_private: true, concurrency, ..DeliveryConfig::default() };
        let deliverer = Deliverer::new(db.clone(), clock.clone(), config, format!("latency-{tag}"))?;
        let healthy = 5 * n as usize;
        let started = Instant::now();
        let worker = tokio::spawn(deliverer.run_worker());
        loop {
            if arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len() >= healthy {
                break;
            }
            anyhow::ensure!(started.elapsed().as_secs() < 600, "the healthy deliveries did not all arrive");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        worker.abort();
        let _ = worker.await;
        for (id, _) in &endpoints {
            callbacks::disable(db, id, "benchmark round over", clock.now()).await?;
        }
        let mut ms: Vec<f64> = arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|at| at.duration_since(started).as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        Ok(ms)
    }

    fn percentile(sorted: &[f64], p: f64) -> f64 {
        let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
        sorted.get(i).copied().unwrap_or(0.0)
    }

    async fn isolation(
        db: &Db,
        clock: Arc<SystemClock>,
        backend: &'static str,
        n: u64,
        concurrency: usize,
    ) -> anyhow::Result<Isolation> {
        let per_endpoint = (n / 5).max(1);
        let alone = latency_run(db, clock.clone(), "a", per_endpoint, false, concurrency).await?;
        let beside = latency_run(db, clock, "b", per_endpoint, true, concurrency).await?;
        let (alone_p99, beside_p99) = (percentile(&alone, 0.99), percentile(&beside, 0.99));
        Ok(Isolation {
            mode: "isolation",
            backend,
            healthy_endpoints: 5,
            healthy_deliveries: 5 * per_endpoint,
            concurrency,
            endpoint_concurrency: DeliveryConfig::default().endpoint_concurrency,
            alone_p50_ms: round3(percentile(&alone, 0.5)),
            alone_p99_ms: round3(alone_p99),
            beside_bad_p50_ms: round3(percentile(&beside, 0.5)),
            beside_bad_p99_ms: round3(beside_p99),
            p99_ratio: round3(beside_p99 / alone_p99.max(1e-9)),
        })
    }
}
