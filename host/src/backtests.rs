//! Backtests as background jobs (issue 16, point 6): a backtest replays a candidate rule
//! over every past conversion of a window, which may be hundreds of thousands of plugin
//! calls, so it never runs inside a request.
//!
//! [`queue`] checks the request (as an activation would) and stores a job in the
//! `backtests` table; the API answers `202 Accepted` with it at once. A [`Worker`] in
//! every `serve` replica claims queued jobs with a lease (as the scheduler claims its
//! ticks) and runs each a page of conversions at a time ([`crate::registry::BacktestPlan`]),
//! writing its progress (`processed` of `total`) and the comparison so far after every
//! page and renewing its lease. A replica that dies mid-run stops renewing: once the
//! lease ran out, another replica's worker takes the job over from its last page, so a
//! job finishes once and its counts are those of one pass.

use crate::conversions::Service;
use crate::conversions::service::ServiceError;
use crate::plugin::LoadedPlugin;
use crate::registry::{self, BacktestPlan, Comparison};
use serde::Serialize;
use sqlx::Row;
use std::sync::Arc;

/// Conversions per page: one plugin call each, a few milliseconds of work for a rule in
/// all; the progress and the lease are written after each.
pub const PAGE: i64 = 500;

/// How long a claim lasts without a page written. Far above a page's time: only a dead
/// or stalled worker loses its job.
pub const LEASE_MS: i64 = 60_000;

/// A backtest job as the API, dashboard and CLI show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Backtest {
    /// Its id (`/api/v1/backtests/{id}`).
    pub id: i64,
    /// The merchant whose conversions it replays.
    pub merchant: String,
    /// The candidate, `name@version` (empty if the version was deleted since).
    pub plugin: String,
    /// The candidate's digest.
    pub plugin_digest: String,
    /// Its place in the merchant's chain (0-based).
    pub position: i64,
    /// The window of rule times: from (UTC milliseconds, inclusive)…
    pub from: i64,
    /// …to (UTC milliseconds, excluded).
    pub to: i64,
    /// `queued`, `running`, `done` or `failed`.
    #[schema(pattern = "^(queued|running|done|failed)$")]
    pub state: String,
    /// Conversions of the window read so far.
    pub processed: i64,
    /// Conversions in the window: counted by the worker right after it claims the job
    /// (null until then, also for a moment while `running`).
    pub total: Option<i64>,
    /// Of those read, decided before rule inputs were recorded: they cannot be replayed.
    pub skipped: i64,
    /// Who asked (the token's name, `dashboard:` and the token's name, or `cli`).
    pub created_by: String,
    /// When it was queued (UTC milliseconds).
    pub created_at: i64,
    /// When a worker first started it.
    pub started_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// How many times a worker claimed it (more than one: taken over after a lost lease).
    pub attempts: i64,
    /// Why it failed.
    pub error: Option<String>,
    /// The comparison: complete when `done`, so far while `running`.
    pub result: Option<Comparison>,
}

impl Backtest {
    /// Whether it has ended (`done` or `failed`).
    pub fn finished(&self) -> bool {
        matches!(self.state.as_str(), "done" | "failed")
    }
}

/// What a backtest is asked for.
#[derive(Debug, Clone)]
pub struct Request {
    /// The merchant.
    pub merchant: String,
    /// The candidate version.
    pub plugin: Arc<LoadedPlugin>,
    /// Its configuration (none: the one of the version it replaces, as an activation).
    pub config: Option<serde_json::Value>,
    /// Its place in the chain (none: that of the version of the same name).
    pub position: Option<usize>,
    /// The window's start (UTC milliseconds, inclusive).
    pub from: i64,
    /// The window's end (UTC milliseconds, excluded).
    pub to: i64,
    /// How many differences the result lists.
    pub limit: usize,
    /// Who asks.
    pub actor: String,
}

const COLUMNS: &str = "b.id, b.merchant_id, COALESCE(p.name || '@' || p.version, ''), b.plugin_digest, b.position, \
    b.from_at, b.to_at, b.state, b.processed, b.total, b.skipped, b.created_by, b.created_at, b.started_at, \
    b.finished_at, b.attempts, b.error, b.result";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Backtest, sqlx::Error> {
    let result: Option<String> = r.try_get(17)?;
    Ok(Backtest {
        id: r.try_get(0)?,
        merchant: r.try_get(1)?,
        plugin: r.try_get(2)?,
        plugin_digest: r.try_get(3)?,
        position: r.try_get(4)?,
        from: r.try_get(5)?,
        to: r.try_get(6)?,
        state: r.try_get(7)?,
        processed: r.try_get(8)?,
        total: r.try_get(9)?,
        skipped: r.try_get(10)?,
        created_by: r.try_get(11)?,
        created_at: r.try_get(12)?,
        started_at: r.try_get(13)?,
        finished_at: r.try_get(14)?,
        attempts: r.try_get(15)?,
        error: r.try_get(16)?,
        result: result.and_then(|s| serde_json::from_str(&s).ok()),
    })
}

