//! The store side of the write path: per batch, prefetch what the commands touch (by id
//! lists, a bounded number of statements whatever the batch's size), let the pure core
//! (`decide.rs`) decide everything in memory, then write the rows it returns inside the
//! caller's transaction. Every conversion is written only if it is still at the version
//! it was decided on; a batch that loses that race (or any other: a fingerprint, a click
//! or an adjustment key written meanwhile by another replica) is rolled back whole and
//! decided again from fresh state ([`apply_batch`]), never half-applied.
//!
//! The history is written in one multi-row statement per batch; the other tables still
//! get one statement per row (one multi-row statement per table is the next step, issue
//! 14 point 2). Payout commands are applied by `payouts::apply` between the decided
//! segments of a batch, in their own savepoint.

use super::decide::{self, ClickFact, Facts, Input, Rows, World};
pub use super::decide::{Assigned, Attribution, ConversionRow};
use super::lifecycle::Booked;
use super::{ApplyError, Command, Outcome, State, Status, conversion_id};
use crate::clock::{Clock, Millis};
use crate::ledger;
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

/// Loads conversions by status, oldest report first.
pub async fn by_status(
    conn: &mut AnyConnection,
    status: Status,
    limit: i64,
) -> Result<Vec<ConversionRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM conversions WHERE status = $1 ORDER BY reported_at, id LIMIT $2");
    sqlx::query(&sql).bind(status.as_str()).bind(limit).fetch_all(conn).await?.iter().map(from_row).collect()
}

/// Writes the conversion as decided on the stored version `decided_on` (none: it did
/// not exist). Returns `false` when another writer got there first: the row was inserted
/// by someone else, or its version moved on. The caller must then roll back and decide
/// again from fresh state; the check is in the statement itself, so it holds across
/// replicas (on PostgreSQL a concurrent UPDATE waits for the other transaction, then
/// re-reads the row and finds the newer version).
async fn save(conn: &mut AnyConnection, r: &ConversionRow, decided_on: Option<i64>) -> Result<bool, sqlx::Error> {
    let sql = if decided_on.is_none() {
        format!(
            "INSERT INTO conversions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
             $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33) \
             ON CONFLICT (id) DO NOTHING"
        )
    } else {
        // Same parameter order; `id` stays $1 and is the key, $34 the version decided on.
        "UPDATE conversions SET network_id = $2, transaction_id = $3, click_id = $4, user_id = $5, merchant_id = $6, \
         order_id = $7, event_type = $8, state = $9, status = $10, status_reason = $11, currency = $12, amount = $13, \
         commission = $14, cashback = $15, reward_delay_days = $16, posted_pending = $17, posted_available = $18, \
         posted_receivable = $19, line_items = $20, decision = $21, completed_at = $22, matures_at = $23, \
         matured_at = $24, event_time = $25, clicked_at = $26, reported_at = $27, rule_at = $28, ledger_at = $29, \
         updated_at = $30, version = $31, reported_via = $32, merchant_ref = $33 WHERE id = $1 AND version = $34"
            .to_string()
    };
    let query = sqlx::query(&sql)
        .bind(&r.id)
        .bind(&r.network_id)
        .bind(&r.transaction_id)
        .bind(&r.click_id)
        .bind(&r.user_id)
        .bind(&r.merchant_id)
        .bind(&r.order_id)
        .bind(&r.event_type)
        .bind(r.state.as_str())
        .bind(r.status.as_str())
        .bind(&r.status_reason)
        .bind(&r.currency)
        .bind(r.amount)
        .bind(r.commission)
        .bind(r.cashback)
        .bind(r.reward_delay_days)
        .bind(r.posted.pending)
        .bind(r.posted.available)
        .bind(r.posted.receivable)
        .bind(&r.line_items)
        .bind(&r.decision)
        .bind(r.completed_at)
        .bind(r.matures_at)
        .bind(r.matured_at)
        .bind(r.event_time)
        .bind(r.clicked_at)
        .bind(r.reported_at)
        .bind(r.rule_at)
        .bind(r.ledger_at)
        .bind(r.updated_at)
        .bind(r.version)
        .bind(&r.reported_via)
        .bind(&r.merchant_ref);
    // Both drivers check the parameter count: the insert does not reference $34.
    let query = match decided_on {
        None => query,
        Some(v) => query.bind(v),
    };
    Ok(query.execute(conn).await?.rows_affected() == 1)
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

