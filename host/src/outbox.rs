//! The transactional outbox. Whoever changes a conversion calls [`enqueue`] on the
//! connection of the very transaction that saves the change: the change row, and one delivery row per
//! callback endpoint, commit or roll back with it. A crash can therefore neither lose a
//! callback (the change committed, so did its deliveries) nor invent one (the change
//! rolled back, so did they). The delivery worker and the notification batches read
//! from here; nothing is sent from inside the transaction.
//!
//! It sits below its writers (the conversions' write path, payouts) and its readers (the
//! delivery worker, the notifications), and knows none of them: a conversion's change is
//! made from its row by the write path (`conversions::decide`).
//!
//! Which steps are changes is decided by the conversions' pure core
//! (`conversions::decide::partner_visible`): the conversion's state, status, cashback or
//! order amount differs from what it was; every state is sent (seed 001: callbacks are
//! stateful), and so is a review decision that changes what the user gets. A maturation
//! or a history-only step is not a change for partners.
//!
//! Payouts use the same outbox ([`enqueue_payout`]): every step of a payout is a change
//! (`subject` `payout`, the payout's id and version in place of the conversion's), sent
//! to the endpoints that take payout events and, once paid or failed, told in the user's
//! digest.

use crate::states::{PayoutStatus, State, Status};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};

/// What a change is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A conversion changed.
    #[default]
    Conversion,
    /// A user clicked a tracked link: the click's CREATED. There is no conversion (nor
    /// order, amount or cashback) yet.
    Click,
}

impl ChangeKind {
    /// Its name (`conversion_changes.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Conversion => "conversion",
            ChangeKind::Click => "click",
        }
    }
}

/// The outbox key of a click's change, in place of a conversion id: it orders the click's
/// deliveries and makes its CREATED unique. The SQL of [`fan_out`] builds the same key.
pub fn click_key(click_id: &str) -> String {
    format!("click:{click_id}")
}

/// The values a callback or a digest shows, as they were at the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// A conversion's change or a click's (snapshots written before clicks had changes
    /// have none: conversions).
    #[serde(default)]
    pub kind: ChangeKind,
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
    /// The CREATED of a click, as it is recorded: no conversion, order or amounts yet.
    pub fn of_click(click: &Click<'_>, journal_seq: Option<i64>, at: i64) -> Change {
        Change {
            conversion_id: click_key(click.click_id),
            // A click is created once: its CREATED is the only change under its key.
            version: 1,
            journal_seq,
            at,
            snapshot: Snapshot {
                kind: ChangeKind::Click,
                state: State::Created,
                // What a network's CREATED gets too; callbacks show no status for a click.
                status: Status::Processed,
                network_id: click.network_id.unwrap_or_default().to_string(),
                transaction_id: String::new(),
                click_id: Some(click.click_id.to_string()),
                user_id: Some(click.user_id.to_string()),
                merchant_id: click.merchant_id.map(str::to_string),
                merchant_ref: None,
                order_id: None,
                event_type: CLICK_EVENT.to_string(),
                reason: None,
                currency: String::new(),
                amount: 0,
                commission: 0,
                cashback: 0,
                reward_delay_days: None,
                line_ids: Vec::new(),
            },
        }
    }

    /// What the user's digest says about this change, if anything: parked and failed
    /// conversions are not the user's news yet (they will be once processed), and a
    /// click never is (digests are about cashback).
    pub fn notify_kind(&self) -> Option<&'static str> {
        let s = &self.snapshot;
        s.user_id.as_ref()?;
        if s.kind == ChangeKind::Click {
            return None;
        }
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

/// The event name (`{event}`, `[%CASHBACK:EVENT:NAME%]`) of a click's CREATED: how a
/// partner tells it from a network's CREATED of a conversion (`sale`...).
pub const CLICK_EVENT: &str = "click";

/// A click, as [`enqueue_click`] records it.
#[derive(Debug, Clone, Copy)]
pub struct Click<'a> {
    /// The click id.
    pub click_id: &'a str,
    /// Who clicked.
    pub user_id: &'a str,
    /// The link's merchant.
    pub merchant_id: Option<&'a str>,
    /// The link's network.
    pub network_id: Option<&'a str>,
    /// The partner's reference on the click (for endpoints that require one).
    pub ref_id: Option<&'a str>,
}

