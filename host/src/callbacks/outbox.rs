//! The transactional outbox. Whoever changes a conversion calls [`enqueue`] (or, when it
//! does not know whether anything changed, [`enqueue_if_changed`]) on the connection of
//! the very transaction that saves the change: the change row, and one delivery row per
//! callback endpoint, commit or roll back with it. A crash can therefore neither lose a
//! callback (the change committed, so did its deliveries) nor invent one (the change
//! rolled back, so did they). The delivery worker and the notification batches read
//! from here; nothing is sent from inside the transaction.
//!
//! A change is recorded when the conversion's state, status, cashback or order amount
//! differs from what was stored: every state is sent (seed 001: callbacks are stateful),
//! and so is a review decision that changes what the user gets. A maturation or a
//! history-only step is not a change for partners.
//!
//! Payouts use the same outbox ([`enqueue_payout`]): every step of a payout is a change
//! (`subject` `payout`, the payout's id and version in place of the conversion's), sent
//! to the endpoints that take payout events and, once paid or failed, told in the user's
//! digest.

use crate::conversions::apply::ConversionRow;
use crate::conversions::{State, Status};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};

/// The values a callback or a digest shows, as they were at the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The network's state.
    pub state: State,
    /// Our status.
    pub status: Status,
    /// The network.
    pub network_id: String,
    /// The network's transaction id.
    pub transaction_id: String,
    /// The click.
    pub click_id: Option<String>,
    /// The user.
    pub user_id: Option<String>,
    /// The merchant.
    pub merchant_id: Option<String>,
    /// The network's merchant reference, when the event carried one.
    pub merchant_ref: Option<String>,
    /// The merchant's order id.
    pub order_id: Option<String>,
    /// The tracked event's name (sale, registration...).
    pub event_type: String,
    /// Why (the network's reason for an adjustment or a decline, else ours for a
    /// rejection, a reversal or a hold).
    pub reason: Option<String>,
    /// Currency of the amounts.
    pub currency: String,
    /// Order value, minor units.
    pub amount: i64,
    /// Commission, minor units.
    pub commission: i64,
    /// The user's cashback, minor units (the callback's payout).
    pub cashback: i64,
    /// Days from completion to availability.
    pub reward_delay_days: Option<i64>,
    /// The order's line ids.
    pub line_ids: Vec<String>,
}

/// One change of one conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The conversion.
    pub conversion_id: String,
    /// Its version after the change (orders the changes of one conversion).
    pub version: i64,
    /// The journal entry that made it.
    pub journal_seq: Option<i64>,
    /// When.
    pub at: i64,
    /// What it is now.
    pub snapshot: Snapshot,
}

impl Change {
    /// The change a conversion row describes, as it is about to be saved. `note` is the
    /// history note of the step (a network's reason is taken from its `(network: ...)`).
    pub fn of(r: &ConversionRow, journal_seq: Option<i64>, at: i64, note: &str) -> Change {
        let network_reason = note
            .rfind("(network: ")
            .map(|i| note[i + "(network: ".len()..].trim_end_matches(')').to_string())
            .filter(|s| !s.is_empty());
        let our_reason = match (r.state, r.status) {
            (State::Rejected | State::Reversed, _) | (_, Status::Rejected | Status::Held) => r.status_reason.clone(),
            _ => None,
        };
        let line_ids = serde_json::from_str::<Vec<serde_json::Value>>(&r.line_items)
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l.get("id").and_then(|v| v.as_str()).map(str::to_string))
            .collect();
        Change {
            conversion_id: r.id.clone(),
            version: r.version,
            journal_seq,
            at,
            snapshot: Snapshot {
                state: r.state,
                status: r.status,
                network_id: r.network_id.clone(),
                transaction_id: r.transaction_id.clone(),
                click_id: r.click_id.clone(),
                user_id: r.user_id.clone(),
                merchant_id: r.merchant_id.clone(),
                merchant_ref: r.merchant_ref.clone(),
                order_id: r.order_id.clone(),
                event_type: r.event_type.clone(),
                reason: network_reason.or(our_reason),
                currency: r.currency.clone(),
                amount: r.amount,
                commission: r.commission,
                cashback: r.cashback,
                reward_delay_days: r.reward_delay_days,
                line_ids,
            },
        }
    }

    /// What the user's digest says about this change, if anything: parked and failed
    /// conversions are not the user's news yet (they will be once processed).
    pub fn notify_kind(&self) -> Option<&'static str> {
        let s = &self.snapshot;
        s.user_id.as_ref()?;
        match (s.state, s.status) {
            (_, Status::Parked | Status::Failed) | (State::Created, _) => None,
            (State::Rejected, _) => Some("rejected"),
            (State::Reversed, _) => Some("reversed"),
            (State::Pending, _) => Some("tracked"),
            (State::Adjusted, _) => Some("adjusted"),
            (State::Completed, _) => Some("completed"),
        }
    }
}

