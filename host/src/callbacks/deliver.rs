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

use super::outbox::{ChangeKind, PayoutSnapshot, Snapshot};
use super::sign::{self, Secret};
use super::template::{Template, Values, append_params};
use super::{CallbackError, Endpoint, Method, net};
use crate::clock::Clock;
use crate::db::Db;
use serde::Serialize;
use sqlx::Row;
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
    /// The plugin runtime, for endpoints whose requests a plugin renders (`plugin.rs`).
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

/// A request as sent (signatures included: for the tester) or as logged (masked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestView {
    /// GET or POST.
    pub method: String,
    /// The URL.
    pub url: String,
    /// Headers we set.
    pub headers: Vec<(String, String)>,
    /// The body (POST).
    pub body: Option<String>,
}

/// A response, as far as it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResponseView {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// The start of the body (lossy UTF-8).
    pub body_excerpt: String,
    /// Whether the body was longer than what was read.
    pub truncated: bool,
}

/// What the callback tester did: the exact request and what came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestReport {
    /// The endpoint.
    pub endpoint_id: String,
    /// The request, exactly as sent.
    pub request: RequestView,
    /// The response, if one came.
    pub response: Option<ResponseView>,
    /// Why there is no response (refused address, timeout, connection error).
    pub error: Option<String>,
    /// Milliseconds until the answer or the error.
    pub latency_ms: i64,
    /// Whether the endpoint would count it as delivered (a 200).
    pub delivered: bool,
}

/// What a change is about, as it was then.
enum Subject {
    Conversion(Box<Snapshot>),
    Payout(PayoutSnapshot),
}

/// One claimed delivery with what it needs to be sent.
struct Job {
    delivery_id: i64,
    endpoint_id: String,
    attempt: i64,
    change_at: i64,
    subject: Subject,
    ref_id: Option<String>,
    subs: [Option<String>; 5],
    merchant_name: Option<String>,
    merchant_ref: Option<String>,
}

struct Prepared {
    request: RequestView,
    logged: RequestView,
    timeout: Duration,
}

