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
/// the same key exists (nothing is written then). [`post_batch`] of one posting.
pub async fn post(conn: &mut AnyConnection, p: &Posting) -> Result<bool, LedgerError> {
    let mut statements = 0;
    Ok(post_batch(conn, std::slice::from_ref(p), &mut statements).await?.first().copied().unwrap_or(false))
}

/// Appends postings inside the caller's transaction, in order, with a bounded number of
/// statements whatever their number (three, or six when the debt rule may apply; each is
/// added to `statements`). Returns, per posting, whether it was written: `false` when a
/// posting with its key exists (or it has no entries), and then nothing of it is written.
///
/// When a posting moves a user's `available`, the debt rule follows it (see the module's
/// documentation): a shortfall becomes debt, a credit repays debt first, as a posting of
/// its own keyed `{key}:debt`, exactly as if the postings were made one by one. The rule
/// needs the user's balances: those `available` rows are locked first (an upsert that
/// changes nothing, which on PostgreSQL waits for and then locks the newest row version),
/// and the debt rows are read in the next statement, whose snapshot then includes what
/// any replica that held the lock before us wrote. Two replicas settling one user's
/// account therefore run one after the other. Rows are locked in (owner, kind, currency)
/// order in every statement, so that two batches meet in the same order.
pub async fn post_batch(
    conn: &mut AnyConnection,
    postings: &[Posting],
    statements: &mut u32,
) -> Result<Vec<bool>, LedgerError> {
    use crate::db::rows::{Ty, backend, json_rows, to_json};
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    let be = backend(conn);
    for p in postings {
        let sum: i64 = p.entries.iter().map(|e| e.amount).sum();
        if sum != 0 {
            return Err(LedgerError::Unbalanced { key: p.key.clone(), sum });
        }
    }
    let mut applied = vec![false; postings.len()];
    let candidates: Vec<&Posting> = postings.iter().filter(|p| !p.entries.is_empty()).collect();
    if candidates.is_empty() {
        return Ok(applied);
    }
    let tx_ids = insert_transactions(conn, &candidates, statements).await?;
    // A key given twice in one call is written once: the first.
    let mut seen = std::collections::HashSet::new();
    let mut written: Vec<&Posting> = Vec::with_capacity(candidates.len());
    for (i, p) in postings.iter().enumerate() {
        if !p.entries.is_empty() && tx_ids.contains_key(&p.key) && seen.insert(p.key.as_str()) {
            applied[i] = true;
            written.push(p);
        }
    }
    if written.is_empty() {
        return Ok(applied);
    }

    // The debt rule, replayed in memory posting by posting on the balances as they stood.
    let moves_available = |p: &Posting| -> Vec<String> {
        let mut users: Vec<String> = Vec::new();
        for e in &p.entries {
            if e.kind == AccountKind::Available && e.owner != PLATFORM && !users.contains(&e.owner) {
                users.push(e.owner.clone());
            }
        }
        users
    };
    let mut settles: Vec<Posting> = Vec::new();
    let settled: BTreeSet<(String, String)> =
        written.iter().flat_map(|p| moves_available(p).into_iter().map(|u| (u, p.currency.clone()))).collect();
    let mut order: Vec<(usize, Option<usize>)> = Vec::new(); // (written index, settle index)
    if settled.is_empty() {
        order.extend((0..written.len()).map(|i| (i, None)));
    } else {
        // Lock the users' available rows (creating those that do not exist, at zero),
        // then read available and debt: the balances before this batch's postings.
        #[derive(serde::Serialize)]
        struct Key<'a> {
            owner: &'a str,
            kind: &'static str,
            currency: &'a str,
        }
        let keys: Vec<Key> =
            settled.iter().map(|(u, c)| Key { owner: u, kind: AccountKind::Available.as_str(), currency: c }).collect();
        let cols = [("owner", Ty::Text), ("kind", Ty::Text), ("currency", Ty::Text)];
        let sql = format!(
            "INSERT INTO accounts (owner, kind, currency, balance) SELECT owner, kind, currency, 0 FROM {} WHERE true \
             ON CONFLICT (owner, kind, currency) DO UPDATE SET balance = accounts.balance",
            json_rows(be, 1, &cols)
        );
        sqlx::query(&sql).bind(to_json(&keys)?).execute(&mut *conn).await?;
        *statements += 1;
        let sql = format!(
            "SELECT a.owner, a.kind, a.currency, a.balance FROM accounts a, {} \
             WHERE a.owner = v.owner AND a.currency = v.currency AND a.kind IN ('available', 'debt')",
            json_rows(be, 1, &cols)
        );
        let mut held: HashMap<(String, String), Position> = HashMap::new();
        for r in sqlx::query(&sql).bind(to_json(&keys)?).fetch_all(&mut *conn).await? {
            let (owner, kind, currency, balance): (String, String, String, i64) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
            let at = held.entry((owner, currency)).or_default();
            match kind.as_str() {
                "available" => at.available = balance,
                _ => at.debt = balance,
            }
        }
        *statements += 1;
        for (i, p) in written.iter().enumerate() {
            order.push((i, None));
            apply_to(&mut held, p);
            for user in moves_available(p) {
                let position = held.get(&(user.clone(), p.currency.clone())).copied().unwrap_or_default();
                if let Some(s) = settle_posting(p, &user, position) {
                    apply_to(&mut held, &s);
                    order.push((i, Some(settles.len())));
                    settles.push(s);
                }
            }
        }
    }
    let mut tx_ids = tx_ids;
    if !settles.is_empty() {
        let refs: Vec<&Posting> = settles.iter().collect();
        let ids = insert_transactions(conn, &refs, statements).await?;
        for s in &settles {
            if !ids.contains_key(&s.key) {
                // Its key derives from a posting written just now: it cannot exist.
                return Err(LedgerError::Db(sqlx::Error::Protocol(format!("ledger transaction {} exists", s.key))));
            }
        }
        tx_ids.extend(ids);
    }
    let all: Vec<&Posting> = order
        .iter()
        .map(|(i, s)| match s {
            None => written[*i],
            Some(s) => &settles[*s],
        })
        .collect();

    // Every account's change, merged (one statement cannot update a row twice), applied
    // in one upsert in key order; then every entry in one insert.
    let mut merged: BTreeMap<(&str, &'static str, &str), i64> = BTreeMap::new();
    for p in &all {
        for e in &p.entries {
            *merged.entry((e.owner.as_str(), e.kind.as_str(), p.currency.as_str())).or_default() += e.amount;
        }
    }
    #[derive(serde::Serialize)]
    struct Delta<'a> {
        owner: &'a str,
        kind: &'a str,
        currency: &'a str,
        amount: i64,
    }
    let deltas: Vec<Delta> = merged
        .iter()
        .map(|((owner, kind, currency), amount)| Delta { owner, kind, currency, amount: *amount })
        .collect();
    let cols = [("owner", Ty::Text), ("kind", Ty::Text), ("currency", Ty::Text), ("amount", Ty::Int)];
    let sql = format!(
        "INSERT INTO accounts (owner, kind, currency, balance) SELECT owner, kind, currency, amount FROM {} WHERE true \
         ON CONFLICT (owner, kind, currency) DO UPDATE SET balance = accounts.balance + excluded.balance \
         RETURNING id, owner, kind, currency",
        json_rows(be, 1, &cols)
    );
    let mut accounts: HashMap<(String, String, String), i64> = HashMap::new();
    for r in sqlx::query(&sql).bind(to_json(&deltas)?).fetch_all(&mut *conn).await? {
        accounts.insert((r.try_get(1)?, r.try_get(2)?, r.try_get(3)?), r.try_get(0)?);
    }
    *statements += 1;
    #[derive(serde::Serialize)]
    struct Line<'a> {
        transaction_id: i64,
        account_id: i64,
        amount: i64,
        currency: &'a str,
    }
    let mut lines: Vec<Line> = Vec::new();
    for p in &all {
        let transaction_id = tx_ids[&p.key];
        for e in &p.entries {
            let account_id = *accounts
                .get(&(e.owner.clone(), e.kind.as_str().to_string(), p.currency.clone()))
                .ok_or_else(|| {
                    sqlx::Error::Protocol(format!("account {}/{} not returned by its upsert", e.owner, e.kind.as_str()))
                })?;
            lines.push(Line { transaction_id, account_id, amount: e.amount, currency: &p.currency });
        }
    }
    let cols = [("transaction_id", Ty::Int), ("account_id", Ty::Int), ("amount", Ty::Int), ("currency", Ty::Text)];
    let sql = format!(
        "INSERT INTO ledger_entries (transaction_id, account_id, amount, currency) \
         SELECT transaction_id, account_id, amount, currency FROM {}",
        json_rows(be, 1, &cols)
    );
    sqlx::query(&sql).bind(to_json(&lines)?).execute(&mut *conn).await?;
    *statements += 1;
    Ok(applied)
}