/// The values a payout callback or digest line shows, as they were at the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutSnapshot {
    /// The payout.
    pub payout_id: String,
    /// Whose.
    pub user_id: String,
    /// Currency.
    pub currency: String,
    /// Minor units.
    pub amount: i64,
    /// Its status after the change.
    pub status: crate::payouts::PayoutStatus,
    /// The external payment reference, once paid.
    pub reference: Option<String>,
    /// Why it was rejected or failed.
    pub reason: Option<String>,
    /// When it was requested.
    pub requested_at: i64,
}

/// One change of one payout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayoutChange {
    /// The payout's version after the change (orders its changes).
    pub version: i64,
    /// The journal entry that made it.
    pub journal_seq: Option<i64>,
    /// When.
    pub at: i64,
    /// What it is now.
    pub snapshot: PayoutSnapshot,
}

impl PayoutChange {
    /// What the user's digest says about it: a payout paid, or whose payment failed (its
    /// amount is back in their balance). A request, an approval or a rejection is the
    /// site's to tell: the user asked, and the reason of a rejection is the operator's.
    pub fn notify_kind(&self) -> Option<&'static str> {
        match self.snapshot.status {
            crate::payouts::PayoutStatus::Paid => Some("payout_paid"),
            crate::payouts::PayoutStatus::Failed => Some("payout_failed"),
            _ => None,
        }
    }
}

/// Records a payout's change and its deliveries to every endpoint that takes payout
/// events, on `conn`: call it inside the transaction that saves the payout. A change
/// whose (payout, version) is recorded already is skipped.
pub async fn enqueue_payout(conn: &mut AnyConnection, c: &PayoutChange) -> Result<(), sqlx::Error> {
    let s = &c.snapshot;
    let snapshot = serde_json::to_string(s).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let row = sqlx::query(
        "INSERT INTO conversion_changes (subject, conversion_id, version, journal_seq, user_id, state, status,          notify_kind, snapshot, at) VALUES ('payout', $1, $2, $3, $4, $5, $5, $6, $7, $8)          ON CONFLICT (conversion_id, version) DO NOTHING RETURNING id",
    )
    .bind(&s.payout_id)
    .bind(c.version)
    .bind(c.journal_seq)
    .bind(&s.user_id)
    .bind(s.status.as_str())
    .bind(c.notify_kind())
    .bind(snapshot)
    .bind(c.at)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(r) = row {
        fan_out(conn, &[r.try_get(0)?]).await?;
    }
    Ok(())
}

/// Records changes, and their deliveries to every callback endpoint that takes them, on
/// `conn`: call it inside the transaction that saves the changes. Every change given is
/// recorded (the caller decided they are changes); a change whose (conversion, version)
/// is recorded already is skipped, so a retried batch records nothing twice. Returns the
/// number of changes recorded.
pub async fn enqueue(conn: &mut AnyConnection, changes: &[Change]) -> Result<usize, sqlx::Error> {
    let mut ids = Vec::with_capacity(changes.len());
    for c in changes {
        if let Some(id) = insert_change(conn, c, false).await? {
            ids.push(id);
        }
    }
    fan_out(conn, &ids).await?;
    Ok(ids.len())
}

