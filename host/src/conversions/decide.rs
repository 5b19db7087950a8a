//! The decision core: every write policy of the conversions, as pure functions. No I/O,
//! no async, no SQL: given a batch of commands and the state they touch ([`World`],
//! prefetched by `store.rs`), [`decide`] returns one result per command and the [`Rows`]
//! to write. The shape is TigerBeetle's state machine: prefetch, execute the whole batch
//! in memory, a result per event.
//!
//! - A later command of the batch sees the earlier ones' effects: the world is updated
//!   as each command is decided.
//! - A refused command (an error) contributes nothing: no journal entry, no row, no
//!   change to the world; its neighbours are decided as if it had not been submitted.
//! - Rows that need the journal's sequence number (history, postings, outbox changes)
//!   name the batch's journal row instead ([`JournalRow`] index); the store fills the
//!   number in once the journal rows are written.
//! - Each conversion written carries the version it was decided on: the store writes it
//!   only if the stored row is still at that version, so a batch that lost a race with
//!   another replica is decided again from fresh state (see `store.rs`).
//!
//! What lives here: the state step (via `lifecycle::step`), attribution and parking,
//! review precedence, manual mode, holds, maturity, the posting delta (via
//! `lifecycle::target`), duplicate events and adjustments, and whether a step is a change
//! for partners (the outbox). The ledger's debt rule is applied by `ledger::post_batch` when a
//! posting is written (its pure half is `ledger::debt_entries`); payout commands are
//! decided by `payouts::apply`, which the store runs between decided segments.
//!
//! The property tests at the bottom check the core alone: any split of a random command
//! sequence into batches gives the same state and rows as one command at a time; the
//! ledger the postings fold into keeps its invariants and agrees with what every
//! conversion says it booked; replaying the journal reproduces the state.

use super::lifecycle::{Booked, Current, Step, step, target};
use super::{ApplyError, Command, Evaluation, Outcome, ReviewAction, State, Status, Via, conversion_id, fingerprint};
use crate::clock::{DAY_MS, Millis};
use crate::ledger::{self, AccountKind, Entry, PLATFORM, PluginRefs, Posting};
use crate::outbox::Change;
use crate::plugin::wit::latest;
use std::collections::{BTreeMap, BTreeSet};

/// A conversion as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
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

/// A recorded click, as attribution needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickFact {
    /// Who clicked.
    pub user_id: String,
    /// The merchant clicked through to.
    pub merchant_id: Option<String>,
    /// When.
    pub created_at: i64,
}

/// What attribution reads: clicks, users and merchant references. Only ever added to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Clicks by id.
    pub clicks: BTreeMap<String, ClickFact>,
    /// Users with an account.
    pub users: BTreeSet<String>,
    /// (network, merchant reference) → merchant.
    pub merchant_refs: BTreeMap<(String, String), String>,
}

/// Everything a batch reads: the conversions it touches (and those parked for the clicks
/// and users it registers), the attribution facts, the fingerprints of its events that
/// are journaled already, and the adjustment keys that are posted already. After
/// [`decide`], the same state with the batch applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct World {
    /// Conversions by id.
    pub conversions: BTreeMap<String, ConversionRow>,
    /// Attribution facts.
    pub facts: Facts,
    /// Journaled event fingerprints.
    pub fingerprints: BTreeSet<String>,
    /// Ledger posting keys known to exist (adjustments).
    pub posting_keys: BTreeSet<String>,
}

/// One command of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The command.
    pub command: &'a Command,
    /// When it is applied (its journal's `recorded_at`).
    pub at: Millis,
    /// The conversion version the caller decided on (-1: absent), if it did.
    pub expected_version: Option<i64>,
}

/// A journal entry to write; rows that need its sequence number refer to it by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRow {
    /// Which input of the batch.
    pub input: usize,
    /// The command's kind.
    pub kind: &'static str,
    /// A network event's fingerprint (deduplication).
    pub fingerprint: Option<String>,
    /// The command, JSON.
    pub payload: String,
    /// When.
    pub at: Millis,
}

/// A conversion to write, and the version it was decided on.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversionWrite {
    /// The row as decided.
    pub row: ConversionRow,
    /// The stored version it was decided on; `None`: it did not exist (insert).
    pub decided_on: Option<i64>,
}

/// A line of a conversion's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// The journal row (none: a duplicate, recorded under sequence 0).
    pub journal: Option<usize>,
    /// The conversion.
    pub conversion_id: String,
    /// When.
    pub at: Millis,
    /// What happened (`ignored`, `duplicate`, a cause).
    pub kind: String,
    /// From state.
    pub from: Option<State>,
    /// To state.
    pub to: Option<State>,
    /// For people.
    pub detail: String,
}

/// How a posting's idempotency key is formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostingKey {
    /// Chosen by the caller (`adjustment:{key}`).
    Fixed(String),
    /// A conversion's step: `{conversion}:{seq}:{cause}`.
    Step,
}

/// A ledger posting to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostingRow {
    /// The journal row that causes it.
    pub journal: usize,
    /// Its key.
    pub key: PostingKey,
    /// The conversion.
    pub conversion_id: Option<String>,
    /// Its cause.
    pub cause: String,
    /// The operator.
    pub operator: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// Who computed the amount.
    pub plugins: Option<PluginRefs>,
    /// Currency.
    pub currency: String,
    /// Balanced entries.
    pub entries: Vec<Entry>,
    /// When.
    pub at: Millis,
}