/// Reads everything `batch` touches, by id lists: at most seven statements, however many
/// commands the batch holds. Conversions first (the commands' own, and those parked for
/// the clicks and users it registers); then the fingerprints and adjustment keys; then
/// the clicks and merchant references those conversions and commands name; then the
/// users of all of them.
pub async fn prefetch(conn: &mut AnyConnection, batch: &[Input<'_>]) -> Result<World, sqlx::Error> {
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
        loaded.extend(sqlx::query(&sql).bind(json_list(&ids)).fetch_all(&mut *conn).await?);
    }
    if !parked_clicks.is_empty() || !parked_users.is_empty() {
        let sql = format!(
            "SELECT {COLUMNS} FROM conversions WHERE status = 'parked' AND ({} OR {})",
            in_list(conn, "click_id", 1),
            in_list(conn, "user_id", 2)
        );
        let q = sqlx::query(&sql).bind(json_list(&parked_clicks)).bind(json_list(&parked_users));
        loaded.extend(q.fetch_all(&mut *conn).await?);
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
        for row in sqlx::query(&sql).bind(json_list(&fps)).fetch_all(&mut *conn).await? {
            w.fingerprints.insert(row.try_get(0)?);
        }
    }
    if !keys.is_empty() {
        let sql =
            format!("SELECT idempotency_key FROM ledger_transactions WHERE {}", in_list(conn, "idempotency_key", 1));
        for row in sqlx::query(&sql).bind(json_list(&keys)).fetch_all(&mut *conn).await? {
            w.posting_keys.insert(row.try_get(0)?);
        }
    }
    if !clicks.is_empty() {
        let sql = format!(
            "SELECT click_id, user_id, merchant_id, created_at FROM clicks WHERE {}",
            in_list(conn, "click_id", 1)
        );
        for row in sqlx::query(&sql).bind(json_list(&clicks)).fetch_all(&mut *conn).await? {
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
        for row in sqlx::query(&sql).bind(json_list(&refs)).fetch_all(&mut *conn).await? {
            w.facts.merchant_refs.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
        }
    }
    if !users.is_empty() {
        let sql = format!("SELECT id FROM users WHERE {}", in_list(conn, "id", 1));
        for row in sqlx::query(&sql).bind(json_list(&users)).fetch_all(&mut *conn).await? {
            w.facts.users.insert(row.try_get(0)?);
        }
    }
    Ok(w)
}

/// `($1, ..., $width), ($width+1, ...)`: `rows` rows of `width` parameters.
fn placeholders(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|i| format!("({})", (1..=width).map(|c| format!("${}", i * width + c)).collect::<Vec<_>>().join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Another writer got there first: the batch must be rolled back and decided again.
#[derive(Debug)]
struct Lost;

/// Writes what [`decide::decide`] returned, inside the caller's transaction. `replay`
/// gives, per input, the journal number to write it under (a replay of the journal).
/// `Ok(Err(Lost))`: a write found the state moved since the prefetch; the caller rolls
/// back.
async fn write(conn: &mut AnyConnection, rows: &Rows, replay: &[Option<i64>]) -> Result<Result<(), Lost>, ApplyError> {
    let mut seqs = Vec::with_capacity(rows.journal.len());
    for j in &rows.journal {
        let inserted =
            match replay.get(j.input).copied().flatten() {
                Some(seq) => sqlx::query(
                    "INSERT INTO journal (seq, kind, fingerprint, payload, recorded_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT DO NOTHING RETURNING seq",
                )
                .bind(seq)
                .bind(j.kind)
                .bind(&j.fingerprint)
                .bind(&j.payload)
                .bind(j.at)
                .fetch_optional(&mut *conn)
                .await?,
                None => {
                    sqlx::query(
                        "INSERT INTO journal (kind, fingerprint, payload, recorded_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING RETURNING seq",
                    )
                    .bind(j.kind)
                    .bind(&j.fingerprint)
                    .bind(&j.payload)
                    .bind(j.at)
                    .fetch_optional(&mut *conn)
                    .await?
                }
            };
        let Some(row) = inserted else {
            if j.fingerprint.is_none() {
                // Only a replay names its number, and only an event has a fingerprint.
                return Err(ApplyError::Invalid(format!("journal entry {:?} exists already", replay.get(j.input))));
            }
            return Ok(Err(Lost));
        };
        seqs.push(row.try_get::<i64, _>(0)?);
    }
    for u in &rows.users {
        let on_conflict = if u.update {
            "ON CONFLICT (id) DO UPDATE SET email = $2, name = $4, notify = $5, updated_at = $3"
        } else {
            "ON CONFLICT (id) DO NOTHING"
        };
        let sql = format!(
            "INSERT INTO users (id, email, created_at, name, notify, source, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $3) {on_conflict}"
        );
        sqlx::query(&sql)
            .bind(&u.user_id)
            .bind(&u.email)
            .bind(u.at)
            .bind(&u.name)
            .bind(i64::from(u.notify))
            .bind(&u.source)
            .execute(&mut *conn)
            .await?;
    }
    for c in &rows.clicks {
        let sub = |i: usize| c.subs.get(i).cloned().flatten();
        let inserted = sqlx::query(
            "INSERT INTO clicks (click_id, user_id, merchant_id, network_id, ref_id, created_at, link_id, \
             sub1, sub2, sub3, sub4, sub5) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (click_id) DO NOTHING",
        )
        .bind(&c.click_id)
        .bind(&c.user_id)
        .bind(&c.merchant_id)
        .bind(&c.network_id)
        .bind(&c.ref_id)
        .bind(c.at)
        .bind(&c.link_id)
        .bind(sub(0))
        .bind(sub(1))
        .bind(sub(2))
        .bind(sub(3))
        .bind(sub(4))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted != 1 {
            return Ok(Err(Lost));
        }
        // ---- issue 13: CREATED on click (seed 001), in the click's own transaction ----
        let click = crate::outbox::Click {
            click_id: &c.click_id,
            user_id: &c.user_id,
            merchant_id: c.merchant_id.as_deref(),
            network_id: c.network_id.as_deref(),
            ref_id: c.ref_id.as_deref(),
        };
        crate::outbox::enqueue_click(conn, &click, Some(seqs[c.journal]), c.at).await?;
    }
    for c in &rows.conversions {
        if !save(conn, &c.row, c.decided_on).await? {
            return Ok(Err(Lost));
        }
    }
    // The history in one statement per 1,000 lines (7 parameters each: far below either
    // backend's limit).
    for chunk in rows.history.chunks(1_000) {
        let sql = format!(
            "INSERT INTO conversion_history (conversion_id, journal_seq, at, kind, from_state, to_state, detail) \
             VALUES {}",
            placeholders(chunk.len(), 7)
        );
        let mut q = sqlx::query(&sql);
        for h in chunk {
            q = q
                .bind(&h.conversion_id)
                .bind(h.journal.map_or(0, |j| seqs[j]))
                .bind(h.at)
                .bind(&h.kind)
                .bind(h.from.map(State::as_str))
                .bind(h.to.map(State::as_str))
                .bind(&h.detail);
        }
        q.execute(&mut *conn).await?;
    }
    for p in &rows.postings {
        let posted = ledger::post(conn, &p.posting(seqs[p.journal])).await?;
        if !posted && matches!(p.key, decide::PostingKey::Fixed(_)) {
            // The core saw no such key: another replica posted it since the prefetch.
            return Ok(Err(Lost));
        }
    }
    // ---- issue 6: the transactional outbox (partner callbacks, user notifications) ----
    // The core decided which steps are changes for partners; they are recorded in this
    // transaction.
    let changes: Vec<_> = rows.changes.iter().map(|c| c.change(seqs[c.journal])).collect();
    crate::outbox::enqueue(conn, &changes).await?;
    // ---- end issue 6 ----
    Ok(Ok(()))
}

/// Prefetches, decides and writes one segment of commands (no payouts) in the caller's
/// transaction.
async fn decide_and_write(
    conn: &mut AnyConnection,
    batch: &[Input<'_>],
    replay: &[Option<i64>],
) -> Result<Result<Vec<Result<Outcome, ApplyError>>, Lost>, ApplyError> {
    let mut world = prefetch(conn, batch).await?;
    let (results, rows) = decide::decide(&mut world, batch);
    Ok(write(conn, &rows, replay).await?.map(|()| results))
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
) -> Result<Result<Vec<Result<Outcome, ApplyError>>, Lost>, ApplyError> {
    let mut results = Vec::with_capacity(batch.len());
    let mut start = 0;
    while start < batch.len() {
        if is_payout(batch[start].command) {
            results.push(apply_payout(conn, &batch[start], replay.get(start).copied().flatten()).await?);
            start += 1;
            continue;
        }
        let end = batch[start..].iter().position(|i| is_payout(i.command)).map_or(batch.len(), |n| start + n);
        match decide_and_write(conn, &batch[start..end], replay.get(start..end).unwrap_or_default()).await? {
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
    match apply_in(&mut sp, &[input], &[replay_seq]).await {
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
    for _ in 0..ATTEMPTS {
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
        let mut tx = db.pool.begin_with(begin).await?;
        match apply_in(&mut tx, &batch, &[]).await {
            Ok(Ok(results)) => {
                tx.commit().await?;
                return Ok(results);
            }
            Ok(Err(Lost)) => tx.rollback().await?,
            Err(e) if raced(&e) => tx.rollback().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(jobs.iter().map(|_| Err(ApplyError::Conflict)).collect())
}
