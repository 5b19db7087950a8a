//! The claim phase: due deliveries taken with a lease, fairly across endpoints, and
//! loaded with what rendering needs (the change's snapshot, its click, its merchant).
//! Its value is [`Claimed`], one per delivery to send.

use super::{Deliverer, json_ids};
use crate::callbacks::CallbackError;
use crate::outbox::{PayoutSnapshot, Snapshot};
use sqlx::{AnyConnection, Row};

/// What a change is about, as it was then.
pub(super) enum Subject {
    Conversion(Box<Snapshot>),
    Payout(PayoutSnapshot),
}

/// One claimed delivery with what it needs to be rendered and sent: the claim phase's
/// value.
pub(super) struct Claimed {
    pub(super) delivery_id: i64,
    pub(super) endpoint_id: String,
    pub(super) attempt: i64,
    pub(super) change_at: i64,
    pub(super) subject: Subject,
    pub(super) ref_id: Option<String>,
    pub(super) subs: [Option<String>; 5],
    pub(super) merchant_name: Option<String>,
    pub(super) merchant_ref: Option<String>,
}

impl Deliverer {
    /// SQLite's claim (PostgreSQL's is part of `claim_load_pg`, from `pg_claimable`, the
    /// same rules): up to `limit` due deliveries with a lease, in the claim step's
    /// transaction, fairly across endpoints: at most its share (`endpoint_share`) minus
    /// what it holds already (in flight or waiting, `busy`, a JSON object) per endpoint,
    /// taken round-robin (every endpoint's first due delivery, then every endpoint's
    /// second...), each endpoint's in due order.
    ///
    /// Each endpoint's candidates are read from the index of its pending deliveries in due
    /// order, a few rows per endpoint, so a claim costs the endpoints and the batch, not
    /// the backlog: no more than the claim takes, nor than the endpoint has room for (on
    /// PostgreSQL; SQLite allows no reference to the endpoint in a `LIMIT`). An endpoint
    /// was read up to its whole share, twice the rows a claim of one endpoint took in the
    /// benchmark. A delivery is due only when no earlier change of the same conversion
    /// to the same endpoint is pending: that check runs on those candidates only.
    pub(super) async fn claim(
        &self,
        conn: &mut AnyConnection,
        now: i64,
        limit: usize,
        busy: &str,
    ) -> Result<Vec<i64>, sqlx::Error> {
        // SQLite has one writer: the conditional update is the claim. `CROSS JOIN`
        // keeps the endpoints as the outer loop (SQLite does not reorder it): joined
        // plainly, the planner scanned every delivery and ran the per-endpoint
        // subquery for each, a second per claim at a few thousand rows.
        let sql = format!(
            "UPDATE callback_deliveries SET lease_owner = $1, lease_until = $2 WHERE state = 'pending' \
             AND (lease_until IS NULL OR lease_until <= $3) AND id IN ( \
             SELECT id FROM ( \
               SELECT x.id, x.endpoint_id, x.next_attempt_at, \
               ROW_NUMBER() OVER (PARTITION BY x.endpoint_id ORDER BY x.next_attempt_at, x.id) AS rn \
               FROM callback_endpoints e CROSS JOIN callback_deliveries x ON x.id IN ( \
                 SELECT d.id FROM callback_deliveries d WHERE d.endpoint_id = e.id AND {DUE} AND {FIRST_PENDING} \
                 ORDER BY d.next_attempt_at, d.id \
                 LIMIT MIN($5, $4)) \
               WHERE e.enabled = 1) c \
             WHERE c.rn + COALESCE((SELECT b.value FROM json_each($6) b WHERE b.key = c.endpoint_id), 0) <= $5 \
             ORDER BY c.rn, c.next_attempt_at, c.id LIMIT $4) RETURNING id"
        );
        let claimed = self.bind_claim(sqlx::query(&sql), now, limit, busy).fetch_all(&mut *conn).await?;
        let mut ids: Vec<i64> = claimed.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// The claim's six parameters: owner, lease end, now, limit, an endpoint's share, what
    /// each endpoint holds already.
    fn bind_claim<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        now: i64,
        limit: usize,
        busy: &'q str,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        q.bind(self.inner.owner.clone())
            .bind(now + self.inner.config.lease_ms)
            .bind(now)
            .bind(limit as i64)
            .bind(endpoint_share(&self.inner.config) as i64)
            .bind(busy)
    }