struct Sent {
    delivery_id: i64,
    endpoint_id: String,
    attempt: i64,
    started_at: i64,
    latency_ms: i64,
    logged: RequestView,
    status: Option<u16>,
    error: Option<String>,
    excerpt: Option<String>,
    retry_after_ms: Option<i64>,
    response: Option<ResponseView>,
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
            if let Err(e) = self.record(&sent, &[], &run.endpoints, &mut run.summary).await {
                // Not recorded: the deliveries keep their lease and are sent again when it
                // runs out (at least once).
                if mode != Mode::Forever {
                    return Err(e);
                }
                tracing::error!(error = %e, "recording callback outcomes failed");
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
                Some(t) => self.prepare_any(endpoint, t, &job).await,
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
            self.record(&[], &ids, &run.endpoints, &mut run.summary).await?;
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

    /// Claims up to `limit` due deliveries with a lease, fairly across endpoints: at most
    /// `endpoint_concurrency` minus what is in flight to it (`busy`, a JSON object) per
    /// endpoint, taken round-robin (every endpoint's first due delivery, then every
    /// endpoint's second...), each endpoint's in due order.
    ///
    /// Each endpoint's candidates are read from the index of its pending deliveries in due
    /// order, a few rows per endpoint, so a claim costs the endpoints and the batch, not
    /// the backlog. A delivery is due only when no earlier change of the same conversion
    /// to the same endpoint is pending: that check runs on those candidates only.
    ///
    /// The claim stays a lease rather than a row lock held by an open transaction, on
    /// PostgreSQL too: the requests it starts last up to their endpoint's timeout (120 s
    /// at most), and an open transaction per claim would hold a connection and block
    /// vacuum that long, and, committing once, would make every answer of the claim wait
    /// for its slowest, which is the head-of-line blocking this loop avoids. `FOR UPDATE
    /// SKIP LOCKED` serves the claim statement itself: two replicas claiming at the same
    /// instant take disjoint rows without waiting for each other.
    async fn claim(&self, now: i64, limit: usize, busy: &str) -> Result<Vec<i64>, sqlx::Error> {
        let per_endpoint = self.inner.config.endpoint_concurrency.max(1) as i64;
        let first_pending = "NOT EXISTS (SELECT 1 FROM callback_deliveries p WHERE p.endpoint_id = d.endpoint_id \
             AND p.conversion_id = d.conversion_id AND p.state = 'pending' \
             AND (p.version < d.version OR (p.version = d.version AND p.id < d.id)))";
        let due = "d.state = 'pending' AND d.next_attempt_at <= $3 AND (d.lease_until IS NULL OR d.lease_until <= $3)";
        // On PostgreSQL the picked ids are looked up as an array (`= ANY`) and checked
        // again for state and lease only (what another replica can change meanwhile): by
        // primary key whatever the table's statistics say (with those of an empty table,
        // a join here, or the due condition repeated, was planned as a scan of an index
        // of every pending delivery).
        let sql = match self.inner.db.backend {
            crate::db::Backend::Postgres => format!(
                "WITH due AS ( \
                   SELECT x.id, x.endpoint_id, x.next_attempt_at, \
                   ROW_NUMBER() OVER (PARTITION BY x.endpoint_id ORDER BY x.next_attempt_at, x.id) AS rn \
                   FROM callback_endpoints e CROSS JOIN LATERAL ( \
                     SELECT d.id, d.endpoint_id, d.next_attempt_at FROM callback_deliveries d \
                     WHERE d.endpoint_id = e.id AND {due} AND {first_pending} \
                     ORDER BY d.next_attempt_at, d.id LIMIT $5) x \
                   WHERE e.enabled = 1 AND COALESCE(($6::jsonb ->> e.id)::bigint, 0) < $5), \
                 fair AS (SELECT id FROM due WHERE rn + COALESCE(($6::jsonb ->> endpoint_id)::bigint, 0) <= $5 \
                   ORDER BY rn, next_attempt_at, id LIMIT $4), \
                 locked AS (SELECT d.id FROM callback_deliveries d WHERE d.id = ANY(ARRAY(SELECT id FROM fair)) \
                   AND d.state = 'pending' AND (d.lease_until IS NULL OR d.lease_until <= $3) \
                   FOR UPDATE SKIP LOCKED) \
                 UPDATE callback_deliveries SET lease_owner = $1, lease_until = $2 \
                 WHERE id = ANY(ARRAY(SELECT id FROM locked)) RETURNING id"
            ),
            // SQLite has one writer: the conditional update is the claim. `CROSS JOIN`
            // keeps the endpoints as the outer loop (SQLite does not reorder it): joined
            // plainly, the planner scanned every delivery and ran the per-endpoint
            // subquery for each, a second per claim at a few thousand rows.
            crate::db::Backend::Sqlite => format!(
                "UPDATE callback_deliveries SET lease_owner = $1, lease_until = $2 WHERE state = 'pending' \
                 AND (lease_until IS NULL OR lease_until <= $3) AND id IN ( \
                 SELECT id FROM ( \
                   SELECT x.id, x.endpoint_id, x.next_attempt_at, \
                   ROW_NUMBER() OVER (PARTITION BY x.endpoint_id ORDER BY x.next_attempt_at, x.id) AS rn \
                   FROM callback_endpoints e CROSS JOIN callback_deliveries x ON x.id IN ( \
                     SELECT d.id FROM callback_deliveries d WHERE d.endpoint_id = e.id AND {due} AND {first_pending} \
                     ORDER BY d.next_attempt_at, d.id LIMIT $5) \
                   WHERE e.enabled = 1) c \
                 WHERE c.rn + COALESCE((SELECT b.value FROM json_each($6) b WHERE b.key = c.endpoint_id), 0) <= $5 \
                 ORDER BY c.rn, c.next_attempt_at, c.id LIMIT $4) RETURNING id"
            ),
        };
        let claimed = sqlx::query(&sql)
            .bind(&self.inner.owner)
            .bind(now + self.inner.config.lease_ms)
            .bind(now)
            .bind(limit as i64)
            .bind(per_endpoint)
            .bind(busy)
            .fetch_all(&self.inner.db.pool)
            .await?;
        let mut ids: Vec<i64> = claimed.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// Gives back the claimed deliveries of conversions whose click's CREATED (seed 001:
    /// sent on the click) to the same endpoint is still pending, due again a second after
    /// that CREATED's next attempt (or a second from now, if it is being sent right now):
    /// a partner never gets PENDING before the click's CREATED. Returns their ids.
    ///
    /// This is a phase of its own, on the claimed batch only, rather than one more
    /// condition in `claim`: in `claim`, on a PostgreSQL database whose statistics are
    /// still those of empty tables, the extra correlated lookup made each claim scan the
    /// pending deliveries once per pending delivery and take seconds under load.
    async fn hold_back(&self, claimed: &[i64], now: i64) -> Result<Vec<i64>, sqlx::Error> {
        const AFTER_MS: i64 = 1_000;
        let later = match self.inner.db.backend {
            crate::db::Backend::Postgres => "GREATEST",
            crate::db::Backend::Sqlite => "MAX",
        };
        let waited = "FROM callback_deliveries w WHERE w.endpoint_id = callback_deliveries.endpoint_id \
             AND w.conversion_id = callback_deliveries.waits_for AND w.state = 'pending'";
        let sql = format!(
            "UPDATE callback_deliveries SET lease_owner = NULL, lease_until = NULL, \
             next_attempt_at = {later}($1, (SELECT MAX(w.next_attempt_at) {waited})) + $2 \
             WHERE lease_owner = $3 AND waits_for IS NOT NULL AND id IN ({}) AND EXISTS (SELECT 1 {waited}) \
             RETURNING id",
            super::ids_from_json(self.inner.db.backend, 4)
        );
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(AFTER_MS)
            .bind(&self.inner.owner)
            .bind(json_ids(claimed))
            .fetch_all(&self.inner.db.pool)
            .await?;
        rows.iter().map(|r| r.try_get(0)).collect()
    }

    async fn load_jobs(&self, ids: &[i64]) -> Result<Vec<Job>, CallbackError> {
        let mut jobs = Vec::with_capacity(ids.len());
        let sql = format!(
            "SELECT d.id, d.endpoint_id, d.attempts, c.at, c.snapshot, cl.ref_id, cl.sub1, cl.sub2, cl.sub3, cl.sub4, \
             cl.sub5, m.name, (SELECT MIN(r.merchant_ref) FROM merchant_refs r WHERE r.network_id = c.network_id \
             AND r.merchant_id = c.merchant_id), c.subject \
             FROM callback_deliveries d JOIN conversion_changes c ON c.id = d.change_id \
             LEFT JOIN clicks cl ON cl.click_id = c.click_id LEFT JOIN merchants m ON m.id = c.merchant_id \
             WHERE d.id IN ({}) ORDER BY d.id",
            super::ids_from_json(self.inner.db.backend, 1)
        );
        let rows = sqlx::query(&sql).bind(json_ids(ids)).fetch_all(&self.inner.db.pool).await?;
        let unreadable =
            |e: serde_json::Error| CallbackError::Invalid(format!("a change's snapshot does not parse: {e}"));
        for r in rows {
            let snapshot: String = r.try_get(4)?;
            let subject: String = r.try_get(13)?;
            let subject = match subject.as_str() {
                "payout" => Subject::Payout(serde_json::from_str(&snapshot).map_err(unreadable)?),
                _ => Subject::Conversion(Box::new(serde_json::from_str(&snapshot).map_err(unreadable)?)),
            };
            let merchant_ref = match &subject {
                Subject::Conversion(s) => s.merchant_ref.clone().or(r.try_get(12)?),
                Subject::Payout(_) => None,
            };
            let attempts: i64 = r.try_get(2)?;
            jobs.push(Job {
                delivery_id: r.try_get(0)?,
                endpoint_id: r.try_get(1)?,
                attempt: attempts + 1,
                change_at: r.try_get(3)?,
                merchant_ref,
                subject,
                ref_id: r.try_get(5)?,
                subs: [r.try_get(6)?, r.try_get(7)?, r.try_get(8)?, r.try_get(9)?, r.try_get(10)?],
                merchant_name: r.try_get(11)?,
            });
        }
        Ok(jobs)
    }

    /// The values of a delivery, by placeholder.
    fn values(job: &Job) -> Values {
        let mut v = Values::new();
        let mut put = |k: &'static str, val: Option<String>| {
            if let Some(val) = val {
                v.insert(k, val);
            }
        };
        put("delivery_id", Some(message_id(job.delivery_id)));
        put("timestamp", Some((job.change_at / 1000).to_string()));
        let s = match &job.subject {
            Subject::Conversion(s) => s,
            Subject::Payout(p) => {
                // A payout's own values, and the common ones; a conversion's (order,
                // click, merchant) are empty.
                put("type", Some("payout.changed".into()));
                put("status", Some(p.status.as_str().into()));
                put("user_id", Some(p.user_id.clone()));
                put("currency", Some(p.currency.clone()));
                put("reason", p.reason.clone());
                put("payout_id", Some(p.payout_id.clone()));
                put("payout_status", Some(p.status.as_str().into()));
                put("payout_amount", Some(super::decimal(p.amount, &p.currency)));
                put("payout_amount_minor", Some(p.amount.to_string()));
                put("payout_reference", p.reference.clone());
                return v;
            }
        };
        // A click's CREATED has no conversion yet: no order, amounts, cashback or status
        // of ours. Those render empty (an absent value), never as a made-up 0.00 that a
        // partner could book.
        let conversion = s.kind == ChangeKind::Conversion;
        put("type", Some(if conversion { "conversion.changed" } else { "click.created" }.into()));
        let of_conversion = |val: String| Some(val).filter(|_| conversion);
        put("state", Some(s.state.as_str().into()));
        put("status", of_conversion(s.status.as_str().into()));
        put("click_id", s.click_id.clone());
        put("ref_id", job.ref_id.clone());
        put("user_id", s.user_id.clone());
        put("payout", of_conversion(super::decimal(s.cashback, &s.currency)));
        put("payout_minor", of_conversion(s.cashback.to_string()));
        put("amount", of_conversion(super::decimal(s.amount, &s.currency)));
        put("commission", of_conversion(super::decimal(s.commission, &s.currency)));
        put("currency", of_conversion(s.currency.clone()));
        put("transaction_id", of_conversion(s.transaction_id.clone()));
        put("order_id", s.order_id.clone());
        put("event", Some(s.event_type.clone()));
        put("reason", s.reason.clone());
        put("line_id", Some(s.line_ids.join(",")).filter(|l| !l.is_empty()));
        put("reward_delay_days", s.reward_delay_days.map(|d| d.to_string()));
        put("merchant_ref", job.merchant_ref.clone());
        put("merchant_name", job.merchant_name.clone());
        put("conversion_id", of_conversion(crate::conversions::conversion_id(&s.network_id, &s.transaction_id)));
        put("network", Some(s.network_id.clone()).filter(|n| !n.is_empty()));
        for (i, name) in ["sub1", "sub2", "sub3", "sub4", "sub5"].into_iter().enumerate() {
            put(name, job.subs[i].clone());
        }
        v
    }

    /// The request of an attempt: the endpoint's plugin's when it has one (`plugin.rs`; its
    /// error fails the attempt), else the built-in template's.
    async fn prepare_any(&self, endpoint: &Endpoint, template: &Template, job: &Job) -> Result<Prepared, String> {
        let Some(active) = &endpoint.plugin else { return Ok(self.prepare(endpoint, template, job)) };
        let values = Self::values(job);
        let change = super::plugin::ChangeInput {
            snapshot: match &job.subject {
                Subject::Conversion(s) => Some(&**s),
                Subject::Payout(_) => None,
            },
            delivery_id: job.delivery_id,
            attempt: job.attempt,
            changed_at: job.change_at,
            now: self.inner.clock.now(),
        };
        let url = template.render(&values);
        let (request, logged) =
            super::plugin::render(self.inner.plugins.get(), &self.inner.db, endpoint, active, url, &values, change)
                .await?;
        Ok(Prepared { request, logged, timeout: Duration::from_millis(endpoint.spec.timeout_ms.max(1) as u64) })
    }

    fn prepare(&self, endpoint: &Endpoint, template: &Template, job: &Job) -> Prepared {
        let spec = &endpoint.spec;
        let values = Self::values(job);
        let url = template.render(&values);
        let timeout = Duration::from_millis(spec.timeout_ms.max(1) as u64);
        match spec.method {
            Method::Get => {
                let url = append_params(&url, &spec.params);
                let (url, logged_url) = match spec.secrets.first() {
                    Some(secret) => {
                        let signed = sign::sign_get(&url, secret, &spec.signature_param);
                        let masked = sign::mask_signature_param(&signed, &spec.signature_param);
                        (signed, masked)
                    }
                    None => (url.clone(), url),
                };
                let request = RequestView { method: "GET".into(), url, headers: Vec::new(), body: None };
                let logged = RequestView { url: logged_url, ..request.clone() };
                Prepared { request, logged, timeout }
            }
            Method::Post => {
                let body = post_body(job, &values, &spec.params).to_string();
                let id = message_id(job.delivery_id);
                let ts = self.inner.clock.now() / 1000;
                let (headers, logged_headers) = webhook_headers(&spec.secrets, &id, ts, &body);
                let request = RequestView { method: "POST".into(), url: url.clone(), headers, body: Some(body) };
                let logged = RequestView { headers: logged_headers, ..request.clone() };
                Prepared { request, logged, timeout }
            }
        }
    }

    async fn send(&self, job: Job, prepared: Result<Prepared, String>) -> Sent {
        let started_at = self.inner.clock.now();
        let t0 = Instant::now();
        let mut sent = Sent {
            delivery_id: job.delivery_id,
            endpoint_id: job.endpoint_id,
            attempt: job.attempt,
            started_at,
            latency_ms: 0,
            logged: RequestView { method: String::new(), url: String::new(), headers: Vec::new(), body: None },
            status: None,
            error: None,
            excerpt: None,
            retry_after_ms: None,
            response: None,
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                sent.error = Some(e);
                return sent;
            }
        };
        sent.logged = prepared.logged.clone();
        match self.exchange(&prepared.request, prepared.timeout).await {
            Ok((response, retry_after)) => {
                sent.status = Some(response.status);
                sent.excerpt = Some(response.body_excerpt.clone());
                sent.retry_after_ms = retry_after;
                sent.response = Some(response);
            }
            Err(e) => sent.error = Some(e),
        }
        sent.latency_ms = t0.elapsed().as_millis() as i64;
        sent
    }

