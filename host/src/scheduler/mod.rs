//! The scheduler: jobs with cron expressions (network imports hourly, daily or weekly,
//! seed 000; reward maturation), run by whichever replica claims them.
//!
//! A due job is claimed with a lease in the database, and its run is recorded under the
//! unique key (job, scheduled time): with several replicas on one PostgreSQL, each tick
//! runs once. After downtime the missed ticks are caught up by one run (an import window
//! and a maturation pass cover everything since), recorded with how many were missed.

use crate::conversions::Service;
use crate::plugin::PluginRuntime;
use chrono::{TimeZone, Utc};
use sqlx::Row;
use std::str::FromStr;
use std::sync::Arc;

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    /// Move matured cashback from pending to available.
    Mature,
    /// Import a network's report through its adapter's `import-page`.
    Import {
        /// The network.
        network: String,
    },
    /// Send the partner callbacks that are due (first tries the worker has not taken,
    /// and retries).
    Deliver,
    /// Form a batch of user notifications and send the e-mails due (seed 000).
    Notify,
}

impl JobKind {
    fn stored(&self) -> (&'static str, Option<String>) {
        match self {
            JobKind::Mature => ("mature", None),
            JobKind::Import { network } => ("import", Some(network.clone())),
            JobKind::Deliver => ("deliver", None),
            JobKind::Notify => ("notify", None),
        }
    }

    fn from_stored(kind: &str, target: Option<String>) -> JobKind {
        match kind {
            "import" => JobKind::Import { network: target.unwrap_or_default() },
            "deliver" => JobKind::Deliver,
            "notify" => JobKind::Notify,
            _ => JobKind::Mature,
        }
    }
}

/// A job and its last run.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct JobInfo {
    /// Name.
    pub name: String,
    /// Cron expression as given.
    pub schedule: String,
    /// What it does.
    pub kind: JobKind,
    /// Whether it runs.
    pub enabled: bool,
    /// Next run (ms).
    pub next_run_at: i64,
    /// The last run, if any.
    pub last_run: Option<RunInfo>,
}

/// One run of a job.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct RunInfo {
    /// Its id (the cursor of the API's pages of runs).
    pub id: i64,
    /// The tick it ran for.
    pub scheduled_for: i64,
    /// Which replica ran it.
    pub owner: String,
    /// Start (ms).
    pub started_at: i64,
    /// End (ms).
    pub finished_at: Option<i64>,
    /// `running`, `ok` or `failed`.
    pub outcome: String,
    /// Ticks missed before it (caught up by this run).
    pub missed: i64,
    /// What it did, by kind of count.
    #[schema(value_type = Object)]
    pub counts: serde_json::Value,
    /// The error, when it failed.
    pub detail: Option<String>,
}

/// Parses a cron expression: standard five fields (`0 * * * *`), six or seven with
/// seconds and years, or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
pub fn parse_schedule(expr: &str) -> Result<cron::Schedule, String> {
    let expr = expr.trim();
    let full = if !expr.starts_with('@') && expr.split_whitespace().count() == 5 {
        format!("0 {expr}")
    } else {
        expr.to_string()
    };
    cron::Schedule::from_str(&full).map_err(|e| format!("schedule {expr:?}: {e}"))
}

/// The first tick strictly after `ms`.
pub fn next_after(schedule: &cron::Schedule, ms: i64) -> Option<i64> {
    let at = Utc.timestamp_millis_opt(ms).single()?;
    schedule.after(&at).next().map(|t| t.timestamp_millis())
}

/// Ticks in (from, to], counted up to `cap`.
fn ticks_between(schedule: &cron::Schedule, from: i64, to: i64, cap: i64) -> i64 {
    let Some(start) = Utc.timestamp_millis_opt(from).single() else { return 0 };
    schedule.after(&start).take_while(|t| t.timestamp_millis() <= to).take(cap as usize).count() as i64
}

