//! The double-entry ledger. Every money movement is one transaction of entries that sum
//! to zero per currency, appended (the database refuses updates and deletes) and keyed
//! by its cause, so posting the same cause twice posts nothing the second time.
//!
//! Sign convention: an entry adds its amount to its account's balance. What we owe a user
//! (their pending and available cashback) is positive; the matching platform expense is
//! negative. Commission the network owes us is positive (receivable) against commission
//! income. The sum over all accounts of a currency is therefore always zero.
//!
//! **The debt rule.** A user's `available` never stays negative: a posting that takes
//! more from it than it holds (a refund of cashback already paid out, a manual debit) is
//! followed, in the same transaction, by a transfer of the shortfall to the user's `debt`
//! account (zero or negative: what the user owes back); and a posting that credits
//! `available` while the user owes something repays the debt from it first. Both are
//! postings of their own (`debt`, `debt_repayment`), keyed by the posting that caused
//! them. docs/LEDGER.md states the policy.

use serde::Serialize;
use sqlx::{AnyConnection, Row};

/// The platform's own accounts are owned by this name.
pub const PLATFORM: &str = "platform";

/// Kinds of account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// A user's cashback not yet available.
    Pending,
    /// A user's available cashback.
    Available,
    /// Platform: cashback granted to users.
    CashbackExpense,
    /// Platform: commission the networks owe.
    CommissionReceivable,
    /// Platform: commission earned.
    CommissionIncome,
    /// A user's cashback requested for payout and not paid yet (requested or approved).
    PayoutInFlight,
    /// What a user owes back: cashback taken back (a refund after payout) beyond their
    /// available balance. Zero or negative by the sign convention (what we owe a user is
    /// positive); repaid first from the next cashback that becomes available.
    Debt,
    /// Platform: cashback paid out to users (money that left the platform).
    PayoutsPaid,
}

impl AccountKind {
    /// snake_case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Pending => "pending",
            AccountKind::Available => "available",
            AccountKind::CashbackExpense => "cashback_expense",
            AccountKind::CommissionReceivable => "commission_receivable",
            AccountKind::CommissionIncome => "commission_income",
            AccountKind::PayoutInFlight => "payout_in_flight",
            AccountKind::Debt => "debt",
            AccountKind::PayoutsPaid => "payouts_paid",
        }
    }
}

/// One line of a ledger transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// A user id, or [`PLATFORM`].
    pub owner: String,
    /// Which of the owner's accounts.
    pub kind: AccountKind,
    /// Signed amount in minor units.
    pub amount: i64,
}

/// Which plugin versions computed an amount (a rule chain: all of them, in order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PluginRefs {
    /// Names, comma-separated.
    pub names: String,
    /// Versions, comma-separated.
    pub versions: String,
    /// Digests, comma-separated.
    pub digests: String,
}

/// A balanced set of entries with its cause.
#[derive(Debug, Clone)]
pub struct Posting {
    /// Unique per cause: the same cause never posts twice.
    pub key: String,
    /// The conversion it is about.
    pub conversion_id: Option<String>,
    /// The journal command that caused it.
    pub journal_seq: Option<i64>,
    /// What kind of cause (`pending`, `adjusted`, `matured`, `manual`...).
    pub cause: String,
    /// The operator, for manual actions.
    pub operator: Option<String>,
    /// Why, for people.
    pub reason: Option<String>,
    /// The plugins that computed the amount.
    pub plugins: Option<PluginRefs>,
    /// Currency of every entry.
    pub currency: String,
    /// The entries.
    pub entries: Vec<Entry>,
    /// When.
    pub at: i64,
}

/// Why a posting was refused.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The entries do not sum to zero.
    #[error("unbalanced posting {key}: entries sum to {sum}")]
    Unbalanced {
        /// The posting.
        key: String,
        /// Their sum.
        sum: i64,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What one conversion has booked in the ledger (or should have): the balances its
/// postings add up to, per account kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Booked {
    /// Cashback owed to the user, not yet available.
    pub pending: i64,
    /// Cashback available to the user.
    pub available: i64,
    /// Commission the network owes us.
    pub receivable: i64,
}

