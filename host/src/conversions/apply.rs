//! Applying one [`Command`] inside the caller's database transaction: journal it, change
//! the conversion, record its history, and post to the ledger what its new state and
//! status should have booked minus what was booked already. Posting the difference
//! keeps every step idempotent and makes adjustments, reversals and maturation the same
//! operation.

use super::lifecycle::{Booked, Current, Step, step, target};
use super::{ApplyError, Command, Evaluation, Outcome, ReviewAction, State, Status, conversion_id, fingerprint};
use crate::clock::{DAY_MS, Millis};
use crate::ledger::{self, AccountKind, Entry, PLATFORM, PluginRefs, Posting};
use crate::plugin::wit::latest;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

/// A conversion as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConversionRow {
    /// cashbackd's id.
    pub id: String,
    /// The network.
    pub network_id: String,
    /// The network's transaction id.
    pub transaction_id: String,
    /// The click it came from.
    pub click_id: Option<String>,
    /// The user credited.
    pub user_id: Option<String>,
    /// The merchant whose rules apply.
    pub merchant_id: Option<String>,
    /// The network's merchant reference.
    pub merchant_ref: Option<String>,
    /// The merchant's order id.
    pub order_id: Option<String>,
    /// The event's name.
    pub event_type: String,
    /// Network state.
    pub state: State,
    /// Our status.
    pub status: Status,
    /// Why the status (parked: what is missing; failed: the error; held: the reason).
    pub status_reason: Option<String>,
    /// Currency of every amount.
    pub currency: String,
    /// Order value.
    pub amount: i64,
    /// Commission.
    pub commission: i64,
    /// Cashback the rules decided.
    pub cashback: i64,
    /// Days from completion to availability.
    pub reward_delay_days: Option<i64>,
    /// What the ledger holds for this conversion.
    pub posted: Booked,
    /// Line items, JSON.
    pub line_items: String,
    /// The last rule decision, JSON.
    pub decision: Option<String>,
    /// When COMPLETED arrived.
    pub completed_at: Option<i64>,
    /// When the cashback becomes available.
    pub matures_at: Option<i64>,
    /// When it did.
    pub matured_at: Option<i64>,
    /// When the network says it happened.
    pub event_time: i64,
    /// When the click happened.
    pub clicked_at: Option<i64>,
    /// When the network first told us.
    pub reported_at: i64,
    /// How it first reached us (postback, api_import, file).
    pub reported_via: String,
    /// When the rules last ran.
    pub rule_at: Option<i64>,
    /// When the ledger last moved.
    pub ledger_at: Option<i64>,
    /// Last change.
    pub updated_at: i64,
    /// Bumped on every change (optimistic concurrency).
    pub version: i64,
}

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

