//! The store side of the write path: per batch, prefetch what the commands touch (by id
//! lists, a bounded number of statements whatever the batch's size), let the pure core
//! (`decide.rs`) decide everything in memory, then write the rows it returns inside the
//! caller's transaction. Every conversion is written only if it is still at the version
//! it was decided on; a batch that loses that race (or any other: a fingerprint, a click
//! or an adjustment key written meanwhile by another replica) is rolled back whole and
//! decided again from fresh state ([`apply_batch`]), never half-applied.
//!
//! Each table gets one statement per batch, whatever the batch's size: its rows are bound
//! as one JSON parameter (`db::rows`). A batch of new conversions costs BEGIN, the
//! prefetch (five reads: conversions, fingerprints, clicks, merchant references, users),
//! the journal's numbers and rows, the conversions, their history, the ledger (three
//! statements, six when the debt rule may apply), the outbox's changes and deliveries,
//! and COMMIT: about sixteen round trips for the whole batch. The metrics count them
//! (`cashbackd_write_statements_total`, `cashbackd_write_batch_statements`). There is no
//! savepoint per command; payout commands are applied by `payouts::apply` between the
//! decided segments of a batch, in their own savepoint.

use super::decide::{self, ClickFact, Facts, Input, Rows, World};
pub use super::decide::{Assigned, Attribution, ConversionRow};
use super::lifecycle::Booked;
use super::{ApplyError, Command, Outcome, State, Status, conversion_id};
use crate::clock::{Clock, Millis};
use crate::db::rows::{Ty, backend, json_rows, to_json};
use crate::ledger;
use crate::metrics::Lap;
use sqlx::any::AnyRow;
use sqlx::{Acquire, AnyConnection, Row};

pub(crate) const COLUMNS: &str = "id, network_id, transaction_id, click_id, user_id, merchant_id, order_id, event_type, state, \
    status, status_reason, currency, amount, commission, cashback, reward_delay_days, posted_pending, posted_available, \
    posted_receivable, line_items, decision, completed_at, matures_at, matured_at, event_time, clicked_at, reported_at, \
    rule_at, ledger_at, updated_at, version, reported_via, merchant_ref";

fn bad(what: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unknown {what} {value:?} in the database").into())
}

pub(crate) fn from_row(r: &AnyRow) -> Result<ConversionRow, sqlx::Error> {
    let state: String = r.try_get("state")?;
    let status: String = r.try_get("status")?;
    Ok(ConversionRow {
        id: r.try_get("id")?,
        network_id: r.try_get("network_id")?,
        transaction_id: r.try_get("transaction_id")?,
        click_id: r.try_get("click_id")?,
        user_id: r.try_get("user_id")?,
        merchant_id: r.try_get("merchant_id")?,
        merchant_ref: r.try_get("merchant_ref")?,
        order_id: r.try_get("order_id")?,
        event_type: r.try_get("event_type")?,
        state: State::parse(&state).ok_or_else(|| bad("state", &state))?,
        status: Status::parse(&status).ok_or_else(|| bad("status", &status))?,
        status_reason: r.try_get("status_reason")?,
        currency: r.try_get("currency")?,
        amount: r.try_get("amount")?,
        commission: r.try_get("commission")?,
        cashback: r.try_get("cashback")?,
        reward_delay_days: r.try_get("reward_delay_days")?,
        posted: Booked {
            pending: r.try_get("posted_pending")?,
            available: r.try_get("posted_available")?,
            receivable: r.try_get("posted_receivable")?,
        },
        line_items: r.try_get("line_items")?,
        decision: r.try_get("decision")?,
        completed_at: r.try_get("completed_at")?,
        matures_at: r.try_get("matures_at")?,
        matured_at: r.try_get("matured_at")?,
        event_time: r.try_get("event_time")?,
        clicked_at: r.try_get("clicked_at")?,
        reported_at: r.try_get("reported_at")?,
        rule_at: r.try_get("rule_at")?,
        ledger_at: r.try_get("ledger_at")?,
        updated_at: r.try_get("updated_at")?,
        version: r.try_get("version")?,
        reported_via: r.try_get("reported_via")?,
    })
}

/// Loads a conversion.
pub async fn load(conn: &mut AnyConnection, id: &str) -> Result<Option<ConversionRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM conversions WHERE id = $1");
    sqlx::query(&sql).bind(id).fetch_optional(conn).await?.as_ref().map(from_row).transpose()
}

/// What an event reads before it is decided, in one statement: its conversion, the
/// configuration's version (`catalog`), the attribution facts (the click, whether the user
/// has an account, the network's merchant reference) and the prior-orders count of the
/// likely (user, merchant).
#[derive(Debug, Clone)]
pub struct EventReads {
    /// The conversion, if it exists.
    pub conversion: Option<ConversionRow>,
    /// The configuration's version, read after the event arrived.
    pub config_version: i64,
    /// The click, user and merchant reference facts.
    pub facts: Facts,
    /// (user, merchant, count): the conversions of that user at that merchant, this one
    /// excluded and rejected or reversed ones not counted. The pair is the one the
    /// attribution most likely finds; the caller checks it is the one it found.
    pub prior: Option<(String, String, i64)>,
}