/// Records new clicks' CREATED (seed 001), with one delivery per callback endpoint that
/// takes each, on `conn`: call it inside the transaction that inserts the click rows, and
/// only for clicks that insert created, so that a click registered again sends nothing.
/// (A second call for the same click records nothing either: its key is taken.) When no
/// endpoint takes a click, nothing of it is kept: clicks are many, and a change without
/// deliveries would only fill the table (digests never mention clicks). See [`enqueue`]
/// for the statements. Returns the clicks' changes recorded.
pub async fn enqueue_clicks(
    conn: &mut AnyConnection,
    clicks: &[(Click<'_>, Option<i64>, i64)],
    statements: &mut u32,
) -> Result<usize, sqlx::Error> {
    let changes: Vec<(Change, bool)> = clicks
        .iter()
        .map(|(c, seq, at)| (Change::of_click(c, *seq, *at), c.ref_id.is_some_and(|r| !r.is_empty())))
        .collect();
    record(conn, &changes, statements).await
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
    pub status: PayoutStatus,
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
            PayoutStatus::Paid => Some("payout_paid"),
            PayoutStatus::Failed => Some("payout_failed"),
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
        fan_out(conn, &[r.try_get(0)?], &[], &mut 0).await?;
    }
    Ok(())
}

/// Records changes, and their deliveries to every callback endpoint that takes them, on
/// `conn`: call it inside the transaction that saves the changes. A change whose
/// (conversion, version) is recorded already is skipped. Returns the changes recorded.
pub async fn enqueue(conn: &mut AnyConnection, changes: &[Change], statements: &mut u32) -> Result<usize, sqlx::Error> {
    let changes: Vec<(Change, bool)> = changes.iter().map(|c| (c.clone(), false)).collect();
    record(conn, &changes, statements).await
}

/// Records changes (each with whether it is a click that carried a partner's ref_id) and
/// their deliveries, in at most three statements whatever their number: the changes in
/// one insert, their deliveries in one (see [`fan_out`]), and the clicks' changes that no
/// endpoint took deleted in one. Returns the changes kept.
async fn record(
    conn: &mut AnyConnection,
    changes: &[(Change, bool)],
    statements: &mut u32,
) -> Result<usize, sqlx::Error> {
    use crate::db::rows::{Ty, backend, json_rows, to_json};
    if changes.is_empty() {
        return Ok(0);
    }
    #[derive(Serialize)]
    struct Line<'a> {
        conversion_id: &'a str,
        version: i64,
        journal_seq: Option<i64>,
        user_id: Option<&'a str>,
        click_id: Option<&'a str>,
        merchant_id: Option<&'a str>,
        network_id: Option<&'a str>,
        state: &'static str,
        status: &'static str,
        notify_kind: Option<&'static str>,
        snapshot: String,
        at: i64,
        kind: &'static str,
    }
    let mut lines = Vec::with_capacity(changes.len());
    for (c, _) in changes {
        let s = &c.snapshot;
        lines.push(Line {
            conversion_id: &c.conversion_id,
            version: c.version,
            journal_seq: c.journal_seq,
            user_id: s.user_id.as_deref(),
            click_id: s.click_id.as_deref(),
            merchant_id: s.merchant_id.as_deref(),
            // A click without a network has none (never "", which a network filter could match).
            network_id: (!s.network_id.is_empty()).then_some(s.network_id.as_str()),
            state: s.state.as_str(),
            status: s.status.as_str(),
            notify_kind: c.notify_kind(),
            snapshot: serde_json::to_string(s).map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
            at: c.at,
            kind: s.kind.as_str(),
        });
    }
    const COLS: [(&str, Ty); 13] = [
        ("conversion_id", Ty::Text),
        ("version", Ty::Int),
        ("journal_seq", Ty::Int),
        ("user_id", Ty::Text),
        ("click_id", Ty::Text),
        ("merchant_id", Ty::Text),
        ("network_id", Ty::Text),
        ("state", Ty::Text),
        ("status", Ty::Text),
        ("notify_kind", Ty::Text),
        ("snapshot", Ty::Text),
        ("at", Ty::Int),
        ("kind", Ty::Text),
    ];
    let names: Vec<&str> = COLS.iter().map(|(c, _)| *c).collect();
    let sql = format!(
        "INSERT INTO conversion_changes ({0}) SELECT {0} FROM {1} WHERE true \
         ON CONFLICT (conversion_id, version) DO NOTHING RETURNING id, conversion_id",
        names.join(", "),
        json_rows(backend(conn), 1, &COLS)
    );
    // A click's key is taken once: what the insert returns tells which click each id is.
    let click_refs: std::collections::HashMap<&str, bool> = changes
        .iter()
        .filter(|(c, _)| c.snapshot.kind == ChangeKind::Click)
        .map(|(c, has_ref)| (c.conversion_id.as_str(), *has_ref))
        .collect();
    let mut ids = Vec::with_capacity(changes.len());
    let mut clicks = Vec::new();
    let mut with_ref = Vec::new();
    for r in sqlx::query(&sql).bind(to_json(&lines)?).fetch_all(&mut *conn).await? {
        let (id, key): (i64, String) = (r.try_get(0)?, r.try_get(1)?);
        ids.push(id);
        if let Some(has_ref) = click_refs.get(key.as_str()) {
            clicks.push(id);
            if *has_ref {
                with_ref.push(id);
            }
        }
    }
    *statements += 1;
    let delivered = fan_out(conn, &ids, &with_ref, statements).await?;
    let orphans: Vec<i64> = clicks.into_iter().filter(|id| !delivered.contains(id)).collect();
    if !orphans.is_empty() {
        let sql = format!("DELETE FROM conversion_changes WHERE {}", crate::db::id_in(backend(conn), "id", 1));
        sqlx::query(&sql).bind(to_json(&orphans)?).execute(&mut *conn).await?;
        *statements += 1;
    }
    Ok(ids.len() - orphans.len())
}