/// Writes the conversion as decided on the version it was read at (`r.version - 1`).
/// Returns `false` when another writer got there first: the row was inserted by someone
/// else, or its version moved on. The caller must then roll back and decide again from
/// fresh state; the check is in the statement itself, so it holds across replicas (on
/// PostgreSQL a concurrent UPDATE waits for the other transaction, then re-reads the row
/// and finds the newer version).
async fn save(conn: &mut AnyConnection, r: &ConversionRow, insert: bool) -> Result<bool, sqlx::Error> {
    let sql = if insert {
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
    let query = if insert { query } else { query.bind(r.version - 1) };
    Ok(query.execute(conn).await?.rows_affected() == 1)
}

#[allow(clippy::too_many_arguments)]
async fn history(
    conn: &mut AnyConnection,
    conversion: &str,
    seq: i64,
    at: Millis,
    kind: &str,
    from: Option<State>,
    to: Option<State>,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO conversion_history (conversion_id, journal_seq, at, kind, from_state, to_state, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(conversion)
    .bind(seq)
    .bind(at)
    .bind(kind)
    .bind(from.map(State::as_str))
    .bind(to.map(State::as_str))
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// Who a conversion belongs to, or what is missing to know it (seed 002's "customer
/// not found").
#[derive(Debug, Default)]
pub struct Attribution {
    /// The user.
    pub user_id: Option<String>,
    /// The merchant.
    pub merchant_id: Option<String>,
    /// When the click happened.
    pub clicked_at: Option<i64>,
    /// What is missing, if anything.
    pub missing: Option<String>,
}

/// What an operator assigned to a conversion that no click attributes: used only when the
/// click does not say (a click always wins).
#[derive(Debug, Default, Clone, Copy)]
pub struct Assigned<'a> {
    /// The user.
    pub user_id: Option<&'a str>,
    /// The merchant.
    pub merchant_id: Option<&'a str>,
}

impl<'a> Assigned<'a> {
    /// What a stored conversion carries.
    pub fn of(r: Option<&'a ConversionRow>) -> Assigned<'a> {
        Assigned {
            user_id: r.and_then(|r| r.user_id.as_deref()),
            merchant_id: r.and_then(|r| r.merchant_id.as_deref()),
        }
    }
}

/// Finds the user and merchant of a conversion from its click (and the network's
/// merchant reference when the click names no merchant). Without a click, a user and
/// merchant an operator assigned attribute it.
pub async fn attribute(
    conn: &mut AnyConnection,
    network: &str,
    click_id: Option<&str>,
    merchant_ref: Option<&str>,
    assigned: Assigned<'_>,
) -> Result<Attribution, sqlx::Error> {
    let mut a = Attribution::default();
    let click = match click_id {
        Some(id) => {
            sqlx::query("SELECT user_id, merchant_id, created_at FROM clicks WHERE click_id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?
        }
        None => None,
    };
    // No click, or one nobody recorded: what an operator assigned, if anything. (A click
    // that is known always decides; a conversion not attributed by hand has no user
    // while its click is unknown.)
    let Some(click) = click else {
        match (assigned.user_id, assigned.merchant_id) {
            (Some(user), merchant) => {
                a.user_id = Some(user.to_string());
                a.merchant_id = match merchant {
                    Some(m) => Some(m.to_string()),
                    None => mapped_merchant(conn, network, merchant_ref).await?,
                };
                let known =
                    sqlx::query("SELECT 1 FROM users WHERE id = $1").bind(user).fetch_optional(&mut *conn).await?;
                if known.is_none() {
                    a.missing = Some(format!("customer not found: user {user} has no account yet"));
                } else if a.merchant_id.is_none() {
                    a.missing = Some(unmapped(network, merchant_ref));
                }
            }
            _ => {
                a.missing = Some(match click_id {
                    Some(id) => format!("customer not found: click {id} is unknown"),
                    None => "no click id reported: the conversion cannot be attributed to a user (assign a click, \
                             or a user and a merchant: POST /api/v1/conversions/{id}/attribute)"
                        .into(),
                })
            }
        }
        return Ok(a);
    };
    let user: String = click.try_get(0)?;
    a.merchant_id = click.try_get(1)?;
    a.clicked_at = Some(click.try_get(2)?);
    let known = sqlx::query("SELECT 1 FROM users WHERE id = $1").bind(&user).fetch_optional(&mut *conn).await?;
    a.user_id = Some(user.clone());
    if known.is_none() {
        a.missing = Some(format!("customer not found: user {user} has no account yet"));
        return Ok(a);
    }
    if a.merchant_id.is_none() {
        a.merchant_id = mapped_merchant(conn, network, merchant_ref).await?;
    }
    if a.merchant_id.is_none() {
        a.merchant_id = assigned.merchant_id.map(str::to_string);
    }
    if a.merchant_id.is_none() {
        a.missing = Some(unmapped(network, merchant_ref));
    }
    Ok(a)
}

/// The merchant a network's merchant reference is mapped to.
async fn mapped_merchant(
    conn: &mut AnyConnection,
    network: &str,
    merchant_ref: Option<&str>,
) -> Result<Option<String>, sqlx::Error> {
    let Some(r) = merchant_ref else { return Ok(None) };
    let row = sqlx::query("SELECT merchant_id FROM merchant_refs WHERE network_id = $1 AND merchant_ref = $2")
        .bind(network)
        .bind(r)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|row| row.try_get(0)).transpose()
}

fn unmapped(network: &str, merchant_ref: Option<&str>) -> String {
    match merchant_ref {
        Some(r) => format!("merchant unknown: network {network} merchant ref {r} is not mapped to a merchant"),
        None => format!("merchant unknown: neither the click nor network {network}'s event names a merchant"),
    }
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

/// Writes the command to the journal (deduplicating network events) and applies it.
/// `replay_seq` replays a journal entry under its original number.
pub async fn journal_and_apply(
    conn: &mut AnyConnection,
    command: &Command,
    at: Millis,
    expected_version: Option<i64>,
    replay_seq: Option<i64>,
) -> Result<Outcome, ApplyError> {
    let (kind, fp) = match command {
        Command::Event { event, .. } => ("event", Some(fingerprint(event))),
        Command::RegisterUser { .. } => ("register_user", None),
        Command::RegisterClick { .. } => ("register_click", None),
        Command::Reprocess { .. } => ("reprocess", None),
        Command::Review { .. } => ("review", None),
        Command::Mature { .. } => ("mature", None),
        Command::Adjustment { .. } => ("adjustment", None),
        Command::PayoutRequest { .. } => ("payout_request", None),
        Command::PayoutStep { .. } => ("payout_step", None),
    };
    let payload = serde_json::to_string(command).map_err(|e| ApplyError::Invalid(e.to_string()))?;
    let inserted = match replay_seq {
        Some(seq) => {
            sqlx::query(
                "INSERT INTO journal (seq, kind, fingerprint, payload, recorded_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING RETURNING seq",
            )
            .bind(seq)
            .bind(kind)
            .bind(&fp)
            .bind(&payload)
            .bind(at)
            .fetch_optional(&mut *conn)
            .await?
        }
        None => {
            sqlx::query(
                "INSERT INTO journal (kind, fingerprint, payload, recorded_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING RETURNING seq",
            )
            .bind(kind)
            .bind(&fp)
            .bind(&payload)
            .bind(at)
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    let Some(row) = inserted else {
        // Only a network event has a fingerprint, so only an event can collide.
        let Command::Event { event, .. } = command else {
            return Err(ApplyError::Invalid(format!("journal entry {replay_seq:?} exists already")));
        };
        let id = conversion_id(&event.network, &event.transaction_id);
        if load(conn, &id).await?.is_some() {
            history(
                conn,
                &id,
                0,
                at,
                "duplicate",
                None,
                Some(event.state.into()),
                "the same event was received again: nothing changed",
            )
            .await?;
        }
        return Ok(Outcome::Duplicate { conversion_id: id });
    };
    let seq: i64 = row.try_get(0)?;
    apply(conn, seq, at, command, expected_version).await
}

async fn apply(
    conn: &mut AnyConnection,
    seq: i64,
    at: Millis,
    command: &Command,
    expected_version: Option<i64>,
) -> Result<Outcome, ApplyError> {
    match command {
        Command::Event { event, via, evaluation } => {
            apply_event(conn, seq, at, event, *via, evaluation.as_ref(), expected_version).await
        }
        Command::Reprocess { conversion_id, evaluation, reason, assign } => {
            let mut r = load(conn, conversion_id).await?.ok_or_else(|| unknown(conversion_id))?;
            check_version(Some(&r), expected_version)?;
            if !matches!(r.status, Status::Parked | Status::Failed) {
                return Ok(Outcome::Ignored {
                    conversion_id: r.id,
                    reason: format!("status is {}, not parked or failed", r.status),
                });
            }
            let mut note = reason.clone().unwrap_or_else(|| "processed again".into());
            if let Some(a) = assign {
                if r.status != Status::Parked {
                    return Err(ApplyError::Invalid(format!(
                        "conversion {} is {}: only a parked conversion is attributed by hand",
                        r.id, r.status
                    )));
                }
                // The click decides when there is one; otherwise what the operator named.
                if let Some(click) = &a.click_id {
                    r.click_id = Some(click.clone());
                    r.user_id = None;
                    r.merchant_id = None;
                } else {
                    r.user_id = a.user_id.clone().or(r.user_id.take());
                    r.merchant_id = a.merchant_id.clone().or(r.merchant_id.take());
                }
                let what = [("click", &a.click_id), ("user", &a.user_id), ("merchant", &a.merchant_id)]
                    .iter()
                    .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
                    .collect::<Vec<_>>()
                    .join(", ");
                note = format!("attributed by {} to {what}; {note}", a.operator);
            }
            let plugins = settle(conn, &mut r, true, false, evaluation.as_ref(), at).await?;
            finish(conn, r, seq, at, "reprocess", &note, plugins, None, false).await
        }
        Command::Review { conversion_id, action, operator, reason } => {
            let mut r = load(conn, conversion_id).await?.ok_or_else(|| unknown(conversion_id))?;
            check_version(Some(&r), expected_version)?;
            if !r.status.in_review() {
                return Err(ApplyError::Invalid(format!("conversion {} is {}, not awaiting review", r.id, r.status)));
            }
            r.status = match action {
                ReviewAction::Approve => Status::Processed,
                ReviewAction::Reject => Status::Rejected,
                ReviewAction::Hold => Status::Held,
            };
            r.status_reason = Some(format!("{action:?} by {operator}: {reason}").to_lowercase());
            let note = format!("{} by {operator}: {reason}", format!("{action:?}").to_lowercase());
            let op = Some((operator.clone(), reason.clone()));
            finish(conn, r, seq, at, "review", &note, None, op, false).await
        }
        Command::Mature { conversion_id } => {
            let mut r = load(conn, conversion_id).await?.ok_or_else(|| unknown(conversion_id))?;
            let due = r.state == State::Completed
                && r.status == Status::Processed
                && r.matured_at.is_none()
                && r.matures_at.is_some_and(|m| m <= at);
            if !due {
                return Ok(Outcome::Ignored { conversion_id: r.id, reason: "not due for maturation".into() });
            }
            r.matured_at = Some(at);
            finish(conn, r, seq, at, "matured", "reward delay passed: cashback available", None, None, false).await
        }
        Command::RegisterUser { user_id, email, name, notify, source, update } => {
            let on_conflict = if *update {
                "ON CONFLICT (id) DO UPDATE SET email = $2, name = $4, notify = $5, updated_at = $3"
            } else {
                "ON CONFLICT (id) DO NOTHING"
            };
            let sql = format!(
                "INSERT INTO users (id, email, created_at, name, notify, source, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $3) {on_conflict}"
            );
            sqlx::query(&sql)
                .bind(user_id)
                .bind(email)
                .bind(at)
                .bind(name)
                .bind(i64::from(notify.unwrap_or(true)))
                .bind(source.as_deref().unwrap_or("api"))
                .execute(&mut *conn)
                .await?;
            Ok(Outcome::Registered { unparked: unparked(conn, "user_id", user_id).await? })
        }
        Command::RegisterClick { click_id, user_id, merchant_id, network_id, ref_id, link_id, subs, create_user } => {
            if *create_user {
                // The site passes its own user id on the link (INGEST.md, "who may put
                // which user id on a link"): the account exists from the first click.
                sqlx::query(
                    "INSERT INTO users (id, email, created_at, notify, source, updated_at) \
                     VALUES ($1, NULL, $2, 1, 'click', $2) ON CONFLICT (id) DO NOTHING",
                )
                .bind(user_id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
            }
            let sub = |i: usize| subs.get(i).cloned().flatten();
            let inserted = sqlx::query(
                "INSERT INTO clicks (click_id, user_id, merchant_id, network_id, ref_id, created_at, link_id, \
                 sub1, sub2, sub3, sub4, sub5) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (click_id) DO NOTHING",
            )
            .bind(click_id)
            .bind(user_id)
            .bind(merchant_id)
            .bind(network_id)
            .bind(ref_id)
            .bind(at)
            .bind(link_id)
            .bind(sub(0))
            .bind(sub(1))
            .bind(sub(2))
            .bind(sub(3))
            .bind(sub(4))
            .execute(&mut *conn)
            .await?
            .rows_affected();
            // ---- issue 13: CREATED on click (seed 001), in the click's own transaction ----
            if inserted == 1 {
                let (merchant_id, network_id, ref_id) =
                    (merchant_id.as_deref(), network_id.as_deref(), ref_id.as_deref());
                let click = crate::callbacks::outbox::Click { click_id, user_id, merchant_id, network_id, ref_id };
                crate::callbacks::outbox::enqueue_click(conn, &click, Some(seq), at).await?;
            }
            // ---- end issue 13 ----
            // Parked for this click, or (when the click created the account) for its user:
            // one statement on every click.
            let sql = if *create_user {
                "SELECT id FROM conversions WHERE status = 'parked' AND (click_id = $1 OR user_id = $2) ORDER BY reported_at"
            } else {
                "SELECT id FROM conversions WHERE status = 'parked' AND click_id = $1 AND $2 = $2 ORDER BY reported_at"
            };
            let rows = sqlx::query(sql).bind(click_id).bind(user_id).fetch_all(&mut *conn).await?;
            let ids = rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<String>, _>>()?;
            Ok(Outcome::Registered { unparked: ids })
        }
        Command::Adjustment { key, user_id, currency, amount, operator, reason } => {
            let posting = Posting {
                key: format!("adjustment:{key}"),
                conversion_id: None,
                journal_seq: Some(seq),
                cause: "manual_adjustment".into(),
                operator: Some(operator.clone()),
                reason: Some(reason.clone()),
                plugins: None,
                currency: currency.clone(),
                entries: vec![
                    Entry { owner: user_id.clone(), kind: AccountKind::Available, amount: *amount },
                    Entry { owner: PLATFORM.into(), kind: AccountKind::CashbackExpense, amount: -amount },
                ],
                at,
            };
            let posted = ledger::post(conn, &posting).await?;
            Ok(Outcome::Adjusted { key: key.clone(), posted })
        }
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
            crate::payouts::apply::request(conn, seq, at, request).await
        }
        Command::PayoutStep { payout_id, action, operator } => {
            crate::payouts::apply::step(conn, seq, at, payout_id, action, operator, expected_version).await
        }
    }
}

fn unknown(id: &str) -> ApplyError {
    ApplyError::Invalid(format!("conversion {id} does not exist"))
}

fn check_version(row: Option<&ConversionRow>, expected: Option<i64>) -> Result<(), ApplyError> {
    match expected {
        Some(v) if row.map_or(-1, |r| r.version) != v => Err(ApplyError::Conflict),
        _ => Ok(()),
    }
}

/// Parked conversions whose `column` is `value`: they may be processed now.
async fn unparked(conn: &mut AnyConnection, column: &str, value: &str) -> Result<Vec<String>, ApplyError> {
    let sql = format!("SELECT id FROM conversions WHERE status = 'parked' AND {column} = $1 ORDER BY reported_at");
    let rows = sqlx::query(&sql).bind(value).fetch_all(conn).await?;
    Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<String>, _>>()?)
}

async fn apply_event(
    conn: &mut AnyConnection,
    seq: i64,
    at: Millis,
    event: &latest::ConversionEvent,
    via: super::Via,
    evaluation: Option<&Evaluation>,
    expected_version: Option<i64>,
) -> Result<Outcome, ApplyError> {
    let id = conversion_id(&event.network, &event.transaction_id);
    let existing = load(conn, &id).await?;
    check_version(existing.as_ref(), expected_version)?;
    if let Some(r) = &existing
        && r.currency != event.currency
    {
        return Err(ApplyError::Invalid(format!(
            "conversion {id} is in {}, the event in {}: a currency never changes",
            r.currency, event.currency
        )));
    }
    let reported: State = event.state.into();
    let current = existing.as_ref().map(|r| Current {
        state: r.state,
        status: r.status,
        amount: r.amount,
        commission: r.commission,
    });
    let (to, evaluate, note) = match step(current.as_ref(), reported, event.amount, event.commission) {
        Step::Ignore(reason) => {
            history(conn, &id, seq, at, "ignored", current.map(|c| c.state), Some(reported), &reason).await?;
            return Ok(Outcome::Ignored { conversion_id: id, reason });
        }
        Step::Advance { to, evaluate, note } => (to, evaluate, note),
    };
    let insert = existing.is_none();
    let was_credited = existing.as_ref().is_some_and(|r| r.status == Status::Processed && r.state != State::Created);
    let mut r = existing.unwrap_or_else(|| ConversionRow {
        id: id.clone(),
        network_id: event.network.clone(),
        transaction_id: event.transaction_id.clone(),
        click_id: None,
        user_id: None,
        merchant_id: None,
        merchant_ref: None,
        order_id: None,
        event_type: event.event_type.clone(),
        state: to,
        status: Status::Parked,
        status_reason: None,
        currency: event.currency.clone(),
        amount: 0,
        commission: 0,
        cashback: 0,
        reward_delay_days: None,
        posted: Booked::default(),
        line_items: "[]".into(),
        decision: None,
        completed_at: None,
        matures_at: None,
        matured_at: None,
        event_time: event.event_time,
        clicked_at: None,
        reported_at: at,
        reported_via: via.as_str().to_string(),
        rule_at: None,
        ledger_at: None,
        updated_at: at,
        version: 0,
    });
    let from = if insert { None } else { Some(r.state) };
    r.state = to;
    r.amount = event.amount;
    r.commission = event.commission;
    r.event_type = event.event_type.clone();
    r.event_time = event.event_time;
    r.line_items = serde_json::to_string(&event.line_items).unwrap_or_else(|_| "[]".into());
    r.click_id = event.click_id.clone().or(r.click_id);
    r.order_id = event.order_id.clone().or(r.order_id);
    r.merchant_ref = event.merchant_ref.clone().or(r.merchant_ref.take());
    let plugins = settle(conn, &mut r, evaluate, was_credited, evaluation, at).await?;
    if to == State::Completed && r.completed_at.is_none() {
        r.completed_at = Some(at);
    }
    let cause = to.as_str().to_lowercase();
    let mut detail = match from {
        Some(from) => format!("{from} -> {to}: {note}"),
        None => format!("reported {reported} -> {to}: {note}"),
    };
    if let Some(why) = &event.reason {
        detail = format!("{detail} (network: {why})");
    }
    finish(conn, r, seq, at, &cause, &detail, plugins, None, insert).await
}

/// Decides the status (and cashback) of a conversion whose state just moved, or that is
/// processed again. Returns the plugins that computed the amount.
async fn settle(
    conn: &mut AnyConnection,
    r: &mut ConversionRow,
    evaluate: bool,
    was_credited: bool,
    evaluation: Option<&Evaluation>,
    at: Millis,
) -> Result<Option<PluginRefs>, ApplyError> {
    match r.state {
        State::Rejected => {
            r.status = Status::Rejected;
            r.status_reason = Some("declined by the network".into());
            return Ok(None);
        }
        State::Reversed => {
            r.status = Status::Reversed;
            r.status_reason = Some("refunded after completion".into());
            return Ok(None);
        }
        State::Created => {
            r.status = Status::Processed;
            return Ok(None);
        }
        State::Pending | State::Adjusted | State::Completed => {}
    }
    if let Some(Evaluation::Decided { inputs: Some(inputs), .. }) = evaluation
        && (r.user_id.is_none() || r.merchant_id.is_none() || r.status == Status::Parked)
    {
        // The service attributed the conversion (same click, same tables; clicks and
        // users are only ever added) before it ran the rules on exactly this order:
        // reuse that instead of three more queries inside the single writer.
        r.user_id = inputs.order.user_id.clone().or(r.user_id.take());
        r.merchant_id = Some(inputs.order.merchant.clone());
        r.clicked_at = inputs.order.click_time.or(r.clicked_at);
        if r.status == Status::Parked {
            r.status_reason = None;
        }
    } else if r.user_id.is_none() || r.merchant_id.is_none() || r.status == Status::Parked {
        let assigned = Assigned { user_id: r.user_id.as_deref(), merchant_id: r.merchant_id.as_deref() };
        let a = attribute(conn, &r.network_id, r.click_id.as_deref(), r.merchant_ref.as_deref(), assigned).await?;
        r.user_id = a.user_id.or(r.user_id.take());
        r.merchant_id = a.merchant_id.or(r.merchant_id.take());
        r.clicked_at = a.clicked_at.or(r.clicked_at);
        if let Some(missing) = a.missing {
            r.status = Status::Parked;
            r.status_reason = Some(missing);
            return Ok(None);
        }
        if r.status == Status::Parked {
            r.status_reason = None;
        }
    }
    let must_evaluate = evaluate || matches!(r.status, Status::Parked | Status::Failed) && !was_credited;
    if !must_evaluate {
        return Ok(None);
    }
    match evaluation {
        None => Err(ApplyError::NeedsEvaluation),
        Some(Evaluation::Failed { error, plugins }) => {
            r.status = Status::Failed;
            r.status_reason = Some(error.clone());
            Ok(Some(plugins.clone()))
        }
        Some(Evaluation::Decided {
            cashback,
            hold,
            reward_delay_days,
            manual_review,
            default_delay_days,
            plugins,
            decision,
            inputs,
        }) => {
            r.cashback = *cashback;
            r.decision =
                Some(serde_json::json!({ "plugins": plugins, "decision": decision, "inputs": inputs }).to_string());
            r.rule_at = Some(at);
            r.reward_delay_days = Some(reward_delay_days.map_or(*default_delay_days, i64::from));
            // Review is about the first credit: once an operator (or automatic mode) has
            // credited a conversion, later adjustments follow the network.
            (r.status, r.status_reason) = if was_credited {
                (Status::Processed, None)
            } else if r.status.in_review() && !matches!(r.status, Status::Parked | Status::Failed) {
                (r.status, r.status_reason.take())
            } else if *manual_review {
                (Status::PendingReview, Some("merchant processes orders manually".into()))
            } else if let Some(why) = hold {
                (Status::Held, Some(format!("held by the rules: {why}")))
            } else {
                (Status::Processed, None)
            };
            Ok(Some(plugins.clone()))
        }
    }
}

/// Saves the conversion, records its history and posts what its bookings changed by.
#[allow(clippy::too_many_arguments)]
async fn finish(
    conn: &mut AnyConnection,
    mut r: ConversionRow,
    seq: i64,
    at: Millis,
    cause: &str,
    note: &str,
    plugins: Option<PluginRefs>,
    operator: Option<(String, String)>,
    insert: bool,
) -> Result<Outcome, ApplyError> {
    if r.state == State::Completed && r.matures_at.is_none() {
        let completed = r.completed_at.unwrap_or(at);
        r.matures_at = Some(completed + r.reward_delay_days.unwrap_or(0) * DAY_MS);
    }
    // A failed evaluation leaves the bookings as they were until it is reprocessed.
    if r.status != Status::Failed {
        let t = target(r.state, r.status, r.cashback, r.commission, r.matured_at.is_some());
        let delta = Booked {
            pending: t.pending - r.posted.pending,
            available: t.available - r.posted.available,
            receivable: t.receivable - r.posted.receivable,
        };
        if delta != Booked::default() {
            let user = r.user_id.clone().unwrap_or_else(|| "unattributed".into());
            let (op, reason) = operator.clone().unzip();
            let posting = Posting {
                key: format!("{}:{seq}:{cause}", r.id),
                conversion_id: Some(r.id.clone()),
                journal_seq: Some(seq),
                cause: cause.to_string(),
                operator: op,
                reason: reason.or_else(|| Some(note.to_string())),
                plugins: plugins.clone().or_else(|| plugins_of(&r)),
                currency: r.currency.clone(),
                entries: ledger::booking_entries(&user, delta),
                at,
            };
            ledger::post(conn, &posting).await?;
            r.posted = t;
            r.ledger_at = Some(at);
        }
    }
    r.updated_at = at;
    r.version += 1;
    // ---- issue 6: the transactional outbox (partner callbacks, user notifications) ----
    // Written in this transaction, before the row is saved: the change is recorded only
    // if the state, status, cashback or amount differ from the stored row.
    let change = crate::callbacks::outbox::Change::of(&r, Some(seq), at, note);
    crate::callbacks::outbox::enqueue_if_changed(conn, &change).await?;
    // ---- end issue 6 ----
    let detail = match &r.status_reason {
        Some(why) => format!("{note}; status {} ({why})", r.status),
        None => format!("{note}; status {}", r.status),
    };
    history(conn, &r.id, seq, at, cause, None, Some(r.state), &detail).await?;
    if !save(conn, &r, insert).await? {
        // Lost the race to another writer (another replica): everything this command
        // wrote is rolled back with its savepoint, and the service decides again.
        return Err(ApplyError::Conflict);
    }
    Ok(Outcome::Applied {
        conversion_id: r.id,
        created: insert,
        state: r.state,
        status: r.status,
        note: note.to_string(),
    })
}

/// The plugins recorded in a conversion's last decision, so that a later posting of the
/// same amount (maturation, approval) still names who computed it.
fn plugins_of(r: &ConversionRow) -> Option<PluginRefs> {
    let decision: serde_json::Value = serde_json::from_str(r.decision.as_deref()?).ok()?;
    serde_json::from_value(decision.get("plugins")?.clone()).ok()
}