    /// PostgreSQL: the claim, the hold-back and the load in one statement, with no
    /// transaction around it (a statement is one): a claim step is then one round trip
    /// instead of five (`BEGIN`, claim, hold-back, load, `COMMIT`). On a machine whose
    /// cores the database shares with the worker, each round trip waited for a core, and
    /// those waits were about half of a claim step's time (docs/PERFORMANCE.md, issue 15).
    ///
    /// The hold-back is part of the claim's `UPDATE`: a row cannot be updated twice in a
    /// statement, so a claimed delivery whose click's CREATED is still pending is given
    /// its lease back and its new due time by the same update that took it (the CREATED
    /// is looked up once, as the row is locked, and only for a row that waits for one).
    /// Returns the claimed ids (sorted), the ids held back, and the jobs of the others.
    ///
    /// The claim stays a lease rather than a row lock held by an open transaction: the
    /// requests it starts last up to their endpoint's timeout (120 s at most), and an
    /// open transaction per claim would hold a connection and block vacuum that long,
    /// and, committing once, would make every answer of the claim wait for its slowest,
    /// which is the head-of-line blocking this loop avoids. The lease costs no statement
    /// of its own: it is written by the claim statement, and it touches only columns no
    /// index holds (a HOT update). `FOR UPDATE SKIP LOCKED` serves the claim statement
    /// itself: two replicas claiming at the same instant take disjoint rows without
    /// waiting for each other.
    pub(super) async fn claim_load_pg(
        &self,
        conn: &mut AnyConnection,
        now: i64,
        limit: usize,
        busy: &str,
    ) -> Result<(Vec<i64>, Vec<i64>, Vec<Claimed>), CallbackError> {
        // The CREATED a row waits for is looked up once, as the row is locked (`locked`,
        // only for a row with `waits_for`), and the few rows held back (`held`) are read
        // by the update as arrays, not joined: the update still finds its rows by key
        // alone, whatever the statistics. Looked up in the update's `CASE` instead, a row
        // that waits (in the benchmark, every row: each has a click) looked it up three
        // times, and the claim statement took 3.60 ms against 3.06 ms for 75 rows
        // (`EXPLAIN ANALYZE`, medians of 25 runs each, alternated; docs/PERFORMANCE.md).
        let is_held = "u.id = ANY(ARRAY(SELECT id FROM held))";
        let sql = format!(
            "WITH {}, held AS (SELECT id, waited FROM locked WHERE waited IS NOT NULL), claimed AS ( \
               UPDATE callback_deliveries u SET \
               lease_owner = CASE WHEN {is_held} THEN NULL ELSE $1 END, \
               lease_until = CASE WHEN {is_held} THEN NULL ELSE $2 END, \
               next_attempt_at = CASE WHEN {is_held} \
                 THEN GREATEST($3, (SELECT h.waited FROM held h WHERE h.id = u.id)) + {HOLD_BACK_MS} \
                 ELSE u.next_attempt_at END \
               WHERE u.id = ANY(ARRAY(SELECT id FROM locked)) \
               RETURNING u.id, u.endpoint_id, u.attempts, u.change_id, u.lease_owner IS NULL AS held) \
             SELECT {LOAD_COLUMNS}, d.held FROM claimed d {LOAD_JOINS} ORDER BY d.id",
            pg_claimable()
        );
        let rows = self.bind_claim(sqlx::query(&sql), now, limit, busy).fetch_all(&mut *conn).await?;
        let (mut claimed, mut held, mut jobs) = (Vec::with_capacity(rows.len()), Vec::new(), Vec::new());
        for r in rows {
            let id: i64 = r.try_get(0)?;
            claimed.push(id);
            if r.try_get::<bool, _>(14)? {
                held.push(id);
            } else {
                jobs.push(claimed_of(&r)?);
            }
        }
        Ok((claimed, held, jobs))
    }

