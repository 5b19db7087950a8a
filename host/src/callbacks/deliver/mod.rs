//! Delivering callbacks from the outbox.
//!
//! The worker claims due deliveries with a lease in the database (a conditional
//! `UPDATE`: on PostgreSQL several replicas may claim at once and each delivery is
//! claimed by one), starts their requests as there is room in flight, and records the
//! answers as they come, a group at a time, each group in a transaction of its own that
//! runs beside the next claim. It
//! holds only what there is room for: in flight, in its own limit (`concurrency`) and in
//! each endpoint's (`endpoint_concurrency`), and waiting for that room, at most `batch`,
//! each endpoint its share, claimed round-robin across endpoints. So a partner that hangs
//! holds its own few requests until its timeout, and every other endpoint's deliveries are
//! claimed, sent and recorded meanwhile.
//!
//! Per endpoint and conversion, deliveries go in the order of the changes: a
//! delivery is due only when every earlier one of the same conversion to the same endpoint
//! is delivered, given up or skipped, so a partner never sees COMPLETED before PENDING;
//! and a claimed delivery of a conversion whose click's CREATED (seed 001: sent on the
//! click) to the same endpoint is still pending is given back until after that CREATED's
//! next attempt (`hold_back`), so a partner never sees PENDING before it.
//!
//! Only a 200 counts as delivered (seed 003: a 302 is a failure, and redirects are not
//! followed). A failed attempt is retried on the endpoint's schedule, later if the
//! partner asks with `Retry-After`; after its last attempt the delivery is given up
//! (`failed`) and the next one of the conversion goes. After `disable_after` failed
//! attempts in a row the endpoint is disabled, an alert is recorded and logged, and its
//! deliveries wait (the backlog) until an operator enables it again.
//!
//! **Delivery guarantee: at least once, exactly once once acknowledged.** The result of
//! a request is recorded after the request, by the next record (with the answers that came
//! while the previous one was being written), which waits for no claim: a
//! crash between the partner's 200 and that commit (`cashbackd_callback_unrecorded_seconds`
//! measures the gap) means the delivery is sent again when its lease expires (with the same
//! `webhook-id` / `{delivery_id}`, so the partner can tell). A delivery recorded as
//! delivered is never sent again, except by an operator's replay.
//!
//! The delivery goes in phases, each its own file, with a typed value between them (as in
//! Svix's worker):
//!
//! | file | phase | value |
//! |---|---|---|
//! | `claim.rs` | claim due deliveries with a lease, fairly across endpoints; load each change | `Claimed` |
//! | `render.rs` | render the URL template, sign (HMAC query, Standard Webhooks) | `Prepared` |
//! | `send.rs` | send, read the capped answer | `Sent` |
//! | `record.rs` | record a group of answers, one statement per kind of outcome | `Recorded` |
//! | `mod.rs` | the loop: a record and a claim, each its own transaction, running side by side while requests are in flight; room in flight; when to claim and record | `RecordDone`, `Claim`, `Waiting` |
//! | `tester.rs` | the callback tester | |
//! | `log.rs` | the delivery log and replay | |

mod claim;
mod log;
pub mod plugin;
mod record;
mod render;
mod send;
mod tester;

pub use log::{
    AttemptView, DeliveryFilter, DeliveryView, attempts, attempts_after, deliveries, delivery, replay, replay_range,
};
pub use render::RequestView;
pub use send::{ResponseView, parse_retry_after};
pub use tester::TestReport;

