//! What the dashboard reads, as plain functions over the database: seed 002's metrics,
//! the conversion search, a conversion's ledger postings, the delay analytics of seed
//! 000, and the registry's placements. Public so that the admin API can answer the same
//! questions the same way.

use crate::clock::DAY_MS;
use crate::conversions::Status;
use crate::conversions::store::{COLUMNS, ConversionRow, from_row};
use crate::db::Db;
use serde::Serialize;
use sqlx::Row;
use std::collections::BTreeMap;

/// Seed 002's dashboard metrics, computed from the database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Overview {
    /// Start of the current UTC day (ms): "today" begins here.
    pub day_start: i64,
    /// Orders whose cashback was first credited (status processed) since `day_start`.
    pub processed_today: i64,
    /// Cashback granted to users, net of reversals and manual debits, per currency
    /// (minor units): the negated platform cashback expense.
    pub cashback_issued: BTreeMap<String, i64>,
    /// Of it, still pending (reward delay running), per currency.
    pub cashback_pending: BTreeMap<String, i64>,
    /// Of it, available to users, per currency.
    pub cashback_available: BTreeMap<String, i64>,
    /// Of it, requested for payout and not paid yet, per currency.
    pub cashback_in_payout: BTreeMap<String, i64>,
    /// Of it, paid out, per currency.
    pub cashback_paid_out: BTreeMap<String, i64>,
    /// Owed back by users (refunds after payout beyond their available balance), per
    /// currency: a positive figure, taken off what was issued.
    pub cashback_owed: BTreeMap<String, i64>,
    /// Awaiting an operator because the merchant processes manually.
    pub pending_review: i64,
    /// Flagged for review (by a rule's hold or an operator).
    pub held: i64,
    /// The review queue: `pending_review + held`.
    pub review_queue: i64,
    /// A rule plugin failed on them: reprocessable once fixed.
    pub failed: i64,
    /// Customer not found yet (parked, seed 002).
    pub parked: i64,
    /// Conversions reported since `day_start` (any status).
    pub reported_today: i64,
    /// Payouts requested since `day_start` (whatever became of them).
    pub payouts_requested_today: i64,
    /// Their amounts, per currency.
    pub payouts_requested_amount: BTreeMap<String, i64>,
    /// Payouts marked paid since `day_start` (and not failed since).
    pub payouts_paid_today: i64,
    /// Their amounts, per currency.
    pub payouts_paid_amount: BTreeMap<String, i64>,
}

/// Midnight UTC of the day `now` falls in.
pub fn day_start(now: i64) -> i64 {
    now.div_euclid(DAY_MS) * DAY_MS
}

/// "Processed today" (`$1`: midnight). "Processed" is the moment the cashback was awarded
/// (seed 002's badge), which the outbox records as a change to status `processed`: on
/// arrival in automatic mode, on approval in manual mode, on reprocessing once a parked
/// customer appears. An order counts on the day of its first such change; later
/// adjustments do not count again. Served by `conversion_changes_processed_at` (and the
/// unique `(conversion_id, version)` for the probe); `tests/it/plans.rs` checks the plans.
pub const PROCESSED_TODAY: &str = "SELECT COUNT(DISTINCT c.conversion_id) FROM conversion_changes c WHERE c.at >= $1 \
     AND c.status = 'processed' AND c.state <> 'CREATED' AND NOT EXISTS (SELECT 1 FROM conversion_changes p \
     WHERE p.conversion_id = c.conversion_id AND p.status = 'processed' AND p.state <> 'CREATED' AND p.at < $1)";

/// "Reported today": served by `conversions_reported_at`.
pub const REPORTED_TODAY: &str = "SELECT COUNT(*) FROM conversions WHERE reported_at >= $1";

/// Payouts requested today, per currency: served by `payouts_requested`.
pub const PAYOUTS_REQUESTED_TODAY: &str =
    "SELECT currency, COUNT(*), CAST(SUM(amount) AS BIGINT) FROM payouts WHERE requested_at >= $1 GROUP BY currency";

/// Payouts paid today, per currency: served by `payouts_status_paid`.
pub const PAYOUTS_PAID_TODAY: &str = "SELECT currency, COUNT(*), CAST(SUM(amount) AS BIGINT) FROM payouts \
     WHERE status = 'paid' AND paid_at >= $1 GROUP BY currency";