/// One delivery per (change, endpoint) whose filters take it: the endpoint takes the
/// change's subject (conversions, payouts); its merchant and network filters match (a
/// payout has neither, so an endpoint filtered to a merchant or a network gets none); its
/// states filter takes a conversion's or a click's state (NULL: any; payouts are not
/// filtered by state); and for a click, an endpoint's `require_ref_id`:
/// `clicks_with_ref_id` lists the clicks' changes whose click carried one (it is known now; a conversion's
/// delivery is checked when it is sent instead, as its click may be registered later; the
/// flag does not matter for other changes). Disabled endpoints get theirs too: they are
/// the backlog replayed when the endpoint is enabled again. A conversion's delivery
/// `waits_for` its click's CREATED to the same endpoint (see `hold_back` in
/// `deliver/claim.rs`). One statement; returns the changes that got a delivery.
async fn fan_out(
    conn: &mut AnyConnection,
    change_ids: &[i64],
    clicks_with_ref_id: &[i64],
    statements: &mut u32,
) -> Result<std::collections::HashSet<i64>, sqlx::Error> {
    if change_ids.is_empty() {
        return Ok(Default::default());
    }
    let backend = match conn.backend_name() {
        "PostgreSQL" => crate::db::Backend::Postgres,
        _ => crate::db::Backend::Sqlite,
    };
    // `states` is a comma-separated list of names, none of which contains a comma: the
    // state is in it when ",STATE," is in ",LIST,". The key 'click:' || click_id is
    // `click_key`. No subquery on `clicks` for the ref_id: on PostgreSQL its estimated cost
    // put this statement, run for every click, over `jit_above_cost`, and the JIT
    // compilation took some 40 ms each time.
    let sql = format!(
        "INSERT INTO callback_deliveries (endpoint_id, change_id, conversion_id, version, waits_for, next_attempt_at, \
         created_at, updated_at) \
         SELECT e.id, c.id, c.conversion_id, c.version, \
         CASE WHEN c.kind = 'conversion' AND c.click_id IS NOT NULL THEN 'click:' || c.click_id END, c.at, c.at, c.at \
         FROM conversion_changes c, callback_endpoints e \
         WHERE {} AND (e.merchant_id IS NULL OR e.merchant_id = c.merchant_id) \
         AND ((c.subject = 'conversion' AND e.send_conversions = 1) OR (c.subject = 'payout' AND e.send_payouts = 1)) \
         AND (e.network_id IS NULL OR e.network_id = c.network_id) \
         AND (c.subject <> 'conversion' OR e.states IS NULL OR (',' || e.states || ',') LIKE ('%,' || c.state || ',%')) \
         AND (c.kind <> 'click' OR e.require_ref_id = 0 OR {}) \
         ON CONFLICT (endpoint_id, change_id) DO NOTHING RETURNING change_id",
        crate::db::id_in(backend, "c.id", 1),
        crate::db::id_in(backend, "c.id", 2)
    );
    let (ids, refs) = (crate::db::rows::to_json(change_ids)?, crate::db::rows::to_json(clicks_with_ref_id)?);
    let mut delivered = std::collections::HashSet::new();
    for r in sqlx::query(&sql).bind(ids).bind(refs).fetch_all(&mut *conn).await? {
        delivered.insert(r.try_get::<i64, _>(0)?);
    }
    *statements += 1;
    Ok(delivered)
}