impl PostingRow {
    /// The posting, once its journal row has sequence number `seq`.
    pub fn posting(&self, seq: i64) -> Posting {
        let key = match &self.key {
            PostingKey::Fixed(k) => k.clone(),
            PostingKey::Step => format!("{}:{seq}:{}", self.conversion_id.as_deref().unwrap_or_default(), self.cause),
        };
        Posting {
            key,
            conversion_id: self.conversion_id.clone(),
            journal_seq: Some(seq),
            cause: self.cause.clone(),
            operator: self.operator.clone(),
            reason: self.reason.clone(),
            plugins: self.plugins.clone(),
            currency: self.currency.clone(),
            entries: self.entries.clone(),
            at: self.at,
        }
    }
}

/// A change partners and users hear about (the outbox).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    /// The journal row.
    pub journal: usize,
    /// The conversion as changed.
    pub row: ConversionRow,
    /// The step's note.
    pub note: String,
    /// When.
    pub at: Millis,
}

impl ChangeRow {
    /// The outbox change, once its journal row has sequence number `seq`.
    pub fn change(&self, seq: i64) -> Change {
        change_of(&self.row, Some(seq), self.at, &self.note)
    }
}

/// The change a conversion row describes, as it is about to be saved. `note` is the
/// history note of the step (a network's reason is taken from its `(network: ...)`).
pub fn change_of(r: &ConversionRow, journal_seq: Option<i64>, at: i64, note: &str) -> Change {
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
        snapshot: crate::outbox::Snapshot {
            kind: crate::outbox::ChangeKind::Conversion,
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

/// A user account to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// Its id.
    pub user_id: String,
    /// E-mail.
    pub email: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Gets digests.
    pub notify: bool,
    /// Where it came from.
    pub source: String,
    /// Replace an existing profile (otherwise an existing account is left alone).
    pub update: bool,
    /// When.
    pub at: Millis,
}

/// A new click to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickRow {
    /// The journal row.
    pub journal: usize,
    /// The click id.
    pub click_id: String,
    /// Who clicked.
    pub user_id: String,
    /// Merchant.
    pub merchant_id: Option<String>,
    /// Network.
    pub network_id: Option<String>,
    /// Partner's reference.
    pub ref_id: Option<String>,
    /// Tracked link.
    pub link_id: Option<String>,
    /// sub1..sub5.
    pub subs: Vec<Option<String>>,
    /// When.
    pub at: Millis,
}

/// Everything a batch writes, in the order of its commands within each table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    /// Journal entries (accepted commands that are not duplicates).
    pub journal: Vec<JournalRow>,
    /// Conversions, once each, as the batch leaves them.
    pub conversions: Vec<ConversionWrite>,
    /// History lines.
    pub history: Vec<HistoryRow>,
    /// Ledger postings.
    pub postings: Vec<PostingRow>,
    /// Outbox changes.
    pub changes: Vec<ChangeRow>,
    /// User accounts.
    pub users: Vec<UserRow>,
    /// New clicks.
    pub clicks: Vec<ClickRow>,
}

/// What one accepted command adds (kept apart until it is accepted).
#[derive(Default)]
struct Effects {
    conversion: Option<ConversionRow>,
    history: Vec<HistoryRow>,
    postings: Vec<PostingRow>,
    changes: Vec<ChangeRow>,
    users: Vec<UserRow>,
    clicks: Vec<ClickRow>,
    /// The command, JSON, for its journal line (none: a duplicate, not journaled).
    payload: Option<String>,
}