    /// Sends one request; returns the response (body capped) and its Retry-After in ms.
    async fn exchange(&self, r: &RequestView, timeout: Duration) -> Result<(ResponseView, Option<i64>), String> {
        net::check_url(&r.url, self.inner.config.allow_private)?;
        let mut builder = match r.method.as_str() {
            "POST" => self.inner.client.post(&r.url),
            "PUT" => self.inner.client.put(&r.url),
            _ => self.inner.client.get(&r.url),
        }
        .timeout(timeout);
        for (k, v) in &r.headers {
            builder = builder.header(k, v);
        }
        if let Some(body) = &r.body {
            builder = builder.body(body.clone());
        }
        let response = builder.send().await.map_err(|e| describe(&e))?;
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, self.inner.clock.now()));
        let read =
            tokio::time::timeout(timeout, net::read_capped(response, self.inner.config.max_response_bytes)).await;
        let (body, truncated) = read.unwrap_or((Vec::new(), true));
        let cut = &body[..body.len().min(self.inner.config.excerpt_bytes)];
        // PostgreSQL text cannot hold NUL: a partner's binary answer must not break the log.
        let excerpt = String::from_utf8_lossy(cut).replace('\0', "\u{fffd}");
        Ok((ResponseView { status, headers, body_excerpt: excerpt, truncated }, retry_after))
    }

    /// Gives back claimed deliveries that were not sent.
    async fn release(&self, ids: &[i64]) -> Result<(), sqlx::Error> {
        let sql = format!(
            "UPDATE callback_deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1 AND id IN ({})",
            super::ids_from_json(self.inner.db.backend, 2)
        );
        sqlx::query(&sql).bind(&self.inner.owner).bind(json_ids(ids)).execute(&self.inner.db.pool).await?;
        Ok(())
    }

    /// Records a group of answers (and skipped deliveries) in one transaction, with one
    /// statement per kind of outcome: the attempts, the delivered, the retried, the given
    /// up, the skipped, the endpoints' failure streaks. Then counts them.
    async fn record(
        &self,
        results: &[Sent],
        skipped: &[i64],
        endpoints: &HashMap<String, (Endpoint, Option<Template>)>,
        summary: &mut PassSummary,
    ) -> Result<(), CallbackError> {
        let now = self.inner.clock.now();
        let owner = &self.inner.owner;
        let backend = self.inner.db.backend;
        let policy_of = |s: &Sent| endpoints.get(&s.endpoint_id).map(|(e, _)| e.spec.retry).unwrap_or_default();
        let mut tx = self.inner.db.pool.begin().await?;
        // The log: one row per attempt.
        if !results.is_empty() {
            let rows: Vec<serde_json::Value> = results
                .iter()
                .map(|s| {
                    serde_json::json!([
                        s.delivery_id,
                        s.endpoint_id,
                        s.attempt,
                        s.started_at,
                        s.latency_ms,
                        s.logged.method,
                        s.logged.url,
                        serde_json::to_string(&s.logged.headers).unwrap_or_default(),
                        s.logged.body,
                        s.status,
                        s.error,
                        s.excerpt,
                        outcome_of(s, policy_of(s).max_attempts),
                    ])
                })
                .collect();
            let select = json_rows(
                backend,
                1,
                &[
                    "bigint", "text", "bigint", "bigint", "bigint", "text", "text", "text", "text", "bigint", "text",
                    "text", "text",
                ],
            );
            let sql = format!(
                "INSERT INTO callback_attempts (delivery_id, endpoint_id, attempt, started_at, latency_ms, method, url, \
                 request_headers, request_body, status, error, response_excerpt, outcome) SELECT * FROM ({select}) AS j"
            );
            sqlx::query(&sql).bind(serde_json::Value::Array(rows).to_string()).execute(&mut *tx).await?;
        }
        let delivered: Vec<i64> = results.iter().filter(|s| s.status == Some(200)).map(|s| s.delivery_id).collect();
        if !delivered.is_empty() {
            let sql = format!(
                "UPDATE callback_deliveries SET state = 'delivered', attempts = attempts + 1, delivered_at = $1, \
                 last_status = 200, last_error = NULL, lease_owner = NULL, lease_until = NULL, updated_at = $1 \
                 WHERE lease_owner = $2 AND state = 'pending' AND id IN ({})",
                super::ids_from_json(backend, 3)
            );
            sqlx::query(&sql).bind(now).bind(owner).bind(json_ids(&delivered)).execute(&mut *tx).await?;
        }
        let (mut gave_up, mut retry) = (Vec::new(), Vec::new());
        for s in results.iter().filter(|s| s.status != Some(200)) {
            let policy = policy_of(s);
            let error = s.error.clone().or_else(|| s.status.map(|c| format!("HTTP {c}: only 200 counts as delivered")));
            if outcome_of(s, policy.max_attempts) == "failed" {
                gave_up.push(serde_json::json!([s.delivery_id, s.status, error]));
            } else {
                let unit: f64 = rand::random();
                let wait = policy.delay_after(s.attempt as u32, unit);
                // A partner's Retry-After is honoured, up to the endpoint's longest wait.
                let wait = match s.retry_after_ms {
                    Some(asked) => wait.max(asked.min(policy.max_delay_ms.max(policy.delay_ms))),
                    None => wait,
                };
                retry.push(serde_json::json!([s.delivery_id, s.status, error, now + wait]));
            }
        }
        // Given up, and retried: one statement each, the values per row from one JSON array.
        for (rows, set, types) in [
            (&gave_up, "state = 'failed'", &["bigint", "bigint", "text"][..]),
            (&retry, "next_attempt_at = j.c3", &["bigint", "bigint", "text", "bigint"][..]),
        ] {
            if rows.is_empty() {
                continue;
            }
            let from = json_rows(backend, 3, types);
            let sql = format!(
                "UPDATE callback_deliveries SET {set}, attempts = attempts + 1, last_status = j.c1, last_error = j.c2, \
                 lease_owner = NULL, lease_until = NULL, updated_at = $1 FROM ({from}) AS j \
                 WHERE callback_deliveries.id = j.c0 AND callback_deliveries.lease_owner = $2 \
                 AND callback_deliveries.state = 'pending'"
            );
            sqlx::query(&sql)
                .bind(now)
                .bind(owner)
                .bind(serde_json::Value::Array(rows.clone()).to_string())
                .execute(&mut *tx)
                .await?;
        }
        if !skipped.is_empty() {
            let sql = format!(
                "UPDATE callback_deliveries SET state = 'skipped', last_error = 'no ref_id on the click: the endpoint \
                 requires one', lease_owner = NULL, lease_until = NULL, updated_at = $1 WHERE lease_owner = $2 \
                 AND id IN ({})",
                super::ids_from_json(backend, 3)
            );
            sqlx::query(&sql).bind(now).bind(owner).bind(json_ids(skipped)).execute(&mut *tx).await?;
        }
        // Failures in a row, per endpoint, in the order the answers came: one statement for
        // every endpoint of the group. An endpoint whose streak stays at nothing is not
        // written (the healthy case: no write per group on the endpoint's row).
        let mut streaks: Vec<(&str, bool, i64)> = Vec::new(); // (endpoint, a success seen, failures after it)
        for s in results {
            let i = match streaks.iter().position(|(e, _, _)| *e == s.endpoint_id) {
                Some(i) => i,
                None => {
                    streaks.push((s.endpoint_id.as_str(), false, 0));
                    streaks.len() - 1
                }
            };
            if s.status == Some(200) {
                streaks[i] = (streaks[i].0, true, 0);
            } else {
                streaks[i].2 += 1;
            }
        }
        if !streaks.is_empty() {
            let rows: Vec<serde_json::Value> =
                streaks.iter().map(|(e, reset, n)| serde_json::json!([e, i64::from(*reset), n])).collect();
            let from = json_rows(backend, 2, &["text", "bigint", "bigint"]);
            let sql = format!(
                "UPDATE callback_endpoints SET \
                 consecutive_failures = CASE WHEN j.c1 = 1 THEN j.c2 ELSE consecutive_failures + j.c2 END, \
                 failing_since = CASE WHEN j.c1 = 1 AND j.c2 = 0 THEN NULL WHEN j.c1 = 1 THEN $1 \
                 ELSE COALESCE(failing_since, $1) END \
                 FROM ({from}) AS j WHERE callback_endpoints.id = j.c0 \
                 AND NOT (j.c2 = 0 AND consecutive_failures = 0 AND failing_since IS NULL)"
            );
            sqlx::query(&sql).bind(now).bind(serde_json::Value::Array(rows).to_string()).execute(&mut *tx).await?;
        }
        let failing: Vec<&str> = streaks.iter().filter(|(_, _, n)| *n > 0).map(|(e, _, _)| *e).collect();
        let mut disabled = Vec::new();
        if !failing.is_empty() {
            let ids = match backend {
                crate::db::Backend::Sqlite => "SELECT value FROM json_each($3)",
                crate::db::Backend::Postgres => "SELECT jsonb_array_elements_text($3::jsonb)",
            };
            let sql = format!(
                "UPDATE callback_endpoints SET enabled = 0, disabled_at = $1, disabled_reason = $2, updated_at = $1 \
                 WHERE enabled = 1 AND consecutive_failures >= disable_after AND id IN ({ids}) \
                 RETURNING id, consecutive_failures"
            );
            let rows = sqlx::query(&sql)
                .bind(now)
                .bind("too many failed attempts in a row")
                .bind(serde_json::to_string(&failing).unwrap_or_else(|_| "[]".into()))
                .fetch_all(&mut *tx)
                .await?;
            for row in rows {
                let (endpoint_id, n): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
                let message = format!(
                    "callback endpoint {endpoint_id} disabled after {n} failed attempts in a row; its deliveries wait. \
                     Fix the partner's endpoint, then `cashbackd endpoint enable {endpoint_id}` sends the backlog"
                );
                sqlx::query("INSERT INTO alerts (at, kind, subject, message) VALUES ($1, 'endpoint_disabled', $2, $3)")
                    .bind(now)
                    .bind(&endpoint_id)
                    .bind(&message)
                    .execute(&mut *tx)
                    .await?;
                disabled.push((endpoint_id, n, message));
            }
        }
        tx.commit().await?;
        // Counted once recorded: a group whose record fails is sent again after its lease.
        summary.delivered += delivered.len();
        summary.retrying += retry.len();
        summary.failed += gave_up.len();
        summary.skipped += skipped.len();
        for (endpoint_id, n, message) in disabled {
            tracing::warn!(endpoint = endpoint_id.as_str(), failures = n, "{message}");
            summary.disabled.push(endpoint_id);
        }
        for s in results {
            let outcome = match outcome_of(s, policy_of(s).max_attempts) {
                "delivered" => "delivered",
                "failed" => "gave_up",
                _ => "failed",
            };
            let elapsed = Duration::from_millis(u64::try_from(s.latency_ms).unwrap_or(0));
            crate::metrics::callback(&s.endpoint_id, outcome, Some(elapsed));
        }
        Ok(())
    }

    /// The callback tester: sends a sample callback to an endpoint (enabled or not) and
    /// returns the exact request and what came back. Logged as a `test` attempt.
    pub async fn test(&self, endpoint_id: &str) -> Result<TestReport, CallbackError> {
        let endpoint = super::endpoint(&self.inner.db, endpoint_id).await?;
        let template = endpoint.spec.validate()?;
        let now = self.inner.clock.now();
        let job = sample_job(&endpoint, now);
        let t0 = Instant::now();
        let (prepared, result) = match self.prepare_any(&endpoint, &template, &job).await {
            Ok(prepared) => {
                let result = self.exchange(&prepared.request, prepared.timeout).await;
                (prepared, result)
            }
            // The plugin's refusal is the tester's answer, as it would be an attempt's.
            Err(e) => {
                let none = RequestView { method: String::new(), url: String::new(), headers: Vec::new(), body: None };
                let timeout = Duration::from_millis(endpoint.spec.timeout_ms.max(1) as u64);
                (Prepared { request: none.clone(), logged: none, timeout }, Err(e))
            }
        };
        let latency_ms = t0.elapsed().as_millis() as i64;
        let (response, error) = match result {
            Ok((r, _)) => (Some(r), None),
            Err(e) => (None, Some(e)),
        };
        sqlx::query(
            "INSERT INTO callback_attempts (delivery_id, endpoint_id, attempt, started_at, latency_ms, method, url, \
             request_headers, request_body, status, error, response_excerpt, outcome) \
             VALUES (NULL, $1, 1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'test')",
        )
        .bind(endpoint_id)
        .bind(now)
        .bind(latency_ms)
        .bind(&prepared.logged.method)
        .bind(&prepared.logged.url)
        .bind(serde_json::to_string(&prepared.logged.headers).unwrap_or_default())
        .bind(&prepared.logged.body)
        .bind(response.as_ref().map(|r| i64::from(r.status)))
        .bind(&error)
        .bind(response.as_ref().map(|r| r.body_excerpt.clone()))
        .execute(&self.inner.db.pool)
        .await?;
        Ok(TestReport {
            endpoint_id: endpoint_id.to_string(),
            delivered: response.as_ref().is_some_and(|r| r.status == 200),
            request: prepared.request,
            response,
            error,
            latency_ms,
        })
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

fn outcome_of(s: &Sent, max_attempts: u32) -> &'static str {
    if s.status == Some(200) {
        "delivered"
    } else if s.attempt >= i64::from(max_attempts) {
        "failed"
    } else {
        "retry"
    }
}