/// Creates or updates a job; its next run is the first tick after now.
pub async fn upsert_job(service: &Service, name: &str, schedule: &str, kind: &JobKind) -> Result<(), String> {
    let parsed = parse_schedule(schedule)?;
    let now = service.now();
    let next = next_after(&parsed, now).ok_or_else(|| format!("schedule {schedule:?} never fires"))?;
    let (k, target) = kind.stored();
    sqlx::query(
        "INSERT INTO jobs (name, schedule, kind, target, enabled, next_run_at, created_at) VALUES ($1, $2, $3, $4, 1, $5, $6) \
         ON CONFLICT (name) DO UPDATE SET schedule = $2, kind = $3, target = $4, next_run_at = $5",
    )
    .bind(name)
    .bind(schedule)
    .bind(k)
    .bind(target)
    .bind(next)
    .bind(now)
    .execute(&service.db().pool)
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// The system's own jobs, created if absent (an operator may change their schedules):
/// maturation every 5 minutes, callback retries every minute (the worker of `serve` sends
/// new callbacks at once), and notification digests six times a day (seed 000: batched,
/// several times a day).
pub async fn ensure_system_jobs(service: &Service) -> Result<(), String> {
    for (name, schedule, kind) in [
        ("mature", "*/5 * * * *", JobKind::Mature),
        ("deliver", "* * * * *", JobKind::Deliver),
        ("notify", "0 */4 * * *", JobKind::Notify),
    ] {
        let exists = sqlx::query("SELECT 1 FROM jobs WHERE name = $1")
            .bind(name)
            .fetch_optional(&service.db().pool)
            .await
            .map_err(|e| e.to_string())?;
        if exists.is_none() {
            upsert_job(service, name, schedule, &kind).await?;
        }
    }
    Ok(())
}

/// Sets a job's schedule to `schedule` if it holds another (`serve` applies the configured
/// `notify.schedule` at start). Returns whether it changed.
pub async fn set_schedule(service: &Service, name: &str, schedule: &str) -> Result<bool, String> {
    let row = sqlx::query("SELECT schedule, kind, target FROM jobs WHERE name = $1")
        .bind(name)
        .fetch_optional(&service.db().pool)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no job named {name:?}"))?;
    let stored: String = row.try_get(0).map_err(|e| e.to_string())?;
    if stored == schedule {
        return Ok(false);
    }
    let kind = JobKind::from_stored(
        &row.try_get::<String, _>(1).map_err(|e| e.to_string())?,
        row.try_get(2).map_err(|e| e.to_string())?,
    );
    upsert_job(service, name, schedule, &kind).await?;
    Ok(true)
}

/// Every job with its last run.
pub async fn list(service: &Service) -> Result<Vec<JobInfo>, sqlx::Error> {
    let pool = &service.db().pool;
    let rows = sqlx::query("SELECT name, schedule, kind, target, enabled, next_run_at FROM jobs ORDER BY name")
        .fetch_all(pool)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.try_get(0)?;
        let kind: String = r.try_get(2)?;
        let target: Option<String> = r.try_get(3)?;
        out.push(JobInfo {
            last_run: runs(service, &name, 1).await?.into_iter().next(),
            name,
            schedule: r.try_get(1)?,
            kind: JobKind::from_stored(&kind, target),
            enabled: r.try_get::<i64, _>(4)? != 0,
            next_run_at: r.try_get(5)?,
        });
    }
    Ok(out)
}

/// The latest runs of a job, newest first.
pub async fn runs(service: &Service, job: &str, limit: i64) -> Result<Vec<RunInfo>, sqlx::Error> {
    runs_before(service, job, None, limit).await
}

/// A job's runs older than the run `before` (none: the latest), newest first.
pub async fn runs_before(
    service: &Service,
    job: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<RunInfo>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT scheduled_for, owner, started_at, finished_at, outcome, missed, counts, detail, id FROM job_runs \
         WHERE job_name = $1 AND id < $3 ORDER BY id DESC LIMIT $2",
    )
    .bind(job)
    .bind(limit)
    .bind(before.unwrap_or(i64::MAX))
    .fetch_all(&service.db().pool)
    .await?;
    rows.iter()
        .map(|r| {
            let counts: String = r.try_get(6)?;
            Ok(RunInfo {
                id: r.try_get(8)?,
                scheduled_for: r.try_get(0)?,
                owner: r.try_get(1)?,
                started_at: r.try_get(2)?,
                finished_at: r.try_get(3)?,
                outcome: r.try_get(4)?,
                missed: r.try_get(5)?,
                counts: serde_json::from_str(&counts).unwrap_or_default(),
                detail: r.try_get(7)?,
            })
        })
        .collect()
}