/// Entries that move a conversion's bookings by `delta` for `user`.
pub fn booking_entries(user: &str, delta: Booked) -> Vec<Entry> {
    let mut e = Vec::new();
    let mut push = |owner: &str, kind, amount: i64| {
        if amount != 0 {
            e.push(Entry { owner: owner.to_string(), kind, amount });
        }
    };
    push(user, AccountKind::Pending, delta.pending);
    push(user, AccountKind::Available, delta.available);
    push(PLATFORM, AccountKind::CashbackExpense, -(delta.pending + delta.available));
    push(PLATFORM, AccountKind::CommissionReceivable, delta.receivable);
    push(PLATFORM, AccountKind::CommissionIncome, -delta.receivable);
    e
}

/// Appends a posting inside the caller's transaction. Returns `false` if a posting with
/// the same key exists (nothing is written then).
///
/// When the posting moved a user's `available`, the debt rule follows in the same
/// transaction (see the module's documentation): a shortfall becomes debt, a credit
/// repays debt first. The rule reads the user's balances after this posting's own
/// upsert, which holds the `available` row locked until the commit on PostgreSQL, so two
/// replicas settling one user's account run one after the other.
pub async fn post(conn: &mut AnyConnection, p: &Posting) -> Result<bool, LedgerError> {
    if !post_one(conn, p).await? {
        return Ok(false);
    }
    let mut users: Vec<&str> = Vec::new();
    for e in &p.entries {
        if e.kind == AccountKind::Available && e.owner != PLATFORM && !users.contains(&e.owner.as_str()) {
            users.push(&e.owner);
        }
    }
    for user in users {
        let held = position(conn, user, &p.currency, true).await?;
        let entries = debt_entries(user, held);
        let Some(debit) = entries.iter().find(|e| e.kind == AccountKind::Debt).map(|e| e.amount) else { continue };
        let money = |minor: i64| cashback_sdk::money::format(minor, &p.currency);
        let (cause, reason) = if debit < 0 {
            (
                "debt",
                format!(
                    "{} left available at {}: owed back, repaid from future cashback",
                    p.key,
                    money(held.available)
                ),
            )
        } else {
            ("debt_repayment", format!("{}: {} of the debt repaid from available", p.key, money(debit)))
        };
        let settle = Posting {
            key: format!("{}:debt", p.key),
            conversion_id: None,
            journal_seq: p.journal_seq,
            cause: cause.into(),
            operator: None,
            reason: Some(reason),
            plugins: None,
            currency: p.currency.clone(),
            entries,
            at: p.at,
        };
        post_one(conn, &settle).await?;
    }
    Ok(true)
}

/// A user's available balance and debt in one currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Position {
    /// The `available` account (never negative once the debt rule ran).
    pub available: i64,
    /// The `debt` account (zero or negative).
    pub debt: i64,
}

/// The entries that apply the debt rule to `held`: a negative available is moved to
/// debt; a positive available repays the debt as far as it goes. Empty: nothing to do.
pub fn debt_entries(user: &str, held: Position) -> Vec<Entry> {
    let moved = if held.available < 0 {
        held.available
    } else if held.debt < 0 {
        held.available.min(-held.debt)
    } else {
        0
    };
    if moved == 0 {
        return Vec::new();
    }
    vec![
        Entry { owner: user.to_string(), kind: AccountKind::Available, amount: -moved },
        Entry { owner: user.to_string(), kind: AccountKind::Debt, amount: moved },
    ]
}

/// A user's position in `currency`, read inside the caller's transaction. With `lock`,
/// on PostgreSQL the rows are locked until the commit (`FOR UPDATE`), so a decision made
/// on them (a payout request's amount) cannot race another replica's; SQLite has one
/// writer at a time and needs no lock.
pub async fn position(
    conn: &mut AnyConnection,
    user: &str,
    currency: &str,
    lock: bool,
) -> Result<Position, sqlx::Error> {
    let lock = if lock && conn.backend_name() == "PostgreSQL" { " FOR UPDATE" } else { "" };
    let sql = format!(
        "SELECT kind, balance FROM accounts WHERE owner = $1 AND currency = $2 AND kind IN ('available', 'debt') \
         ORDER BY kind{lock}"
    );
    let mut held = Position::default();
    for r in sqlx::query(&sql).bind(user).bind(currency).fetch_all(&mut *conn).await? {
        let (kind, balance): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
        match kind.as_str() {
            "available" => held.available = balance,
            _ => held.debt = balance,
        }
    }
    Ok(held)
}

