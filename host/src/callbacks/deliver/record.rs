//! The record phase: a group of [`Sent`] answers (and skipped deliveries) written in the
//! record step's transaction, one statement per kind of outcome, and counted as [`Recorded`]
//! once that transaction commits.

use super::send::Sent;
use super::{Deliverer, json_ids, json_rows};
use crate::callbacks::{CallbackError, RetryPolicy};
use sqlx::{AnyConnection, Row};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What one record wrote: the record phase's value, added to the run's summary once its
/// transaction committed (`committed`).
#[derive(Debug, Default)]
pub(super) struct Recorded {
    pub(super) delivered: usize,
    pub(super) retrying: usize,
    pub(super) failed: usize,
    pub(super) skipped: usize,
    /// Endpoints disabled by this record.
    pub(super) disabled: Vec<String>,
    /// Told once committed: the endpoints disabled (id, failures, message)...
    alerts: Vec<(String, i64, String)>,
    /// ...and each answer's outcome, latency and arrival, for the metrics.
    answers: Vec<(String, &'static str, Duration, Instant)>,
}

impl Recorded {
    /// Logs the endpoints this record disabled and counts the answers in the metrics:
    /// only once the record committed (a record that did not is sent again after its
    /// lease, and counted then).
    pub(super) fn committed(mut self) -> Recorded {
        for (endpoint_id, n, message) in std::mem::take(&mut self.alerts) {
            tracing::warn!(endpoint = endpoint_id.as_str(), failures = n, "{message}");
            self.disabled.push(endpoint_id);
        }
        for (endpoint_id, outcome, elapsed, answered) in std::mem::take(&mut self.answers) {
            crate::metrics::callback(&endpoint_id, outcome, Some(elapsed));
            crate::metrics::callback_unrecorded(answered.elapsed());
        }
        self
    }
}

impl Deliverer {
    /// Records a group of answers, skipped deliveries and deliveries given back unsent,
    /// with one write per kind of outcome: the attempts, the delivered, the retried, the
    /// given up, the skipped, the given back, the endpoints' failure streaks. Nothing to
    /// record, no statement.
    ///
    /// On PostgreSQL those writes are one statement (`db::steps`), a transaction of its
    /// own: one round trip instead of four (`BEGIN`, attempts, delivered, `COMMIT`), and no
    /// `BEGIN` at all, whose cancellation sqlx does not survive (`db::begin`). When an
    /// endpoint failed, the disabling of endpoints that failed too often follows, in a
    /// statement of its own, after the failure streaks are committed: a crash between the
    /// two leaves an endpoint over its limit still enabled, and its next failure disables
    /// it (a success first resets its streak: it recovered). On SQLite the writes and the
    /// disabling are one transaction, as they always were.
    pub(super) async fn record(
        &self,
        conn: &mut AnyConnection,
        now: i64,
        results: &[Sent],
        skipped: &[i64],
        released: &[i64],
        policies: &HashMap<String, RetryPolicy>,
    ) -> Result<Recorded, CallbackError> {
        use crate::db::steps::{Arg, Write};
        if results.is_empty() && skipped.is_empty() && released.is_empty() {
            return Ok(Recorded::default());
        }
        let owner = || Arg::Text(self.inner.owner.clone());
        let backend = self.inner.db.backend;
        let policy_of = |s: &Sent| policies.get(&s.endpoint_id).copied().unwrap_or_default();
        let mut writes = Vec::new();
        // The log: one row per attempt.
        if !results.is_empty() {
            // Tuples of borrowed fields, serialized as JSON arrays straight from the answers:
            // no `serde_json::Value` tree, no copy of each URL and body before the text.
            let rows: Vec<_> = results
                .iter()
                .map(|s| {
                    (
                        s.delivery_id,
                        &s.endpoint_id,
                        s.attempt,
                        s.started_at,
                        s.latency_ms,
                        &s.logged.method,
                        &s.logged.url,
                        serde_json::to_string(&s.logged.headers).unwrap_or_default(),
                        &s.logged.body,
                        s.status,
                        &s.error,
                        &s.excerpt,
                        outcome_of(s, policy_of(s).max_attempts),
                    )
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
            writes.push(Write::new(
                format!(
                    "INSERT INTO callback_attempts (delivery_id, endpoint_id, attempt, started_at, latency_ms, method, \
                     url, request_headers, request_body, status, error, response_excerpt, outcome) \
                     SELECT * FROM ({select}) AS j"
                ),
                vec![Arg::Text(crate::db::rows::to_json(&rows)?)],
            ));
        }
        let delivered: Vec<i64> = results.iter().filter(|s| s.status == Some(200)).map(|s| s.delivery_id).collect();
        if !delivered.is_empty() {
            writes.push(Write::new(
                format!(
                    "UPDATE callback_deliveries SET state = 'delivered', attempts = attempts + 1, delivered_at = $1, \
                     last_status = 200, last_error = NULL, lease_owner = NULL, lease_until = NULL, updated_at = $1 \
                     WHERE lease_owner = $2 AND state = 'pending' AND {}",
                    crate::db::id_in(backend, "id", 3)
                ),
                vec![Arg::Int(now), owner(), Arg::Text(json_ids(&delivered))],
            ));
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
        // Given up, and retried: one write each, the values per row from one JSON array.
        for (rows, set, types) in [
            (&gave_up, "state = 'failed'", &["bigint", "bigint", "text"][..]),
            (&retry, "next_attempt_at = j.c3", &["bigint", "bigint", "text", "bigint"][..]),
        ] {
            if rows.is_empty() {
                continue;
            }
            let from = json_rows(backend, 3, types);
            // The ids once more, as a key condition: the rows are found by key, not by
            // a join the statistics may plan as a scan (`db::id_in`).
            let ids: Vec<i64> = rows.iter().filter_map(|r| r[0].as_i64()).collect();
            writes.push(Write::new(
                format!(
                    "UPDATE callback_deliveries SET {set}, attempts = attempts + 1, last_status = j.c1, \
                     last_error = j.c2, lease_owner = NULL, lease_until = NULL, updated_at = $1 FROM ({from}) AS j \
                     WHERE callback_deliveries.id = j.c0 AND callback_deliveries.lease_owner = $2 \
                     AND callback_deliveries.state = 'pending' AND {}",
                    crate::db::id_in(backend, "callback_deliveries.id", 4)
                ),
                vec![Arg::Int(now), owner(), Arg::Text(crate::db::rows::to_json(rows)?), Arg::Text(json_ids(&ids))],
            ));
        }
        if !skipped.is_empty() {
            writes.push(Write::new(
                format!(
                    "UPDATE callback_deliveries SET state = 'skipped', last_error = 'no ref_id on the click: the \
                     endpoint requires one', lease_owner = NULL, lease_until = NULL, updated_at = $1 \
                     WHERE lease_owner = $2 AND {}",
                    crate::db::id_in(backend, "id", 3)
                ),
                vec![Arg::Int(now), owner(), Arg::Text(json_ids(skipped))],
            ));
        }
        // Claimed, not sent: given back.
        if !released.is_empty() {
            writes.push(Write::new(
                format!(
                    "UPDATE callback_deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1 \
                     AND {}",
                    crate::db::id_in(backend, "id", 2)
                ),
                vec![owner(), Arg::Text(json_ids(released))],
            ));
        }
        // Failures in a row, per endpoint, in the order the answers came: one write for
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
            writes.push(Write::new(
                format!(
                    "UPDATE callback_endpoints SET \
                     consecutive_failures = CASE WHEN j.c1 = 1 THEN j.c2 ELSE consecutive_failures + j.c2 END, \
                     failing_since = CASE WHEN j.c1 = 1 AND j.c2 = 0 THEN NULL WHEN j.c1 = 1 THEN $1 \
                     ELSE COALESCE(failing_since, $1) END \
                     FROM ({from}) AS j WHERE callback_endpoints.id = j.c0 \
                     AND NOT (j.c2 = 0 AND consecutive_failures = 0 AND failing_since IS NULL)"
                ),
                vec![Arg::Int(now), Arg::Text(serde_json::Value::Array(rows).to_string())],
            ));
        }
        let failing: Vec<&str> = streaks.iter().filter(|(_, _, n)| *n > 0).map(|(e, _, _)| *e).collect();
        let disabled = match backend {
            crate::db::Backend::Postgres => {
                crate::db::steps::run(conn, backend, &writes).await?;
                self.disable_failing(conn, now, &failing).await?
            }
            crate::db::Backend::Sqlite => {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                crate::db::steps::run(&mut tx, backend, &writes).await?;
                let disabled = self.disable_failing(&mut tx, now, &failing).await?;
                tx.commit().await?;
                disabled
            }
        };
        let answers = results
            .iter()
            .map(|s| {
                let outcome = match outcome_of(s, policy_of(s).max_attempts) {
                    "delivered" => "delivered",
                    "failed" => "gave_up",
                    _ => "failed",
                };
                let elapsed = Duration::from_millis(u64::try_from(s.latency_ms).unwrap_or(0));
                (s.endpoint_id.clone(), outcome, elapsed, s.answered)
            })
            .collect();
        let recorded = Recorded {
            delivered: delivered.len(),
            retrying: retry.len(),
            failed: gave_up.len(),
            skipped: skipped.len(),
            disabled: Vec::new(),
            alerts: disabled,
            answers,
        };
        Ok(recorded)
    }

    /// Disables the endpoints among `failing` whose failures in a row reached their limit
    /// (after the streaks were written), with an alert each. Returns (endpoint, failures,
    /// message) of each. On PostgreSQL one statement, the alerts a data-modifying `WITH` of
    /// it: an endpoint is never disabled without its alert.
    async fn disable_failing(
        &self,
        conn: &mut AnyConnection,
        now: i64,
        failing: &[&str],
    ) -> Result<Vec<(String, i64, String)>, CallbackError> {
        if failing.is_empty() {
            return Ok(Vec::new());
        }
        let backend = self.inner.db.backend;
        let ids = match backend {
            crate::db::Backend::Sqlite => "SELECT value FROM json_each($3)",
            crate::db::Backend::Postgres => "SELECT jsonb_array_elements_text($3::jsonb)",
        };
        let disable = format!(
            "UPDATE callback_endpoints SET enabled = 0, disabled_at = $1, disabled_reason = $2, updated_at = $1 \
             WHERE enabled = 1 AND consecutive_failures >= disable_after AND id IN ({ids}) \
             RETURNING id, consecutive_failures"
        );
        let sql = match backend {
            crate::db::Backend::Postgres => format!(
                "WITH d AS ({disable}), a AS (INSERT INTO alerts (at, kind, subject, message) \
                 SELECT $1, 'endpoint_disabled', d.id, \
                 replace(replace($4, '{{endpoint}}', d.id), '{{failures}}', d.consecutive_failures::text) FROM d) \
                 SELECT id, consecutive_failures FROM d"
            ),
            crate::db::Backend::Sqlite => disable,
        };
        let mut q = sqlx::query(&sql)
            .bind(now)
            .bind("too many failed attempts in a row")
            .bind(serde_json::to_string(&failing).unwrap_or_else(|_| "[]".into()));
        if backend == crate::db::Backend::Postgres {
            q = q.bind(DISABLED);
        }
        let mut disabled = Vec::new();
        for row in q.fetch_all(&mut *conn).await? {
            let (endpoint_id, n): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
            let message = DISABLED.replace("{endpoint}", &endpoint_id).replace("{failures}", &n.to_string());
            disabled.push((endpoint_id, n, message));
        }
        if backend == crate::db::Backend::Sqlite {
            for (endpoint_id, _, message) in &disabled {
                sqlx::query("INSERT INTO alerts (at, kind, subject, message) VALUES ($1, 'endpoint_disabled', $2, $3)")
                    .bind(now)
                    .bind(endpoint_id)
                    .bind(message)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(disabled)
    }
}

/// The alert and log message of an endpoint disabled by its failures: `{endpoint}` and
/// `{failures}` are filled in (in SQL on PostgreSQL, here on SQLite and for the log).
const DISABLED: &str = "callback endpoint {endpoint} disabled after {failures} failed attempts in a row; its \
    deliveries wait. Fix the partner's endpoint, then `cashbackd endpoint enable {endpoint}` sends the backlog";

pub(super) fn outcome_of(s: &Sent, max_attempts: u32) -> &'static str {
    if s.status == Some(200) {
        "delivered"
    } else if s.attempt >= i64::from(max_attempts) {
        "failed"
    } else {
        "retry"
    }
}