    /// SQLite's hold-back (PostgreSQL's is part of `claim_load_pg`'s update). Gives back
    /// the claimed deliveries of conversions whose click's CREATED (seed 001:
    /// sent on the click) to the same endpoint is still pending, due again a second after
    /// that CREATED's next attempt (or a second from now, if it is being sent right now):
    /// a partner never gets PENDING before the click's CREATED. Returns their ids.
    ///
    /// This is a phase of its own, on the claimed batch only, rather than one more
    /// condition in `claim`: in `claim`, on a PostgreSQL database whose statistics are
    /// still those of empty tables, the extra correlated lookup made each claim scan the
    /// pending deliveries once per pending delivery and take seconds under load.
    pub(super) async fn hold_back(
        &self,
        conn: &mut AnyConnection,
        claimed: &[i64],
        now: i64,
    ) -> Result<Vec<i64>, sqlx::Error> {
        let waited = waited_created("callback_deliveries");
        let sql = format!(
            "UPDATE callback_deliveries SET lease_owner = NULL, lease_until = NULL, \
             next_attempt_at = MAX($1, (SELECT MAX(w.next_attempt_at) {waited})) + {HOLD_BACK_MS} \
             WHERE lease_owner = $2 AND waits_for IS NOT NULL AND {} AND EXISTS (SELECT 1 {waited}) \
             RETURNING id",
            crate::db::id_in(self.inner.db.backend, "id", 3)
        );
        let rows =
            sqlx::query(&sql).bind(now).bind(&self.inner.owner).bind(json_ids(claimed)).fetch_all(&mut *conn).await?;
        rows.iter().map(|r| r.try_get(0)).collect()
    }

    /// The claimed deliveries to send, with their change, click and merchant.
    pub(super) async fn load_jobs(&self, conn: &mut AnyConnection, ids: &[i64]) -> Result<Vec<Claimed>, CallbackError> {
        let sql = format!(
            "SELECT {LOAD_COLUMNS} FROM callback_deliveries d {LOAD_JOINS} WHERE {} ORDER BY d.id",
            crate::db::id_in(self.inner.db.backend, "d.id", 1)
        );
        let rows = sqlx::query(&sql).bind(json_ids(ids)).fetch_all(&mut *conn).await?;
        rows.iter().map(claimed_of).collect()
    }
}

/// A due delivery: pending, due, and not leased (or its lease ran out). `$3` is now.
const DUE: &str = "d.state = 'pending' AND d.next_attempt_at <= $3 AND (d.lease_until IS NULL OR d.lease_until <= $3)";

/// No earlier change of the same conversion to the same endpoint is pending.
const FIRST_PENDING: &str = "NOT EXISTS (SELECT 1 FROM callback_deliveries p WHERE p.endpoint_id = d.endpoint_id \
     AND p.conversion_id = d.conversion_id AND p.state = 'pending' \
     AND (p.version < d.version OR (p.version = d.version AND p.id < d.id)))";

/// `FROM ... WHERE ...` of the pending deliveries `w` a delivery (`row`, a table or its
/// alias) waits for: its click's CREATED to the same endpoint (`waits_for`).
fn waited_created(row: &str) -> String {
    format!(
        "FROM callback_deliveries w WHERE w.endpoint_id = {row}.endpoint_id AND w.conversion_id = {row}.waits_for \
         AND w.state = 'pending'"
    )
}

/// How long after its click's CREATED's next attempt a held-back delivery is due.
const HOLD_BACK_MS: i64 = 1_000;