/// [`enqueue`] for one change, recorded only if the conversion's stored state, status,
/// cashback or amount differ from the change's (or it is not stored yet). Call it before
/// the conversion row is saved. Returns whether it was recorded.
pub async fn enqueue_if_changed(conn: &mut AnyConnection, change: &Change) -> Result<bool, sqlx::Error> {
    let Some(id) = insert_change(conn, change, true).await? else { return Ok(false) };
    fan_out(conn, &[id]).await?;
    Ok(true)
}

async fn insert_change(
    conn: &mut AnyConnection,
    c: &Change,
    only_if_changed: bool,
) -> Result<Option<i64>, sqlx::Error> {
    let s = &c.snapshot;
    let snapshot = serde_json::to_string(s).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let guard = if only_if_changed {
        "WHERE NOT EXISTS (SELECT 1 FROM conversions WHERE id = $1 AND state = $7 AND status = $8 AND cashback = $12 AND amount = $13)"
    } else {
        // Every parameter is referenced either way (both drivers check the count).
        "WHERE $12 = $12 AND $13 = $13"
    };
    // INSERT ... SELECT so that the guard and the insert are one statement.
    let sql = format!(
        "INSERT INTO conversion_changes (conversion_id, version, journal_seq, user_id, click_id, merchant_id, network_id, \
         state, status, notify_kind, snapshot, at) \
         SELECT $1, $2, $3, $4, $5, $6, $9, $7, $8, $10, $11, $14 {guard} \
         ON CONFLICT (conversion_id, version) DO NOTHING RETURNING id"
    );
    let row = sqlx::query(&sql)
        .bind(&c.conversion_id)
        .bind(c.version)
        .bind(c.journal_seq)
        .bind(&s.user_id)
        .bind(&s.click_id)
        .bind(&s.merchant_id)
        .bind(s.state.as_str())
        .bind(s.status.as_str())
        .bind(&s.network_id)
        .bind(c.notify_kind())
        .bind(snapshot)
        .bind(s.cashback)
        .bind(s.amount)
        .bind(c.at)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| r.try_get(0)).transpose()
}

/// One delivery per (change, endpoint) whose filters take it: the endpoint takes the
/// change's subject (conversions, payouts), and its merchant and network filters match (a
/// payout has neither, so an endpoint filtered to a merchant or a network gets none).
/// Disabled endpoints get theirs too: they are the backlog replayed when the endpoint is
/// enabled again.
async fn fan_out(conn: &mut AnyConnection, change_ids: &[i64]) -> Result<(), sqlx::Error> {
    if change_ids.is_empty() {
        return Ok(());
    }
    let backend = match conn.backend_name() {
        "PostgreSQL" => crate::db::Backend::Postgres,
        _ => crate::db::Backend::Sqlite,
    };
    let sql = format!(
        "INSERT INTO callback_deliveries (endpoint_id, change_id, conversion_id, version, next_attempt_at, created_at, updated_at) \
         SELECT e.id, c.id, c.conversion_id, c.version, c.at, c.at, c.at FROM conversion_changes c, callback_endpoints e \
         WHERE c.id IN ({}) AND (e.merchant_id IS NULL OR e.merchant_id = c.merchant_id) \
         AND ((c.subject = 'conversion' AND e.send_conversions = 1) OR (c.subject = 'payout' AND e.send_payouts = 1)) \
         AND (e.network_id IS NULL OR e.network_id = c.network_id) \
         ON CONFLICT (endpoint_id, change_id) DO NOTHING",
        super::ids_from_json(backend, 1)
    );
    let ids = serde_json::to_string(change_ids).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(&sql).bind(ids).execute(&mut *conn).await?;
    Ok(())
}