/// The overview's metrics at `now`.
pub async fn overview(db: &Db, now: i64) -> Result<Overview, sqlx::Error> {
    let pool = &db.pool;
    let start = day_start(now);
    let mut o = Overview { day_start: start, ..Overview::default() };
    // See PROCESSED_TODAY.
    o.processed_today = sqlx::query_scalar(PROCESSED_TODAY).bind(start).fetch_one(pool).await?;
    for r in sqlx::query(
        "SELECT kind, currency, CAST(SUM(balance) AS BIGINT) FROM accounts \
         WHERE (owner = 'platform' AND kind IN ('cashback_expense', 'payouts_paid')) \
         OR (owner <> 'platform' AND kind IN ('pending', 'available', 'payout_in_flight', 'debt')) \
         GROUP BY kind, currency",
    )
    .fetch_all(pool)
    .await?
    {
        let (kind, currency, sum): (String, String, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        // Issued = pending + available + in payout + paid out - owed.
        let into = match kind.as_str() {
            "cashback_expense" => (&mut o.cashback_issued, -sum),
            "pending" => (&mut o.cashback_pending, sum),
            "payout_in_flight" => (&mut o.cashback_in_payout, sum),
            "payouts_paid" => (&mut o.cashback_paid_out, sum),
            "debt" => (&mut o.cashback_owed, -sum),
            _ => (&mut o.cashback_available, sum),
        };
        *into.0.entry(currency).or_default() += into.1;
    }
    for r in sqlx::query(
        "SELECT status, COUNT(*) FROM conversions WHERE status IN ('pending_review', 'held', 'failed', 'parked') \
         GROUP BY status",
    )
    .fetch_all(pool)
    .await?
    {
        let (status, n): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
        match Status::parse(&status) {
            Some(Status::PendingReview) => o.pending_review = n,
            Some(Status::Held) => o.held = n,
            Some(Status::Failed) => o.failed = n,
            Some(Status::Parked) => o.parked = n,
            _ => {}
        }
    }
    o.review_queue = o.pending_review + o.held;
    o.reported_today = sqlx::query_scalar(REPORTED_TODAY).bind(start).fetch_one(pool).await?;
    for (sql, count, amounts) in [
        (PAYOUTS_REQUESTED_TODAY, &mut o.payouts_requested_today, &mut o.payouts_requested_amount),
        (PAYOUTS_PAID_TODAY, &mut o.payouts_paid_today, &mut o.payouts_paid_amount),
    ] {
        for r in sqlx::query(sql).bind(start).fetch_all(pool).await? {
            let (currency, n, sum): (String, i64, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            *count += n;
            amounts.insert(currency, sum);
        }
    }
    Ok(o)
}

/// The latest payouts paid, rejected or failed, most recently changed first.
pub async fn closed_payouts(
    db: &Db,
    before: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<crate::payouts::Payout>, sqlx::Error> {
    // Newest first; a page starts before `(updated_at, id)` of the previous page's last.
    let (at, id) = before.unwrap_or((i64::MAX, String::new()));
    let sql = format!(
        "SELECT {} FROM payouts WHERE status IN ('paid', 'rejected', 'failed') \
         AND (updated_at < $1 OR (updated_at = $1 AND ($2 = '' OR id < $2))) \
         ORDER BY updated_at DESC, id DESC LIMIT $3",
        crate::payouts::store::COLUMNS
    );
    let rows = sqlx::query(&sql).bind(at).bind(id).bind(limit).fetch_all(&db.pool).await?;
    rows.iter().map(crate::payouts::store::from_row).collect()
}

/// What to search conversions by; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct SearchFilter {
    /// cashbackd's id (`cv_...`).
    pub id: String,
    /// The network's transaction id.
    pub transaction: String,
    /// The user.
    pub user: String,
    /// Our status (`processed`, `pending_review`...).
    pub status: String,
    /// The network.
    pub network: String,
    /// The merchant.
    pub merchant: String,
    /// Where the page starts: `reported_at:id` of the previous page's last row.
    pub cursor: String,
}

fn opt(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Conversions matching `f`, most recently reported first, at most `limit`.
pub async fn search(db: &Db, f: &SearchFilter, limit: i64) -> Result<Vec<ConversionRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM conversions WHERE ($1 IS NULL OR id = $1) AND ($2 IS NULL OR transaction_id = $2) \
         AND ($3 IS NULL OR user_id = $3) AND ($4 IS NULL OR status = $4) AND ($5 IS NULL OR network_id = $5) \
         AND ($6 IS NULL OR merchant_id = $6) AND (reported_at < $8 OR (reported_at = $8 AND id > $9)) \
         ORDER BY reported_at DESC, id LIMIT $7"
    );
    // A cursor this page did not make starts from the top.
    let (before_at, after_id) = f
        .cursor
        .split_once(':')
        .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_string())))
        .unwrap_or((i64::MAX, String::new()));
    sqlx::query(&sql)
        .bind(opt(&f.id))
        .bind(opt(&f.transaction))
        .bind(opt(&f.user))
        .bind(opt(&f.status))
        .bind(opt(&f.network))
        .bind(opt(&f.merchant))
        .bind(limit)
        .bind(before_at)
        .bind(after_id)
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// One ledger posting of a conversion, with the plugins that computed its amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostingView {
    /// Ledger transaction id.
    pub id: i64,
    /// Why (`pending`, `adjusted`, `review`, `matured`...).
    pub cause: String,
    /// When.
    pub at: i64,
    /// The operator, for a review.
    pub operator: Option<String>,
    /// The reason.
    pub reason: Option<String>,
    /// Plugin names (a chain: comma-separated).
    pub plugin_name: Option<String>,
    /// Their versions.
    pub plugin_version: Option<String>,
    /// Their content digests.
    pub plugin_digest: Option<String>,
    /// (owner, account kind, currency, signed minor units).
    pub entries: Vec<(String, String, String, i64)>,
}

