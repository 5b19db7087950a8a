//! Prometheus metrics: every metric cashbackd exports, named once here, recorded through
//! the `metrics` facade by the functions below, rendered at `GET /metrics`.
//!
//! Labels are bounded by what an operator configures: networks, plugins and their
//! versions, callback endpoints, jobs, route templates, and fixed words for outcomes.
//! Never a conversion, user, click or delivery id, and never a value a sender chooses: a
//! postback to a network that does not exist is labelled `network="unknown"`.
//!
//! `serve` and `demo` install the recorder once per process ([`install`]). Without it the
//! recording functions do nothing (the facade's no-op recorder), so library users and most
//! tests pay nothing. Tests that read metrics call [`install`] too (it is idempotent) and
//! look at series labelled with their own networks, endpoints and jobs: one recorder per
//! process is what the facade allows, and what a server has.
//!
//! Queue sizes are not recorded but counted in the database at scrape time
//! ([`render_queues`]) and appended to the recorder's output: exact, the same on every
//! replica, and each test server reports its own database.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::Row;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

/// Events recorded, by network, path (`postback`, `api_import`, `file`) and outcome:
/// `created`, `updated`, `duplicate`, `ignored`, `rejected` (invalid), `refused` (a
/// postback that failed authentication), `failed` (storage).
pub const INGEST_EVENTS: &str = "cashbackd_ingest_events_total";
/// Postback handling time, by network and outcome (`accepted`, `rejected`, `refused`,
/// `failed`, `throttled`).
pub const POSTBACK_SECONDS: &str = "cashbackd_postback_duration_seconds";
/// Tracked clicks, by outcome (`recorded`, `rejected`, `failed`, `throttled`).
pub const CLICKS: &str = "cashbackd_clicks_total";
/// Ingress requests refused by a rate limit (429), by route (`click`, `postback`), limit
/// (`address`, `network`) and network (`unknown` until it is seen to exist, `none` for
/// clicks).
pub const INGRESS_THROTTLED: &str = "cashbackd_ingress_throttled_total";
/// Plugin call time, by plugin, version and call (`evaluate`, `parse_postback`,
/// `import_page`, `parse_file`), failed calls included.
pub const PLUGIN_CALL_SECONDS: &str = "cashbackd_plugin_call_duration_seconds";
/// Failed plugin calls, by plugin, version, call and kind (`trap`, `limit`, `plugin`,
/// `denied`, `invalid-output`, `config`, `wrong-kind`, `host`).
pub const PLUGIN_CALL_FAILURES: &str = "cashbackd_plugin_call_failures_total";
/// Callback attempts, by endpoint and outcome: `delivered` (a 200), `failed` (retried
/// later), `gave_up` (its last attempt failed), `skipped` (the endpoint's filter).
pub const CALLBACK_DELIVERIES: &str = "cashbackd_callback_deliveries_total";
/// Callback request time, by outcome.
pub const CALLBACK_SECONDS: &str = "cashbackd_callback_delivery_duration_seconds";
/// Time from a partner's answer to the commit of its record, per answer: the
/// at-least-once window. A crash inside it sends that callback again (same `webhook-id`).
pub const CALLBACK_UNRECORDED: &str = "cashbackd_callback_unrecorded_seconds";
/// The delivery worker's database steps, by step (`record`, `claim`): each one
/// transaction, from waiting for the write turn (SQLite) to the commit.
pub const CALLBACK_STEP_SECONDS: &str = "cashbackd_callback_step_seconds";
/// Deliveries per step, by step: answers recorded, deliveries claimed.
pub const CALLBACK_STEP_ROWS: &str = "cashbackd_callback_step_rows";
/// Job runs, by job and outcome (`ok`, `failed`).
pub const JOB_RUNS: &str = "cashbackd_job_runs_total";
/// Job run time, by job.
pub const JOB_SECONDS: &str = "cashbackd_job_duration_seconds";
/// HTTP requests, by method, route template and status.
pub const HTTP_REQUESTS: &str = "cashbackd_http_requests_total";
/// HTTP handling time (until the response head), by method and route template.
pub const HTTP_SECONDS: &str = "cashbackd_http_request_duration_seconds";
/// Write batches committed (group commit: one transaction each).
pub const WRITE_BATCHES: &str = "cashbackd_write_batches_total";
/// Commands in those batches (events, clicks, reviews, adjustments...).
pub const WRITE_COMMANDS: &str = "cashbackd_write_commands_total";
/// Statements those batches ran, every attempt counted: BEGIN, the prefetch, one per
/// table written, COMMIT. Divided by `cashbackd_write_commands_total`: statements per
/// command; by `cashbackd_write_batches_total`: per batch.
pub const WRITE_STATEMENTS: &str = "cashbackd_write_statements_total";
/// Statements per batch.
pub const WRITE_BATCH_STATEMENTS: &str = "cashbackd_write_batch_statements";
/// Commands per batch.
pub const WRITE_BATCH_COMMANDS: &str = "cashbackd_write_batch_commands";
/// Batches decided again because another writer (replica) changed what they read.
pub const WRITE_RETRIES: &str = "cashbackd_write_batch_retries_total";
/// Time a write batch spent in each phase, by phase, one after another: `turn` (waiting
/// for SQLite's write lock in this process), `begin`, `prefetch`, `decide` (in memory),
/// then the writes per table (`journal`, `users`, `clicks`, `conversions`, `history`,
/// `ledger`, `outbox`) and `commit`. Their sums over `cashbackd_write_batches_total`:
/// where a batch's time goes.
pub const WRITE_PHASE_SECONDS: &str = "cashbackd_write_phase_seconds";
/// Time a command waited in the writer's queue for its batch to start.
pub const WRITE_QUEUE_SECONDS: &str = "cashbackd_write_queue_seconds";
/// Queue sizes counted in the database at scrape time, by queue.
pub const QUEUE_SIZE: &str = "cashbackd_queue_size";
/// 1 when the database answered the scrape's queries.
pub const DATABASE_UP: &str = "cashbackd_database_up";