/// Reads [`EventReads`] for conversion `id` of `network`, with the event's click and
/// merchant reference (else the conversion's): one round trip.
pub async fn read_for_event(
    conn: &mut AnyConnection,
    id: &str,
    network: &str,
    click_id: Option<&str>,
    merchant_ref: Option<&str>,
) -> Result<EventReads, sqlx::Error> {
    let columns: Vec<String> = COLUMNS.split(", ").map(|c| format!("c.{c}")).collect();
    // The likely merchant is the click's, else the mapped reference's, else the one
    // assigned: `decide::attribute`'s order when the click is known (without a click an
    // assigned merchant comes first; a pair that differs is counted by the caller).
    let sql = format!(
        "WITH f AS (SELECT v.version AS config_version, {}, \
           k.click_id AS k_click, k.user_id AS k_user, k.merchant_id AS k_merchant, k.created_at AS k_created, \
           (SELECT u.id FROM users u WHERE u.id = COALESCE(k.user_id, c.user_id)) AS known_user, \
           (SELECT r.merchant_id FROM merchant_refs r WHERE r.network_id = $2 \
              AND r.merchant_ref = COALESCE($4, c.merchant_ref)) AS ref_merchant \
         FROM config_version v LEFT JOIN conversions c ON c.id = $1 \
         LEFT JOIN clicks k ON k.click_id = COALESCE($3, c.click_id) WHERE v.id = 1) \
         SELECT f.*, COALESCE(f.k_merchant, f.ref_merchant, f.merchant_id) AS prior_merchant, \
           (SELECT COUNT(*) FROM conversions p WHERE p.user_id = f.known_user \
              AND p.merchant_id = COALESCE(f.k_merchant, f.ref_merchant, f.merchant_id) AND p.id <> $1 \
              AND p.status NOT IN ('rejected', 'reversed')) AS prior \
         FROM f",
        columns.join(", ")
    );
    let row = sqlx::query(&sql).bind(id).bind(network).bind(click_id).bind(merchant_ref).fetch_one(conn).await?;
    let conversion = match row.try_get::<Option<String>, _>("id")? {
        Some(_) => Some(from_row(&row)?),
        None => None,
    };
    let mut facts = Facts::default();
    if let Some(k) = row.try_get::<Option<String>, _>("k_click")? {
        let click = ClickFact {
            user_id: row.try_get("k_user")?,
            merchant_id: row.try_get("k_merchant")?,
            created_at: row.try_get("k_created")?,
        };
        facts.clicks.insert(k, click);
    }
    let known_user: Option<String> = row.try_get("known_user")?;
    if let Some(u) = &known_user {
        facts.users.insert(u.clone());
    }
    let reference =
        merchant_ref.map(str::to_string).or_else(|| conversion.as_ref().and_then(|c| c.merchant_ref.clone()));
    if let (Some(r), Some(m)) = (reference, row.try_get::<Option<String>, _>("ref_merchant")?) {
        facts.merchant_refs.insert((network.to_string(), r), m);
    }
    let prior = match (known_user, row.try_get::<Option<String>, _>("prior_merchant")?) {
        (Some(u), Some(m)) => Some((u, m, row.try_get("prior")?)),
        _ => None,
    };
    Ok(EventReads { conversion, config_version: row.try_get("config_version")?, facts, prior })
}

/// Loads a conversion, and the configuration's version (`catalog`) in the same statement.
/// The version is read after the caller's request arrived, so configuration cached at
/// that version or newer includes every change acknowledged before it.
pub async fn load_with_config(conn: &mut AnyConnection, id: &str) -> Result<(Option<ConversionRow>, i64), sqlx::Error> {
    let columns: Vec<String> = COLUMNS.split(", ").map(|c| format!("c.{c}")).collect();
    let sql = format!(
        "SELECT v.version AS config_version, {} FROM config_version v LEFT JOIN conversions c ON c.id = $1 \
         WHERE v.id = 1",
        columns.join(", ")
    );
    let row = sqlx::query(&sql).bind(id).fetch_one(conn).await?;
    let version: i64 = row.try_get("config_version")?;
    let conversion = match row.try_get::<Option<String>, _>("id")? {
        Some(_) => Some(from_row(&row)?),
        None => None,
    };
    Ok((conversion, version))
}

/// Loads conversions by status, oldest report first.
pub async fn by_status(
    conn: &mut AnyConnection,
    status: Status,
    limit: i64,
) -> Result<Vec<ConversionRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM conversions WHERE status = $1 ORDER BY reported_at, id LIMIT $2");
    sqlx::query(&sql).bind(status.as_str()).bind(limit).fetch_all(conn).await?.iter().map(from_row).collect()
}