/// Runs due jobs; one per process, any number of processes per database.
#[derive(Debug, Clone)]
pub struct Scheduler {
    service: Service,
    runtime: Arc<PluginRuntime>,
    owner: String,
    lease_ms: i64,
    retry: crate::imports::Retry,
    callbacks: Option<crate::callbacks::Deliverer>,
    notifier: Option<crate::notify::Notifier>,
}

impl Scheduler {
    /// A scheduler identified as `owner` (e.g. host name and process id).
    pub fn new(service: Service, runtime: Arc<PluginRuntime>, owner: impl Into<String>) -> Scheduler {
        Scheduler {
            service,
            runtime,
            owner: owner.into(),
            lease_ms: 10 * 60_000,
            retry: crate::imports::Retry::default(),
            callbacks: None,
            notifier: None,
        }
    }

    /// The delivery worker the `deliver` job runs passes of (without one, the job builds
    /// one that refuses private addresses).
    pub fn with_callbacks(mut self, deliverer: crate::callbacks::Deliverer) -> Scheduler {
        self.callbacks = Some(deliverer);
        self
    }

    /// The notifier the `notify` job runs (without one, the job says that no SMTP server
    /// is configured and changes wait).
    pub fn with_notifier(mut self, notifier: crate::notify::Notifier) -> Scheduler {
        self.notifier = Some(notifier);
        self
    }

    /// How import pages are retried.
    pub fn with_retry(mut self, retry: crate::imports::Retry) -> Scheduler {
        self.retry = retry;
        self
    }

    /// Runs every job that is due now. Returns the names of the jobs this process ran.
    pub async fn tick(&self) -> Result<Vec<String>, sqlx::Error> {
        let now = self.service.now();
        let due = sqlx::query(
            "SELECT name, next_run_at FROM jobs WHERE enabled = 1 AND next_run_at <= $1 ORDER BY next_run_at",
        )
        .bind(now)
        .fetch_all(&self.service.db().pool)
        .await?;
        let mut ran = Vec::new();
        for r in due {
            let (name, scheduled): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
            if self.run_claimed(&name, scheduled).await? {
                ran.push(name);
            }
        }
        Ok(ran)
    }

