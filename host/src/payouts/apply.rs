//! Applying a payout command inside the writer's transaction (called by
//! `conversions::store` for [`Command::PayoutRequest`] and [`Command::PayoutStep`]): the
//! decision, the payout row, its history, its ledger posting and its outbox change commit
//! or roll back together, with the journal entry of the command.
//!
//! Replicas: the decision reads what it decides on with a lock (on PostgreSQL, `FOR
//! UPDATE`: the user's available balance for a request, the payout's row for a step), so
//! two replicas acting on one user's balance or one payout run one after the other and
//! the second decides on what the first left. The row update is also conditional on the
//! version read, and every posting is keyed by the payout and its step: a step can post
//! at most once whatever happens.
//!
//! [`Command::PayoutRequest`]: crate::conversions::Command::PayoutRequest
//! [`Command::PayoutStep`]: crate::conversions::Command::PayoutStep

use super::store::{self, Payout};
use super::{Movement, PayoutAction, PayoutStatus, Refusal, Step, decide, request_amount};
use crate::clock::Millis;
use crate::ledger::{self, AccountKind, Entry, PLATFORM, Posting};
use crate::outbox;
use sqlx::AnyConnection;

/// What applying a payout command gives: the payout as it is now, and whether this
/// command changed it (false: it was already where the command leads).
pub type Applied = (Payout, bool);

/// Why a payout command was not applied. Nothing of it is kept (the write path rolls its
/// savepoint back) and its caller hears why (`conversions::ApplyError` converts it).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Refused: the balance, the minimum, the key or the payout's status.
    #[error(transparent)]
    Refused(Refusal),
    /// The payout changed under the lock (cannot happen; never half-applied if it does).
    #[error("the payout changed concurrently")]
    Conflict,
    /// The ledger refused the posting.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// The entries that move `amount` of `user`'s cashback as `movement` says.
pub fn movement_entries(user: &str, movement: Movement, amount: i64) -> Vec<Entry> {
    let (from, to) = match movement {
        Movement::Nothing => return Vec::new(),
        Movement::AvailableToInFlight => ((user, AccountKind::Available), (user, AccountKind::PayoutInFlight)),
        Movement::InFlightToAvailable => ((user, AccountKind::PayoutInFlight), (user, AccountKind::Available)),
        Movement::InFlightToPaid => ((user, AccountKind::PayoutInFlight), (PLATFORM, AccountKind::PayoutsPaid)),
        Movement::PaidToAvailable => ((PLATFORM, AccountKind::PayoutsPaid), (user, AccountKind::Available)),
    };
    vec![
        Entry { owner: from.0.to_string(), kind: from.1, amount: -amount },
        Entry { owner: to.0.to_string(), kind: to.1, amount },
    ]
}

/// What a request asks for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The payout's id.
    pub payout_id: &'a str,
    /// The user.
    pub user_id: &'a str,
    /// Currency.
    pub currency: &'a str,
    /// Minor units; none: all of the available balance.
    pub amount: Option<i64>,
    /// The currency's minimum when it was requested.
    pub minimum: i64,
    /// The requester's idempotency key.
    pub request_key: &'a str,
    /// Who asked.
    pub requested_by: &'a str,
}

fn money(minor: i64, currency: &str) -> String {
    cashback_sdk::money::format(minor, currency)
}