/// Checks the request and stores it as a queued job (or, with `claim_as`, as a job that
/// owner runs itself: the CLI). Refusals are those of an activation: an unknown merchant,
/// a candidate that is not a rule, a configuration its schema refuses.
pub async fn queue(service: &Service, request: Request, claim_as: Option<&str>) -> Result<Backtest, ServiceError> {
    let (position, config) =
        registry::plan_backtest(service, &request.merchant, &request.plugin, request.config, request.position).await?;
    if request.to <= request.from {
        return Err(ServiceError::Invalid(format!("to ({}) must be after from ({})", request.to, request.from)));
    }
    let now = service.now();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO backtests (merchant_id, plugin_digest, config, position, from_at, to_at, diff_limit, state, \
         created_by, created_at, lease_owner, lease_until, attempts, started_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
    )
    .bind(&request.merchant)
    .bind(request.plugin.digest.to_string())
    .bind(config.to_string())
    .bind(position as i64)
    .bind(request.from)
    .bind(request.to)
    .bind(request.limit as i64)
    .bind(if claim_as.is_some() { "running" } else { "queued" })
    .bind(&request.actor)
    .bind(now)
    .bind(claim_as)
    .bind(claim_as.map(|_| now + LEASE_MS))
    .bind(i64::from(claim_as.is_some()))
    .bind(claim_as.map(|_| now))
    .fetch_one(&service.db().pool)
    .await?;
    get(service, id).await?.ok_or_else(|| ServiceError::NotFound(format!("backtest {id} vanished")))
}

/// One backtest.
pub async fn get(service: &Service, id: i64) -> Result<Option<Backtest>, ServiceError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM backtests b LEFT JOIN plugins p ON p.digest = b.plugin_digest WHERE b.id = $1"
    ))
    .bind(id)
    .fetch_optional(&service.db().pool)
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

/// A page of backtests, newest first: those with an id below `before` (the previous
/// page's last), of one merchant or all. The results are left out (see [`get`]).
pub async fn list(
    service: &Service,
    merchant: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Backtest>, ServiceError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM backtests b LEFT JOIN plugins p ON p.digest = b.plugin_digest \
         WHERE ($1 IS NULL OR b.merchant_id = $1) AND b.id < $2 ORDER BY b.id DESC LIMIT $3"
    ))
    .bind(merchant)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&service.db().pool)
    .await?;
    rows.iter().map(|r| from_row(r).map(|b| Backtest { result: None, ..b }).map_err(ServiceError::from)).collect()
}

/// Runs backtest jobs; one per process, any number of processes per database.
#[derive(Debug, Clone)]
pub struct Worker {
    service: Service,
    owner: String,
    lease_ms: i64,
}

impl Worker {
    /// A worker identified as `owner` (e.g. the listen address and process id).
    pub fn new(service: Service, owner: impl Into<String>) -> Worker {
        Worker { service, owner: owner.into(), lease_ms: LEASE_MS }
    }

    /// How long its claims last without a page written (tests take over sooner).
    pub fn with_lease_ms(mut self, lease_ms: i64) -> Worker {
        self.lease_ms = lease_ms;
        self
    }

