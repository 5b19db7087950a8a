//! Delivering callbacks from the outbox.
//!
//! The worker claims due deliveries with a lease in the database (a conditional
//! `UPDATE`: on PostgreSQL several replicas may claim at once and each delivery is
//! claimed by one), starts their requests at once, and records the answers as they come,
//! a group at a time. It claims only what there is room for in flight: in its own limit
//! (`concurrency`) and in each endpoint's (`endpoint_concurrency`), round-robin across
//! endpoints. So a partner that hangs holds its own few requests until its timeout, and
//! every other endpoint's deliveries are claimed, sent and recorded meanwhile.
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
//! a request is recorded after the request (with the answers that came while the
//! previous group was being written): a crash between the partner's 200 and the record
//! means the delivery is sent again when its lease expires (with the same
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
//! | `mod.rs` | the loop: room in flight, when to claim, when to record | |
//! | `tester.rs` | the callback tester | |
//! | `log.rs` | the delivery log and replay | |

mod claim;
mod log;
mod record;
mod render;
mod send;
mod tester;

pub use log::{AttemptView, DeliveryFilter, DeliveryView, attempts, deliveries, delivery, replay, replay_range};
pub use render::RequestView;
pub use send::{ResponseView, parse_retry_after};
pub use tester::TestReport;

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

/// Settings of the delivery worker.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Let callbacks reach private, loopback and link-local addresses (tests; an operator
    /// whose partners are on the private network).
    pub allow_private: bool,
    /// Deliveries claimed at most by one claim (`callbacks.batch`).
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
    in_flight: tokio::task::JoinSet<Sent>,
    endpoints: HashMap<String, (Endpoint, Option<Template>)>,
    summary: PassSummary,
}