/// A payout request: refused (nothing written) below the minimum or above the available
/// balance; otherwise the payout row and its first posting, available to in flight.
pub async fn request(conn: &mut AnyConnection, seq: i64, at: Millis, r: Request<'_>) -> Result<Applied, Failure> {
    // Locked first: a second request for the same user on another replica waits here, then
    // sees this one's payout row and its smaller balance.
    let held = ledger::position(conn, r.user_id, r.currency, true).await?;
    if let Some(existing) = store::by_key(conn, r.user_id, r.request_key).await? {
        return same_request(existing, r);
    }
    let amount = request_amount(r.amount, held.available, r.minimum, r.currency).map_err(Failure::Refused)?;
    let inserted = sqlx::query(
        "INSERT INTO payouts (id, user_id, currency, amount, status, request_key, requested_by, requested_at, \
         updated_at, version) VALUES ($1, $2, $3, $4, 'requested', $5, $6, $7, $7, 1) ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(r.payout_id)
    .bind(r.user_id)
    .bind(r.currency)
    .bind(amount)
    .bind(r.request_key)
    .bind(r.requested_by)
    .bind(at)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_none() {
        // The same id (same user and key) made meanwhile, by another replica.
        let existing = store::load(conn, r.payout_id, false).await?.ok_or(Failure::Conflict)?;
        return same_request(existing, r);
    }
    let payout = store::load(conn, r.payout_id, false).await?.ok_or(Failure::Conflict)?;
    let detail = format!("requested by {}: {}", r.requested_by, money(amount, r.currency));
    history(conn, &payout, seq, at, None, Some(r.requested_by), &detail).await?;
    post(conn, &payout, seq, at, "requested", Movement::AvailableToInFlight, Some(r.requested_by), &detail).await?;
    outbox_change(conn, &payout, seq, at).await?;
    Ok((payout, true))
}

/// A request whose key made a payout already: the same request again is answered with
/// that payout (nothing posted); another request under the same key is refused.
fn same_request(existing: Payout, r: Request<'_>) -> Result<Applied, Failure> {
    if existing.currency == r.currency && r.amount.is_none_or(|a| a == existing.amount) {
        return Ok((existing, false));
    }
    Err(Failure::Refused(Refusal::KeyReused {
        key: r.request_key.to_string(),
        amount: money(existing.amount, &existing.currency),
        id: existing.id,
    }))
}

/// An operator's step on a payout. `expected_version`: the version the operator saw
/// (refused if it changed meanwhile); none, any.
pub async fn step(
    conn: &mut AnyConnection,
    seq: i64,
    at: Millis,
    payout_id: &str,
    action: &PayoutAction,
    operator: &str,
    expected_version: Option<i64>,
) -> Result<Applied, Failure> {
    let p = store::load(conn, payout_id, true)
        .await?
        .ok_or_else(|| Failure::Refused(Refusal::NotFound(format!("no payout {payout_id:?}"))))?;
    if let Some(expected) = expected_version
        && expected != p.version
    {
        return Err(Failure::Refused(Refusal::Stale { id: p.id, expected, actual: p.version }));
    }
    let (to, movement) = match decide(&p.id, p.status, p.reference.as_deref(), action).map_err(Failure::Refused)? {
        Step::Unchanged => return Ok((p, false)),
        Step::Move { to, movement } => (to, movement),
    };
    let (reference, reason) = match action {
        PayoutAction::MarkPaid { reference } => (Some(reference.as_str()), None),
        PayoutAction::Reject { reason } | PayoutAction::MarkFailed { reason } => (None, Some(reason.as_str())),
        PayoutAction::Approve => (None, None),
    };
    let stamp = |s: PayoutStatus| (to == s).then_some(at);
    let updated = sqlx::query(
        "UPDATE payouts SET status = $1, reference = COALESCE($2, reference), operator = $3, \
         reason = COALESCE($4, reason), approved_at = COALESCE($5, approved_at), paid_at = COALESCE($6, paid_at), \
         closed_at = COALESCE($7, closed_at), updated_at = $8, version = version + 1 WHERE id = $9 AND version = $10",
    )
    .bind(to.as_str())
    .bind(reference)
    .bind(operator)
    .bind(reason)
    .bind(stamp(PayoutStatus::Approved))
    .bind(stamp(PayoutStatus::Paid))
    .bind(stamp(PayoutStatus::Rejected).or(stamp(PayoutStatus::Failed)))
    .bind(at)
    .bind(&p.id)
    .bind(p.version)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() != 1 {
        // Cannot happen under the lock (or SQLite's single writer); if it does, nothing of
        // this step is kept and the caller hears so.
        return Err(Failure::Conflict);
    }
    let payout = store::load(conn, &p.id, false).await?.ok_or(Failure::Conflict)?;
    let amount = money(payout.amount, &payout.currency);
    let detail = match action {
        PayoutAction::Approve => format!("approved by {operator}"),
        PayoutAction::Reject { reason } => format!("rejected by {operator}: {reason}; {amount} back to available"),
        PayoutAction::MarkPaid { reference } => format!("paid ({reference}), marked by {operator}"),
        PayoutAction::MarkFailed { reason } if p.status == PayoutStatus::Paid => {
            format!("payment came back, marked by {operator}: {reason}; {amount} back to available")
        }
        PayoutAction::MarkFailed { reason } => {
            format!("payment failed, marked by {operator}: {reason}; {amount} back to available")
        }
    };
    history(conn, &payout, seq, at, Some(p.status), Some(operator), &detail).await?;
    post(conn, &payout, seq, at, to.as_str(), movement, Some(operator), &detail).await?;
    outbox_change(conn, &payout, seq, at).await?;
    Ok((payout, true))
}

async fn history(
    conn: &mut AnyConnection,
    p: &Payout,
    seq: i64,
    at: Millis,
    from: Option<PayoutStatus>,
    operator: Option<&str>,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payout_history (payout_id, journal_seq, at, from_status, to_status, operator, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&p.id)
    .bind(seq)
    .bind(at)
    .bind(from.map(PayoutStatus::as_str))
    .bind(p.status.as_str())
    .bind(operator)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn post(
    conn: &mut AnyConnection,
    p: &Payout,
    seq: i64,
    at: Millis,
    step: &str,
    movement: Movement,
    operator: Option<&str>,
    detail: &str,
) -> Result<(), Failure> {
    let entries = movement_entries(&p.user_id, movement, p.amount);
    if entries.is_empty() {
        return Ok(());
    }
    let posting = Posting {
        key: store::posting_key(&p.id, step),
        conversion_id: None,
        journal_seq: Some(seq),
        cause: format!("payout_{step}"),
        operator: operator.map(str::to_string),
        reason: Some(format!("payout {}: {detail}", p.id)),
        plugins: None,
        currency: p.currency.clone(),
        entries,
        at,
    };
    ledger::post(conn, &posting).await?;
    Ok(())
}

async fn outbox_change(conn: &mut AnyConnection, p: &Payout, seq: i64, at: Millis) -> Result<(), sqlx::Error> {
    let change = outbox::PayoutChange {
        version: p.version,
        journal_seq: Some(seq),
        at,
        snapshot: outbox::PayoutSnapshot {
            payout_id: p.id.clone(),
            user_id: p.user_id.clone(),
            currency: p.currency.clone(),
            amount: p.amount,
            status: p.status,
            reference: p.reference.clone(),
            reason: p.reason.clone(),
            requested_at: p.requested_at,
        },
    };
    outbox::enqueue_payout(conn, &change).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_movement_is_one_balanced_pair_of_entries() {
        for m in [
            Movement::AvailableToInFlight,
            Movement::InFlightToAvailable,
            Movement::InFlightToPaid,
            Movement::PaidToAvailable,
        ] {
            let e = movement_entries("u1", m, 1_250);
            assert_eq!(e.len(), 2, "{m:?}");
            assert_eq!(e.iter().map(|e| e.amount).sum::<i64>(), 0, "{m:?}");
        }
        assert!(movement_entries("u1", Movement::Nothing, 1_250).is_empty());
        let paid = movement_entries("u1", Movement::InFlightToPaid, 1_250);
        assert_eq!(
            paid,
            vec![
                Entry { owner: "u1".into(), kind: AccountKind::PayoutInFlight, amount: -1_250 },
                Entry { owner: PLATFORM.into(), kind: AccountKind::PayoutsPaid, amount: 1_250 },
            ]
        );
    }
}