use super::net;
use super::template::Template;
use super::{CallbackError, Endpoint};
use crate::clock::Clock;
use crate::db::Db;
use claim::Subject;
use send::Sent;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Settings of the delivery worker.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Let callbacks reach private, loopback and link-local addresses (tests; an operator
    /// whose partners are on the private network).
    pub allow_private: bool,
    /// Deliveries claimed at most by one claim, and waiting at most for room in flight
    /// (`callbacks.batch`).
    pub batch: usize,
    /// Requests in flight at once, every endpoint together, per worker process
    /// (`callbacks.concurrency`).
    pub concurrency: usize,
    /// Requests in flight at once to one endpoint (`callbacks.endpoint_concurrency`): a
    /// partner that hangs holds at most this many of `concurrency`, and the other
    /// endpoints keep the rest.
    pub endpoint_concurrency: usize,
    /// How long the worker waits when nothing is due, and at most between two claims
    /// while requests are in flight.
    pub poll: Duration,
    /// How long a claim lasts (`callbacks.lease_secs`); longer than the longest request
    /// timeout (120 s).
    pub lease_ms: i64,
    /// Response bytes read at most.
    pub max_response_bytes: usize,
    /// Response bytes kept in the log.
    pub excerpt_bytes: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            allow_private: false,
            batch: 128,
            concurrency: 32,
            endpoint_concurrency: 8,
            poll: Duration::from_secs(1),
            lease_ms: 180_000,
            max_response_bytes: 64 << 10,
            excerpt_bytes: 1 << 10,
        }
    }
}

/// The delivery worker. Cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    clock: Arc<dyn Clock>,
    client: reqwest::Client,
    config: DeliveryConfig,
    owner: String,
    /// Requests in flight, shared by every run of this worker (`run_worker`, the
    /// scheduler's `run_due`).
    permits: Arc<tokio::sync::Semaphore>,
    /// Requests in flight per endpoint, shared the same way; what a claim leaves out.
    busy: std::sync::Mutex<HashMap<String, usize>>,
    /// The plugin runtime, for endpoints whose requests a plugin renders
    /// (`plugin.rs`).
    plugins: std::sync::OnceLock<Arc<crate::plugin::PluginRuntime>>,
}

/// One request in flight: holds its place in the worker's limit and in its endpoint's,
/// and gives both back when dropped (answered, timed out, or aborted with its run).
struct InFlight {
    inner: Arc<Inner>,
    endpoint_id: String,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut busy = self.inner.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = busy.get_mut(&self.endpoint_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                busy.remove(&self.endpoint_id);
            }
        }
    }
}

/// How long a run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One claim; its requests are awaited and recorded.
    Once,
    /// Claims while anything is due; returns once nothing is due or in flight.
    UntilIdle,
    /// The worker: never returns.
    Forever,
}

/// What one run holds: its requests in flight, the endpoints they go to (as loaded when
/// they were claimed), and what it did so far.
#[derive(Default)]
struct Run {
    in_flight: JoinSet<Sent>,
    /// Claimed, not started yet: in claim order.
    waiting: std::collections::VecDeque<Waiting>,
    endpoints: HashMap<String, (Endpoint, Option<Template>)>,
    summary: PassSummary,
}

/// What a record committed.
struct RecordDone {
    recorded_any: bool,
    recorded: record::Recorded,
    skipped: Vec<(i64, String)>,
    released: usize,
}

/// What a claim took (the claim phase's values), with the endpoints as they are now.
struct Claim {
    /// What it was to take at most.
    room: usize,
    claimed: usize,
    /// Claimed and given back at once (`hold_back`).
    held: usize,
    jobs: Vec<claim::Claimed>,
    endpoints: Vec<Endpoint>,
    lease_until: i64,
}

/// A record that failed gives back what it was to record: a later one records it.
type RecordResult = Result<RecordDone, (CallbackError, Outcomes)>;

/// The connection a step kept for the next step of its kind (`drive`).
type Kept = Option<sqlx::pool::PoolConnection<sqlx::Any>>;

/// A claimed delivery, rendered and signed, waiting for room in flight.
struct Waiting {
    job: claim::Claimed,
    prepared: Result<render::Prepared, String>,
    lease_until: i64,
}

/// What the next record writes: the send phase's answers, deliveries skipped by their
/// endpoint's filter (with the endpoint, for the metrics), claimed deliveries given back
/// unsent.
#[derive(Default)]
struct Outcomes {
    sent: Vec<Sent>,
    skipped: Vec<(i64, String)>,
    released: Vec<i64>,
}

