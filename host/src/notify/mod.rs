//! User notifications (seed 000): a digest e-mail per user per batch, batches formed by a
//! scheduled job a few times a day, sent by SMTP.
//!
//! A batch takes every change recorded in the outbox (`outbox`) since the last
//! batch that a user should hear about (tracked, adjusted, completed, declined,
//! reversed; payouts paid or failed), and renders one e-mail per user from the templates
//! (`host/templates/notify/`, overridable by the operator). Forming the batch is one
//! transaction: the changes are marked with the batch and the rendered e-mails stored
//! together, so a crash leaves either the whole batch or none of it.
//!
//! **Sending: at most once.** Each e-mail is marked `sending` (committed) before it is
//! handed to the SMTP server and `sent` after the server accepted it. An SMTP error means
//! the server did not accept the message, so it goes back to `pending` and is retried
//! later (a permanent refusal of this e-mail, such as an unknown mailbox, or too many
//! attempts, marks it `failed`; a refused login is the server's settings, not the
//! e-mail's, and is retried like a server that is down). But if the
//! process dies between the two marks, nobody knows whether the server took it: such an
//! e-mail stays `sending` and is **not** retried automatically, because a user who gets
//! one digest twice is worse off than a user who misses one (the next digest and the
//! dashboard still show the state). The alternative, at least once, would resend it. The
//! run's summary counts these as `unknown` and logs a warning, so an operator can look.
//! (The one window SMTP itself leaves open, RFC 1047's lost reply after the final ".",
//! would make a retried message arrive twice; the message keeps its `Message-ID`, which is
//! what mail clients deduplicate on.)
//!
//! The time a user was first told about a conversion is stamped on it (`notified_at`):
//! the last stage of seed 000's delay.

use crate::clock::Clock;
use crate::db::Db;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Serialize;
use sqlx::Row;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why notifications failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A setting is wrong; the message names it.
    #[error("{0}")]
    Config(String),
    /// A template is wrong.
    #[error("notification template {file}: {why}")]
    Template {
        /// The file.
        file: String,
        /// What is wrong.
        why: String,
    },
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Settings of the notifier.
#[derive(Clone)]
pub struct NotifyConfig {
    /// `smtp://user:password@host:port` (add `?tls=required` for STARTTLS), or
    /// `smtps://...`; none: digests are not formed, changes wait.
    pub smtp_url: Option<String>,
    /// CA certificates (PEM) to trust for the server's TLS certificate instead of the public
    /// web roots (`smtp.ca_file`).
    pub ca_file: Option<PathBuf>,
    /// The sender, `Name <address>`.
    pub from: String,
    /// Templates overriding the built-in ones, by file name.
    pub templates_dir: Option<PathBuf>,
    /// Attempts per e-mail before it is given up.
    pub max_attempts: i64,
    /// Wait after a failed attempt (times the attempts so far).
    pub retry_delay_ms: i64,
    /// SMTP timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("smtp_url", &self.smtp_url.as_deref().map(crate::db::redact))
            .field("ca_file", &self.ca_file)
            .field("from", &self.from)
            .field("templates_dir", &self.templates_dir)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            smtp_url: None,
            ca_file: None,
            from: "cashbackd <cashback@localhost>".into(),
            templates_dir: None,
            max_attempts: 5,
            retry_delay_ms: 10 * 60_000,
            timeout: Duration::from_secs(30),
        }
    }
}

/// The digest templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    subject: String,
    body: String,
    change: String,
    payout: String,
}

const BUILT_IN: [(&str, &str, &[&str]); 4] = [
    ("subject.txt", include_str!("../../templates/notify/subject.txt"), &["count", "plural", "user", "name"]),
    ("body.txt", include_str!("../../templates/notify/body.txt"), &["count", "plural", "user", "name", "changes"]),
    (
        "change.txt",
        include_str!("../../templates/notify/change.txt"),
        &["merchant", "order", "what", "kind", "cashback", "amount", "state"],
    ),
    (
        "payout.txt",
        include_str!("../../templates/notify/payout.txt"),
        &["amount", "what", "status", "reference", "reason"],
    ),
];