/// What rendering needs of a claimed delivery `d`: its change, click and merchant
/// (`claimed_of` reads them in this order)...
const LOAD_COLUMNS: &str = "d.id, d.endpoint_id, d.attempts, c.at, c.snapshot, cl.ref_id, cl.sub1, cl.sub2, cl.sub3, \
     cl.sub4, cl.sub5, m.name, (SELECT MIN(r.merchant_ref) FROM merchant_refs r WHERE r.network_id = c.network_id \
     AND r.merchant_id = c.merchant_id), c.subject";

/// ...from these tables.
const LOAD_JOINS: &str = "JOIN conversion_changes c ON c.id = d.change_id \
     LEFT JOIN clicks cl ON cl.click_id = c.click_id LEFT JOIN merchants m ON m.id = c.merchant_id";

/// PostgreSQL: the CTEs `due`, `fair` and `locked` of a claim (parameters as
/// `bind_claim`'s); `locked` holds the ids it takes, row-locked, each with `waited`: the
/// next attempt of the click's CREATED it waits for, NULL when none is pending.
///
/// The picked ids are looked up as an array (`= ANY`) and checked again for state and
/// lease only (what another replica can change meanwhile): by primary key whatever the
/// table's statistics say (with those of an empty table, a join here, or the due
/// condition repeated, was planned as a scan of an index of every pending delivery).
fn pg_claimable() -> String {
    format!(
        "due AS ( \
           SELECT x.id, x.endpoint_id, x.next_attempt_at, \
           ROW_NUMBER() OVER (PARTITION BY x.endpoint_id ORDER BY x.next_attempt_at, x.id) AS rn \
           FROM callback_endpoints e CROSS JOIN LATERAL ( \
             SELECT d.id, d.endpoint_id, d.next_attempt_at FROM callback_deliveries d \
             WHERE d.endpoint_id = e.id AND {DUE} AND {FIRST_PENDING} \
             ORDER BY d.next_attempt_at, d.id \
             LIMIT GREATEST(0, LEAST($5 - COALESCE(($6::jsonb ->> e.id)::bigint, 0), $4))) x \
           WHERE e.enabled = 1 AND COALESCE(($6::jsonb ->> e.id)::bigint, 0) < $5), \
         fair AS (SELECT id FROM due WHERE rn + COALESCE(($6::jsonb ->> endpoint_id)::bigint, 0) <= $5 \
           ORDER BY rn, next_attempt_at, id LIMIT $4), \
         locked AS (SELECT d.id, CASE WHEN d.waits_for IS NULL THEN NULL \
             ELSE (SELECT MAX(w.next_attempt_at) {}) END AS waited \
           FROM callback_deliveries d WHERE d.id = ANY(ARRAY(SELECT id FROM fair)) \
           AND d.state = 'pending' AND (d.lease_until IS NULL OR d.lease_until <= $3) \
           FOR UPDATE OF d SKIP LOCKED)",
        waited_created("d")
    )
}

/// A row of [`LOAD_COLUMNS`] as a job.
fn claimed_of(r: &sqlx::any::AnyRow) -> Result<Claimed, CallbackError> {
    let unreadable = |e: serde_json::Error| CallbackError::Invalid(format!("a change's snapshot does not parse: {e}"));
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
    Ok(Claimed {
        delivery_id: r.try_get(0)?,
        endpoint_id: r.try_get(1)?,
        attempt: attempts + 1,
        change_at: r.try_get(3)?,
        merchant_ref,
        subject,
        ref_id: r.try_get(5)?,
        subs: [r.try_get(6)?, r.try_get(7)?, r.try_get(8)?, r.try_get(9)?, r.try_get(10)?],
        merchant_name: r.try_get(11)?,
    })
}

/// What one endpoint may hold of a worker's deliveries, in flight and waiting for room
/// (`drive`): its place in flight (`endpoint_concurrency`), and the same share of the
/// `batch` that may wait. 8 × (32 + 128) / 32 = 40 with the defaults.
pub(super) fn endpoint_share(config: &super::DeliveryConfig) -> usize {
    let concurrency = config.concurrency.max(1);
    (config.endpoint_concurrency.max(1) * (concurrency + config.batch.max(1))).div_ceil(concurrency)
}