impl Outcomes {
    fn is_empty(&self) -> bool {
        self.sent.is_empty() && self.skipped.is_empty() && self.released.is_empty()
    }

    /// Puts back what a failed record was to write, before what came since.
    fn put_back(&mut self, mut earlier: Outcomes) {
        earlier.sent.append(&mut self.sent);
        earlier.skipped.append(&mut self.skipped);
        earlier.released.append(&mut self.released);
        *self = earlier;
    }

    fn answer(&mut self, r: Result<Sent, tokio::task::JoinError>) {
        match r {
            Ok(s) => self.sent.push(s),
            Err(e) => tracing::error!(error = %e, "a callback send task failed"),
        }
    }
}

impl PassSummary {
    fn add(&mut self, r: record::Recorded) {
        self.delivered += r.delivered;
        self.retrying += r.retrying;
        self.failed += r.failed;
        self.skipped += r.skipped;
        self.disabled.extend(r.disabled);
    }
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").field("owner", &self.inner.owner).field("config", &self.inner.config).finish()
    }
}

/// What one pass (or several) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PassSummary {
    /// Deliveries claimed.
    pub claimed: usize,
    /// Answered 200.
    pub delivered: usize,
    /// Failed, to be retried.
    pub retrying: usize,
    /// Failed for the last time: given up.
    pub failed: usize,
    /// Not sent: the endpoint's filter refused them.
    pub skipped: usize,
    /// Endpoints disabled by this pass.
    pub disabled: Vec<String>,
    /// Claimed but not sent (it could have outlasted its lease): released for later.
    pub released: usize,
}