impl Templates {
    /// The built-in templates, each overridden by a file of the same name in `dir`.
    pub fn load(dir: Option<&Path>) -> Result<Templates, NotifyError> {
        let mut texts = Vec::new();
        for (file, built_in, allowed) in BUILT_IN {
            let text = match dir.map(|d| d.join(file)).filter(|p| p.exists()) {
                Some(path) => std::fs::read_to_string(&path)
                    .map_err(|e| NotifyError::Template { file: path.display().to_string(), why: e.to_string() })?,
                None => built_in.to_string(),
            };
            check_placeholders(file, &text, allowed)?;
            texts.push(text);
        }
        let [subject, body, change, payout]: [String; 4] =
            texts.try_into().map_err(|_| NotifyError::Config("four templates".into()))?;
        Ok(Templates { subject: subject.lines().next().unwrap_or_default().to_string(), body, change, payout })
    }
}

fn check_placeholders(file: &str, text: &str, allowed: &[&str]) -> Result<(), NotifyError> {
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| NotifyError::Template { file: file.into(), why: "a {{ without its }}".into() })?;
        let name = after[..end].trim();
        if !allowed.contains(&name) {
            return Err(NotifyError::Template {
                file: file.into(),
                why: format!("unknown placeholder {{{{{name}}}}} (known: {})", allowed.join(", ")),
            });
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

fn fill(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push_str(values.get(after[..end].trim()).map(String::as_str).unwrap_or(""));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// One line of a digest.
#[derive(Debug, Clone)]
struct Line {
    conversion_id: String,
    kinds: Vec<String>,
    merchant: String,
    order: String,
    cashback: String,
    amount: String,
    state: String,
}

/// A payout's line of a digest: its latest news in the batch.
#[derive(Debug, Clone)]
struct PayoutLine {
    payout_id: String,
    amount: String,
    status: String,
    reference: String,
    reason: String,
}

impl PayoutLine {
    fn what(&self) -> String {
        match self.status.as_str() {
            "paid" if self.reference.is_empty() => "paid".into(),
            "paid" => format!("paid (reference {})", self.reference),
            "failed" if self.reason.is_empty() => {
                "the payment did not go through; the amount is back in your available balance".into()
            }
            "failed" => {
                format!(
                    "the payment did not go through ({}); the amount is back in your available balance",
                    self.reason
                )
            }
            other => other.to_string(),
        }
    }
}

/// A digest's lines: conversions, then payouts, each in the order of its first change.
#[derive(Debug, Clone, Default)]
struct Lines {
    conversions: Vec<Line>,
    payouts: Vec<PayoutLine>,
}

impl Lines {
    fn len(&self) -> usize {
        self.conversions.len() + self.payouts.len()
    }
}

fn phrase(kind: &str) -> &'static str {
    match kind {
        "tracked" => "tracked",
        "adjusted" => "adjusted",
        "completed" => "confirmed by the shop",
        "rejected" => "declined",
        "reversed" => "reversed after a refund",
        _ => "updated",
    }
}

impl Templates {
    fn render(&self, user: &str, name: Option<&str>, all: &Lines) -> (String, String) {
        let (lines, payouts) = (&all.conversions, &all.payouts);
        let count = all.len();
        let mut v: BTreeMap<&str, String> = BTreeMap::new();
        v.insert("count", count.to_string());
        v.insert("plural", if count == 1 { String::new() } else { "s".into() });
        v.insert("user", user.to_string());
        // The name the site gave the account (PUT /api/v1/users/{id}), else the user id.
        v.insert("name", name.filter(|n| !n.trim().is_empty()).unwrap_or(user).to_string());
        let changes: Vec<String> = lines
            .iter()
            .map(|l| {
                let mut c: BTreeMap<&str, String> = BTreeMap::new();
                c.insert("merchant", l.merchant.clone());
                c.insert("order", l.order.clone());
                c.insert("what", l.kinds.iter().map(|k| phrase(k)).collect::<Vec<_>>().join(", then "));
                c.insert("kind", l.kinds.last().cloned().unwrap_or_default());
                c.insert("cashback", l.cashback.clone());
                c.insert("amount", l.amount.clone());
                c.insert("state", l.state.clone());
                fill(&self.change, &c).trim_end_matches('\n').to_string()
            })
            .chain(payouts.iter().map(|p| {
                let mut c: BTreeMap<&str, String> = BTreeMap::new();
                c.insert("amount", p.amount.clone());
                c.insert("what", p.what());
                c.insert("status", p.status.clone());
                c.insert("reference", p.reference.clone());
                c.insert("reason", p.reason.clone());
                fill(&self.payout, &c).trim_end_matches('\n').to_string()
            }))
            .collect();
        v.insert("changes", changes.join("\n"));
        (fill(&self.subject, &v), fill(&self.body, &v))
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BatchSummary {
    /// The batch formed by this run, if there was anything new.
    pub batch_id: Option<i64>,
    /// Changes it took.
    pub changes: i64,
    /// E-mails it made (one per user).
    pub users: i64,
    /// E-mails sent by this run (this batch and retries of earlier ones).
    pub sent: i64,
    /// E-mails that failed and will be retried.
    pub retrying: i64,
    /// E-mails given up.
    pub failed: i64,
    /// E-mails due but not tried: the SMTP server could not be reached (refused, silent),
    /// so they wait for the next run, their attempts untouched.
    pub deferred: i64,
    /// Users without an e-mail address.
    pub skipped: i64,
    /// E-mails handed to SMTP by a process that died before recording the outcome: not
    /// resent (at most once), for an operator to look at.
    pub unknown: i64,
    /// Why nothing was done, if so.
    pub note: Option<String>,
}

/// Forms and sends digests. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    clock: Arc<dyn Clock>,
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    templates: Templates,
    config: NotifyConfig,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Notifier {
    /// Checks the settings and loads the templates.
    pub fn new(db: Db, clock: Arc<dyn Clock>, config: NotifyConfig) -> Result<Notifier, NotifyError> {
        let from: Mailbox = config.from.parse().map_err(|e| NotifyError::Config(format!("--smtp-from: {e}")))?;
        let templates = Templates::load(config.templates_dir.as_deref())?;
        let transport = match &config.smtp_url {
            None => None,
            Some(url) => Some(transport(url, config.ca_file.as_deref(), config.timeout)?),
        };
        Ok(Notifier { inner: Arc::new(Inner { db, clock, transport, from, templates, config }) })
    }

    /// Forms a batch of what changed since the last one, then sends every e-mail due
    /// (this batch's and retries of earlier ones). The scheduler's `notify` job.
    pub async fn run(&self) -> Result<BatchSummary, NotifyError> {
        if self.inner.transport.is_none() {
            return Ok(BatchSummary {
                note: Some("no SMTP server configured (--smtp-url): changes wait for the first batch".into()),
                ..BatchSummary::default()
            });
        }
        let mut summary = self.form_batch().await?;
        self.send_due(&mut summary).await?;
        Ok(summary)
    }

    async fn form_batch(&self) -> Result<BatchSummary, NotifyError> {
        let now = self.inner.clock.now();
        let mut summary = BatchSummary::default();
        let mut tx = crate::db::begin(&self.inner.db.pool).await?;
        let batch: i64 =
            sqlx::query("INSERT INTO notification_batches (created_at, changes, users) VALUES ($1, 0, 0) RETURNING id")
                .bind(now)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        let taken = sqlx::query(
            "UPDATE conversion_changes SET notify_batch_id = $1 WHERE notify_batch_id IS NULL AND notify_kind IS NOT NULL AND at <= $2",
        )
        .bind(batch)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if taken == 0 {
            tx.rollback().await?;
            return Ok(summary);
        }
        let rows = sqlx::query(
            "SELECT c.user_id, u.email, c.notify_kind, c.snapshot, m.name, c.conversion_id, c.subject, u.name, \
             COALESCE(u.notify, 1) FROM conversion_changes c \
             LEFT JOIN users u ON u.id = c.user_id LEFT JOIN merchants m ON m.id = c.merchant_id \
             WHERE c.notify_batch_id = $1 ORDER BY c.user_id, c.id",
        )
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        // user -> (email, name, wants digests, lines in order of first change)
        let mut users: BTreeMap<String, (Option<String>, Option<String>, bool, Lines)> = BTreeMap::new();
        let unreadable = |e: serde_json::Error| NotifyError::Config(format!("a change's snapshot does not parse: {e}"));
        for r in &rows {
            let user: String = r.try_get(0)?;
            let email: Option<String> = r.try_get(1)?;
            let kind: String = r.try_get(2)?;
            let snapshot: String = r.try_get(3)?;
            let merchant: Option<String> = r.try_get(4)?;
            let conversion_id: String = r.try_get(5)?;
            let subject: String = r.try_get(6)?;
            let (name, wants): (Option<String>, i64) = (r.try_get(7)?, r.try_get(8)?);
            let entry = users.entry(user).or_insert_with(|| (email, name, wants != 0, Lines::default()));
            if subject == "payout" {
                let p: crate::outbox::PayoutSnapshot = serde_json::from_str(&snapshot).map_err(unreadable)?;
                let line = PayoutLine {
                    payout_id: p.payout_id,
                    amount: cashback_sdk::money::format(p.amount, &p.currency),
                    status: p.status.as_str().to_string(),
                    reference: p.reference.unwrap_or_default(),
                    reason: p.reason.unwrap_or_default(),
                };
                // A payout paid and failed in one batch: its latest news only.
                match entry.3.payouts.iter_mut().find(|l| l.payout_id == line.payout_id) {
                    Some(existing) => *existing = line,
                    None => entry.3.payouts.push(line),
                }
                continue;
            }
            let s: crate::outbox::Snapshot = serde_json::from_str(&snapshot).map_err(unreadable)?;
            let line = Line {
                conversion_id: conversion_id.clone(),
                kinds: vec![kind.clone()],
                merchant: merchant.or(s.merchant_id.clone()).unwrap_or_else(|| "a shop".into()),
                order: s.order_id.clone().unwrap_or_else(|| s.transaction_id.clone()),
                cashback: cashback_sdk::money::format(s.cashback, &s.currency),
                amount: cashback_sdk::money::format(s.amount, &s.currency),
                state: s.state.as_str().to_string(),
            };
            // Several changes of one conversion in a batch make one line: its latest
            // figures, and what happened in order ("tracked, then adjusted").
            match entry.3.conversions.iter_mut().find(|l| l.conversion_id == conversion_id) {
                Some(existing) => {
                    let mut kinds = std::mem::take(&mut existing.kinds);
                    if kinds.last() != Some(&kind) {
                        kinds.push(kind);
                    }
                    *existing = Line { kinds, ..line };
                }
                None => entry.3.conversions.push(line),
            }
        }
        for (user, (email, name, wants, lines)) in &users {
            let (subject, body) = self.inner.templates.render(user, name.as_deref(), lines);
            // No address, or the user asked for no digest (`"notify": false`): recorded as
            // skipped, never sent.
            let state = if !*wants || email.as_deref().unwrap_or("").trim().is_empty() { "skipped" } else { "pending" };
            if state == "skipped" {
                summary.skipped += 1;
            }
            sqlx::query(
                "INSERT INTO notifications (batch_id, user_id, email, subject, body, state, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (batch_id, user_id) DO NOTHING",
            )
            .bind(batch)
            .bind(user)
            .bind(email)
            .bind(subject)
            .bind(body)
            .bind(state)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE notification_batches SET changes = $1, users = $2 WHERE id = $3")
            .bind(taken as i64)
            .bind(users.len() as i64)
            .bind(batch)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        summary.batch_id = Some(batch);
        summary.changes = taken as i64;
        summary.users = users.len() as i64;
        Ok(summary)
    }

    async fn send_due(&self, summary: &mut BatchSummary) -> Result<(), NotifyError> {
        let Some(transport) = &self.inner.transport else { return Ok(()) };
        let pool = &self.inner.db.pool;
        let now = self.inner.clock.now();
        let due = sqlx::query(
            // Oldest due first: an e-mail that failed waits its retry delay, so the ones
            // deferred while the server was unreachable go before it next time.
            "SELECT id, batch_id, user_id, email, subject, body, attempts FROM notifications \
             WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT 1000",
        )
        .bind(now)
        .fetch_all(pool)
        .await?;
        for (i, r) in due.iter().enumerate() {
            let id: i64 = r.try_get(0)?;
            let batch: i64 = r.try_get(1)?;
            let user: String = r.try_get(2)?;
            let email: Option<String> = r.try_get(3)?;
            let subject: String = r.try_get(4)?;
            let body: String = r.try_get(5)?;
            let attempts: i64 = r.try_get::<i64, _>(6)? + 1;
            // Mark before sending (committed): from here on a crash leaves it `sending`,
            // which is never resent automatically.
            let claimed = sqlx::query(
                "UPDATE notifications SET state = 'sending', attempts = attempts + 1, sending_at = $1 WHERE id = $2 AND state = 'pending'",
            )
            .bind(self.inner.clock.now())
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
                == 1;
            if !claimed {
                continue; // another replica took it
            }
            // lettre bounds only the TCP connect by its timeout: a server that accepts and
            // never answers would hold this run (and the scheduler) forever, so the whole
            // exchange is bounded here. Such a timeout is a failure like a refused
            // connection: retried later (the message keeps its Message-ID).
            let timeout = self.inner.config.timeout;
            let mut unreachable = false;
            let result = match build_message(&self.inner.from, email.as_deref().unwrap_or(""), &subject, &body, id) {
                Ok(message) => match tokio::time::timeout(timeout, transport.send(message)).await {
                    Ok(sent) => sent.map(|_| ()).map_err(|e| {
                        // No SMTP reply at all (down, unreachable, a TLS session that could
                        // not be verified), or a refused login (RFC 4954's 530, 534, 535,
                        // 538): the server or its settings are at fault, not this e-mail.
                        // It stays due and the others wait: every one would fail the same
                        // way until the operator fixes the server or `smtp.url`.
                        let login = e.status().map(u16::from).is_some_and(|c| matches!(c, 530 | 534 | 535 | 538));
                        unreachable = login || (!e.is_transient() && !e.is_permanent());
                        (e.is_permanent() && !login, smtp_error(&e))
                    }),
                    Err(_) => {
                        unreachable = true;
                        Err((false, format!("the SMTP server did not answer within {} s", timeout.as_secs_f64())))
                    }
                },
                Err(why) => Err((true, why)),
            };
            let at = self.inner.clock.now();
            match result {
                Ok(()) => {
                    let mut tx = crate::db::begin(pool).await?;
                    sqlx::query(
                        "UPDATE notifications SET state = 'sent', sent_at = $1, last_error = NULL WHERE id = $2",
                    )
                    .bind(at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "UPDATE conversions SET notified_at = $1 WHERE notified_at IS NULL AND id IN \
                         (SELECT conversion_id FROM conversion_changes WHERE notify_batch_id = $2 AND user_id = $3)",
                    )
                    .bind(at)
                    .bind(batch)
                    .bind(&user)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    summary.sent += 1;
                }
                Err((permanent, why)) => {
                    let give_up = permanent || attempts >= self.inner.config.max_attempts;
                    tracing::warn!(notification = id, user = %user, attempts, give_up, error = %why, "notification e-mail not sent");
                    sqlx::query(
                        "UPDATE notifications SET state = $1, last_error = $2, next_attempt_at = $3 WHERE id = $4",
                    )
                    .bind(if give_up { "failed" } else { "pending" })
                    .bind(&why)
                    .bind(at + self.inner.config.retry_delay_ms.saturating_mul(attempts))
                    .bind(id)
                    .execute(pool)
                    .await?;
                    if give_up {
                        summary.failed += 1;
                    } else {
                        summary.retrying += 1;
                    }
                    if unreachable {
                        // The others would only wait for the same timeout or refusal, one by
                        // one: they keep their attempts and go out with the next run.
                        summary.deferred = (due.len() - i - 1) as i64;
                        if summary.deferred > 0 {
                            tracing::warn!(
                                deferred = summary.deferred,
                                "the SMTP server is unreachable; the other e-mails due wait for the next run"
                            );
                        }
                        break;
                    }
                }
            }
        }
        let stale = now - 10 * 60_000;
        summary.unknown = sqlx::query("SELECT COUNT(*) FROM notifications WHERE state = 'sending' AND sending_at < $1")
            .bind(stale)
            .fetch_one(pool)
            .await?
            .try_get(0)?;
        if summary.unknown > 0 {
            tracing::warn!(
                count = summary.unknown,
                "notification e-mails were handed to SMTP by a process that stopped before recording the outcome; \
                 they are not resent (at most once): see the notifications table, state 'sending'"
            );
        }
        Ok(())
    }
}

fn build_message(from: &Mailbox, to: &str, subject: &str, body: &str, id: i64) -> Result<Message, String> {
    let to: Mailbox = to.parse().map_err(|e| format!("the user's e-mail address {to:?} is not valid: {e}"))?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject)
        .message_id(Some(format!("<notification-{id}@cashbackd>")))
        .header(ContentType::TEXT_PLAIN)
        .body(body.to_string())
        .map_err(|e| format!("cannot build the e-mail: {e}"))
}

/// The SMTP transport of `url` (`smtp://`, `smtp://...?tls=required|opportunistic`,
/// `smtps://`), trusting `ca_file`'s certificates instead of the web roots when given.
fn transport(
    url: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, NotifyError> {
    // Errors could quote the URL, which holds the password: they name the setting only.
    let invalid = || NotifyError::Config("smtp.url: not a valid smtp:// or smtps:// URL".into());
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|_| invalid())?;
    if let Some(path) = ca_file {
        use lettre::transport::smtp::client::{Tls, TlsParameters};
        let named = |what: String| NotifyError::Config(format!("smtp.ca_file: {what}"));
        let ca = read_ca_file(path).map_err(named)?;
        // lettre reads the URL's TLS mode into the builder but offers no way to add a root
        // to the parameters it made: read the mode the same way and make them again.
        let parsed = url::Url::parse(url).map_err(|_| invalid())?;
        let host = parsed.host_str().ok_or_else(invalid)?.to_string();
        let params = TlsParameters::builder(host)
            .add_root_certificate(ca)
            .build()
            .map_err(|e| named(format!("{}: cannot be used ({e})", path.display())))?;
        let mode = parsed.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned());
        builder = builder.tls(match (parsed.scheme(), mode.as_deref()) {
            ("smtps", _) => Tls::Wrapper(params),
            (_, Some("required")) => Tls::Required(params),
            (_, Some("opportunistic")) => Tls::Opportunistic(params),
            _ => return Err(named("smtp.url uses no TLS: add ?tls=required or use smtps://".into())),
        });
    }
    Ok(builder.timeout(Some(timeout)).build())
}

/// An SMTP error as one line; lettre's messages never contain the credentials.
fn smtp_error(e: &lettre::transport::smtp::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// When a conversion's user was first told about it (`notified_at`), if yet.
pub async fn notified_at(db: &Db, conversion_id: &str) -> Result<Option<i64>, sqlx::Error> {
    let row = sqlx::query("SELECT notified_at FROM conversions WHERE id = $1")
        .bind(conversion_id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?.flatten())
}

/// The certificates of a PEM file of certificate authorities (`smtp.ca_file`), or why
/// they cannot be used. lettre's parser accepts a file with no certificate at all (and
/// would then trust nothing, failing every send later): one is required here.
pub fn read_ca_file(path: &std::path::Path) -> Result<lettre::transport::smtp::client::Certificate, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {} ({e})", path.display()))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(format!("{} is not a PEM certificate (no BEGIN CERTIFICATE block)", path.display()));
    }
    lettre::transport::smtp::client::Certificate::from_pem(&pem)
        .map_err(|e| format!("{} is not a PEM certificate ({e})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_templates_load_and_unknown_placeholders_are_refused() {
        let t = Templates::load(None).expect("built in");
        let line = Line {
            conversion_id: "cv".into(),
            kinds: vec!["tracked".into(), "adjusted".into()],
            merchant: "Shop".into(),
            order: "O-1".into(),
            cashback: "12.34 EUR".into(),
            amount: "123.40 EUR".into(),
            state: "ADJUSTED".into(),
        };
        let payout = PayoutLine {
            payout_id: "po_1".into(),
            amount: "25.00 EUR".into(),
            status: "paid".into(),
            reference: "TR-1".into(),
            reason: String::new(),
        };
        let failed = PayoutLine { status: "failed".into(), reason: "account closed".into(), ..payout.clone() };
        let lines = Lines { conversions: vec![line], payouts: vec![payout, failed] };
        let (subject, body) = t.render("u1", Some("Ann"), &lines);
        assert_eq!(subject, "Your cashback: 3 updates");
        assert!(body.starts_with("Hello Ann,\n"), "{body}");
        let (_, body) = t.render("u1", None, &lines);
        assert!(body.starts_with("Hello u1,\n"), "without a name, the user id: {body}");
        assert!(body.contains("- Shop, order O-1: tracked, then adjusted. Cashback 12.34 EUR."), "{body}");
        assert!(body.contains("- Payout of 25.00 EUR: paid (reference TR-1)."), "{body}");
        assert!(
            body.contains(
                "- Payout of 25.00 EUR: the payment did not go through (account closed); the amount is back in your available balance."
            ),
            "{body}"
        );
        assert!(check_placeholders("x.txt", "{{nope}}", &["count"]).is_err());
        assert!(check_placeholders("x.txt", "{{count", &["count"]).is_err());
    }
}