/// Adds a posting's entries to the positions held in memory.
fn apply_to(held: &mut std::collections::HashMap<(String, String), Position>, p: &Posting) {
    for e in &p.entries {
        let at = held.entry((e.owner.clone(), p.currency.clone())).or_default();
        match e.kind {
            AccountKind::Available => at.available += e.amount,
            AccountKind::Debt => at.debt += e.amount,
            _ => {}
        }
    }
}

/// The debt rule's posting after `p` for `user`, whose position is now `held`.
fn settle_posting(p: &Posting, user: &str, held: Position) -> Option<Posting> {
    let entries = debt_entries(user, held);
    let debit = entries.iter().find(|e| e.kind == AccountKind::Debt).map(|e| e.amount)?;
    let money = |minor: i64| cashback_sdk::money::format(minor, &p.currency);
    let (cause, reason) = if debit < 0 {
        (
            "debt",
            format!("{} left available at {}: owed back, repaid from future cashback", p.key, money(held.available)),
        )
    } else {
        ("debt_repayment", format!("{}: {} of the debt repaid from available", p.key, money(debit)))
    };
    Some(Posting {
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
    })
}

/// Inserts the postings' transactions in one statement; returns the ids of those written
/// (a key that exists already is skipped), by key.
async fn insert_transactions(
    conn: &mut AnyConnection,
    postings: &[&Posting],
    statements: &mut u32,
) -> Result<std::collections::HashMap<String, i64>, LedgerError> {
    use crate::db::rows::{Ty, backend, json_rows, to_json};
    #[derive(serde::Serialize)]
    struct Tx<'a> {
        idempotency_key: &'a str,
        conversion_id: Option<&'a str>,
        journal_seq: Option<i64>,
        cause: &'a str,
        operator: Option<&'a str>,
        reason: Option<&'a str>,
        plugin_name: Option<&'a str>,
        plugin_version: Option<&'a str>,
        plugin_digest: Option<&'a str>,
        created_at: i64,
    }
    let rows: Vec<Tx> = postings
        .iter()
        .map(|p| Tx {
            idempotency_key: &p.key,
            conversion_id: p.conversion_id.as_deref(),
            journal_seq: p.journal_seq,
            cause: &p.cause,
            operator: p.operator.as_deref(),
            reason: p.reason.as_deref(),
            plugin_name: p.plugins.as_ref().map(|r| r.names.as_str()),
            plugin_version: p.plugins.as_ref().map(|r| r.versions.as_str()),
            plugin_digest: p.plugins.as_ref().map(|r| r.digests.as_str()),
            created_at: p.at,
        })
        .collect();
    const COLS: [(&str, Ty); 10] = [
        ("idempotency_key", Ty::Text),
        ("conversion_id", Ty::Text),
        ("journal_seq", Ty::Int),
        ("cause", Ty::Text),
        ("operator", Ty::Text),
        ("reason", Ty::Text),
        ("plugin_name", Ty::Text),
        ("plugin_version", Ty::Text),
        ("plugin_digest", Ty::Text),
        ("created_at", Ty::Int),
    ];
    let names: Vec<&str> = COLS.iter().map(|(c, _)| *c).collect();
    let sql = format!(
        "INSERT INTO ledger_transactions ({0}) SELECT {0} FROM {1} WHERE true \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, idempotency_key",
        names.join(", "),
        json_rows(backend(conn), 1, &COLS)
    );
    let mut ids = std::collections::HashMap::with_capacity(rows.len());
    for r in sqlx::query(&sql).bind(to_json(&rows)?).fetch_all(&mut *conn).await? {
        ids.insert(r.try_get(1)?, r.try_get(0)?);
    }
    *statements += 1;
    Ok(ids)
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