/// A page of the conversions with one of two statuses, oldest report first: those after
/// `after` (`(reported_at, id)` of the previous page's last row), at most `limit`.
pub async fn page_by_status(
    conn: &mut AnyConnection,
    statuses: [Status; 2],
    after: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<ConversionRow>, sqlx::Error> {
    let (after_at, after_id) = after.unwrap_or((i64::MIN, String::new()));
    let sql = format!(
        "SELECT {COLUMNS} FROM conversions WHERE status IN ($1, $2) \
         AND (reported_at > $3 OR (reported_at = $3 AND id > $4)) ORDER BY reported_at, id LIMIT $5"
    );
    let rows = sqlx::query(&sql)
        .bind(statuses[0].as_str())
        .bind(statuses[1].as_str())
        .bind(after_at)
        .bind(after_id)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Finds the user and merchant of a conversion from what is stored (see
/// [`decide::attribute`]): its click, the click's or the assigned user's account, and
/// the network's merchant reference when needed.
pub async fn attribute(
    conn: &mut AnyConnection,
    network: &str,
    click_id: Option<&str>,
    merchant_ref: Option<&str>,
    assigned: Assigned<'_>,
) -> Result<Attribution, sqlx::Error> {
    let mut facts = Facts::default();
    if let Some(id) = click_id
        && let Some(row) = sqlx::query("SELECT user_id, merchant_id, created_at FROM clicks WHERE click_id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
    {
        let click = ClickFact { user_id: row.try_get(0)?, merchant_id: row.try_get(1)?, created_at: row.try_get(2)? };
        facts.clicks.insert(id.to_string(), click);
    }
    let click = click_id.and_then(|id| facts.clicks.get(id)).cloned();
    let user = click.as_ref().map(|c| c.user_id.clone()).or(assigned.user_id.map(str::to_string));
    if let Some(user) = user
        && sqlx::query("SELECT 1 FROM users WHERE id = $1").bind(&user).fetch_optional(&mut *conn).await?.is_some()
    {
        facts.users.insert(user);
    }
    let named = click.as_ref().map_or(assigned.merchant_id.is_some(), |c| c.merchant_id.is_some());
    if let Some(r) = merchant_ref
        && !named
        && let Some(row) =
            sqlx::query("SELECT merchant_id FROM merchant_refs WHERE network_id = $1 AND merchant_ref = $2")
                .bind(network)
                .bind(r)
                .fetch_optional(&mut *conn)
                .await?
    {
        facts.merchant_refs.insert((network.to_string(), r.to_string()), row.try_get(0)?);
    }
    Ok(decide::attribute(&facts, network, click_id, merchant_ref, assigned))
}

/// A merchant's processing mode and default reward delay.
pub async fn merchant_settings(conn: &mut AnyConnection, merchant: &str) -> Result<(String, i64), ApplyError> {
    let row = sqlx::query("SELECT processing_mode, reward_delay_days FROM merchants WHERE id = $1")
        .bind(merchant)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ApplyError::Invalid(format!("merchant {merchant} does not exist")))?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// `column IN (the JSON array of strings bound as $n)` on either backend: one parameter
/// whatever the list's length.
fn in_list(conn: &AnyConnection, column: &str, n: usize) -> String {
    if conn.backend_name() == "PostgreSQL" {
        format!("{column} IN (SELECT jsonb_array_elements_text(${n}::jsonb))")
    } else {
        format!("{column} IN (SELECT value FROM json_each(${n}))")
    }
}

fn json_list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let mut v: Vec<&String> = items.into_iter().collect();
    v.sort();
    v.dedup();
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".into())
}

/// Reads everything `batch` touches, by id lists: at most seven statements (each added to
/// `statements`), however many
/// commands the batch holds. Conversions first (the commands' own, and those parked for
/// the clicks and users it registers); then the fingerprints and adjustment keys; then
/// the clicks and merchant references those conversions and commands name; then the
/// users of all of them.
pub async fn prefetch(
    conn: &mut AnyConnection,
    batch: &[Input<'_>],
    statements: &mut u32,
) -> Result<World, sqlx::Error> {
    let mut w = World::default();
    let (mut ids, mut fps, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    let (mut clicks, mut users, mut refs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut parked_clicks, mut parked_users) = (Vec::new(), Vec::new());
    for input in batch {
        match input.command {
            Command::Event { event, .. } => {
                ids.push(conversion_id(&event.network, &event.transaction_id));
                fps.extend(decide::journal_kind(input.command).1);
                clicks.extend(event.click_id.clone());
                refs.extend(event.merchant_ref.clone());
            }
            Command::Reprocess { conversion_id, assign, .. } => {
                ids.push(conversion_id.clone());
                if let Some(a) = assign {
                    clicks.extend(a.click_id.clone());
                    users.extend(a.user_id.clone());
                }
            }
            Command::Review { conversion_id, .. } | Command::Mature { conversion_id } => {
                ids.push(conversion_id.clone())
            }
            Command::RegisterUser { user_id, .. } => {
                users.push(user_id.clone());
                parked_users.push(user_id.clone());
            }
            Command::RegisterClick { click_id, user_id, create_user, .. } => {
                clicks.push(click_id.clone());
                parked_clicks.push(click_id.clone());
                users.push(user_id.clone());
                if *create_user {
                    parked_users.push(user_id.clone());
                }
            }
            Command::Adjustment { key, .. } => keys.push(format!("adjustment:{key}")),
            Command::PayoutRequest { .. } | Command::PayoutStep { .. } => {}
        }
    }
    let mut loaded = Vec::new();
    if !ids.is_empty() {
        let sql = format!("SELECT {COLUMNS} FROM conversions WHERE {}", in_list(conn, "id", 1));
        loaded
            .extend(sqlx::query(&sql).bind(json_list(&ids)).fetch_all(&mut *conn).await.inspect(|_| *statements += 1)?);
    }
    if !parked_clicks.is_empty() || !parked_users.is_empty() {
        let sql = format!(
            "SELECT {COLUMNS} FROM conversions WHERE status = 'parked' AND ({} OR {})",
            in_list(conn, "click_id", 1),
            in_list(conn, "user_id", 2)
        );
        let q = sqlx::query(&sql).bind(json_list(&parked_clicks)).bind(json_list(&parked_users));
        loaded.extend(q.fetch_all(&mut *conn).await.inspect(|_| *statements += 1)?);
    }
    for row in &loaded {
        let r = from_row(row)?;
        clicks.extend(r.click_id.clone());
        users.extend(r.user_id.clone());
        refs.extend(r.merchant_ref.clone());
        w.conversions.insert(r.id.clone(), r);
    }
    if !fps.is_empty() {
        let sql = format!("SELECT fingerprint FROM journal WHERE {}", in_list(conn, "fingerprint", 1));
        for row in sqlx::query(&sql).bind(json_list(&fps)).fetch_all(&mut *conn).await.inspect(|_| *statements += 1)? {
            w.fingerprints.insert(row.try_get(0)?);
        }
    }
    if !keys.is_empty() {
        let sql =
            format!("SELECT idempotency_key FROM ledger_transactions WHERE {}", in_list(conn, "idempotency_key", 1));
        for row in sqlx::query(&sql).bind(json_list(&keys)).fetch_all(&mut *conn).await.inspect(|_| *statements += 1)? {
            w.posting_keys.insert(row.try_get(0)?);
        }
    }
    if !clicks.is_empty() {
        let sql = format!(
            "SELECT click_id, user_id, merchant_id, created_at FROM clicks WHERE {}",
            in_list(conn, "click_id", 1)
        );
        for row in
            sqlx::query(&sql).bind(json_list(&clicks)).fetch_all(&mut *conn).await.inspect(|_| *statements += 1)?
        {
            let click =
                ClickFact { user_id: row.try_get(1)?, merchant_id: row.try_get(2)?, created_at: row.try_get(3)? };
            users.push(click.user_id.clone());
            w.facts.clicks.insert(row.try_get(0)?, click);
        }
    }
    if !refs.is_empty() {
        let sql = format!(
            "SELECT network_id, merchant_ref, merchant_id FROM merchant_refs WHERE {}",
            in_list(conn, "merchant_ref", 1)
        );
        for row in sqlx::query(&sql).bind(json_list(&refs)).fetch_all(&mut *conn).await.inspect(|_| *statements += 1)? {
            w.facts.merchant_refs.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
        }
    }
    if !users.is_empty() {
        let sql = format!("SELECT id FROM users WHERE {}", in_list(conn, "id", 1));
        for row in
            sqlx::query(&sql).bind(json_list(&users)).fetch_all(&mut *conn).await.inspect(|_| *statements += 1)?
        {
            w.facts.users.insert(row.try_get(0)?);
        }
    }
    Ok(w)
}

/// Another writer got there first: the batch must be rolled back and decided again.
#[derive(Debug)]
struct Lost;

/// The conversions' columns with their types, as [`json_rows`] reads them: the same
/// order as [`COLUMNS`].
const CONVERSION_COLS: [(&str, Ty); 33] = [
    ("id", Ty::Text),
    ("network_id", Ty::Text),
    ("transaction_id", Ty::Text),
    ("click_id", Ty::Text),
    ("user_id", Ty::Text),
    ("merchant_id", Ty::Text),
    ("order_id", Ty::Text),
    ("event_type", Ty::Text),
    ("state", Ty::Text),
    ("status", Ty::Text),
    ("status_reason", Ty::Text),
    ("currency", Ty::Text),
    ("amount", Ty::Int),
    ("commission", Ty::Int),
    ("cashback", Ty::Int),
    ("reward_delay_days", Ty::Int),
    ("posted_pending", Ty::Int),
    ("posted_available", Ty::Int),
    ("posted_receivable", Ty::Int),
    ("line_items", Ty::Text),
    ("decision", Ty::Text),
    ("completed_at", Ty::Int),
    ("matures_at", Ty::Int),
    ("matured_at", Ty::Int),
    ("event_time", Ty::Int),
    ("clicked_at", Ty::Int),
    ("reported_at", Ty::Int),
    ("rule_at", Ty::Int),
    ("ledger_at", Ty::Int),
    ("updated_at", Ty::Int),
    ("version", Ty::Int),
    ("reported_via", Ty::Text),
    ("merchant_ref", Ty::Text),
];

/// A conversion as a row of [`CONVERSION_COLS`], with the version it was decided on.
#[derive(serde::Serialize)]
struct ConversionLine<'a> {
    id: &'a str,
    network_id: &'a str,
    transaction_id: &'a str,
    click_id: Option<&'a str>,
    user_id: Option<&'a str>,
    merchant_id: Option<&'a str>,
    order_id: Option<&'a str>,
    event_type: &'a str,
    state: &'static str,
    status: &'static str,
    status_reason: Option<&'a str>,
    currency: &'a str,
    amount: i64,
    commission: i64,
    cashback: i64,
    reward_delay_days: Option<i64>,
    posted_pending: i64,
    posted_available: i64,
    posted_receivable: i64,
    line_items: &'a str,
    decision: Option<&'a str>,
    completed_at: Option<i64>,
    matures_at: Option<i64>,
    matured_at: Option<i64>,
    event_time: i64,
    clicked_at: Option<i64>,
    reported_at: i64,
    rule_at: Option<i64>,
    ledger_at: Option<i64>,
    updated_at: i64,
    version: i64,
    reported_via: &'a str,
    merchant_ref: Option<&'a str>,
    decided_on: Option<i64>,
}

impl<'a> ConversionLine<'a> {
    fn of(r: &'a ConversionRow, decided_on: Option<i64>) -> Self {
        ConversionLine {
            id: &r.id,
            network_id: &r.network_id,
            transaction_id: &r.transaction_id,
            click_id: r.click_id.as_deref(),
            user_id: r.user_id.as_deref(),
            merchant_id: r.merchant_id.as_deref(),
            order_id: r.order_id.as_deref(),
            event_type: &r.event_type,
            state: r.state.as_str(),
            status: r.status.as_str(),
            status_reason: r.status_reason.as_deref(),
            currency: &r.currency,
            amount: r.amount,
            commission: r.commission,
            cashback: r.cashback,
            reward_delay_days: r.reward_delay_days,
            posted_pending: r.posted.pending,
            posted_available: r.posted.available,
            posted_receivable: r.posted.receivable,
            line_items: &r.line_items,
            decision: r.decision.as_deref(),
            completed_at: r.completed_at,
            matures_at: r.matures_at,
            matured_at: r.matured_at,
            event_time: r.event_time,
            clicked_at: r.clicked_at,
            reported_at: r.reported_at,
            rule_at: r.rule_at,
            ledger_at: r.ledger_at,
            updated_at: r.updated_at,
            version: r.version,
            reported_via: &r.reported_via,
            merchant_ref: r.merchant_ref.as_deref(),
            decided_on,
        }
    }
}

/// Runs a statement over `rows` bound as one JSON parameter; returns the rows it affected
/// and counts it.
async fn run<T: serde::Serialize>(
    conn: &mut AnyConnection,
    sql: &str,
    rows: &[T],
    statements: &mut u32,
) -> Result<u64, sqlx::Error> {
    *statements += 1;
    Ok(sqlx::query(sql).bind(to_json(rows)?).execute(&mut *conn).await?.rows_affected())
}

/// The journal numbers of a batch's new entries, in order: taken from PostgreSQL's
/// sequence (unique across replicas, whatever commits first), or on SQLite after the
/// highest used (the batch holds the write lock since `BEGIN IMMEDIATE`; AUTOINCREMENT
/// never reuses a number, so `sqlite_sequence` counts too).
async fn journal_numbers(conn: &mut AnyConnection, n: usize, statements: &mut u32) -> Result<Vec<i64>, sqlx::Error> {
    *statements += 1;
    match backend(conn) {
        crate::db::Backend::Postgres => {
            let sql = "SELECT nextval(pg_get_serial_sequence('journal', 'seq')) FROM generate_series(1, $1)";
            let mut seqs: Vec<i64> = sqlx::query_scalar(sql).bind(n as i64).fetch_all(&mut *conn).await?;
            seqs.sort_unstable();
            Ok(seqs)
        }
        crate::db::Backend::Sqlite => {
            let sql = "SELECT MAX(COALESCE((SELECT MAX(seq) FROM journal), 0), \
                       COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'journal'), 0))";
            let top: i64 = sqlx::query_scalar(sql).fetch_one(&mut *conn).await?;
            Ok((1..=n as i64).map(|i| top + i).collect())
        }
    }
}

/// Writes what [`decide::decide`] returned, inside the caller's transaction, with one
/// statement per table whatever the batch's size (see the module's documentation; each
/// statement is added to `statements`). `replay` gives, per input, the journal number to
/// write it under (a replay of the journal). `Ok(Err(Lost))`: a write found the state
/// moved since the prefetch; the caller rolls back.
async fn write(
    conn: &mut AnyConnection,
    rows: &Rows,
    replay: &[Option<i64>],
    statements: &mut u32,
    lap: &mut Lap,
) -> Result<Result<(), Lost>, ApplyError> {
    let be = backend(conn);
    // ---- the journal: numbers first, so that every other row can name its entry ----
    let fresh = rows.journal.iter().filter(|j| replay.get(j.input).copied().flatten().is_none()).count();
    let mut numbers = if fresh > 0 { journal_numbers(conn, fresh, statements).await? } else { Vec::new() }.into_iter();
    let mut seqs = Vec::with_capacity(rows.journal.len());
    for j in &rows.journal {
        let seq = match replay.get(j.input).copied().flatten() {
            Some(seq) => seq,
            None => numbers.next().ok_or_else(|| ApplyError::Invalid("journal numbers ran out".into()))?,
        };
        seqs.push(seq);
    }
    if !rows.journal.is_empty() {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            seq: i64,
            kind: &'a str,
            fingerprint: Option<&'a str>,
            payload: &'a str,
            recorded_at: i64,
        }
        let lines: Vec<Line> = rows
            .journal
            .iter()
            .zip(&seqs)
            .map(|(j, seq)| Line {
                seq: *seq,
                kind: j.kind,
                fingerprint: j.fingerprint.as_deref(),
                payload: &j.payload,
                recorded_at: j.at,
            })
            .collect();
        let cols = [
            ("seq", Ty::Int),
            ("kind", Ty::Text),
            ("fingerprint", Ty::Text),
            ("payload", Ty::Text),
            ("recorded_at", Ty::Int),
        ];
        let sql = format!(
            "INSERT INTO journal (seq, kind, fingerprint, payload, recorded_at) \
             SELECT seq, kind, fingerprint, payload, recorded_at FROM {} WHERE true ON CONFLICT DO NOTHING",
            json_rows(be, 1, &cols)
        );
        if run(conn, &sql, &lines, statements).await? != lines.len() as u64 {
            if replay.iter().any(Option::is_some) {
                // A replay names its numbers: one of them is taken.
                return Err(ApplyError::Invalid("a journal entry of the replay exists already".into()));
            }
            // Only a fingerprint can conflict: another replica recorded the same event.
            return Ok(Err(Lost));
        }
    }

    lap.mark("journal");
    // ---- users: one upsert for the profiles that replace, one insert for the others ----
    // A user given twice in one batch is folded into one row: the first creates it, and
    // the last profile that replaces wins.
    #[derive(serde::Serialize)]
    struct User<'a> {
        id: &'a str,
        email: Option<&'a str>,
        name: Option<&'a str>,
        notify: i64,
        source: &'a str,
        created_at: i64,
        updated_at: i64,
    }
    let mut users: Vec<(User, bool)> = Vec::new();
    for u in &rows.users {
        match users.iter_mut().find(|(x, _)| x.id == u.user_id) {
            Some((x, update)) if u.update => {
                (x.email, x.name, x.notify, x.updated_at) =
                    (u.email.as_deref(), u.name.as_deref(), u.notify.into(), u.at);
                *update = true;
            }
            Some(_) => {}
            None => users.push((
                User {
                    id: &u.user_id,
                    email: u.email.as_deref(),
                    name: u.name.as_deref(),
                    notify: u.notify.into(),
                    source: &u.source,
                    created_at: u.at,
                    updated_at: u.at,
                },
                u.update,
            )),
        }
    }
    let user_cols = [
        ("id", Ty::Text),
        ("email", Ty::Text),
        ("name", Ty::Text),
        ("notify", Ty::Int),
        ("source", Ty::Text),
        ("created_at", Ty::Int),
        ("updated_at", Ty::Int),
    ];
    for replace in [false, true] {
        let group: Vec<&User> = users.iter().filter(|(_, u)| *u == replace).map(|(x, _)| x).collect();
        if group.is_empty() {
            continue;
        }
        let on_conflict = if replace {
            "DO UPDATE SET email = excluded.email, name = excluded.name, notify = excluded.notify, \
             updated_at = excluded.updated_at"
        } else {
            "DO NOTHING"
        };
        let sql = format!(
            "INSERT INTO users (id, email, name, notify, source, created_at, updated_at) \
             SELECT id, email, name, notify, source, created_at, updated_at FROM {} WHERE true \
             ON CONFLICT (id) {on_conflict}",
            json_rows(be, 1, &user_cols)
        );
        run(conn, &sql, &group, statements).await?;
    }

    lap.mark("users");
    // ---- clicks, and their CREATED for partners (seed 001) in the same transaction ----
    if !rows.clicks.is_empty() {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            click_id: &'a str,
            user_id: &'a str,
            merchant_id: Option<&'a str>,
            network_id: Option<&'a str>,
            ref_id: Option<&'a str>,
            created_at: i64,
            link_id: Option<&'a str>,
            sub1: Option<&'a str>,
            sub2: Option<&'a str>,
            sub3: Option<&'a str>,
            sub4: Option<&'a str>,
            sub5: Option<&'a str>,
        }
        let lines: Vec<Line> = rows
            .clicks
            .iter()
            .map(|c| {
                let sub = |i: usize| c.subs.get(i).and_then(Option::as_deref);
                Line {
                    click_id: &c.click_id,
                    user_id: &c.user_id,
                    merchant_id: c.merchant_id.as_deref(),
                    network_id: c.network_id.as_deref(),
                    ref_id: c.ref_id.as_deref(),
                    created_at: c.at,
                    link_id: c.link_id.as_deref(),
                    sub1: sub(0),
                    sub2: sub(1),
                    sub3: sub(2),
                    sub4: sub(3),
                    sub5: sub(4),
                }
            })
            .collect();
        let mut cols = vec![
            ("click_id", Ty::Text),
            ("user_id", Ty::Text),
            ("merchant_id", Ty::Text),
            ("network_id", Ty::Text),
            ("ref_id", Ty::Text),
            ("created_at", Ty::Int),
            ("link_id", Ty::Text),
        ];
        cols.extend(["sub1", "sub2", "sub3", "sub4", "sub5"].map(|s| (s, Ty::Text)));
        let names: Vec<&str> = cols.iter().map(|(c, _)| *c).collect();
        let sql = format!(
            "INSERT INTO clicks ({0}) SELECT {0} FROM {1} WHERE true ON CONFLICT (click_id) DO NOTHING",
            names.join(", "),
            json_rows(be, 1, &cols)
        );
        if run(conn, &sql, &lines, statements).await? != lines.len() as u64 {
            // The core saw no such click: another replica registered it since the prefetch.
            return Ok(Err(Lost));
        }
        // ---- issue 13: CREATED on click (seed 001), in the click's own transaction ----
        let clicks: Vec<_> = rows
            .clicks
            .iter()
            .map(|c| {
                let click = crate::outbox::Click {
                    click_id: &c.click_id,
                    user_id: &c.user_id,
                    merchant_id: c.merchant_id.as_deref(),
                    network_id: c.network_id.as_deref(),
                    ref_id: c.ref_id.as_deref(),
                };
                (click, Some(seqs[c.journal]), c.at)
            })
            .collect();
        crate::outbox::enqueue_clicks(conn, &clicks, statements).await?;
    }

    lap.mark("clicks");
    // ---- conversions: the new in one insert, the changed in one update, each checked ----
    // The check is in the statements themselves, so it holds across replicas: an insert
    // that finds the id taken, or an update that finds another version, affects fewer
    // rows than given (on PostgreSQL a concurrent UPDATE waits for the other transaction,
    // then re-reads the row and finds the newer version).
    let names: Vec<&str> = CONVERSION_COLS.iter().map(|(c, _)| *c).collect();
    let mut cols = CONVERSION_COLS.to_vec();
    cols.push(("decided_on", Ty::Int));
    let new: Vec<ConversionLine> =
        rows.conversions.iter().filter(|c| c.decided_on.is_none()).map(|c| ConversionLine::of(&c.row, None)).collect();
    if !new.is_empty() {
        let sql = format!(
            "INSERT INTO conversions ({0}) SELECT {0} FROM {1} WHERE true ON CONFLICT (id) DO NOTHING",
            names.join(", "),
            json_rows(be, 1, &cols)
        );
        if run(conn, &sql, &new, statements).await? != new.len() as u64 {
            return Ok(Err(Lost));
        }
    }
    let changed: Vec<ConversionLine> = rows
        .conversions
        .iter()
        .filter(|c| c.decided_on.is_some())
        .map(|c| ConversionLine::of(&c.row, c.decided_on))
        .collect();
    if !changed.is_empty() {
        let set: Vec<String> = names[1..].iter().map(|c| format!("{c} = v.{c}")).collect();
        let sql = format!(
            "UPDATE conversions SET {} FROM {} WHERE conversions.id = v.id AND conversions.version = v.decided_on",
            set.join(", "),
            json_rows(be, 1, &cols)
        );
        if run(conn, &sql, &changed, statements).await? != changed.len() as u64 {
            return Ok(Err(Lost));
        }
    }

    lap.mark("conversions");
    // ---- the history ----
    if !rows.history.is_empty() {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            conversion_id: &'a str,
            journal_seq: i64,
            at: i64,
            kind: &'a str,
            from_state: Option<&'static str>,
            to_state: Option<&'static str>,
            detail: &'a str,
        }
        let lines: Vec<Line> = rows
            .history
            .iter()
            .map(|h| Line {
                conversion_id: &h.conversion_id,
                journal_seq: h.journal.map_or(0, |j| seqs[j]),
                at: h.at,
                kind: &h.kind,
                from_state: h.from.map(State::as_str),
                to_state: h.to.map(State::as_str),
                detail: &h.detail,
            })
            .collect();
        let cols = [
            ("conversion_id", Ty::Text),
            ("journal_seq", Ty::Int),
            ("at", Ty::Int),
            ("kind", Ty::Text),
            ("from_state", Ty::Text),
            ("to_state", Ty::Text),
            ("detail", Ty::Text),
        ];
        let sql = format!(
            "INSERT INTO conversion_history (conversion_id, journal_seq, at, kind, from_state, to_state, detail) \
             SELECT conversion_id, journal_seq, at, kind, from_state, to_state, detail FROM {}",
            json_rows(be, 1, &cols)
        );
        run(conn, &sql, &lines, statements).await?;
    }

    lap.mark("history");
    // ---- the ledger: every posting of the batch at once ----
    if !rows.postings.is_empty() {
        let postings: Vec<ledger::Posting> = rows.postings.iter().map(|p| p.posting(seqs[p.journal])).collect();
        let posted = ledger::post_batch(conn, &postings, statements).await?;
        for (p, posted) in rows.postings.iter().zip(posted) {
            if !posted && matches!(p.key, decide::PostingKey::Fixed(_)) {
                // The core saw no such key: another replica posted it since the prefetch.
                return Ok(Err(Lost));
            }
        }
    }
    lap.mark("ledger");
    // ---- issue 6: the transactional outbox (partner callbacks, user notifications) ----
    // The core decided which steps are changes for partners; they are recorded in this
    // transaction.
    if !rows.changes.is_empty() {
        let changes: Vec<_> = rows.changes.iter().map(|c| c.change(seqs[c.journal])).collect();
        crate::outbox::enqueue(conn, &changes, statements).await?;
    }
    lap.mark("outbox");
    // ---- end issue 6 ----
    Ok(Ok(()))
}