/// One balanced posting, without the debt rule.
async fn post_one(conn: &mut AnyConnection, p: &Posting) -> Result<bool, LedgerError> {
    let sum: i64 = p.entries.iter().map(|e| e.amount).sum();
    if sum != 0 {
        return Err(LedgerError::Unbalanced { key: p.key.clone(), sum });
    }
    if p.entries.is_empty() {
        return Ok(false);
    }
    let plugins = p.plugins.clone().unwrap_or_default();
    let inserted = sqlx::query(
        "INSERT INTO ledger_transactions (idempotency_key, conversion_id, journal_seq, cause, operator, reason, \
         plugin_name, plugin_version, plugin_digest, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    )
    .bind(&p.key)
    .bind(&p.conversion_id)
    .bind(p.journal_seq)
    .bind(&p.cause)
    .bind(&p.operator)
    .bind(&p.reason)
    .bind(p.plugins.as_ref().map(|_| plugins.names.clone()))
    .bind(p.plugins.as_ref().map(|_| plugins.versions.clone()))
    .bind(p.plugins.as_ref().map(|_| plugins.digests.clone()))
    .bind(p.at)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = inserted else {
        return Ok(false);
    };
    let tx_id: i64 = row.try_get(0)?;
    // Two statements for all the entries instead of two per entry: every statement is a
    // round trip, and the posting runs inside the single writer. The accounts are
    // upserted in one statement, with amounts merged per account because one statement
    // cannot update a row twice; then the entries are inserted in one.
    let mut merged: Vec<(&str, AccountKind, i64)> = Vec::with_capacity(p.entries.len());
    for e in &p.entries {
        match merged.iter_mut().find(|m| m.0 == e.owner && m.1 == e.kind) {
            Some(m) => m.2 += e.amount,
            None => merged.push((&e.owner, e.kind, e.amount)),
        }
    }
    let rows = |n: usize, width: usize| {
        (0..n)
            .map(|i| format!("({})", (1..=width).map(|c| format!("${}", i * width + c)).collect::<Vec<_>>().join(", ")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sql = format!(
        "INSERT INTO accounts (owner, kind, currency, balance) VALUES {} \
         ON CONFLICT (owner, kind, currency) DO UPDATE SET balance = accounts.balance + excluded.balance \
         RETURNING id, owner, kind",
        rows(merged.len(), 4)
    );
    let mut upsert = sqlx::query(&sql);
    for (owner, kind, amount) in &merged {
        upsert = upsert.bind(*owner).bind(kind.as_str()).bind(&p.currency).bind(*amount);
    }
    let mut ids: Vec<(String, String, i64)> = Vec::with_capacity(merged.len());
    for r in upsert.fetch_all(&mut *conn).await? {
        ids.push((r.try_get(1)?, r.try_get(2)?, r.try_get(0)?));
    }
    let sql = format!(
        "INSERT INTO ledger_entries (transaction_id, account_id, amount, currency) VALUES {}",
        rows(p.entries.len(), 4)
    );
    let mut insert = sqlx::query(&sql);
    for e in &p.entries {
        let account = ids
            .iter()
            .find(|(owner, kind, _)| *owner == e.owner && kind == e.kind.as_str())
            .map(|(_, _, id)| *id)
            .ok_or_else(|| {
                sqlx::Error::Protocol(format!("account {}/{} not returned by its upsert", e.owner, e.kind.as_str()))
            })?;
        insert = insert.bind(tx_id).bind(account).bind(e.amount).bind(&p.currency);
    }
    insert.execute(&mut *conn).await?;
    Ok(true)
}

/// One account's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Balance {
    /// Owner.
    pub owner: String,
    /// Kind (`pending`, `available`...).
    pub kind: String,
    /// Currency.
    pub currency: String,
    /// Minor units.
    pub balance: i64,
}

/// Every account's balance, ordered by owner, kind and currency.
pub async fn all_balances(pool: &sqlx::AnyPool) -> Result<Vec<Balance>, sqlx::Error> {
    let rows = sqlx::query("SELECT owner, kind, currency, balance FROM accounts ORDER BY owner, kind, currency")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Balance { owner: r.try_get(0)?, kind: r.try_get(1)?, currency: r.try_get(2)?, balance: r.try_get(3)? })
        })
        .collect()
}