/// The message id of a delivery: the same for every attempt and replay of it
/// (`webhook-id`, `{delivery_id}`), so partners can deduplicate.
pub fn message_id(delivery_id: i64) -> String {
    format!("cbk_d{delivery_id}")
}

fn post_body(job: &Job, v: &Values, params: &std::collections::BTreeMap<String, String>) -> serde_json::Value {
    let get = |k: &str| v.get(k).cloned();
    let s = match &job.subject {
        Subject::Conversion(s) => s,
        Subject::Payout(p) => {
            return serde_json::json!({
                "type": "payout.changed",
                "id": message_id(job.delivery_id),
                "data": {
                    "payout_id": p.payout_id,
                    "user_id": p.user_id,
                    "status": p.status,
                    "amount": get("payout_amount"),
                    "amount_minor": p.amount,
                    "currency": p.currency,
                    "reference": p.reference,
                    "reason": p.reason,
                    "requested_at": p.requested_at,
                    "changed_at": job.change_at,
                },
                "params": params,
            });
        }
    };
    // A click's CREATED: the same shape, its conversion's fields null (see `values`).
    let (kind, of_conversion) = match s.kind {
        ChangeKind::Conversion => ("conversion.changed", true),
        ChangeKind::Click => ("click.created", false),
    };
    let minor = |n: i64| Some(n).filter(|_| of_conversion);
    serde_json::json!({
        "type": kind,
        "id": message_id(job.delivery_id),
        "data": {
            "conversion_id": get("conversion_id"),
            "state": s.state,
            "status": get("status"),
            "payout": get("payout"),
            "payout_minor": minor(s.cashback),
            "amount_minor": minor(s.amount),
            "currency": get("currency"),
            "click_id": s.click_id,
            "ref_id": job.ref_id,
            "user_id": s.user_id,
            "subs": { "sub1": job.subs[0], "sub2": job.subs[1], "sub3": job.subs[2], "sub4": job.subs[3], "sub5": job.subs[4] },
            "transaction_id": get("transaction_id"),
            "order_id": s.order_id,
            "event": s.event_type,
            "merchant": { "ref": job.merchant_ref, "name": job.merchant_name },
            "reason": s.reason,
            "line_id": get("line_id"),
            "reward_delay_days": s.reward_delay_days,
            "network": get("network"),
            "changed_at": job.change_at,
        },
        "params": params,
    })
}