/// Seconds, from 0.5 ms (a plugin call) to a minute (a job, a slow partner).
const BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Counts per write batch, from one to the writer's largest batches.
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's, once; later calls return the same
/// handle. `None` if another recorder was installed first (by an embedding program).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            // Only fails on empty buckets.
            // Counts, not seconds: statements and commands per write batch, deliveries per
            // callback step.
            let counts = metrics_exporter_prometheus::Matcher::Suffix("_batch_statements".into());
            let commands = metrics_exporter_prometheus::Matcher::Suffix("_batch_commands".into());
            let step_rows = metrics_exporter_prometheus::Matcher::Full(CALLBACK_STEP_ROWS.into());
            let builder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .ok()?
                .set_buckets_for_metric(counts, COUNT_BUCKETS)
                .ok()?
                .set_buckets_for_metric(commands, COUNT_BUCKETS)
                .ok()?
                .set_buckets_for_metric(step_rows, COUNT_BUCKETS)
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            // Histograms are drained into their buckets by upkeep; without a scrape for a
            // long time their samples would pile up.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
            Some(handle)
        })
        .as_ref()
}

/// The installed recorder's handle, if [`install`] ran.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get().and_then(Option::as_ref)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(INGEST_EVENTS, "Conversion events recorded, by network, path and outcome");
    describe_histogram!(POSTBACK_SECONDS, Unit::Seconds, "Postback handling time, by network and outcome");
    describe_counter!(CLICKS, "Tracked clicks, by outcome");
    describe_counter!(INGRESS_THROTTLED, "Ingress requests refused by a rate limit, by route, limit and network");
    describe_histogram!(PLUGIN_CALL_SECONDS, Unit::Seconds, "Plugin call time, by plugin, version and call");
    describe_counter!(PLUGIN_CALL_FAILURES, "Failed plugin calls, by plugin, version, call and kind");
    describe_counter!(CALLBACK_DELIVERIES, "Callback attempts, by endpoint and outcome");
    describe_histogram!(CALLBACK_SECONDS, Unit::Seconds, "Callback request time, by outcome");
    describe_histogram!(
        CALLBACK_UNRECORDED,
        Unit::Seconds,
        "Time from a partner's answer to the commit of its record: a crash inside it sends the callback again"
    );
    describe_histogram!(
        CALLBACK_STEP_SECONDS,
        Unit::Seconds,
        "The callback worker's record and claim transactions, by step, from the write turn to the commit"
    );
    describe_histogram!(
        CALLBACK_STEP_ROWS,
        "Deliveries per callback worker step: answers recorded, deliveries claimed"
    );
    describe_counter!(JOB_RUNS, "Scheduled job runs, by job and outcome");
    describe_histogram!(JOB_SECONDS, Unit::Seconds, "Job run time, by job");
    describe_counter!(HTTP_REQUESTS, "HTTP requests, by method, route template and status");
    describe_histogram!(HTTP_SECONDS, Unit::Seconds, "HTTP handling time, by method and route template");
    describe_counter!(WRITE_BATCHES, "Write batches committed (one transaction each)");
    describe_counter!(WRITE_COMMANDS, "Commands in the write batches");
    describe_counter!(WRITE_STATEMENTS, "Statements the write batches ran, BEGIN and COMMIT included");
    describe_histogram!(WRITE_BATCH_STATEMENTS, Unit::Count, "Statements per write batch");
    describe_histogram!(WRITE_BATCH_COMMANDS, Unit::Count, "Commands per write batch");
    describe_counter!(WRITE_RETRIES, "Write batches decided again after losing a race with another writer");
    describe_histogram!(WRITE_PHASE_SECONDS, Unit::Seconds, "Time write batches spent per phase, by phase");
    describe_histogram!(WRITE_QUEUE_SECONDS, Unit::Seconds, "Time a command waited in the writer's queue");
}