/// A user's balances.
pub async fn user_balances(pool: &sqlx::AnyPool, user: &str) -> Result<Vec<Balance>, sqlx::Error> {
    Ok(all_balances(pool).await?.into_iter().filter(|b| b.owner == user).collect())
}

/// Checks the ledger's invariants and returns every violation found (empty: sound):
/// each transaction balances per currency; each currency sums to zero over all
/// accounts; each stored balance equals the fold of its entries.
pub async fn check_invariants(pool: &sqlx::AnyPool) -> Result<Vec<String>, sqlx::Error> {
    let mut problems = Vec::new();
    for r in sqlx::query(
        "SELECT transaction_id, currency, CAST(SUM(amount) AS BIGINT) FROM ledger_entries \
         GROUP BY transaction_id, currency HAVING SUM(amount) <> 0",
    )
    .fetch_all(pool)
    .await?
    {
        let (tx, cur, sum): (i64, String, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        problems.push(format!("transaction {tx} does not balance in {cur}: {sum}"));
    }
    for r in sqlx::query(
        "SELECT currency, CAST(SUM(balance) AS BIGINT) FROM accounts GROUP BY currency HAVING SUM(balance) <> 0",
    )
    .fetch_all(pool)
    .await?
    {
        let (cur, sum): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
        problems.push(format!("accounts in {cur} sum to {sum}, not 0"));
    }
    for r in sqlx::query(
        "SELECT a.id, a.balance, CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) FROM accounts a \
         LEFT JOIN ledger_entries e ON e.account_id = a.id GROUP BY a.id, a.balance \
         HAVING a.balance <> COALESCE(SUM(e.amount), 0)",
    )
    .fetch_all(pool)
    .await?
    {
        let (id, balance, fold): (i64, i64, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        problems.push(format!("account {id} says {balance} but its entries sum to {fold}"));
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booking_entries_always_balance() {
        for delta in [
            Booked { pending: 50, available: 0, receivable: 80 },
            Booked { pending: -50, available: 50, receivable: 0 },
            Booked { pending: 0, available: -50, receivable: -80 },
        ] {
            let entries = booking_entries("u1", delta);
            assert_eq!(entries.iter().map(|e| e.amount).sum::<i64>(), 0, "{delta:?}");
            assert!(entries.iter().all(|e| e.amount != 0));
        }
        assert!(booking_entries("u1", Booked::default()).is_empty());
    }

    #[test]
    fn the_debt_rule_moves_a_shortfall_to_debt_and_repays_debt_from_a_credit_first() {
        let amounts = |held: Position| {
            let e = debt_entries("u1", held);
            assert_eq!(e.iter().map(|e| e.amount).sum::<i64>(), 0, "{held:?}");
            let of = |k: AccountKind| e.iter().filter(|e| e.kind == k).map(|e| e.amount).sum::<i64>();
            (of(AccountKind::Available), of(AccountKind::Debt))
        };
        // A refund of 5.00 with 2.00 available: available -3.00 → 0, debt -3.00.
        assert_eq!(amounts(Position { available: -300, debt: 0 }), (300, -300));
        // Owing 3.00 already, another 1.00 short: the debt grows to 4.00.
        assert_eq!(amounts(Position { available: -100, debt: -300 }), (100, -100));
        // 2.00 becomes available while owing 3.00: all of it repays, 1.00 still owed.
        assert_eq!(amounts(Position { available: 200, debt: -300 }), (-200, 200));
        // 5.00 available while owing 3.00: 3.00 repays, 2.00 stays available.
        assert_eq!(amounts(Position { available: 500, debt: -300 }), (-300, 300));
        // Nothing owed, nothing short: nothing to do.
        assert!(debt_entries("u1", Position { available: 500, debt: 0 }).is_empty());
        assert!(debt_entries("u1", Position::default()).is_empty());
    }
}