type Headers = Vec<(String, String)>;

/// Standard Webhooks headers, and the same with the signatures masked for the log.
fn webhook_headers(secrets: &[Secret], id: &str, ts: i64, body: &str) -> (Headers, Headers) {
    let mut headers =
        vec![("content-type".to_string(), "application/json".to_string()), ("webhook-id".to_string(), id.to_string())];
    headers.push(("webhook-timestamp".to_string(), ts.to_string()));
    let mut logged = headers.clone();
    if !secrets.is_empty() {
        headers.push(("webhook-signature".to_string(), sign::standard_webhooks(secrets, id, ts, body.as_bytes())));
        logged.push(("webhook-signature".to_string(), vec!["v1,***"; secrets.len()].join(" ")));
    }
    (headers, logged)
}

/// The tester's sample: a PENDING conversion, or, for an endpoint that does not take
/// PENDING, the first state it takes (a click's CREATED for CREATED), or a paid payout for
/// an endpoint that takes payouts only, so that the partner sees the kind of callback it
/// will get.
fn sample_job(endpoint: &Endpoint, now: i64) -> Job {
    use crate::conversions::{State, Status};
    if !endpoint.spec.events.conversions {
        return Job {
            delivery_id: 0,
            endpoint_id: endpoint.spec.id.clone(),
            attempt: 1,
            change_at: now,
            subject: Subject::Payout(PayoutSnapshot {
                payout_id: "po_test".into(),
                user_id: "test-user".into(),
                currency: "EUR".into(),
                amount: 2_500,
                status: crate::payouts::PayoutStatus::Paid,
                reference: Some("test-reference".into()),
                reason: None,
                requested_at: now,
            }),
            ref_id: None,
            subs: [None, None, None, None, None],
            merchant_name: None,
            merchant_ref: None,
        };
    }
    let state = match &endpoint.spec.states {
        Some(states) if !states.contains(&State::Pending) => states.first().copied().unwrap_or(State::Pending),
        _ => State::Pending,
    };
    let mut job = Job {
        delivery_id: 0,
        endpoint_id: endpoint.spec.id.clone(),
        attempt: 1,
        change_at: now,
        subject: Subject::Conversion(Box::new(Snapshot {
            kind: ChangeKind::Conversion,
            state,
            status: Status::Processed,
            network_id: "test-network".into(),
            transaction_id: "test-transaction".into(),
            click_id: Some("test-click".into()),
            user_id: Some("test-user".into()),
            merchant_id: Some("test-merchant".into()),
            merchant_ref: Some("test-merchant-ref".into()),
            order_id: Some("test-order".into()),
            event_type: "sale".into(),
            reason: None,
            currency: "EUR".into(),
            amount: 10_000,
            commission: 800,
            cashback: 500,
            reward_delay_days: Some(30),
            line_ids: vec!["line-1".into()],
        })),
        ref_id: Some("test-ref".into()),
        subs: [Some("test-sub1".into()), None, None, None, None],
        merchant_name: Some("Test Merchant".into()),
        merchant_ref: Some("test-merchant-ref".into()),
    };
    if state == State::Created {
        let click = super::outbox::Click {
            click_id: "test-click",
            user_id: "test-user",
            merchant_id: Some("test-merchant"),
            network_id: Some("test-network"),
            ref_id: Some("test-ref"),
        };
        job.subject = Subject::Conversion(Box::new(super::outbox::Change::of_click(&click, None, now).snapshot));
    }
    job
}