impl Deliverer {
    /// A worker identified as `owner` in its leases (host and process id, say).
    pub fn new(
        db: Db,
        clock: Arc<dyn Clock>,
        config: DeliveryConfig,
        owner: impl Into<String>,
    ) -> Result<Deliverer, CallbackError> {
        let client = net::client(config.allow_private)
            .map_err(|e| CallbackError::Invalid(format!("cannot build the HTTP client: {e}")))?;
        let permits = Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1)));
        Ok(Deliverer {
            inner: Arc::new(Inner {
                db,
                clock,
                client,
                config,
                owner: owner.into(),
                permits,
                busy: std::sync::Mutex::new(HashMap::new()),
                plugins: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Lets endpoints with an active partner-callback plugin be rendered by it; without a
    /// runtime their attempts fail with that reason.
    pub fn with_plugins(self, runtime: Arc<crate::plugin::PluginRuntime>) -> Self {
        let _ = self.inner.plugins.set(runtime);
        self
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Delivers until nothing is due or in flight, as the scheduler's `deliver` job does.
    pub async fn run_due(&self) -> Result<PassSummary, CallbackError> {
        self.drive(Mode::UntilIdle).await
    }

    /// Runs the worker until the task is dropped: claims while there is room and work,
    /// records answers as they come, and looks for due deliveries every `poll` when idle.
    pub async fn run_worker(self) {
        if let Err(e) = self.drive(Mode::Forever).await {
            tracing::error!(error = %e, "the callback delivery worker stopped");
        }
    }

    /// One claim: its deliveries are sent, and their outcomes recorded as they come.
    pub async fn run_once(&self) -> Result<PassSummary, CallbackError> {
        self.drive(Mode::Once).await
    }

    /// The delivery loop. A partner that hangs holds only its own share of the requests
    /// in flight (`endpoint_concurrency`) and delays nobody else's claims or records:
    ///
    /// - **A record and a claim side by side.** The record of the answers that came
    ///   (`record_outcomes`, one transaction) and the next claim (`claim_due`, another) are
    ///   two steps that run at the same time, each while requests are in flight and
    ///   answers come: the loop never waits for the database to start a request or take
    ///   an answer, and an answer never waits for a claim to be recorded. On PostgreSQL
    ///   they run on two connections; on SQLite they take turns at the one writer.
    /// - **Claiming ahead.** Each commit costs a few milliseconds (an fsync), as long as
    ///   many requests to a fast partner. A claim that took only what there is room for in
    ///   flight would leave the requests idle while the next claim commits; so a claim
    ///   takes up to `batch` more, which wait here, each endpoint's in its own line, and
    ///   start as soon as there is room in flight, in the worker's limit and in their
    ///   endpoint's. An endpoint holds at most its share of those too
    ///   (`endpoint_concurrency × batch / concurrency`), so a hanging partner's waiting
    ///   deliveries take no one else's place.
    async fn drive(&self, mode: Mode) -> Result<PassSummary, CallbackError> {
        let mut run = Run::default();
        let config = &self.inner.config;
        // Whether a claim may find something: at the start, after a claim that filled its
        // room (more is likely due), after a record (the next change of a conversion
        // becomes due once the one before it is recorded), and every `poll` (retries come
        // due, other processes add changes).
        let mut may_claim = true;
        // A record is a commit (an fsync on SQLite): taken one delivery at a time it would
        // cost more than the requests. So a claim waits until it can take half a claim's
        // worth, and answers are recorded once that many came, or as soon as fewer than
        // that are still in flight (then waiting would only delay them behind slow
        // requests)...
        let half = (config.concurrency.min(config.batch).max(2) / 2).max(1);
        // ...and never later than this after the first of them came.
        const RECORD_WITHIN: Duration = Duration::from_millis(20);
        let mut first_answer: Option<Instant> = None;
        let mut pending = Outcomes::default();
        // The record and the claim in progress, each a task of its own (a set of at most
        // one): each round trip to the database then goes on as soon as its answer is in,
        // not when the loop (busy with answers, renders and new requests) next polls it;
        // that wait doubled a claim's time under load. A set aborts its task when dropped
        // with the run: a transaction cut short rolls back.
        let mut recording: JoinSet<(Kept, RecordResult)> = JoinSet::new();
        let mut claiming: JoinSet<(Kept, Result<Claim, CallbackError>)> = JoinSet::new();
        // On PostgreSQL each step keeps its connection for the next step of its kind while
        // the run is busy, instead of taking one from the pool each time: sqlx pings a
        // connection when it is taken and again when it is given back, two round trips per
        // step besides the step's own one (a profile of the worker showed those pings).
        // A step that fails gives its connection back to the pool (which drops a broken
        // one); an idle worker gives both back. SQLite's steps, calls in this process,
        // take theirs from the pool each time: its pools are small (two connections for a
        // command), and keeping would starve the rest of the process.
        let (mut record_conn, mut claim_conn): (Kept, Kept) = (None, None);
        // Records committed so far, and how many had when the claim in flight started: a
        // record that commits during a claim may have made due what that claim could not
        // see yet.
        let mut records_done = 0u64;
        let mut records_at_claim = 0u64;
        // After a record failed (the database is down, say), the next waits this long.
        let mut record_after: Option<Instant> = None;
        // A run that returns (`Once`, `UntilIdle`, the scheduler's `deliver` job) and meets
        // an error stops claiming but still records what its partners answered, and
        // returns the error once nothing it holds is left: returning at once would drop
        // answered deliveries unrecorded, and they would go out again when their lease
        // runs out, from this same process (the crash loop caught a callback sent twice
        // without a kill). A record that keeps failing (three times, a poll apart) ends
        // the run anyway: those deliveries are sent again after their lease.
        let mut failed: Option<CallbackError> = None;
        let mut record_failures = 0u32;
        loop {
            if recording.is_empty() && record_after.is_none_or(|at| Instant::now() >= at) {
                if !pending.sent.is_empty() {
                    first_answer.get_or_insert_with(Instant::now);
                }
                let in_flight = run.in_flight.len();
                let record_now = !pending.skipped.is_empty()
                    || !pending.released.is_empty()
                    || (!pending.sent.is_empty()
                        && (pending.sent.len() >= half
                            || in_flight < half
                            || first_answer.is_some_and(|at| at.elapsed() >= RECORD_WITHIN)));
                if record_now {
                    let outcomes = std::mem::take(&mut pending);
                    first_answer = None;
                    record_after = None;
                    let policies = run.endpoints.iter().map(|(id, (e, _))| (id.clone(), e.spec.retry)).collect();
                    let this = self.clone();
                    let conn = record_conn.take();
                    recording.spawn(async move { this.record_step(conn, outcomes, policies).await });
                }
            }
            if claiming.is_empty() && may_claim && failed.is_none() {
                let held = run.in_flight.len() + run.waiting.len();
                let room = (config.concurrency + config.batch).saturating_sub(held).min(config.batch.max(1));
                if room > 0 && (room >= half || held == 0) {
                    if mode == Mode::Once {
                        may_claim = false;
                    }
                    records_at_claim = records_done;
                    let busy = self.busy_json(&run);
                    let this = self.clone();
                    let conn = claim_conn.take();
                    claiming.spawn(async move { this.claim_due(conn, room, busy).await });
                }
            }
            let stepping = !recording.is_empty() || !claiming.is_empty();
            if !stepping && run.in_flight.is_empty() && pending.is_empty() {
                // Nothing in flight or to record: whatever waits here cannot start either
                // (it would have), so it is given back by the next record.
                if !run.waiting.is_empty() {
                    pending.released.extend(run.waiting.drain(..).map(|w| w.job.delivery_id));
                    continue;
                }
                match mode {
                    Mode::Forever => {
                        (record_conn, claim_conn) = (None, None);
                        tokio::time::sleep(config.poll).await;
                        may_claim = true;
                        continue;
                    }
                    Mode::Once | Mode::UntilIdle => {
                        return match failed {
                            Some(e) => Err(e),
                            None => Ok(run.summary),
                        };
                    }
                }
            }
            // Wait for an answer, a step, or, with answers waiting, until they are due to
            // be recorded; while requests hang, wake up after `poll` anyway to claim what
            // came due meanwhile.
            let wait = match (first_answer, record_after) {
                (_, Some(at)) => at.saturating_duration_since(Instant::now()),
                (Some(at), None) => RECORD_WITHIN.saturating_sub(at.elapsed()),
                (None, None) => config.poll,
            };
            tokio::select! {
                r = run.in_flight.join_next(), if !run.in_flight.is_empty() => {
                    if let Some(r) = r {
                        pending.answer(r);
                    }
                    while let Some(r) = run.in_flight.try_join_next() {
                        pending.answer(r);
                    }
                    self.start_waiting(&mut run, &mut pending);
                }
                Some(done) = recording.join_next(), if !recording.is_empty() => {
                    // A record that panicked took its answers with it: they are sent again
                    // once their lease runs out.
                    let (conn, done) = done.unwrap_or_else(|e| {
                        (None, Err((CallbackError::Invalid(format!("the record task failed: {e}")), Outcomes::default())))
                    });
                    record_conn = conn;
                    match done {
                        Ok(done) => {
                            records_done += 1;
                            // The next change of a conversion may be due now.
                            if mode != Mode::Once && done.recorded_any {
                                may_claim = true;
                            }
                            run.summary.add(done.recorded);
                            for (_, endpoint) in &done.skipped {
                                crate::metrics::callback(endpoint, "skipped", None);
                            }
                            run.summary.released += done.released;
                        }
                        // Not recorded: the answers are recorded by a later record, while
                        // the deliveries still hold their lease (a partner that answered is
                        // not sent the same callback again because one transaction failed:
                        // a deadlock, a restart of the database). Only a lease that runs out
                        // first (an outage longer than it) sends them again: at least once.
                        // The worker outlives a database outage; it records again after
                        // `poll`.
                        Err((e, outcomes)) => {
                            tracing::error!(error = %e, "recording callback deliveries failed; recording again");
                            pending.put_back(outcomes);
                            record_after = Some(Instant::now() + config.poll);
                            if mode != Mode::Forever {
                                record_failures += 1;
                                if record_failures >= 3 {
                                    return Err(e);
                                }
                                failed.get_or_insert(e);
                            }
                        }
                    }
                }
                Some(done) = claiming.join_next(), if !claiming.is_empty() => {
                    let (conn, done) =
                        done.unwrap_or_else(|e| (None, Err(CallbackError::Invalid(format!("the claim task failed: {e}")))));
                    claim_conn = conn;
                    match done {
                        Ok(claim) => {
                            // A claim saw what was recorded before it: after it, more is likely
                            // due only if it filled its room, or a record committed meanwhile.
                            if mode != Mode::Once {
                                may_claim = claim.claimed >= claim.room || records_done > records_at_claim;
                            }
                            self.after_claim(&mut run, claim, &mut pending).await;
                        }
                        // The worker's claims resume after `poll`; a run that returns claims
                        // no more (`failed`).
                        Err(e) => {
                            tracing::error!(error = %e, "claiming callback deliveries failed");
                            may_claim = false;
                            if mode != Mode::Forever {
                                failed.get_or_insert(e);
                            }
                        }
                    }
                }
                _ = tokio::time::sleep(wait) => {
                    if first_answer.is_none() && mode != Mode::Once && claiming.is_empty() {
                        may_claim = true;
                    }
                }
            }
        }
    }

    /// What is in flight to each endpoint (every run of this worker) and waiting here (this
    /// run), as the claim reads it: a JSON object.
    fn busy_json(&self, run: &Run) -> String {
        let mut held = self.inner.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for w in &run.waiting {
            *held.entry(w.job.endpoint_id.clone()).or_default() += 1;
        }
        serde_json::to_string(&held).unwrap_or_else(|_| "{}".into())
    }

    /// The record step: records what is waiting to be recorded (answers, skipped
    /// deliveries, claimed ones given back unsent) in one transaction, and commits it.
    ///
    /// A record commits on its own, not with a claim (issue 15 point 3): an answer is
    /// durable as soon as its group is written, so a crash resends only what was answered
    /// in the last few milliseconds. Session 6 had both in one transaction to save a
    /// commit; on PostgreSQL the claim then held every answer of the group for tens of
    /// milliseconds, and the crash loop's resent share did not shrink. Session 8 committed
    /// the record before the claim, in one step: answers that came during the claim then
    /// waited for it, and the two, one after the other, bounded the throughput. Now they
    /// are two steps that run side by side.
    ///
    /// A record that fails gives its outcomes back: a later record writes them.
    async fn record_step(
        &self,
        kept: Kept,
        outcomes: Outcomes,
        policies: HashMap<String, super::RetryPolicy>,
    ) -> (Kept, RecordResult) {
        let mut conn = match self.connection(kept).await {
            Ok(conn) => conn,
            Err(e) => return (None, Err((e.into(), outcomes))),
        };
        match self.record_outcomes(&mut conn, &outcomes, &policies).await {
            Ok(recorded) => (
                self.keep(conn),
                Ok(RecordDone {
                    // Deliveries given back (`released`) make nothing new due: they were
                    // given back because they could not start here.
                    recorded_any: !outcomes.sent.is_empty() || !outcomes.skipped.is_empty(),
                    recorded,
                    skipped: outcomes.skipped,
                    released: outcomes.released.len(),
                }),
            ),
            Err(e) => (None, Err((e, outcomes))),
        }
    }

    /// A step's connection: the one the step before kept, or one from the pool.
    async fn connection(&self, kept: Kept) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, sqlx::Error> {
        match kept {
            Some(conn) => Ok(conn),
            None => self.inner.db.pool.acquire().await,
        }
    }

    /// What a step that went well keeps for the next (`drive`): its connection, on
    /// PostgreSQL.
    fn keep(&self, conn: sqlx::pool::PoolConnection<sqlx::Any>) -> Kept {
        (self.inner.db.backend == crate::db::Backend::Postgres).then_some(conn)
    }

    /// [`Self::record_step`]'s transaction, none if there is nothing to record. Counted in
    /// the metrics once committed.
    async fn record_outcomes(
        &self,
        conn: &mut sqlx::AnyConnection,
        outcomes: &Outcomes,
        policies: &HashMap<String, super::RetryPolicy>,
    ) -> Result<record::Recorded, CallbackError> {
        if outcomes.is_empty() {
            return Ok(record::Recorded::default());
        }
        let now = self.inner.clock.now();
        let started = Instant::now();
        let skipped_ids: Vec<i64> = outcomes.skipped.iter().map(|(id, _)| *id).collect();
        let _turn = self.inner.db.write_turn().await;
        let recorded = self.record(conn, now, &outcomes.sent, &skipped_ids, &outcomes.released, policies).await?;
        crate::metrics::callback_step("record", outcomes.sent.len() + skipped_ids.len(), started.elapsed());
        Ok(recorded.committed())
    }

    /// The claim step: claims up to `room` due deliveries, fairly across endpoints and
    /// within each one's share (`busy`: what each holds already), and loads what
    /// rendering needs, in one transaction (one statement on PostgreSQL,
    /// `claim_load_pg`); then the endpoints as they are now.
    async fn claim_due(&self, kept: Kept, room: usize, busy: String) -> (Kept, Result<Claim, CallbackError>) {
        let mut conn = match self.connection(kept).await {
            Ok(conn) => conn,
            Err(e) => return (None, Err(e.into())),
        };
        match self.claim_on(&mut conn, room, &busy).await {
            Ok(claim) => (self.keep(conn), Ok(claim)),
            Err(e) => (None, Err(e)),
        }
    }

    /// [`Self::claim_due`] on its connection.
    async fn claim_on(&self, conn: &mut sqlx::AnyConnection, room: usize, busy: &str) -> Result<Claim, CallbackError> {
        let started = Instant::now();
        let turn = self.inner.db.write_turn().await;
        let now = self.inner.clock.now();
        let (claimed, held, jobs) = match self.inner.db.backend {
            crate::db::Backend::Postgres => self.claim_load_pg(conn, now, room, busy).await?,
            // SQLite runs no data-modifying CTE; its statements are calls in this process,
            // not round trips.
            crate::db::Backend::Sqlite => {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let claimed = self.claim(&mut tx, now, room, busy).await?;
                let held = if claimed.is_empty() { Vec::new() } else { self.hold_back(&mut tx, &claimed, now).await? };
                let to_send: Vec<i64> = claimed.iter().copied().filter(|id| !held.contains(id)).collect();
                let jobs = if to_send.is_empty() { Vec::new() } else { self.load_jobs(&mut tx, &to_send).await? };
                tx.commit().await?;
                (claimed, held, jobs)
            }
        };
        drop(turn);
        crate::metrics::callback_step("claim", claimed.len(), started.elapsed());
        // The endpoints as they are now: a change of settings applies from the next claim.
        let mut fresh: Vec<&str> = jobs.iter().map(|j| j.endpoint_id.as_str()).collect();
        fresh.sort_unstable();
        fresh.dedup();
        let endpoints = if fresh.is_empty() { Vec::new() } else { super::endpoints_by_id(conn, &fresh).await? };
        Ok(Claim {
            room,
            claimed: claimed.len(),
            held: held.len(),
            jobs,
            endpoints,
            lease_until: now + self.inner.config.lease_ms,
        })
    }

    /// After a claim committed: counts it, then renders and signs each claimed delivery
    /// (or skips it: the endpoint's filter) and lines it up; starts what there is room for.
    /// An endpoint's partner-callback plugin renders its request here (a fresh sandboxed
    /// instance, within the plugin's deadline).
    async fn after_claim(&self, run: &mut Run, done: Claim, next: &mut Outcomes) {
        run.summary.released += done.held;
        run.summary.claimed += done.claimed;
        for e in done.endpoints {
            let t = Template::parse(&e.spec.url_template).ok();
            run.endpoints.insert(e.spec.id.clone(), (e, t));
        }
        for job in done.jobs {
            let Some((endpoint, template)) = run.endpoints.get(&job.endpoint_id) else { continue };
            // Seed 003's "no ref_id, no postback" is about a click's conversions; a payout
            // has no click.
            let conversion = matches!(job.subject, Subject::Conversion(_));
            if conversion && endpoint.spec.require_ref_id && job.ref_id.as_deref().unwrap_or("").is_empty() {
                next.skipped.push((job.delivery_id, job.endpoint_id.clone()));
                continue;
            }
            let prepared = match template {
                Some(t) => self.prepare_any(endpoint, t, &job).await,
                None => Err("the endpoint's URL template no longer parses".to_string()),
            };
            run.waiting.push_back(Waiting { job, prepared, lease_until: done.lease_until });
        }
        self.start_waiting(run, next);
    }

    /// Starts the waiting deliveries there is room for, in the order they were claimed:
    /// each needs a place in the worker's limit and in its endpoint's. One whose endpoint
    /// is full waits on without holding up the others.
    fn start_waiting(&self, run: &mut Run, next: &mut Outcomes) {
        let per_endpoint = self.inner.config.endpoint_concurrency.max(1);
        let mut i = 0;
        while i < run.waiting.len() && self.inner.permits.available_permits() > 0 {
            let mut busy = self.inner.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let endpoint_busy = busy.get(&run.waiting[i].job.endpoint_id).copied().unwrap_or(0);
            if endpoint_busy >= per_endpoint {
                i += 1;
                continue;
            }
            let Some(w) = run.waiting.remove(i) else { break };
            // A request that could outlast the lease is not started: another replica may
            // claim the delivery once the lease expires, and must not find it in flight
            // here. It is released, no attempt counted.
            let timeout_ms = w.prepared.as_ref().map_or(0, |p| p.timeout.as_millis() as i64);
            if self.inner.clock.now() + timeout_ms > w.lease_until {
                next.released.push(w.job.delivery_id);
                continue;
            }
            // Room is shared with the worker's other runs, which may have taken it since.
            let Ok(permit) = self.inner.permits.clone().try_acquire_owned() else {
                run.waiting.insert(i, w);
                break;
            };
            *busy.entry(w.job.endpoint_id.clone()).or_default() += 1;
            drop(busy);
            let guard = InFlight { inner: self.inner.clone(), endpoint_id: w.job.endpoint_id.clone(), _permit: permit };
            let this = self.clone();
            run.in_flight.spawn(async move {
                let sent = this.send(w.job, w.prepared).await;
                drop(guard);
                sent
            });
        }
    }
}

/// A JSON array of rows, bound as parameter `$param`, as a table of columns `c0`, `c1`...
/// of the given SQL types: many rows in one statement without one parameter per value.
fn json_rows(backend: crate::db::Backend, param: usize, types: &[&str]) -> String {
    match backend {
        crate::db::Backend::Sqlite => {
            let cols: Vec<String> =
                (0..types.len()).map(|i| format!("json_extract(value, '$[{i}]') AS c{i}")).collect();
            format!("SELECT {} FROM json_each(${param})", cols.join(", "))
        }
        crate::db::Backend::Postgres => {
            let cols: Vec<String> = types.iter().enumerate().map(|(i, t)| format!("(r->>{i})::{t} AS c{i}")).collect();
            format!("SELECT {} FROM jsonb_array_elements(${param}::jsonb) AS r", cols.join(", "))
        }
    }
}

fn json_ids(ids: &[i64]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())
}

/// The message id of a delivery: the same for every attempt and replay of it
/// (`webhook-id`, `{delivery_id}`), so partners can deduplicate.
pub fn message_id(delivery_id: i64) -> String {
    format!("cbk_d{delivery_id}")
}
