//! Reading payouts: one (inside a write, locked), one by its request key, a page of them,
//! a payout's history and its ledger postings. The writes are in `apply.rs`.

use super::PayoutStatus;
use crate::db::Db;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

/// A payout as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Payout {
    /// Its id (`po_...`), derived from the user and the request key.
    pub id: String,
    /// Whose cashback.
    pub user_id: String,
    /// Currency.
    pub currency: String,
    /// Minor units.
    pub amount: i64,
    /// Where it is.
    pub status: PayoutStatus,
    /// The requester's idempotency key.
    pub request_key: String,
    /// Who asked (the API token's name, the CLI's operator).
    pub requested_by: String,
    /// The external payment reference, once paid.
    pub reference: Option<String>,
    /// Who made the last decision.
    pub operator: Option<String>,
    /// Why it was rejected or failed.
    pub reason: Option<String>,
    /// When it was requested.
    pub requested_at: i64,
    /// When it was approved.
    pub approved_at: Option<i64>,
    /// When it was marked paid.
    pub paid_at: Option<i64>,
    /// When it was rejected or failed.
    pub closed_at: Option<i64>,
    /// Last change.
    pub updated_at: i64,
    /// Bumped on every change.
    pub version: i64,
}

pub(crate) const COLUMNS: &str = "id, user_id, currency, amount, status, request_key, requested_by, reference, operator, \
    reason, requested_at, approved_at, paid_at, closed_at, updated_at, version";

pub(crate) fn from_row(r: &AnyRow) -> Result<Payout, sqlx::Error> {
    let status: String = r.try_get("status")?;
    Ok(Payout {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        currency: r.try_get("currency")?,
        amount: r.try_get("amount")?,
        status: PayoutStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown payout status {status:?} in the database").into()))?,
        request_key: r.try_get("request_key")?,
        requested_by: r.try_get("requested_by")?,
        reference: r.try_get("reference")?,
        operator: r.try_get("operator")?,
        reason: r.try_get("reason")?,
        requested_at: r.try_get("requested_at")?,
        approved_at: r.try_get("approved_at")?,
        paid_at: r.try_get("paid_at")?,
        closed_at: r.try_get("closed_at")?,
        updated_at: r.try_get("updated_at")?,
        version: r.try_get("version")?,
    })
}

/// A payout, read inside the caller's transaction. With `lock`, on PostgreSQL the row is
/// locked until the commit: a second replica's step on the same payout waits, then reads
/// the status this one left.
pub async fn load(conn: &mut AnyConnection, id: &str, lock: bool) -> Result<Option<Payout>, sqlx::Error> {
    let lock = if lock && conn.backend_name() == "PostgreSQL" { " FOR UPDATE" } else { "" };
    let sql = format!("SELECT {COLUMNS} FROM payouts WHERE id = $1{lock}");
    sqlx::query(&sql).bind(id).fetch_optional(conn).await?.as_ref().map(from_row).transpose()
}

/// The payout a user's request key made, if any.
pub async fn by_key(conn: &mut AnyConnection, user: &str, key: &str) -> Result<Option<Payout>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM payouts WHERE user_id = $1 AND request_key = $2");
    sqlx::query(&sql).bind(user).bind(key).fetch_optional(conn).await?.as_ref().map(from_row).transpose()
}

/// A payout by id.
pub async fn get(db: &Db, id: &str) -> Result<Option<Payout>, sqlx::Error> {
    let mut conn = db.pool.acquire().await?;
    load(&mut conn, id, false).await
}

/// Which payouts to list, and where the page starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayoutFilter {
    /// In one status.
    pub status: Option<PayoutStatus>,
    /// Of one user.
    pub user: Option<String>,
    /// Oldest first (a queue) instead of newest first.
    pub oldest_first: bool,
    /// At most this many (1 to 500; default 50).
    pub limit: Option<i64>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
}

/// A page of payouts and the cursor of the next page (none: this was the last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = PayoutsPage)]
pub struct Page {
    /// The payouts.
    pub payouts: Vec<Payout>,
    /// Pass it as `after` for the next page.
    pub next: Option<String>,
}

/// A cursor: the last row's request time and id (`1767225600000.po_...`). Keyset
/// pagination: a page neither skips nor repeats a payout when new ones arrive meanwhile.
fn cursor(p: &Payout) -> String {
    format!("{}.{}", p.requested_at, p.id)
}

/// Parses a cursor; `None` if it is not one of ours.
pub fn parse_cursor(text: &str) -> Option<(i64, String)> {
    let (at, id) = text.split_once('.')?;
    Some((at.parse().ok()?, id.to_string())).filter(|(_, id)| id.starts_with("po_"))
}