/// A Retry-After value (seconds, or an HTTP date) as milliseconds from `now`.
pub fn parse_retry_after(value: &str, now: i64) -> Option<i64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<i64>() {
        return Some(seconds.max(0).saturating_mul(1000));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.timestamp_millis() - now).max(0))
}

/// A reqwest error as one line, without the URL (it may carry a signature).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_request() {
        "request failed"
    } else {
        "failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() { kind.to_string() } else { format!("{kind}: {cause}") }
}

// ---- the delivery log, replay --------------------------------------------------------

/// A delivery as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryView {
    /// Id.
    pub id: i64,
    /// Its message id (`webhook-id`).
    pub message_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// What it tells of: a conversion's change (`conversion`) or a click's CREATED
    /// (`click`, seed 001).
    pub kind: ChangeKind,
    /// The conversion; none for a click's CREATED.
    pub conversion_id: Option<String>,
    /// The click, when known.
    pub click_id: Option<String>,
    /// What the change is about: `conversion` (a conversion's change or a click's
    /// CREATED) or `payout` (then `conversion_id` holds the payout's id).
    pub subject: String,
    /// The conversion's (or payout's) version (order); 1 for a click.
    pub version: i64,
    /// The state it tells.
    pub conversion_state: String,
    /// pending, delivered, failed, skipped.
    pub state: String,
    /// Attempts since created or replayed.
    pub attempts: i64,
    /// When due (pending).
    pub next_attempt_at: i64,
    /// The last status code.
    pub last_status: Option<i64>,
    /// The last error.
    pub last_error: Option<String>,
    /// Created.
    pub created_at: i64,
    /// Delivered.
    pub delivered_at: Option<i64>,
}