/// A conversion's postings, oldest first.
pub async fn postings(db: &Db, conversion_id: &str) -> Result<Vec<PostingView>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT t.id, t.cause, t.created_at, t.operator, t.reason, t.plugin_name, t.plugin_version, t.plugin_digest, \
         a.owner, a.kind, e.currency, e.amount FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id \
         JOIN accounts a ON a.id = e.account_id WHERE t.conversion_id = $1 ORDER BY t.id, e.id",
    )
    .bind(conversion_id)
    .fetch_all(&db.pool)
    .await?;
    let mut out: Vec<PostingView> = Vec::new();
    for r in &rows {
        let id: i64 = r.try_get(0)?;
        if out.last().is_none_or(|p| p.id != id) {
            out.push(PostingView {
                id,
                cause: r.try_get(1)?,
                at: r.try_get(2)?,
                operator: r.try_get(3)?,
                reason: r.try_get(4)?,
                plugin_name: r.try_get(5)?,
                plugin_version: r.try_get(6)?,
                plugin_digest: r.try_get(7)?,
                entries: Vec::new(),
            });
        }
        if let Some(p) = out.last_mut() {
            p.entries.push((r.try_get(8)?, r.try_get(9)?, r.try_get(10)?, r.try_get(11)?));
        }
    }
    Ok(out)
}

/// When the conversion's user was first told about it (the digest), if yet.
pub async fn notified_at(db: &Db, conversion_id: &str) -> Result<Option<i64>, sqlx::Error> {
    crate::notify::notified_at(db, conversion_id).await
}

/// The delay from purchase to tracked of one group of conversions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DelayGroup {
    /// The network, the integration type (`postback`, `api_import`, `file`), or both
    /// (`network / type`).
    pub key: String,
    /// Conversions in the group.
    pub count: usize,
    /// Median of `reported_at - event_time`, ms.
    pub median_ms: i64,
    /// 90th percentile, ms.
    pub p90_ms: i64,
    /// The longest, ms.
    pub max_ms: i64,
    /// Median from tracked to the user's first digest, ms, over those notified.
    pub notify_median_ms: Option<i64>,
}

/// Seed 000's delays over conversions first reported in `[from, to)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DelayReport {
    /// Window start (ms).
    pub from: i64,
    /// Window end (ms).
    pub to: i64,
    /// Conversions looked at.
    pub count: usize,
    /// Per network.
    pub by_network: Vec<DelayGroup>,
    /// Per integration type.
    pub by_via: Vec<DelayGroup>,
    /// Per network and integration type.
    pub by_both: Vec<DelayGroup>,
}

/// The largest number of conversions a delay report reads (the most recent ones).
pub const MAX_DELAY_ROWS: i64 = 200_000;

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn group(key: String, mut delays: Vec<i64>, mut notified: Vec<i64>) -> DelayGroup {
    delays.sort_unstable();
    notified.sort_unstable();
    DelayGroup {
        key,
        count: delays.len(),
        median_ms: quantile(&delays, 0.5),
        p90_ms: quantile(&delays, 0.9),
        max_ms: delays.last().copied().unwrap_or(0),
        notify_median_ms: (!notified.is_empty()).then(|| quantile(&notified, 0.5)),
    }
}