    /// Runs jobs as they come, for ever: `serve` spawns it.
    pub async fn run(self) {
        loop {
            match self.run_next().await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "backtest worker failed"),
            }
            // Polled: a job waits at most this long for a worker, on any replica.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// Claims the oldest queued job (or one whose lease ran out) and runs it to its end.
    /// Returns its id, or none when there was nothing to run.
    pub async fn run_next(&self) -> Result<Option<i64>, ServiceError> {
        let pool = &self.service.db().pool;
        let now = self.service.now();
        let candidates: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM backtests WHERE state = 'queued' OR (state = 'running' AND lease_until < $1) \
             ORDER BY id LIMIT 8",
        )
        .bind(now)
        .fetch_all(pool)
        .await?;
        for id in candidates {
            // The claim re-checks the state and lease: of two workers that read the same
            // id, one updates the row and the other finds it claimed.
            let claimed = sqlx::query(
                "UPDATE backtests SET state = 'running', lease_owner = $1, lease_until = $2, attempts = attempts + 1, \
                 started_at = COALESCE(started_at, $3) \
                 WHERE id = $4 AND (state = 'queued' OR (state = 'running' AND lease_until < $3))",
            )
            .bind(&self.owner)
            .bind(now + self.lease_ms)
            .bind(now)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
                == 1;
            if claimed {
                self.run_claimed(id).await?;
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Runs a job this worker holds (claimed by [`Worker::run_next`], or queued with
    /// `claim_as` by the CLI) to its end, from its last page.
    pub async fn run_claimed(&self, id: i64) -> Result<(), ServiceError> {
        match self.pages(id).await {
            Ok(()) => Ok(()),
            Err(e @ ServiceError::Db(_)) => Err(e),
            // A refusal (the candidate deleted since it was queued…) ends the job.
            Err(e) => {
                sqlx::query(
                    "UPDATE backtests SET state = 'failed', error = $1, finished_at = $2, lease_owner = NULL, \
                     lease_until = NULL WHERE id = $3 AND lease_owner = $4",
                )
                .bind(e.to_string())
                .bind(self.service.now())
                .bind(id)
                .bind(&self.owner)
                .execute(&self.service.db().pool)
                .await?;
                Ok(())
            }
        }
    }

    async fn pages(&self, id: i64) -> Result<(), ServiceError> {
        let pool = &self.service.db().pool;
        let row = sqlx::query(
            "SELECT merchant_id, plugin_digest, config, position, from_at, to_at, diff_limit, processed, skipped, \
             cursor_at, cursor_id, result, total FROM backtests WHERE id = $1",
        )
        .bind(id)
        .fetch_one(pool)
        .await?;
        let merchant: String = row.try_get(0)?;
        let digest: String = row.try_get(1)?;
        let plugin = self.service.plugin(&digest).await?;
        let limit = row.try_get::<i64, _>(6)?.max(0) as usize;
        let plan = BacktestPlan::new(
            &self.service,
            &merchant,
            plugin,
            &row.try_get::<String, _>(2)?,
            row.try_get::<i64, _>(3)?.max(0) as usize,
            row.try_get(4)?,
            row.try_get(5)?,
        )
        .await?;
        let (mut processed, mut skipped): (i64, i64) = (row.try_get(7)?, row.try_get(8)?);
        let cursor_at: Option<i64> = row.try_get(9)?;
        let cursor_id: Option<String> = row.try_get(10)?;
        let mut after = cursor_at.zip(cursor_id);
        let mut c: Comparison = row
            .try_get::<Option<String>, _>(11)?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_else(|| Comparison { candidate_digest: digest.clone(), ..Comparison::default() });
        if row.try_get::<Option<i64>, _>(12)?.is_none() {
            let total = plan.total(&self.service).await?;
            sqlx::query("UPDATE backtests SET total = $1 WHERE id = $2 AND lease_owner = $3")
                .bind(total)
                .bind(id)
                .bind(&self.owner)
                .execute(pool)
                .await?;
        }
        loop {
            let page = plan.page(&self.service, after.clone(), PAGE, &mut c, limit).await?;
            if page.read == 0 {
                break;
            }
            processed += page.read as i64;
            skipped += page.skipped as i64;
            after = page.last;
            let (at, last) = after.clone().unzip();
            // The page's progress and the comparison so far, under this worker's lease:
            // if another took the job over meanwhile, this one stops and writes nothing.
            let kept = sqlx::query(
                "UPDATE backtests SET processed = $1, skipped = $2, cursor_at = $3, cursor_id = $4, result = $5, \
                 lease_until = $6 WHERE id = $7 AND lease_owner = $8 AND state = 'running'",
            )
            .bind(processed)
            .bind(skipped)
            .bind(at)
            .bind(last)
            .bind(serde_json::to_string(&c).unwrap_or_default())
            .bind(self.service.now() + self.lease_ms)
            .bind(id)
            .bind(&self.owner)
            .execute(pool)
            .await?
            .rows_affected()
                == 1;
            if !kept {
                tracing::warn!(backtest = id, owner = %self.owner, "backtest lease lost; another worker runs it");
                return Ok(());
            }
        }
        sqlx::query(
            "UPDATE backtests SET state = 'done', result = $1, finished_at = $2, lease_owner = NULL, lease_until = NULL \
             WHERE id = $3 AND lease_owner = $4 AND state = 'running'",
        )
        .bind(serde_json::to_string(&c).unwrap_or_default())
        .bind(self.service.now())
        .bind(id)
        .bind(&self.owner)
        .execute(pool)
        .await?;
        if skipped > 0 {
            tracing::info!(
                backtest = id,
                skipped,
                "backtest skipped conversions decided before rule inputs were recorded"
            );
        }
        Ok(())
    }
}