impl DeliveryView {
    /// What it tells of, for listings: the conversion id, or `click <click id>`.
    pub fn subject(&self) -> String {
        match (&self.conversion_id, &self.click_id) {
            (Some(conversion), _) => conversion.clone(),
            (None, Some(click)) => format!("click {click}"),
            (None, None) => "click".to_string(),
        }
    }
}

/// One logged attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptView {
    /// Id.
    pub id: i64,
    /// The delivery (none for a tester request).
    pub delivery_id: Option<i64>,
    /// The endpoint.
    pub endpoint_id: String,
    /// Which attempt.
    pub attempt: i64,
    /// When it started.
    pub started_at: i64,
    /// How long it took.
    pub latency_ms: i64,
    /// The request line and headers (signatures masked) and body.
    pub request: RequestView,
    /// The status code, if an answer came.
    pub status: Option<i64>,
    /// The error, if none came.
    pub error: Option<String>,
    /// The start of the answer.
    pub response_excerpt: Option<String>,
    /// delivered, retry, failed, test.
    pub outcome: String,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Of one endpoint.
    pub endpoint_id: Option<String>,
    /// In one state.
    pub state: Option<String>,
    /// Of one conversion.
    pub conversion_id: Option<String>,
    /// Of one click's CREATED (seed 001: sent on the click).
    pub click_id: Option<String>,
    /// Created at or after.
    pub from: Option<i64>,
    /// Created before.
    pub to: Option<i64>,
    /// At most (default 100).
    pub limit: Option<i64>,
}

const DELIVERY_COLUMNS: &str = "d.id, d.endpoint_id, d.conversion_id, d.version, c.state, d.state, d.attempts, \
    d.next_attempt_at, d.last_status, d.last_error, d.created_at, d.delivered_at, c.kind, c.click_id, c.subject";

fn delivery_from_row(r: &sqlx::any::AnyRow) -> Result<DeliveryView, sqlx::Error> {
    let id: i64 = r.try_get(0)?;
    let kind = match r.try_get::<String, _>(12)?.as_str() {
        "click" => ChangeKind::Click,
        _ => ChangeKind::Conversion,
    };
    Ok(DeliveryView {
        id,
        message_id: message_id(id),
        endpoint_id: r.try_get(1)?,
        kind,
        // A click's row holds its outbox key (`click:...`) there, not a conversion id.
        conversion_id: Some(r.try_get::<String, _>(2)?).filter(|_| kind == ChangeKind::Conversion),
        click_id: r.try_get(13)?,
        subject: r.try_get(14)?,
        version: r.try_get(3)?,
        conversion_state: r.try_get(4)?,
        state: r.try_get(5)?,
        attempts: r.try_get(6)?,
        next_attempt_at: r.try_get(7)?,
        last_status: r.try_get(8)?,
        last_error: r.try_get(9)?,
        created_at: r.try_get(10)?,
        delivered_at: r.try_get(11)?,
    })
}

/// Deliveries, newest first.
pub async fn deliveries(db: &Db, f: &DeliveryFilter) -> Result<Vec<DeliveryView>, CallbackError> {
    if let Some(s) = &f.state
        && !matches!(s.as_str(), "pending" | "delivered" | "failed" | "skipped")
    {
        return Err(CallbackError::Invalid(format!("state: {s:?} is not pending, delivered, failed or skipped")));
    }
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM callback_deliveries d JOIN conversion_changes c ON c.id = d.change_id \
         WHERE ($1 IS NULL OR d.endpoint_id = $1) AND ($2 IS NULL OR d.state = $2) AND ($3 IS NULL OR d.conversion_id = $3) \
         AND ($4 IS NULL OR d.created_at >= $4) AND ($5 IS NULL OR d.created_at < $5) AND ($7 IS NULL OR d.conversion_id = 'click:' || $7) \
         ORDER BY d.id DESC LIMIT $6"
    );
    let rows = sqlx::query(&sql)
        .bind(&f.endpoint_id)
        .bind(&f.state)
        .bind(&f.conversion_id)
        .bind(f.from)
        .bind(f.to)
        .bind(f.limit.unwrap_or(100).clamp(1, 10_000))
        .bind(&f.click_id)
        .fetch_all(&db.pool)
        .await?;
    Ok(rows.iter().map(delivery_from_row).collect::<Result<_, _>>()?)
}