/// Time from purchase (`event_time`) to tracked (`reported_at`), per network and per
/// integration type (`reported_via`), over conversions first reported in `[from, to)`.
/// Orders whose network sent no purchase time are stamped on receipt and count as 0.
/// Conversions that are only a click (CREATED) are left out: nothing was bought.
pub async fn delays(db: &Db, from: i64, to: i64) -> Result<DelayReport, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT network_id, reported_via, reported_at - event_time, notified_at - reported_at FROM conversions \
         WHERE reported_at >= $1 AND reported_at < $2 AND state <> 'CREATED' ORDER BY reported_at DESC LIMIT $3",
    )
    .bind(from)
    .bind(to)
    .bind(MAX_DELAY_ROWS)
    .fetch_all(&db.pool)
    .await?;
    type Groups = BTreeMap<String, (Vec<i64>, Vec<i64>)>;
    let (mut network, mut via, mut both) = (Groups::new(), Groups::new(), Groups::new());
    for r in &rows {
        let (n, v): (String, String) = (r.try_get(0)?, r.try_get(1)?);
        // A purchase time after the report is a network's clock running ahead: no delay.
        let d = r.try_get::<i64, _>(2)?.max(0);
        let told: Option<i64> = r.try_get(3)?;
        for (groups, key) in [(&mut network, n.clone()), (&mut via, v.clone()), (&mut both, format!("{n} / {v}"))] {
            let g = groups.entry(key).or_default();
            g.0.push(d);
            g.1.extend(told.map(|t| t.max(0)));
        }
    }
    let done = |g: Groups| g.into_iter().map(|(k, (d, n))| group(k, d, n)).collect();
    Ok(DelayReport { from, to, count: rows.len(), by_network: done(network), by_via: done(via), by_both: done(both) })
}

/// A place where rule or adapter plugins run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// `merchant` or `network`.
    pub target_kind: String,
    /// Its id.
    pub target_id: String,
    /// Its display name.
    pub target_name: String,
    /// Merchants: `manual` or `automatic`.
    pub mode: Option<String>,
    /// The chain, in order: (position, plugin name, version, digest). A network has one.
    pub chain: Vec<(i64, String, String, String)>,
    /// The shadow candidate: (position, name, version, digest).
    pub shadow: Option<(i64, String, String, String)>,
}

/// Every merchant's rule chain and shadow candidate, and every network's adapter.
pub async fn placements(db: &Db) -> Result<Vec<Placement>, sqlx::Error> {
    let pool = &db.pool;
    let mut out = Vec::new();
    for m in sqlx::query("SELECT id, name, processing_mode FROM merchants ORDER BY id").fetch_all(pool).await? {
        let id: String = m.try_get(0)?;
        let mut chain = Vec::new();
        for r in sqlx::query(
            "SELECT r.position, p.name, p.version, p.digest FROM merchant_rules r JOIN plugins p ON p.digest = r.plugin_digest \
             WHERE r.merchant_id = $1 ORDER BY r.position",
        )
        .bind(&id)
        .fetch_all(pool)
        .await?
        {
            chain.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
        }
        let shadow = sqlx::query(
            "SELECT s.position, p.name, p.version, p.digest FROM merchant_shadow s JOIN plugins p ON p.digest = s.plugin_digest \
             WHERE s.merchant_id = $1",
        )
        .bind(&id)
        .fetch_optional(pool)
        .await?
        .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .transpose()?;
        out.push(Placement {
            target_kind: "merchant".into(),
            target_name: m.try_get(1)?,
            mode: Some(m.try_get(2)?),
            target_id: id,
            chain,
            shadow,
        });
    }
    for n in sqlx::query(
        "SELECT n.id, n.name, p.name, p.version, p.digest FROM networks n LEFT JOIN plugins p ON p.digest = n.adapter_digest \
         ORDER BY n.id",
    )
    .fetch_all(pool)
    .await?
    {
        let name: Option<String> = n.try_get(2)?;
        let chain = match name {
            Some(name) => vec![(0, name, n.try_get(3)?, n.try_get(4)?)],
            None => Vec::new(),
        };
        out.push(Placement {
            target_kind: "network".into(),
            target_id: n.try_get(0)?,
            target_name: n.try_get(1)?,
            mode: None,
            chain,
            shadow: None,
        });
    }
    Ok(out)
}

/// Distinct values of a conversion column, for the search form's choices.
pub async fn distinct(db: &Db, column: Column) -> Result<Vec<String>, sqlx::Error> {
    let sql = match column {
        Column::Network => "SELECT id FROM networks ORDER BY id",
        Column::Merchant => "SELECT id FROM merchants ORDER BY id",
    };
    sqlx::query_scalar(sql).fetch_all(&db.pool).await
}

/// The lists [`distinct`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// Network ids.
    Network,
    /// Merchant ids.
    Merchant,
}

/// The most recently reported conversions.
pub async fn recent(db: &Db, limit: i64) -> Result<Vec<ConversionRow>, sqlx::Error> {
    search(db, &SearchFilter::default(), limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!((quantile(&v, 0.5), quantile(&v, 0.9)), (5, 9));
        assert_eq!((quantile(&[7], 0.5), quantile(&[7], 0.9)), (7, 7));
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn the_day_starts_at_midnight_utc() {
        assert_eq!(day_start(1_767_225_600_000 + 5), 1_767_225_600_000);
        assert_eq!(day_start(1_767_225_600_000 - 1), 1_767_225_600_000 - DAY_MS);
    }
}