/// A page of payouts. `filter.after` must be a cursor this returned (the caller checks it
/// with [`parse_cursor`] to name the field at fault).
pub async fn list(db: &Db, filter: &PayoutFilter) -> Result<Page, sqlx::Error> {
    let limit = filter.limit.unwrap_or(50).clamp(1, 500);
    let after = filter.after.as_deref().and_then(parse_cursor);
    let (cmp, order) = if filter.oldest_first { (">", "ASC") } else { ("<", "DESC") };
    let sql = format!(
        "SELECT {COLUMNS} FROM payouts WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR user_id = $2) \
         AND ($3 IS NULL OR requested_at {cmp} $3 OR (requested_at = $3 AND id {cmp} $4)) \
         ORDER BY requested_at {order}, id {order} LIMIT $5"
    );
    let rows = sqlx::query(&sql)
        .bind(filter.status.map(PayoutStatus::as_str))
        .bind(&filter.user)
        .bind(after.as_ref().map(|(at, _)| *at))
        .bind(after.as_ref().map(|(_, id)| id.clone()).unwrap_or_default())
        .bind(limit + 1)
        .fetch_all(&db.pool)
        .await?;
    let mut payouts = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    let next = if payouts.len() as i64 > limit {
        payouts.truncate(limit as usize);
        payouts.last().map(cursor)
    } else {
        None
    };
    Ok(Page { payouts, next })
}

/// One step of a payout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = PayoutHistoryEntry)]
pub struct HistoryEntry {
    /// When.
    pub at: i64,
    /// The status before (none: the request).
    pub from_status: Option<String>,
    /// The status after.
    pub to_status: String,
    /// Who.
    pub operator: Option<String>,
    /// What happened and why.
    pub detail: String,
}

/// A payout's steps, oldest first.
pub async fn history(db: &Db, id: &str) -> Result<Vec<HistoryEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT at, from_status, to_status, operator, detail FROM payout_history WHERE payout_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(HistoryEntry {
                at: r.try_get(0)?,
                from_status: r.try_get(1)?,
                to_status: r.try_get(2)?,
                operator: r.try_get(3)?,
                detail: r.try_get(4)?,
            })
        })
        .collect()
}

/// The OpenAPI schema of a posting's entries as `[owner, kind, amount]`: utoipa's own
/// schema of a tuple closes it with `items: false`, which generated clients cannot read.
fn entry_triples() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let text = || ObjectBuilder::new().schema_type(Type::String);
    let amount = || ObjectBuilder::new().schema_type(Type::Integer).description(Some("minor units, signed"));
    let entry = ArrayBuilder::new()
        .prefix_items([text(), text(), amount()])
        .items(OneOfBuilder::new().item(text()).item(amount()))
        .min_items(Some(3))
        .max_items(Some(3))
        .description(Some("[owner, account kind, amount]"));
    ArrayBuilder::new().items(entry).build().into()
}

/// One ledger posting of a payout, with its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PostingView {
    /// Its idempotency key (`payout:{id}:{step}`, and `...:debt` for the debt rule).
    pub key: String,
    /// `payout_requested`, `payout_paid`..., `debt_repayment`.
    pub cause: String,
    /// Who.
    pub operator: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// When.
    pub at: i64,
    /// (owner, account kind, signed amount).
    #[schema(schema_with = entry_triples)]
    pub entries: Vec<(String, String, i64)>,
}

/// The key prefix of a payout's postings.
pub(crate) fn posting_key(id: &str, step: &str) -> String {
    format!("payout:{id}:{step}")
}

/// A payout's ledger postings, oldest first: those of its steps and those the debt rule
/// made after them.
pub async fn postings(db: &Db, id: &str) -> Result<Vec<PostingView>, sqlx::Error> {
    // A key range rather than LIKE: ids hold `_`, LIKE's wildcard.
    let rows = sqlx::query(
        "SELECT t.id, t.idempotency_key, t.cause, t.operator, t.reason, t.created_at, a.owner, a.kind, e.amount \
         FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id \
         JOIN accounts a ON a.id = e.account_id \
         WHERE t.idempotency_key >= $1 AND t.idempotency_key < $2 ORDER BY t.id, e.id",
    )
    .bind(format!("payout:{id}:"))
    .bind(format!("payout:{id};"))
    .fetch_all(&db.pool)
    .await?;
    let mut out: Vec<(i64, PostingView)> = Vec::new();
    for r in &rows {
        let tx: i64 = r.try_get(0)?;
        let entry = (r.try_get(6)?, r.try_get(7)?, r.try_get(8)?);
        match out.last_mut() {
            Some((last, view)) if *last == tx => view.entries.push(entry),
            _ => out.push((
                tx,
                PostingView {
                    key: r.try_get(1)?,
                    cause: r.try_get(2)?,
                    operator: r.try_get(3)?,
                    reason: r.try_get(4)?,
                    at: r.try_get(5)?,
                    entries: vec![entry],
                },
            )),
        }
    }
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_anything_else_is_refused() {
        assert_eq!(parse_cursor("1767225600000.po_abc"), Some((1_767_225_600_000, "po_abc".into())));
        assert_eq!(parse_cursor("po_abc"), None);
        assert_eq!(parse_cursor("x.po_abc"), None);
        assert_eq!(parse_cursor("1.cv_abc"), None);
    }
}