/// Prefetches, decides and writes one segment of commands (no payouts) in the caller's
/// transaction.
async fn decide_and_write(
    conn: &mut AnyConnection,
    batch: &[Input<'_>],
    replay: &[Option<i64>],
    statements: &mut u32,
    lap: &mut Lap,
) -> Result<Result<Vec<Result<Outcome, ApplyError>>, Lost>, ApplyError> {
    let mut world = prefetch(conn, batch, statements).await?;
    lap.mark("prefetch");
    let (results, rows) = decide::decide(&mut world, batch);
    lap.mark("decide");
    Ok(write(conn, &rows, replay, statements, lap).await?.map(|()| results))
}

/// A payout command: journaled and applied by `payouts::apply`, in a savepoint so that a
/// refusal writes nothing.
async fn apply_payout(
    conn: &mut AnyConnection,
    input: &Input<'_>,
    replay_seq: Option<i64>,
) -> Result<Result<Outcome, ApplyError>, sqlx::Error> {
    let mut sp = Acquire::begin(&mut *conn).await?;
    let result = payout(&mut sp, input, replay_seq).await;
    match &result {
        Ok(_) => sp.commit().await?,
        Err(_) => sp.rollback().await?,
    }
    Ok(result)
}

async fn payout(conn: &mut AnyConnection, input: &Input<'_>, replay_seq: Option<i64>) -> Result<Outcome, ApplyError> {
    let (kind, _) = decide::journal_kind(input.command);
    let payload = serde_json::to_string(input.command).map_err(|e| ApplyError::Invalid(e.to_string()))?;
    let inserted =
        match replay_seq {
            Some(seq) => sqlx::query(
                "INSERT INTO journal (seq, kind, fingerprint, payload, recorded_at) VALUES ($1, $2, NULL, $3, $4) \
             ON CONFLICT DO NOTHING RETURNING seq",
            )
            .bind(seq)
            .bind(kind)
            .bind(&payload)
            .bind(input.at)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| ApplyError::Invalid(format!("journal entry {seq} exists already")))?,
            None => sqlx::query(
                "INSERT INTO journal (kind, fingerprint, payload, recorded_at) VALUES ($1, NULL, $2, $3) RETURNING seq",
            )
            .bind(kind)
            .bind(&payload)
            .bind(input.at)
            .fetch_one(&mut *conn)
            .await?,
        };
    let seq: i64 = inserted.try_get(0)?;
    let at = input.at;
    match input.command {
        Command::PayoutRequest { payout_id, user_id, currency, amount, minimum, request_key, requested_by } => {
            let request = crate::payouts::apply::Request {
                payout_id,
                user_id,
                currency,
                amount: *amount,
                minimum: *minimum,
                request_key,
                requested_by,
            };
            crate::payouts::apply::request(conn, seq, at, request).await.map(payout_outcome).map_err(ApplyError::from)
        }
        Command::PayoutStep { payout_id, action, operator } => {
            crate::payouts::apply::step(conn, seq, at, payout_id, action, operator, input.expected_version)
                .await
                .map(payout_outcome)
                .map_err(ApplyError::from)
        }
        _ => Err(ApplyError::Invalid("not a payout command".into())),
    }
}