/// What one claim did.
#[derive(Debug, Default)]
struct Step {
    claimed: usize,
    /// Started or skipped: not given back.
    progress: usize,
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
            }),
        })
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

    /// The delivery loop. Requests are never queued behind one another: a claim takes at
    /// most as many deliveries as there is room for in flight, in the worker's limit and
    /// in each endpoint's, and each is started at once. Answers are recorded as they
    /// come, in groups (whatever came while the previous group was being written, one
    /// statement per kind of outcome), and the loop claims again as soon as there is
    /// room. A partner that hangs therefore holds only its own share of the requests in
    /// flight (`endpoint_concurrency`) and delays nobody else's claims or records.
    async fn drive(&self, mode: Mode) -> Result<PassSummary, CallbackError> {
        let mut run = Run::default();
        let mut may_claim = true;
        // Claims and records are write transactions, each a commit (an fsync on SQLite):
        // taken one delivery at a time they would cost more than the requests. So a claim
        // waits until half the room is free, and answers are recorded once half a claim's
        // worth came, or as soon as fewer than that are still in flight (then waiting
        // would only delay them behind slow requests).
        let half = (self.inner.config.concurrency.min(self.inner.config.batch).max(2) / 2).max(1);
        let mut answered: Vec<Sent> = Vec::new();
        // ...and never later than this after the first of them came.
        const RECORD_WITHIN: Duration = Duration::from_millis(20);
        let mut first_answer: Option<Instant> = None;
        loop {
            let mut progress = false;
            let mut more = false;
            if may_claim {
                let room = self.inner.permits.available_permits().min(self.inner.config.batch.max(1));
                if room >= half || (room > 0 && run.in_flight.is_empty()) {
                    match self.claim_and_start(&mut run, room).await {
                        Ok(step) => {
                            progress = step.progress > 0;
                            more = step.claimed >= room;
                        }
                        // The worker outlives a database outage: what is in flight is
                        // still recorded below, and claims resume after `poll`.
                        Err(e) if mode == Mode::Forever => {
                            tracing::error!(error = %e, "claiming callback deliveries failed");
                        }
                        Err(e) => return Err(e),
                    }
                }
                may_claim = mode != Mode::Once;
            }
            if run.in_flight.is_empty() && answered.is_empty() {
                match mode {
                    _ if progress && mode != Mode::Once => continue,
                    Mode::Forever => {
                        tokio::time::sleep(self.inner.config.poll).await;
                        continue;
                    }
                    Mode::Once | Mode::UntilIdle => return Ok(run.summary),
                }
            }
            // Wait for an answer, unless there is room and more is likely due; while
            // requests hang, wake up after `poll` anyway to claim what came due meanwhile.
            let mut done = Vec::new();
            if !run.in_flight.is_empty() && (!more || self.inner.permits.available_permits() < half) {
                let wait = match first_answer {
                    Some(at) => RECORD_WITHIN.saturating_sub(at.elapsed()),
                    None => self.inner.config.poll,
                };
                tokio::select! {
                    r = run.in_flight.join_next() => done.extend(r),
                    _ = tokio::time::sleep(wait), if mode != Mode::Once || first_answer.is_some() => {}
                }
            }
            while let Some(r) = run.in_flight.try_join_next() {
                done.push(r);
            }
            for r in done {
                match r {
                    Ok(s) => answered.push(s),
                    Err(e) => tracing::error!(error = %e, "a callback send task failed"),
                }
            }
            if answered.is_empty() {
                continue;
            }
            let first = *first_answer.get_or_insert_with(Instant::now);
            if answered.len() < half && run.in_flight.len() >= half && first.elapsed() < RECORD_WITHIN {
                continue;
            }
            first_answer = None;
            let sent = std::mem::take(&mut answered);
            match self.record(&sent, &[], &run.endpoints).await {
                Ok(recorded) => run.summary.add(recorded),
                Err(e) => {
                // Not recorded: the deliveries keep their lease and are sent again when it
                // runs out (at least once).
                if mode != Mode::Forever {
                    return Err(e);
                }
                    tracing::error!(error = %e, "recording callback outcomes failed");
                }
            }
        }
    }

    /// Claims up to `room` due deliveries, fairly across endpoints and within each one's
    /// room, and starts their requests.
    async fn claim_and_start(&self, run: &mut Run, room: usize) -> Result<Step, CallbackError> {
        let now = self.inner.clock.now();
        let lease_until = now + self.inner.config.lease_ms;
        let t0 = Instant::now();
        let busy = {
            let busy = self.inner.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            serde_json::to_string(&*busy).unwrap_or_else(|_| "{}".into())
        };
        let claimed = self.claim(now, room, &busy).await?;
        if claimed.is_empty() {
            return Ok(Step::default());
        }
        run.summary.claimed += claimed.len();
        let held = self.hold_back(&claimed, now).await?;
        run.summary.released += held.len();
        let to_send: Vec<i64> = claimed.iter().copied().filter(|id| !held.contains(id)).collect();
        let jobs = self.load_jobs(&to_send).await?;
        // The endpoints as they are now: a change of settings applies from the next claim.
        let mut fresh: Vec<&str> = jobs.iter().map(|j| j.endpoint_id.as_str()).collect();
        fresh.sort_unstable();
        fresh.dedup();
        for e in super::endpoints_by_id(&self.inner.db, &fresh).await? {
            let t = Template::parse(&e.spec.url_template).ok();
            run.endpoints.insert(e.spec.id.clone(), (e, t));
        }
        let t_load = t0.elapsed();
        let (mut skipped, mut late, mut started) = (Vec::new(), Vec::new(), 0);
        for job in jobs {
            let Some((endpoint, template)) = run.endpoints.get(&job.endpoint_id) else { continue };
            // Seed 003's "no ref_id, no postback" is about a click's conversions; a payout
            // has no click.
            let conversion = matches!(job.subject, Subject::Conversion(_));
            if conversion && endpoint.spec.require_ref_id && job.ref_id.as_deref().unwrap_or("").is_empty() {
                skipped.push((job.delivery_id, job.endpoint_id.clone()));
                continue;
            }
            let prepared = match template {
                Some(t) => Ok(self.prepare(endpoint, t, &job)),
                None => Err("the endpoint's URL template no longer parses".to_string()),
            };
            // A request that could outlast the lease is not started: another replica may
            // claim the delivery once the lease expires, and must not find it in flight
            // here. It is released, no attempt counted.
            let timeout_ms = prepared.as_ref().map_or(0, |p| p.timeout.as_millis() as i64);
            if self.inner.clock.now() + timeout_ms > lease_until {
                late.push(job.delivery_id);
                continue;
            }
            // Room was counted before the claim; another run of this worker may have
            // taken it meanwhile: then the delivery goes back.
            let Ok(permit) = self.inner.permits.clone().try_acquire_owned() else {
                late.push(job.delivery_id);
                continue;
            };
            *self
                .inner
                .busy
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(job.endpoint_id.clone())
                .or_default() += 1;
            let guard = InFlight { inner: self.inner.clone(), endpoint_id: job.endpoint_id.clone(), _permit: permit };
            let this = self.clone();
            run.in_flight.spawn(async move {
                let sent = this.send(job, prepared).await;
                drop(guard);
                sent
            });
            started += 1;
        }
        if !late.is_empty() {
            run.summary.released += late.len();
            self.release(&late).await?;
        }
        if !skipped.is_empty() {
            let ids: Vec<i64> = skipped.iter().map(|(id, _)| *id).collect();
            let recorded = self.record(&[], &ids, &run.endpoints).await?;
            run.summary.add(recorded);
            for (_, endpoint) in &skipped {
                crate::metrics::callback(endpoint, "skipped", None);
            }
        }
        tracing::debug!(
            claimed = claimed.len(),
            started,
            claim_load_us = t_load.as_micros() as u64,
            start_us = (t0.elapsed() - t_load).as_micros() as u64,
            "callback deliveries claimed"
        );
        Ok(Step { claimed: claimed.len(), progress: started + skipped.len() })
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