    /// Runs a job now, whatever its schedule (`cashbackd jobs run NAME`).
    pub async fn run_now(&self, name: &str) -> Result<RunInfo, String> {
        let exists = sqlx::query("SELECT next_run_at FROM jobs WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.service.db().pool)
            .await
            .map_err(|e| e.to_string())?;
        if exists.is_none() {
            return Err(format!("no job named {name:?} (see `cashbackd jobs list`)"));
        }
        let started = self.service.now();
        self.execute_and_record(name, started, 0).await.map_err(|e| e.to_string())?;
        runs(&self.service, name, 1)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .ok_or_else(|| "the run was not recorded".into())
    }

    /// Claims the job's tick at `scheduled` (lease, then the unique run row) and runs it.
    async fn run_claimed(&self, name: &str, scheduled: i64) -> Result<bool, sqlx::Error> {
        let now = self.service.now();
        let claimed = sqlx::query(
            "UPDATE jobs SET lease_owner = $1, lease_until = $2 WHERE name = $3 AND next_run_at = $4 \
             AND (lease_until IS NULL OR lease_until < $5)",
        )
        .bind(&self.owner)
        .bind(now + self.lease_ms)
        .bind(name)
        .bind(scheduled)
        .bind(now)
        .execute(&self.service.db().pool)
        .await?
        .rows_affected()
            == 1;
        if !claimed {
            return Ok(false);
        }
        let schedule: String = sqlx::query("SELECT schedule FROM jobs WHERE name = $1")
            .bind(name)
            .fetch_one(&self.service.db().pool)
            .await?
            .try_get(0)?;
        let parsed = parse_schedule(&schedule).ok();
        let missed = parsed.as_ref().map_or(0, |s| ticks_between(s, scheduled, now, 10_000));
        let ran = self.execute_and_record(name, scheduled, missed).await?;
        let next = parsed.as_ref().and_then(|s| next_after(s, self.service.now())).unwrap_or(i64::MAX);
        sqlx::query("UPDATE jobs SET next_run_at = $1, lease_owner = NULL, lease_until = NULL WHERE name = $2 AND lease_owner = $3")
            .bind(next)
            .bind(name)
            .bind(&self.owner)
            .execute(&self.service.db().pool)
            .await?;
        Ok(ran)
    }

    async fn deliver(&self) -> Result<serde_json::Value, String> {
        let deliverer = match &self.callbacks {
            Some(d) => d.clone(),
            None => crate::callbacks::Deliverer::new(
                self.service.db().clone(),
                self.service.clock(),
                crate::callbacks::DeliveryConfig::default(),
                self.owner.clone(),
            )
            .map_err(|e| e.to_string())?
            .with_plugins(self.service.runtime().clone()),
        };
        deliverer.run_due().await.map(|s| serde_json::to_value(s).unwrap_or_default()).map_err(|e| e.to_string())
    }

    /// Records the run under (job, scheduled) — refused if that tick already ran — then
    /// executes it and records the outcome.
    async fn execute_and_record(&self, name: &str, scheduled: i64, missed: i64) -> Result<bool, sqlx::Error> {
        let pool = &self.service.db().pool;
        let inserted = sqlx::query(
            "INSERT INTO job_runs (job_name, scheduled_for, owner, started_at, outcome, missed) VALUES ($1, $2, $3, $4, 'running', $5) \
             ON CONFLICT (job_name, scheduled_for) DO NOTHING RETURNING id",
        )
        .bind(name)
        .bind(scheduled)
        .bind(&self.owner)
        .bind(self.service.now())
        .bind(missed)
        .fetch_optional(pool)
        .await?;
        let Some(row) = inserted else { return Ok(false) };
        let run_id: i64 = row.try_get(0)?;
        let job = sqlx::query("SELECT kind, target FROM jobs WHERE name = $1").bind(name).fetch_one(pool).await?;
        let (kind, target): (String, Option<String>) = (job.try_get(0)?, job.try_get(1)?);
        let started = std::time::Instant::now();
        let result = match kind.as_str() {
            "mature" => {
                self.service.mature_due().await.map(|n| serde_json::json!({ "matured": n })).map_err(|e| e.to_string())
            }
            "deliver" => self.deliver().await,
            "notify" => match &self.notifier {
                Some(n) => {
                    n.run().await.map(|s| serde_json::to_value(s).unwrap_or_default()).map_err(|e| e.to_string())
                }
                None => Ok(serde_json::json!({ "note": "no SMTP server configured (--smtp-url): changes wait" })),
            },
            _ => crate::imports::import_network(
                &self.service,
                &self.runtime,
                target.as_deref().unwrap_or(""),
                &self.retry,
            )
            .await
            .map(|s| serde_json::to_value(s).unwrap_or_default()),
        };
        let (outcome, counts, detail) = match result {
            Ok(counts) => ("ok", counts, None),
            Err(e) => {
                tracing::warn!(job = name, error = %e, "job failed");
                ("failed", serde_json::json!({}), Some(e))
            }
        };
        crate::metrics::job_run(name, outcome, started.elapsed());
        sqlx::query("UPDATE job_runs SET finished_at = $1, outcome = $2, counts = $3, detail = $4 WHERE id = $5")
            .bind(self.service.now())
            .bind(outcome)
            .bind(counts.to_string())
            .bind(detail)
            .bind(run_id)
            .execute(pool)
            .await?;
        Ok(true)
    }
}