fn payout_outcome((payout, changed): crate::payouts::apply::Applied) -> Outcome {
    Outcome::Payout { payout: Box::new(payout), changed }
}

fn is_payout(c: &Command) -> bool {
    matches!(c, Command::PayoutRequest { .. } | Command::PayoutStep { .. })
}

/// Applies a batch inside the caller's transaction: runs of decided commands, and payout
/// commands between them, in order. `Ok(Err(Lost))`: the caller must roll back.
async fn apply_in(
    conn: &mut AnyConnection,
    batch: &[Input<'_>],
    replay: &[Option<i64>],
    statements: &mut u32,
    lap: &mut Lap,
) -> Result<Result<Vec<Result<Outcome, ApplyError>>, Lost>, ApplyError> {
    let mut results = Vec::with_capacity(batch.len());
    let mut start = 0;
    while start < batch.len() {
        if is_payout(batch[start].command) {
            // A payout runs its own statements in its savepoint (not counted: payouts are
            // rare next to events, and `payouts::apply` decides and writes in one).
            results.push(apply_payout(conn, &batch[start], replay.get(start).copied().flatten()).await?);
            start += 1;
            continue;
        }
        let end = batch[start..].iter().position(|i| is_payout(i.command)).map_or(batch.len(), |n| start + n);
        let replayed = replay.get(start..end).unwrap_or_default();
        match decide_and_write(conn, &batch[start..end], replayed, statements, lap).await? {
            Ok(r) => results.extend(r),
            Err(Lost) => return Ok(Err(Lost)),
        }
        start = end;
    }
    Ok(Ok(results))
}

/// Journals one command (deduplicating network events) and applies it, inside the
/// caller's transaction (in a savepoint: it is written whole or not at all).
/// `replay_seq` replays a journal entry under its original number. A lost race is
/// [`ApplyError::Conflict`]: decide again.
pub async fn journal_and_apply(
    conn: &mut AnyConnection,
    command: &Command,
    at: Millis,
    expected_version: Option<i64>,
    replay_seq: Option<i64>,
) -> Result<Outcome, ApplyError> {
    let input = Input { command, at, expected_version };
    let mut sp = Acquire::begin(&mut *conn).await?;
    match apply_in(&mut sp, &[input], &[replay_seq], &mut 0, &mut Lap::off()).await {
        Ok(Ok(mut results)) => {
            sp.commit().await?;
            results.pop().unwrap_or(Err(ApplyError::Conflict))
        }
        Ok(Err(Lost)) => {
            sp.rollback().await?;
            Err(ApplyError::Conflict)
        }
        Err(e) => {
            sp.rollback().await?;
            Err(e)
        }
    }
}

/// How many times a batch that lost a race is decided again before its commands are
/// answered [`ApplyError::Conflict`] (and their callers retry).
const ATTEMPTS: usize = 8;

/// A PostgreSQL deadlock or serialization failure: two replicas' batches waited for each
/// other's rows, and the database rolled one back. Like a lost version check, the batch
/// is decided again.
fn raced(e: &ApplyError) -> bool {
    let db = match e {
        ApplyError::Db(e) | ApplyError::Ledger(ledger::LedgerError::Db(e)) => e,
        _ => return false,
    };
    matches!(db, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01" | "40001")))
}

/// Applies a batch of (command, expected version) in one transaction of `pool`, each
/// command at the clock's time when the batch starts (one reading per command, in order).
/// A batch that loses a race with another writer is rolled back whole and decided again
/// from fresh state. An error: the transaction failed, and nothing of the batch is
/// committed.
pub async fn apply_batch(
    db: &crate::db::Db,
    clock: &dyn Clock,
    jobs: &[(&Command, Option<i64>)],
) -> Result<Vec<Result<Outcome, ApplyError>>, ApplyError> {
    // Round trips of the batch, all attempts: BEGIN, the prefetch and the writes, COMMIT
    // or ROLLBACK (the metrics and the benchmark report them per batch and per command).
    let mut statements = 0u32;
    for attempt in 0..ATTEMPTS {
        let batch: Vec<Input<'_>> = jobs
            .iter()
            .map(|(command, expected_version)| Input { command, at: clock.now(), expected_version: *expected_version })
            .collect();
        // SQLite: take the write lock at BEGIN (waiting up to its busy timeout). The batch
        // reads before it writes, and a read transaction that must then upgrade to a
        // write while another connection wrote meanwhile fails at once ("database is
        // locked") instead of waiting.
        let begin = match db.backend {
            crate::db::Backend::Sqlite => "BEGIN IMMEDIATE",
            crate::db::Backend::Postgres => "BEGIN",
        };
        // This process's writers take SQLite's write lock in turn (`Db::write_turn`).
        let mut lap = Lap::start();
        let _turn = db.write_turn().await;
        lap.mark("turn");
        let mut tx = crate::db::begin_with(&db.pool, begin).await?;
        lap.mark("begin");
        statements += 2;
        match apply_in(&mut tx, &batch, &[], &mut statements, &mut lap).await {
            Ok(Ok(results)) => {
                tx.commit().await?;
                lap.mark("commit");
                crate::metrics::write_batch(jobs.len(), statements, attempt);
                return Ok(results);
            }
            Ok(Err(Lost)) => tx.rollback().await?,
            Err(e) if raced(&e) => tx.rollback().await?,
            Err(e) => return Err(e),
        }
    }
    crate::metrics::write_batch(jobs.len(), statements, ATTEMPTS);
    Ok(jobs.iter().map(|_| Err(ApplyError::Conflict)).collect())
}