/// An event (or a postback whose events are unknown: refused, rejected) counted.
pub fn ingest_event(network: &str, via: &'static str, outcome: &'static str) {
    metrics::counter!(INGEST_EVENTS, "network" => network.to_string(), "via" => via, "outcome" => outcome).increment(1);
}

/// A postback answered.
pub fn postback(network: &str, outcome: &'static str, elapsed: Duration) {
    metrics::histogram!(POSTBACK_SECONDS, "network" => network.to_string(), "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// A click answered.
pub fn click(outcome: &'static str) {
    metrics::counter!(CLICKS, "outcome" => outcome).increment(1);
}

/// An ingress request refused by a rate limit.
pub fn ingress_throttled(route: &'static str, limit: &'static str, network: &str) {
    metrics::counter!(INGRESS_THROTTLED, "route" => route, "limit" => limit, "network" => network.to_string())
        .increment(1);
}

/// A plugin call made; `failure` is its error's kind.
pub fn plugin_call(name: &str, version: &str, call: &'static str, elapsed: Duration, failure: Option<&'static str>) {
    metrics::histogram!(
        PLUGIN_CALL_SECONDS,
        "plugin" => name.to_string(), "version" => version.to_string(), "call" => call
    )
    .record(elapsed.as_secs_f64());
    if let Some(kind) = failure {
        metrics::counter!(
            PLUGIN_CALL_FAILURES,
            "plugin" => name.to_string(), "version" => version.to_string(), "call" => call, "kind" => kind
        )
        .increment(1);
    }
}

/// A callback attempt recorded (`elapsed` is zero for a skipped delivery).
pub fn callback(endpoint: &str, outcome: &'static str, elapsed: Option<Duration>) {
    metrics::counter!(CALLBACK_DELIVERIES, "endpoint" => endpoint.to_string(), "outcome" => outcome).increment(1);
    if let Some(elapsed) = elapsed {
        metrics::histogram!(CALLBACK_SECONDS, "outcome" => outcome).record(elapsed.as_secs_f64());
    }
}

/// A callback answer's record committed, this long after the answer came.
pub fn callback_unrecorded(elapsed: Duration) {
    metrics::histogram!(CALLBACK_UNRECORDED).record(elapsed.as_secs_f64());
}

/// A step of the callback worker committed (`record`, `claim`), with its deliveries.
pub fn callback_step(step: &'static str, rows: usize, elapsed: Duration) {
    metrics::histogram!(CALLBACK_STEP_SECONDS, "step" => step).record(elapsed.as_secs_f64());
    metrics::histogram!(CALLBACK_STEP_ROWS, "step" => step).record(rows as f64);
}

/// A job run finished.
pub fn job_run(job: &str, outcome: &'static str, elapsed: Duration) {
    metrics::counter!(JOB_RUNS, "job" => job.to_string(), "outcome" => outcome).increment(1);
    metrics::histogram!(JOB_SECONDS, "job" => job.to_string()).record(elapsed.as_secs_f64());
}

/// A write batch of `commands`, done in `statements` round trips after `retries` lost
/// races.
pub fn write_batch(commands: usize, statements: u32, retries: usize) {
    metrics::counter!(WRITE_BATCHES).increment(1);
    metrics::counter!(WRITE_COMMANDS).increment(commands as u64);
    metrics::counter!(WRITE_STATEMENTS).increment(u64::from(statements));
    metrics::counter!(WRITE_RETRIES).increment(retries as u64);
    metrics::histogram!(WRITE_BATCH_STATEMENTS).record(f64::from(statements));
    metrics::histogram!(WRITE_BATCH_COMMANDS).record(commands as f64);
}

/// Times the phases of a write batch one after another ([`WRITE_PHASE_SECONDS`]): each
/// `mark` records the time since the previous one under its phase's name.
pub struct Lap(Option<std::time::Instant>);

impl Lap {
    /// Starts the first phase now.
    pub fn start() -> Lap {
        Lap(Some(std::time::Instant::now()))
    }

    /// Records nothing: for the single commands outside a write batch.
    pub fn off() -> Lap {
        Lap(None)
    }

    /// The phase that just ended.
    pub fn mark(&mut self, phase: &'static str) {
        if let Some(since) = self.0 {
            let now = std::time::Instant::now();
            metrics::histogram!(WRITE_PHASE_SECONDS, "phase" => phase).record(now.duration_since(since).as_secs_f64());
            self.0 = Some(now);
        }
    }
}

/// A command's wait in the writer's queue.
pub fn write_queued(waited: Duration) {
    metrics::histogram!(WRITE_QUEUE_SECONDS).record(waited.as_secs_f64());
}

/// An HTTP request answered.
pub fn http_request(method: &'static str, route: &str, status: u16, elapsed: Duration) {
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.to_string(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(HTTP_SECONDS, "method" => method, "route" => route.to_string()).record(elapsed.as_secs_f64());
}

/// The queues, as (label, SQL counting it).
const QUEUES: &[(&str, &str)] = &[
    ("review", "SELECT COUNT(*) FROM conversions WHERE status IN ('pending_review', 'held')"),
    ("parked", "SELECT COUNT(*) FROM conversions WHERE status = 'parked'"),
    ("failed", "SELECT COUNT(*) FROM conversions WHERE status = 'failed'"),
    ("callbacks_pending", "SELECT COUNT(*) FROM callback_deliveries WHERE state = 'pending'"),
    ("notifications_pending", "SELECT COUNT(*) FROM notifications WHERE state IN ('pending', 'sending')"),
];

/// Appends the queue sizes, counted now in `db`, and whether it answered. A queue that
/// cannot be counted is left out (a gap in the series, rather than a false zero).
pub async fn render_queues(out: &mut String, pool: &sqlx::AnyPool) {
    let mut up = true;
    let _ = writeln!(out, "# HELP {QUEUE_SIZE} Items waiting, counted in the database at scrape time, by queue");
    let _ = writeln!(out, "# TYPE {QUEUE_SIZE} gauge");
    for (queue, sql) in QUEUES {
        let counted = tokio::time::timeout(Duration::from_secs(5), sqlx::query(sql).fetch_one(pool)).await;
        match counted.map(|r| r.and_then(|row| row.try_get::<i64, _>(0))) {
            Ok(Ok(n)) => {
                let _ = writeln!(out, "{QUEUE_SIZE}{{queue=\"{queue}\"}} {n}");
            }
            Ok(Err(e)) => {
                up = false;
                tracing::warn!(queue, error = %e, "metrics: cannot count a queue");
            }
            Err(_) => {
                up = false;
                tracing::warn!(queue, "metrics: counting a queue timed out");
            }
        }
    }
    let _ = writeln!(out, "# HELP {DATABASE_UP} 1 when the database answered this scrape's queries");
    let _ = writeln!(out, "# TYPE {DATABASE_UP} gauge");
    let _ = writeln!(out, "{DATABASE_UP} {}", u8::from(up));
}