/// Decides a batch on `world`, which it leaves as the batch leaves the state. Returns one
/// result per input and the rows to write.
pub fn decide(world: &mut World, batch: &[Input<'_>]) -> (Vec<Result<Outcome, ApplyError>>, Rows) {
    let mut rows = Rows::default();
    let mut results = Vec::with_capacity(batch.len());
    // The stored version of each conversion the batch writes, in the order first written.
    let mut written: Vec<(String, Option<i64>)> = Vec::new();
    for (i, input) in batch.iter().enumerate() {
        let j = rows.journal.len();
        match one(world, input, j) {
            Ok((outcome, effects)) => {
                if let Some(payload) = effects.payload {
                    let (kind, fp) = journal_kind(input.command);
                    if let Some(fp) = &fp {
                        world.fingerprints.insert(fp.clone());
                    }
                    rows.journal.push(JournalRow { input: i, kind, fingerprint: fp, payload, at: input.at });
                }
                if let Some(r) = effects.conversion {
                    if !written.iter().any(|(id, _)| *id == r.id) {
                        let stored = world.conversions.get(&r.id).map(|s| s.version);
                        written.push((r.id.clone(), stored));
                    }
                    world.conversions.insert(r.id.clone(), r);
                }
                for p in &effects.postings {
                    if let PostingKey::Fixed(k) = &p.key {
                        world.posting_keys.insert(k.clone());
                    }
                }
                for c in &effects.clicks {
                    world.facts.clicks.insert(
                        c.click_id.clone(),
                        ClickFact { user_id: c.user_id.clone(), merchant_id: c.merchant_id.clone(), created_at: c.at },
                    );
                }
                for u in &effects.users {
                    world.facts.users.insert(u.user_id.clone());
                }
                rows.history.extend(effects.history);
                rows.postings.extend(effects.postings);
                rows.changes.extend(effects.changes);
                rows.users.extend(effects.users);
                rows.clicks.extend(effects.clicks);
                results.push(Ok(outcome));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    // In id order: two replicas' batches then lock the rows they share in the same order.
    written.sort();
    rows.conversions = written
        .into_iter()
        .filter_map(|(id, decided_on)| {
            world.conversions.get(&id).map(|row| ConversionWrite { row: row.clone(), decided_on })
        })
        .collect();
    (results, rows)
}

/// The journal's kind of a command, and a network event's fingerprint.
pub fn journal_kind(command: &Command) -> (&'static str, Option<String>) {
    match command {
        Command::Event { event, .. } => ("event", Some(fingerprint(event))),
        Command::RegisterUser { .. } => ("register_user", None),
        Command::RegisterClick { .. } => ("register_click", None),
        Command::Reprocess { .. } => ("reprocess", None),
        Command::Review { .. } => ("review", None),
        Command::Mature { .. } => ("mature", None),
        Command::Adjustment { .. } => ("adjustment", None),
        Command::PayoutRequest { .. } => ("payout_request", None),
        Command::PayoutStep { .. } => ("payout_step", None),
    }
}

fn one(world: &World, input: &Input<'_>, j: usize) -> Result<(Outcome, Effects), ApplyError> {
    let at = input.at;
    if let Command::Event { event, .. } = input.command
        && world.fingerprints.contains(&fingerprint(event))
    {
        let id = conversion_id(&event.network, &event.transaction_id);
        let mut fx = Effects::default();
        if world.conversions.contains_key(&id) {
            fx.history.push(HistoryRow {
                journal: None,
                conversion_id: id.clone(),
                at,
                kind: "duplicate".into(),
                from: None,
                to: Some(event.state.into()),
                detail: "the same event was received again: nothing changed".into(),
            });
        }
        return Ok((Outcome::Duplicate { conversion_id: id }, fx));
    }
    let payload = serde_json::to_string(input.command).map_err(|e| ApplyError::Invalid(e.to_string()))?;
    let (outcome, mut fx) = command(world, input, j)?;
    fx.payload = Some(payload);
    Ok((outcome, fx))
}

/// Decides a command that is not a duplicate.
fn command(world: &World, input: &Input<'_>, j: usize) -> Result<(Outcome, Effects), ApplyError> {
    let (at, expected) = (input.at, input.expected_version);
    Ok(match input.command {
        Command::Event { event, via, evaluation } => {
            apply_event(world, j, at, event, *via, evaluation.as_ref(), expected)?
        }
        Command::Reprocess { conversion_id, evaluation, reason, assign } => {
            let mut r = world.conversions.get(conversion_id).cloned().ok_or_else(|| unknown(conversion_id))?;
            check_version(Some(&r), expected)?;
            if !matches!(r.status, Status::Parked | Status::Failed) {
                let reason = format!("status is {}, not parked or failed", r.status);
                return Ok((Outcome::Ignored { conversion_id: r.id, reason }, Effects::default()));
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
            let before = world.conversions.get(conversion_id);
            let plugins = settle(&world.facts, &mut r, true, false, evaluation.as_ref(), at)?;
            finish(before, r, j, at, "reprocess", &note, plugins, None)
        }
        Command::Review { conversion_id, action, operator, reason } => {
            let before = world.conversions.get(conversion_id);
            let mut r = before.cloned().ok_or_else(|| unknown(conversion_id))?;
            check_version(Some(&r), expected)?;
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
            finish(before, r, j, at, "review", &note, None, op)
        }
        Command::Mature { conversion_id } => {
            let before = world.conversions.get(conversion_id);
            let mut r = before.cloned().ok_or_else(|| unknown(conversion_id))?;
            let due = r.state == State::Completed
                && r.status == Status::Processed
                && r.matured_at.is_none()
                && r.matures_at.is_some_and(|m| m <= at);
            if !due {
                let reason = "not due for maturation".into();
                return Ok((Outcome::Ignored { conversion_id: r.id, reason }, Effects::default()));
            }
            r.matured_at = Some(at);
            finish(before, r, j, at, "matured", "reward delay passed: cashback available", None, None)
        }
        Command::RegisterUser { user_id, email, name, notify, source, update } => {
            let mut fx = Effects::default();
            fx.users.push(UserRow {
                user_id: user_id.clone(),
                email: email.clone(),
                name: name.clone(),
                notify: notify.unwrap_or(true),
                source: source.clone().unwrap_or_else(|| "api".into()),
                update: *update,
                at,
            });
            let unparked = parked(world, |r| r.user_id.as_deref() == Some(user_id.as_str()));
            (Outcome::Registered { unparked }, fx)
        }
        Command::RegisterClick { click_id, user_id, merchant_id, network_id, ref_id, link_id, subs, create_user } => {
            let mut fx = Effects::default();
            if *create_user && !world.facts.users.contains(user_id) {
                // The site passes its own user id on the link (INGEST.md, "who may put
                // which user id on a link"): the account exists from the first click.
                fx.users.push(UserRow {
                    user_id: user_id.clone(),
                    email: None,
                    name: None,
                    notify: true,
                    source: "click".into(),
                    update: false,
                    at,
                });
            }
            // A click registered again changes nothing (and sends no CREATED again).
            if !world.facts.clicks.contains_key(click_id) {
                fx.clicks.push(ClickRow {
                    journal: j,
                    click_id: click_id.clone(),
                    user_id: user_id.clone(),
                    merchant_id: merchant_id.clone(),
                    network_id: network_id.clone(),
                    ref_id: ref_id.clone(),
                    link_id: link_id.clone(),
                    subs: subs.clone(),
                    at,
                });
            }
            // Parked for this click, or (when the click may create the account) its user.
            let unparked = parked(world, |r| {
                r.click_id.as_deref() == Some(click_id.as_str())
                    || (*create_user && r.user_id.as_deref() == Some(user_id.as_str()))
            });
            (Outcome::Registered { unparked }, fx)
        }
        Command::Adjustment { key, user_id, currency, amount, operator, reason } => {
            let raw = key;
            let key = format!("adjustment:{key}");
            let posted = !world.posting_keys.contains(&key);
            let mut fx = Effects::default();
            if posted {
                fx.postings.push(PostingRow {
                    journal: j,
                    key: PostingKey::Fixed(key.clone()),
                    conversion_id: None,
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
                });
            }
            (Outcome::Adjusted { key: raw.clone(), posted }, fx)
        }
        Command::PayoutRequest { .. } | Command::PayoutStep { .. } => {
            // The store applies payouts itself (`payouts::apply`), between decided segments.
            return Err(ApplyError::Invalid("a payout command is not decided by the conversions' core".into()));
        }
    })
}

/// Parked conversions matching `f`, oldest report first: they may be processed now.
fn parked(world: &World, f: impl Fn(&ConversionRow) -> bool) -> Vec<String> {
    let mut v: Vec<&ConversionRow> =
        world.conversions.values().filter(|r| r.status == Status::Parked && f(r)).collect();
    v.sort_by(|a, b| (a.reported_at, &a.id).cmp(&(b.reported_at, &b.id)));
    v.into_iter().map(|r| r.id.clone()).collect()
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

fn apply_event(
    world: &World,
    j: usize,
    at: Millis,
    event: &latest::ConversionEvent,
    via: Via,
    evaluation: Option<&Evaluation>,
    expected_version: Option<i64>,
) -> Result<(Outcome, Effects), ApplyError> {
    let id = conversion_id(&event.network, &event.transaction_id);
    let existing = world.conversions.get(&id);
    check_version(existing, expected_version)?;
    if let Some(r) = existing
        && r.currency != event.currency
    {
        return Err(ApplyError::Invalid(format!(
            "conversion {id} is in {}, the event in {}: a currency never changes",
            r.currency, event.currency
        )));
    }
    let reported: State = event.state.into();
    let current =
        existing.map(|r| Current { state: r.state, status: r.status, amount: r.amount, commission: r.commission });
    let (to, evaluate, note) = match step(current.as_ref(), reported, event.amount, event.commission) {
        Step::Ignore(reason) => {
            let mut fx = Effects::default();
            fx.history.push(HistoryRow {
                journal: Some(j),
                conversion_id: id.clone(),
                at,
                kind: "ignored".into(),
                from: current.map(|c| c.state),
                to: Some(reported),
                detail: reason.clone(),
            });
            return Ok((Outcome::Ignored { conversion_id: id, reason }, fx));
        }
        Step::Advance { to, evaluate, note } => (to, evaluate, note),
    };
    let was_credited = existing.is_some_and(|r| r.status == Status::Processed && r.state != State::Created);
    let mut r = existing.cloned().unwrap_or_else(|| ConversionRow {
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
    let from = existing.map(|r| r.state);
    r.state = to;
    r.amount = event.amount;
    r.commission = event.commission;
    r.event_type = event.event_type.clone();
    r.event_time = event.event_time;
    r.line_items = serde_json::to_string(&event.line_items).unwrap_or_else(|_| "[]".into());
    r.click_id = event.click_id.clone().or(r.click_id);
    r.order_id = event.order_id.clone().or(r.order_id);
    r.merchant_ref = event.merchant_ref.clone().or(r.merchant_ref.take());
    let plugins = settle(&world.facts, &mut r, evaluate, was_credited, evaluation, at)?;
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
    Ok(finish(existing, r, j, at, &cause, &detail, plugins, None))
}

/// Who a conversion belongs to, or what is missing to know it (seed 002's "customer
/// not found").
#[derive(Debug, Default, Clone, PartialEq, Eq)]
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
/// merchant reference when the click names no merchant). Without a known click, a user
/// and merchant an operator assigned attribute it. (A click that is known always
/// decides; a conversion not attributed by hand has no user while its click is unknown.)
pub fn attribute(
    facts: &Facts,
    network: &str,
    click_id: Option<&str>,
    merchant_ref: Option<&str>,
    assigned: Assigned<'_>,
) -> Attribution {
    let mut a = Attribution::default();
    let mapped = || merchant_ref.and_then(|r| facts.merchant_refs.get(&(network.to_string(), r.to_string())).cloned());
    let Some(click) = click_id.and_then(|id| facts.clicks.get(id)) else {
        match (assigned.user_id, assigned.merchant_id) {
            (Some(user), merchant) => {
                a.user_id = Some(user.to_string());
                a.merchant_id = merchant.map(str::to_string).or_else(mapped);
                if !facts.users.contains(user) {
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
        return a;
    };
    a.merchant_id = click.merchant_id.clone();
    a.clicked_at = Some(click.created_at);
    a.user_id = Some(click.user_id.clone());
    if !facts.users.contains(&click.user_id) {
        a.missing = Some(format!("customer not found: user {} has no account yet", click.user_id));
        return a;
    }
    a.merchant_id = a.merchant_id.or_else(mapped).or_else(|| assigned.merchant_id.map(str::to_string));
    if a.merchant_id.is_none() {
        a.missing = Some(unmapped(network, merchant_ref));
    }
    a
}

fn unmapped(network: &str, merchant_ref: Option<&str>) -> String {
    match merchant_ref {
        Some(r) => format!("merchant unknown: network {network} merchant ref {r} is not mapped to a merchant"),
        None => format!("merchant unknown: neither the click nor network {network}'s event names a merchant"),
    }
}

/// Decides the status (and cashback) of a conversion whose state just moved, or that is
/// processed again: parking, manual mode, holds and review precedence. Returns the
/// plugins that computed the amount.
fn settle(
    facts: &Facts,
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
        // The service attributed the conversion (same click, same facts; clicks and users
        // are only ever added) before it ran the rules on exactly this order: its inputs
        // say who and which merchant.
        r.user_id = inputs.order.user_id.clone().or(r.user_id.take());
        r.merchant_id = Some(inputs.order.merchant.clone());
        r.clicked_at = inputs.order.click_time.or(r.clicked_at);
        if r.status == Status::Parked {
            r.status_reason = None;
        }
    } else if r.user_id.is_none() || r.merchant_id.is_none() || r.status == Status::Parked {
        let assigned = Assigned { user_id: r.user_id.as_deref(), merchant_id: r.merchant_id.as_deref() };
        let a = attribute(facts, &r.network_id, r.click_id.as_deref(), r.merchant_ref.as_deref(), assigned);
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

/// Whether a step is a change for partners and users (the outbox): a new conversion, or
/// one whose state, status, cashback or order amount moved. A maturation or a
/// history-only step is not.
pub fn partner_visible(before: Option<&ConversionRow>, after: &ConversionRow) -> bool {
    before.is_none_or(|b| {
        (b.state, b.status, b.cashback, b.amount) != (after.state, after.status, after.cashback, after.amount)
    })
}

/// Maturity, the posting of what the bookings changed by, the outbox change and the
/// history line of a conversion's step. `before` is the conversion as it was.
#[allow(clippy::too_many_arguments)]
fn finish(
    before: Option<&ConversionRow>,
    mut r: ConversionRow,
    j: usize,
    at: Millis,
    cause: &str,
    note: &str,
    plugins: Option<PluginRefs>,
    operator: Option<(String, String)>,
) -> (Outcome, Effects) {
    let mut fx = Effects::default();
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
            let (op, reason) = operator.unzip();
            fx.postings.push(PostingRow {
                journal: j,
                key: PostingKey::Step,
                conversion_id: Some(r.id.clone()),
                cause: cause.to_string(),
                operator: op,
                reason: reason.or_else(|| Some(note.to_string())),
                plugins: plugins.or_else(|| plugins_of(&r)),
                currency: r.currency.clone(),
                entries: ledger::booking_entries(&user, delta),
                at,
            });
            r.posted = t;
            r.ledger_at = Some(at);
        }
    }
    r.updated_at = at;
    r.version += 1;
    if partner_visible(before, &r) {
        fx.changes.push(ChangeRow { journal: j, row: r.clone(), note: note.to_string(), at });
    }
    let detail = match &r.status_reason {
        Some(why) => format!("{note}; status {} ({why})", r.status),
        None => format!("{note}; status {}", r.status),
    };
    fx.history.push(HistoryRow {
        journal: Some(j),
        conversion_id: r.id.clone(),
        at,
        kind: cause.to_string(),
        from: None,
        to: Some(r.state),
        detail,
    });
    let outcome = Outcome::Applied {
        conversion_id: r.id.clone(),
        created: before.is_none(),
        state: r.state,
        status: r.status,
        note: note.to_string(),
    };
    fx.conversion = Some(r);
    (outcome, fx)
}

/// The plugins recorded in a conversion's last decision, so that a later posting of the
/// same amount (maturation, approval) still names who computed it.
fn plugins_of(r: &ConversionRow) -> Option<PluginRefs> {
    let decision: serde_json::Value = serde_json::from_str(r.decision.as_deref()?).ok()?;
    serde_json::from_value(decision.get("plugins")?.clone()).ok()
}

#[cfg(test)]
mod tests {
    //! The core alone, on random command sequences over a small universe (4 transactions,
    //! 3 clicks, 3 users, one mapped merchant reference), so that commands collide often.
    use super::*;
    use crate::conversions::Assignment;
    use latest::ConversionState;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const NET: &str = "net";

    fn facts() -> World {
        let mut w = World::default();
        w.facts.merchant_refs.insert((NET.into(), "R1".into()), "m1".into());
        w
    }

    fn evaluation() -> impl Strategy<Value = Option<Evaluation>> {
        prop_oneof![
            2 => Just(None),
            6 => (0i64..5_000, any::<bool>(), prop::option::of(0u32..40), any::<bool>(), 0i64..40).prop_map(
                |(cashback, hold, delay, manual, default_delay)| Some(Evaluation::Decided {
                    cashback,
                    hold: (hold && cashback % 3 == 0).then(|| "suspicious".into()),
                    reward_delay_days: delay,
                    manual_review: manual && cashback % 2 == 0,
                    default_delay_days: default_delay,
                    plugins: PluginRefs { names: "flat".into(), versions: "1".into(), digests: "d".into() },
                    decision: serde_json::json!({ "cashback": cashback }),
                    inputs: None,
                })
            ),
            1 => Just(Some(Evaluation::Failed { error: "trap".into(), plugins: PluginRefs::default() })),
        ]
    }

    fn state() -> impl Strategy<Value = ConversionState> {
        prop_oneof![
            Just(ConversionState::Created),
            Just(ConversionState::Pending),
            Just(ConversionState::Adjusted),
            Just(ConversionState::Completed),
            Just(ConversionState::Rejected),
            Just(ConversionState::Reversed),
        ]
    }

    fn id(tx: u8) -> String {
        conversion_id(NET, &format!("T{tx}"))
    }

    fn command() -> impl Strategy<Value = (Command, Option<i64>)> {
        let event = (
            0u8..4,
            prop::option::of(0u8..3),
            state(),
            prop_oneof![Just(10_000i64), Just(8_000), Just(12_000)],
            prop_oneof![Just(500i64), Just(400)],
            prop_oneof![9 => Just("EUR"), 1 => Just("USD")],
            prop::option::of(Just("R1")),
            evaluation(),
            prop::option::of(-1i64..3),
        )
            .prop_map(|(tx, click, state, amount, commission, currency, mref, evaluation, expected)| {
                let event = latest::ConversionEvent {
                    network: NET.into(),
                    transaction_id: format!("T{tx}"),
                    click_id: click.map(|c| format!("C{c}")),
                    order_id: None,
                    event_type: "sale".into(),
                    state,
                    amount,
                    commission,
                    currency: currency.into(),
                    event_time: 1_767_225_000_000,
                    reason: None,
                    merchant_ref: mref.map(str::to_string),
                    line_items: Vec::new(),
                    raw: Vec::new(),
                };
                (Command::Event { event: Box::new(event), via: Via::Postback, evaluation }, expected)
            });
        prop_oneof![
            8 => event,
            2 => (0u8..3, any::<bool>()).prop_map(|(u, update)| (
                Command::RegisterUser {
                    user_id: format!("U{u}"),
                    email: None,
                    name: None,
                    notify: None,
                    source: None,
                    update,
                },
                None
            )),
            2 => (0u8..3, 0u8..3, any::<bool>(), any::<bool>()).prop_map(|(c, u, merchant, create_user)| (
                Command::RegisterClick {
                    click_id: format!("C{c}"),
                    user_id: format!("U{u}"),
                    merchant_id: merchant.then(|| "m1".into()),
                    network_id: Some(NET.into()),
                    ref_id: None,
                    link_id: None,
                    subs: Vec::new(),
                    create_user,
                },
                None
            )),
            2 => (0u8..4, evaluation(), prop::option::of(0u8..3)).prop_map(|(tx, evaluation, user)| (
                Command::Reprocess {
                    conversion_id: id(tx),
                    evaluation,
                    reason: None,
                    assign: user.map(|u| Assignment {
                        click_id: None,
                        user_id: Some(format!("U{u}")),
                        merchant_id: Some("m1".into()),
                        operator: "op".into(),
                    }),
                },
                None
            )),
            2 => (0u8..4, 0u8..3).prop_map(|(tx, a)| (
                Command::Review {
                    conversion_id: id(tx),
                    action: [ReviewAction::Approve, ReviewAction::Reject, ReviewAction::Hold][usize::from(a)],
                    operator: "op".into(),
                    reason: "checked".into(),
                },
                None
            )),
            2 => (0u8..4).prop_map(|tx| (Command::Mature { conversion_id: id(tx) }, None)),
            1 => (0u8..3, 0u8..3, -3_000i64..3_000).prop_map(|(k, u, amount)| (
                Command::Adjustment {
                    key: format!("K{k}"),
                    user_id: format!("U{u}"),
                    currency: "EUR".into(),
                    amount,
                    operator: "op".into(),
                    reason: "goodwill".into(),
                },
                None
            )),
        ]
    }

    /// Commands, each at its time (ten days apart, so that maturity comes due), and the
    /// batch boundaries (as lengths).
    fn scenario() -> impl Strategy<Value = (Vec<(Command, Option<i64>)>, Vec<usize>)> {
        prop::collection::vec(command(), 1..40).prop_flat_map(|cmds| {
            let n = cmds.len();
            (Just(cmds), prop::collection::vec(1usize..8, n))
        })
    }

    fn inputs(cmds: &[(Command, Option<i64>)]) -> Vec<Input<'_>> {
        cmds.iter()
            .enumerate()
            .map(|(i, (command, expected_version))| Input {
                command,
                at: 1_767_225_000_000 + i as i64 * 10 * DAY_MS,
                expected_version: *expected_version,
            })
            .collect()
    }

    /// A stored table of conversions, written the way the store writes: only on the
    /// version decided on.
    fn store(table: &mut BTreeMap<String, ConversionRow>, writes: &[ConversionWrite]) {
        for w in writes {
            let stored = table.get(&w.row.id).map(|r| r.version);
            assert_eq!(stored, w.decided_on, "{} written on a version that is not stored", w.row.id);
            assert!(w.row.version > stored.unwrap_or(0));
            table.insert(w.row.id.clone(), w.row.clone());
        }
    }

    /// Everything a run wrote but the conversions' rows, with journal numbers in place of
    /// the batch's journal indexes, in order.
    #[derive(Debug, Default, PartialEq)]
    struct Written {
        results: Vec<String>,
        journal: Vec<(String, Millis)>,
        history: Vec<String>,
        postings: Vec<(String, String, Vec<Entry>)>,
        changes: Vec<String>,
        users: Vec<UserRow>,
        clicks: Vec<String>,
        table: BTreeMap<String, ConversionRow>,
    }

    impl Written {
        fn add(&mut self, results: Vec<Result<Outcome, ApplyError>>, rows: Rows) {
            let base = self.journal.len() as i64 + 1;
            let seq = |j: usize| base + j as i64;
            self.results.extend(results.iter().map(|r| format!("{r:?}")));
            self.journal.extend(rows.journal.iter().map(|j| (j.payload.clone(), j.at)));
            self.history.extend(rows.history.iter().map(|h| {
                format!(
                    "{:?} {} {} {} {:?} {:?} {}",
                    h.journal.map(seq),
                    h.conversion_id,
                    h.at,
                    h.kind,
                    h.from,
                    h.to,
                    h.detail
                )
            }));
            self.postings.extend(rows.postings.iter().map(|p| {
                let posting = p.posting(seq(p.journal));
                (posting.key, posting.currency, posting.entries)
            }));
            self.changes.extend(rows.changes.iter().map(|c| format!("{:?}", c.change(seq(c.journal)))));
            self.users.extend(rows.users);
            self.clicks.extend(rows.clicks.iter().map(|c| format!("{} {} {}", seq(c.journal), c.click_id, c.user_id)));
            store(&mut self.table, &rows.conversions);
        }
    }

    fn run(cmds: &[(Command, Option<i64>)], sizes: &[usize]) -> (World, Written) {
        let all = inputs(cmds);
        let mut world = facts();
        let mut out = Written::default();
        let mut rest = &all[..];
        for size in sizes.iter().copied().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, tail) = rest.split_at(size.min(rest.len()));
            let (results, rows) = decide(&mut world, batch);
            assert_eq!(results.len(), batch.len());
            out.add(results, rows);
            rest = tail;
        }
        (world, out)
    }

    /// The ledger the postings fold into, with the debt rule applied after every posting
    /// that moves a user's available, as `ledger::post` does.
    fn fold(postings: &[(String, String, Vec<Entry>)]) -> BTreeMap<(String, AccountKind, String), i64> {
        let mut balances = BTreeMap::new();
        let mut keys = BTreeSet::new();
        for (key, currency, entries) in postings {
            assert!(keys.insert(key.clone()), "posting {key} twice");
            assert_eq!(entries.iter().map(|e| e.amount).sum::<i64>(), 0, "{key} does not balance");
            let mut apply = |entries: &[Entry]| {
                for e in entries {
                    *balances.entry((e.owner.clone(), e.kind, currency.clone())).or_insert(0) += e.amount;
                }
            };
            apply(entries);
            let mut users: Vec<&str> = Vec::new();
            for e in entries {
                if e.kind == AccountKind::Available && e.owner != PLATFORM && !users.contains(&e.owner.as_str()) {
                    users.push(&e.owner);
                }
            }
            for user in users {
                let get = |k| balances.get(&(user.to_string(), k, currency.clone())).copied().unwrap_or(0);
                let held = ledger::Position { available: get(AccountKind::Available), debt: get(AccountKind::Debt) };
                let debt = ledger::debt_entries(user, held);
                for e in &debt {
                    *balances.entry((e.owner.clone(), e.kind, currency.clone())).or_insert(0) += e.amount;
                }
            }
        }
        balances
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Batching is invisible: any split into batches gives the same results, state and
        /// rows as one command at a time.
        #[test]
        fn any_split_into_batches_equals_one_at_a_time((cmds, sizes) in scenario()) {
            let (one_world, one) = run(&cmds, &[1]);
            let (batch_world, batched) = run(&cmds, &sizes);
            prop_assert_eq!(&one_world, &batch_world);
            prop_assert_eq!(&one, &batched);
            // What is stored is what the state says, for every conversion written.
            for (id, row) in &one.table {
                prop_assert_eq!(Some(row), one_world.conversions.get(id));
            }
        }

        /// The postings balance, fold into a ledger whose every currency sums to zero, whose
        /// balances have the right signs (pending and available never below zero, debt
        /// never above), and which holds exactly what the conversions say they booked
        /// (plus the adjustments, for available and debt).
        #[test]
        fn the_ledger_holds_what_the_conversions_booked((cmds, sizes) in scenario()) {
            let (world, out) = run(&cmds, &sizes);
            let balances = fold(&out.postings);
            let total: i64 = balances.values().sum();
            prop_assert_eq!(total, 0);
            let mut booked: BTreeMap<(String, AccountKind, String), i64> = BTreeMap::new();
            for r in world.conversions.values() {
                let user = r.user_id.clone().unwrap_or_else(|| "unattributed".into());
                *booked.entry((user.clone(), AccountKind::Pending, r.currency.clone())).or_default() += r.posted.pending;
                *booked.entry((user, AccountKind::Available, r.currency.clone())).or_default() += r.posted.available;
                *booked.entry((PLATFORM.into(), AccountKind::CommissionReceivable, r.currency.clone())).or_default() +=
                    r.posted.receivable;
            }
            for (_, _, entries) in out.postings.iter().filter(|(k, _, _)| k.starts_with("adjustment:")) {
                for e in entries.iter().filter(|e| e.kind == AccountKind::Available) {
                    *booked.entry((e.owner.clone(), AccountKind::Available, "EUR".into())).or_default() += e.amount;
                }
            }
            let get = |m: &BTreeMap<(String, AccountKind, String), i64>, o: &str, k, c: &str| {
                m.get(&(o.to_string(), k, c.to_string())).copied().unwrap_or(0)
            };
            for ((owner, kind, currency), balance) in &balances {
                match kind {
                    AccountKind::Pending => {
                        prop_assert!(*balance >= 0, "{owner} pending {balance}");
                        prop_assert_eq!(*balance, get(&booked, owner, *kind, currency), "{} pending", owner);
                    }
                    AccountKind::Available => {
                        prop_assert!(*balance >= 0, "{owner} available {balance}");
                        let debt = get(&balances, owner, AccountKind::Debt, currency);
                        prop_assert_eq!(balance + debt, get(&booked, owner, *kind, currency), "{} available", owner);
                    }
                    AccountKind::Debt => prop_assert!(*balance <= 0, "{owner} debt {balance}"),
                    AccountKind::CommissionReceivable => {
                        prop_assert_eq!(*balance, get(&booked, owner, *kind, currency), "receivable");
                    }
                    _ => {}
                }
            }
        }

        /// Replaying the journal (each entry decided alone, at its time, without the
        /// callers' version expectations) reproduces the state and every row.
        #[test]
        fn replaying_the_journal_reproduces_the_state((cmds, sizes) in scenario()) {
            let (world, out) = run(&cmds, &sizes);
            let commands: Vec<Command> =
                out.journal.iter().map(|(payload, _)| serde_json::from_str(payload).expect("journal payload")).collect();
            let mut replayed = facts();
            let mut again = Written::default();
            for (command, (_, at)) in commands.iter().zip(&out.journal) {
                let (results, rows) = decide(&mut replayed, &[Input { command, at: *at, expected_version: None }]);
                prop_assert!(results[0].is_ok(), "replay refused {:?}: {:?}", command, results[0]);
                again.add(results, rows);
            }
            prop_assert_eq!(&world, &replayed);
            prop_assert_eq!(&out.journal, &again.journal);
            prop_assert_eq!(&out.postings, &again.postings);
            prop_assert_eq!(&out.table, &again.table);
        }
    }

    #[test]
    fn a_refused_command_contributes_nothing_and_a_later_one_sees_an_earlier_one() {
        let event = |state, currency: &str| latest::ConversionEvent {
            network: NET.into(),
            transaction_id: "T0".into(),
            click_id: Some("C0".into()),
            order_id: None,
            event_type: "sale".into(),
            state,
            amount: 10_000,
            commission: 500,
            currency: currency.into(),
            event_time: 0,
            reason: None,
            merchant_ref: None,
            line_items: Vec::new(),
            raw: Vec::new(),
        };
        let decided = Some(Evaluation::Decided {
            cashback: 700,
            hold: None,
            reward_delay_days: Some(0),
            manual_review: false,
            default_delay_days: 30,
            plugins: PluginRefs::default(),
            decision: serde_json::Value::Null,
            inputs: None,
        });
        let cmds = [
            Command::RegisterUser {
                user_id: "U0".into(),
                email: None,
                name: None,
                notify: None,
                source: None,
                update: false,
            },
            Command::RegisterClick {
                click_id: "C0".into(),
                user_id: "U0".into(),
                merchant_id: Some("m1".into()),
                network_id: None,
                ref_id: None,
                link_id: None,
                subs: Vec::new(),
                create_user: false,
            },
            Command::Event {
                event: Box::new(event(ConversionState::Pending, "USD")),
                via: Via::Postback,
                evaluation: decided.clone(),
            },
            Command::Event {
                event: Box::new(event(ConversionState::Pending, "EUR")),
                via: Via::Postback,
                evaluation: decided,
            },
            Command::Event {
                event: Box::new(event(ConversionState::Pending, "EUR")),
                via: Via::Postback,
                evaluation: None,
            },
        ];
        let batch: Vec<Input<'_>> =
            cmds.iter().map(|command| Input { command, at: 1, expected_version: None }).collect();
        let mut world = facts();
        let (results, rows) = decide(&mut world, &batch);
        // The USD event is the first report: accepted on its own. The EUR one then finds a
        // USD conversion and is refused, and contributes nothing; its twin is a duplicate
        // only of what was journaled, so it is refused the same way.
        assert!(
            matches!(&results[2], Ok(Outcome::Applied { status: Status::Processed, created: true, .. })),
            "{results:?}"
        );
        assert!(matches!(&results[3], Err(ApplyError::Invalid(m)) if m.contains("currency never changes")));
        assert!(matches!(&results[4], Err(ApplyError::Invalid(_))), "{:?}", results[4]);
        assert_eq!(rows.journal.len(), 3);
        assert_eq!(rows.conversions.len(), 1);
        assert_eq!(rows.conversions[0].decided_on, None);
        assert_eq!(rows.postings.len(), 1);
        assert_eq!(
            rows.postings[0].entries.iter().find(|e| e.kind == AccountKind::Pending).map(|e| e.amount),
            Some(700)
        );
        assert_eq!(rows.changes.len(), 1);
    }
}