/// A delivery with every attempt, oldest first.
pub async fn delivery(db: &Db, id: i64) -> Result<(DeliveryView, Vec<AttemptView>), CallbackError> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM callback_deliveries d JOIN conversion_changes c ON c.id = d.change_id WHERE d.id = $1"
    );
    let row = sqlx::query(&sql).bind(id).fetch_optional(&db.pool).await?;
    let view = delivery_from_row(&row.ok_or_else(|| CallbackError::NotFound(format!("no delivery {id}")))?)?;
    Ok((view, attempts(db, Some(id), None, 1000).await?))
}

/// Logged attempts of a delivery, or of an endpoint (tester requests included), oldest first.
pub async fn attempts(
    db: &Db,
    delivery_id: Option<i64>,
    endpoint_id: Option<&str>,
    limit: i64,
) -> Result<Vec<AttemptView>, CallbackError> {
    let rows = sqlx::query(
        "SELECT id, delivery_id, endpoint_id, attempt, started_at, latency_ms, method, url, request_headers, request_body, \
         status, error, response_excerpt, outcome FROM callback_attempts \
         WHERE ($1 IS NULL OR delivery_id = $1) AND ($2 IS NULL OR endpoint_id = $2) ORDER BY id LIMIT $3",
    )
    .bind(delivery_id)
    .bind(endpoint_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let headers: String = r.try_get(8)?;
            Ok(AttemptView {
                id: r.try_get(0)?,
                delivery_id: r.try_get(1)?,
                endpoint_id: r.try_get(2)?,
                attempt: r.try_get(3)?,
                started_at: r.try_get(4)?,
                latency_ms: r.try_get(5)?,
                request: RequestView {
                    method: r.try_get(6)?,
                    url: r.try_get(7)?,
                    headers: serde_json::from_str(&headers).unwrap_or_default(),
                    body: r.try_get(9)?,
                },
                status: r.try_get(10)?,
                error: r.try_get(11)?,
                response_excerpt: r.try_get(12)?,
                outcome: r.try_get(13)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(CallbackError::from)
}

/// Sends a delivery again (delivered, failed or skipped): it becomes pending, due now,
/// with a fresh count of attempts, and keeps its message id.
pub async fn replay(db: &Db, id: i64, now: i64) -> Result<(), CallbackError> {
    let done = sqlx::query(
        "UPDATE callback_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, lease_owner = NULL, \
         lease_until = NULL, updated_at = $1 WHERE id = $2 AND state <> 'pending'",
    )
    .bind(now)
    .bind(id)
    .execute(&db.pool)
    .await?;
    if done.rows_affected() == 0 {
        let exists = sqlx::query("SELECT state FROM callback_deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(&db.pool)
            .await?;
        return Err(match exists {
            None => CallbackError::NotFound(format!("no delivery {id}")),
            Some(_) => CallbackError::Invalid(format!("delivery {id} is pending already")),
        });
    }
    Ok(())
}

/// Replays every finished delivery created in `[from, to)`, of one endpoint or all.
/// Returns how many.
pub async fn replay_range(
    db: &Db,
    endpoint_id: Option<&str>,
    from: i64,
    to: i64,
    now: i64,
) -> Result<u64, CallbackError> {
    if to <= from {
        return Err(CallbackError::Invalid("to: must be after from".into()));
    }
    if let Some(e) = endpoint_id {
        super::endpoint(db, e).await?;
    }
    let done = sqlx::query(
        "UPDATE callback_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, lease_owner = NULL, \
         lease_until = NULL, updated_at = $1 WHERE state <> 'pending' AND created_at >= $2 AND created_at < $3 \
         AND ($4 IS NULL OR endpoint_id = $4)",
    )
    .bind(now)
    .bind(from)
    .bind(to)
    .bind(endpoint_id)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(states: Option<Vec<crate::conversions::State>>) -> Endpoint {
        let spec =
            super::super::EndpointSpec { states, ..super::super::EndpointSpec::new("e", "p", "https://p.example/") };
        Endpoint {
            spec,
            enabled: true,
            consecutive_failures: 0,
            disabled_at: None,
            disabled_reason: None,
            plugin: None,
        }
    }

    #[test]
    fn a_clicks_created_fills_the_clicks_values_and_leaves_every_order_value_empty() {
        use crate::conversions::State;
        let job = sample_job(&endpoint(Some(vec![State::Created, State::Completed])), 1_767_225_600_000);
        let v = Deliverer::values(&job);
        let got = |k: &str| v.get(k).map(String::as_str);
        assert_eq!(got("state"), Some("CREATED"));
        assert_eq!(
            (got("click_id"), got("ref_id"), got("sub1")),
            (Some("test-click"), Some("test-ref"), Some("test-sub1"))
        );
        assert_eq!(
            (got("user_id"), got("merchant_name"), got("network")),
            (Some("test-user"), Some("Test Merchant"), Some("test-network"))
        );
        assert_eq!((got("event"), got("timestamp")), (Some("click"), Some("1767225600")));
        for order in [
            "conversion_id",
            "transaction_id",
            "order_id",
            "payout",
            "payout_minor",
            "amount",
            "commission",
            "currency",
            "status",
            "line_id",
            "reward_delay_days",
            "reason",
        ] {
            assert_eq!(got(order), None, "{order} of a click");
        }
        let body = post_body(&job, &v, &std::collections::BTreeMap::new());
        assert_eq!(body["type"], "click.created");
        for order in ["conversion_id", "payout", "payout_minor", "amount_minor", "currency", "transaction_id", "status"]
        {
            assert!(body["data"][order].is_null(), "{order}: {body}");
        }

        // An endpoint that takes PENDING (or every state) is tested with a PENDING order.
        for states in [None, Some(vec![State::Created, State::Pending])] {
            let job = sample_job(&endpoint(states), 0);
            let v = Deliverer::values(&job);
            assert_eq!((v["state"].as_str(), v["payout"].as_str(), v["event"].as_str()), ("PENDING", "5.00", "sale"));
            assert_eq!(post_body(&job, &v, &std::collections::BTreeMap::new())["type"], "conversion.changed");
        }
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        assert_eq!(parse_retry_after("120", 0), Some(120_000));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1_445_412_480_000 - 60_000), Some(60_000));
        assert_eq!(parse_retry_after("soon", 0), None);
    }
}
