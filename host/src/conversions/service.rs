//! The conversion service: what the ingress, the scheduler, the admin API and the CLI
//! call. It reads a snapshot, runs the merchant's rule chain *outside* the write
//! transaction (a slow plugin never holds up the writer), then submits the command with
//! the version it read; if the conversion changed meanwhile, it reads and tries again.

use super::lifecycle::{Step, step};
use super::rules::{self, Link, RuleInputs};
use super::store::{self, Attribution, ConversionRow, attribute};
use super::{ApplyError, Command, Evaluation, Outcome, ReviewAction, Status, conversion_id};
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::conversions::writer::{Writer, WriterConfig};
use crate::db::{Backend, Db};
use crate::plugin::wit::latest;
use crate::plugin::{LoadError, LoadedPlugin, PluginKind, PluginRuntime};
use sqlx::Row;
use std::sync::Arc;

/// Settings of the service.
#[derive(Debug, Clone, Copy)]
pub struct ServiceConfig {
    /// The group-commit writer.
    pub writer: WriterConfig,
    /// Attempts when the conversion changes between read and write.
    pub max_attempts: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig { writer: WriterConfig::default(), max_attempts: 8 }
    }
}

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The write was refused.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] LoadError),
    /// The request makes no sense.
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// What the request names is in a state that does not allow it (nothing to roll back).
    #[error("{0}")]
    Conflict(String),
}

/// A click to record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewClick {
    /// The click id minted for it.
    pub click_id: String,
    /// Who clicked.
    pub user_id: String,
    /// The merchant of the link.
    pub merchant_id: Option<String>,
    /// The network of the link.
    pub network_id: Option<String>,
    /// The partner's reference (seed 003: up to 32 characters).
    pub ref_id: Option<String>,
    /// The tracked link.
    pub link_id: Option<String>,
    /// sub1..sub5.
    pub subs: Vec<Option<String>>,
}

/// One line of a conversion's history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = ConversionHistoryEntry)]
pub struct HistoryEntry {
    /// When.
    pub at: i64,
    /// What kind of step (`pending`, `ignored`, `duplicate`, `review`, `matured`...).
    pub kind: String,
    /// The state before, if it changed.
    pub from_state: Option<String>,
    /// The state after.
    pub to_state: Option<String>,
    /// What happened and why.
    pub detail: String,
}

/// The conversion service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Service {
    db: Db,
    writer: Writer,
    runtime: Arc<PluginRuntime>,
    clock: Arc<dyn Clock>,
    config: ServiceConfig,
    catalog: Arc<Catalog>,
}

impl Service {
    /// Starts the service (its writer task, and on PostgreSQL its configuration listener)
    /// on the current runtime.
    pub fn new(db: Db, runtime: Arc<PluginRuntime>, clock: Arc<dyn Clock>, config: ServiceConfig) -> Service {
        let catalog = Arc::new(Catalog::new());
        catalog.listen(&db, db.pool.connect_options().database_url.as_str());
        let writer = Writer::spawn(db.clone(), clock.clone(), config.writer);
        Service { db, writer, runtime, clock, config, catalog }
    }

    /// The configuration held in memory (networks, merchants' chains and settings).
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The plugin runtime.
    pub fn runtime(&self) -> &Arc<PluginRuntime> {
        &self.runtime
    }

    /// Now, by the service's clock.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The service's clock (the delivery worker and the notifier share it).
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Applies a command as it is, through the writer (payouts: their checks run inside
    /// the write, on what the transaction reads).
    pub(crate) async fn submit(&self, command: Command, expected_version: Option<i64>) -> Result<Outcome, ApplyError> {
        self.writer.submit(command, expected_version).await
    }

    /// Records a network event: deduplicates it, moves the conversion's state (never
    /// backwards), runs the merchant's rules when the cashback must be computed, and posts
    /// to the ledger. Returns once the result is durable.
    pub async fn ingest(&self, event: latest::ConversionEvent) -> Result<Outcome, ServiceError> {
        self.ingest_via(event, super::Via::Postback).await
    }

    /// [`Service::ingest`] for an event that came by another path than a postback.
    pub async fn ingest_via(&self, event: latest::ConversionEvent, via: super::Via) -> Result<Outcome, ServiceError> {
        self.ingest_parsed(event, via, None).await
    }

    /// Records an event that the network's adapter parsed on configuration version
    /// `network_version` (from [`Service::catalog`]). If the network's configuration is
    /// newer when the event's batch runs, it is not recorded: the answer is
    /// [`ApplyError::StaleConfig`], and the caller parses the input again.
    pub async fn ingest_parsed(
        &self,
        event: latest::ConversionEvent,
        via: super::Via,
        network_version: Option<i64>,
    ) -> Result<Outcome, ServiceError> {
        let result = self.record_event(&event, via, network_version).await;
        record_outcome(&event.network, via.as_str(), &result);
        result
    }

    async fn record_event(
        &self,
        event: &latest::ConversionEvent,
        via: super::Via,
        network_config: Option<i64>,
    ) -> Result<Outcome, ServiceError> {
        let id = conversion_id(&event.network, &event.transaction_id);
        self.retrying(|| async {
            // Everything the event needs read, in one round trip: its conversion, the
            // configuration's version (`catalog`), the attribution facts and the prior
            // orders of the likely (user, merchant).
            let reads = {
                let mut conn = self.db.pool.acquire().await?;
                store::read_for_event(
                    &mut conn,
                    &id,
                    &event.network,
                    event.click_id.as_deref(),
                    event.merchant_ref.as_deref(),
                )
                .await?
            };
            let (row, config) = (reads.conversion, reads.config_version);
            // Entries older than this are read again before use (the network's on the
            // caller's next attempt).
            self.catalog.observe(config);
            if network_config.is_some_and(|v| v < config) {
                // The configuration changed since the network's adapter parsed this event,
                // perhaps before the event arrived: its caller parses it again.
                return Err(ServiceError::Apply(ApplyError::StaleConfig { current: config }));
            }
            let current = row.as_ref().map(|r| super::lifecycle::Current {
                state: r.state,
                status: r.status,
                amount: r.amount,
                commission: r.commission,
            });
            let needs_rules = match step(current.as_ref(), event.state.into(), event.amount, event.commission) {
                Step::Advance { evaluate, .. } => {
                    evaluate || row.as_ref().is_some_and(|r| matches!(r.status, Status::Parked | Status::Failed))
                }
                Step::Ignore(_) => false,
            };
            let attribution = needs_rules.then(|| {
                let click = event.click_id.clone().or_else(|| row.as_ref().and_then(|r| r.click_id.clone()));
                let merchant_ref =
                    event.merchant_ref.as_deref().or(row.as_ref().and_then(|r| r.merchant_ref.as_deref()));
                let assigned = store::Assigned::of(row.as_ref());
                super::decide::attribute(&reads.facts, &event.network, click.as_deref(), merchant_ref, assigned)
            });
            let evaluation = match attribution {
                Some(Attribution { missing: None, user_id: Some(user), merchant_id: Some(merchant), clicked_at }) => {
                    let order = order_from_event(&id, event, &merchant, &user, clicked_at);
                    // The count read above, if it was for this pair.
                    let prior = reads.prior.as_ref().filter(|(u, m, _)| *u == user && *m == merchant).map(|p| p.2);
                    Some(self.evaluate(&merchant, &user, order, config, prior).await?)
                }
                _ => None,
            };
            let expected = Some(row.map_or(-1, |r| r.version));
            let command = Command::Event { event: Box::new(event.clone()), via, evaluation };
            Ok(self.writer.submit(command, expected).await?)
        })
        .await
    }

    /// Runs `attempt` until it neither conflicts nor needs a fresh evaluation.
    async fn retrying<F, Fut>(&self, mut attempt: F) -> Result<Outcome, ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Outcome, ServiceError>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt().await {
                Err(ServiceError::Apply(ApplyError::Conflict | ApplyError::NeedsEvaluation))
                    if tries < self.config.max_attempts =>
                {
                    tokio::task::yield_now().await;
                }
                other => return other,
            }
        }
    }

    /// Submits a command that carries no evaluation, again while it loses a race with
    /// another writer: each attempt is decided from the state its transaction reads.
    async fn submit_retrying(&self, command: Command) -> Result<Outcome, ServiceError> {
        self.retrying(|| async { Ok(self.writer.submit(command.clone(), None).await?) }).await
    }

    /// Processes a parked or failed conversion again with the current rules.
    pub async fn reprocess(&self, id: &str) -> Result<Outcome, ServiceError> {
        self.reprocess_with(id, None, None).await
    }

    /// [`Service::reprocess`], saying why in the conversion's history, and optionally
    /// with an operator's attribution of a parked conversion.
    pub async fn reprocess_with(
        &self,
        id: &str,
        reason: Option<&str>,
        assign: Option<super::Assignment>,
    ) -> Result<Outcome, ServiceError> {
        if let Some(a) = &assign {
            self.check_assignment(a).await?;
        }
        self.retrying(|| async {
            let mut conn = self.db.pool.acquire().await?;
            let (row, config) = store::load_with_config(&mut conn, id).await?;
            let row = row.ok_or_else(|| ServiceError::NotFound(format!("conversion {id} does not exist")))?;
            if !matches!(row.status, Status::Parked | Status::Failed) {
                return Ok(Outcome::Ignored {
                    conversion_id: row.id,
                    reason: format!("status is {}, not parked or failed", row.status),
                });
            }
            // What the row will carry once the assignment is applied (see apply.rs).
            let (click, assigned_user, assigned_merchant) = match &assign {
                Some(a) if a.click_id.is_some() => (a.click_id.clone(), None, None),
                Some(a) => (
                    row.click_id.clone(),
                    a.user_id.clone().or(row.user_id.clone()),
                    a.merchant_id.clone().or(row.merchant_id.clone()),
                ),
                None => (row.click_id.clone(), row.user_id.clone(), row.merchant_id.clone()),
            };
            let assigned =
                store::Assigned { user_id: assigned_user.as_deref(), merchant_id: assigned_merchant.as_deref() };
            let a =
                attribute(&mut conn, &row.network_id, click.as_deref(), row.merchant_ref.as_deref(), assigned).await?;
            drop(conn);
            let evaluation = match (a.missing, a.user_id, a.merchant_id) {
                (None, Some(user), Some(merchant)) => {
                    let mut order = order_from_row(&row, &merchant, &user);
                    order.click_time = a.clicked_at.or(order.click_time);
                    Some(self.evaluate(&merchant, &user, order, config, None).await?)
                }
                _ => None,
            };
            let command = Command::Reprocess {
                conversion_id: id.to_string(),
                evaluation,
                reason: reason.map(str::to_string),
                assign: assign.clone(),
            };
            Ok(self.writer.submit(command, Some(row.version)).await?)
        })
        .await
    }

    /// An assignment names a click that exists, or a user and a merchant that exist.
    async fn check_assignment(&self, a: &super::Assignment) -> Result<(), ServiceError> {
        if a.operator.trim().is_empty() {
            return Err(ServiceError::Invalid("operator: required".into()));
        }
        let exists = |sql: &'static str, id: String| async move {
            Ok::<_, ServiceError>(sqlx::query(sql).bind(id).fetch_optional(&self.db.pool).await?.is_some())
        };
        match (&a.click_id, &a.user_id, &a.merchant_id) {
            (Some(click), None, None) => {
                if !exists("SELECT 1 FROM clicks WHERE click_id = $1", click.clone()).await? {
                    return Err(ServiceError::Invalid(format!("click_id: no click {click:?} was recorded")));
                }
            }
            (None, Some(user), merchant) => {
                if !exists("SELECT 1 FROM users WHERE id = $1", user.clone()).await? {
                    return Err(ServiceError::Invalid(format!("user_id: user {user:?} has no account")));
                }
                if let Some(merchant) = merchant
                    && !exists("SELECT 1 FROM merchants WHERE id = $1", merchant.clone()).await?
                {
                    return Err(ServiceError::Invalid(format!("merchant_id: no merchant {merchant:?}")));
                }
            }
            (None, None, Some(merchant)) => {
                if !exists("SELECT 1 FROM merchants WHERE id = $1", merchant.clone()).await? {
                    return Err(ServiceError::Invalid(format!("merchant_id: no merchant {merchant:?}")));
                }
            }
            _ => {
                return Err(ServiceError::Invalid(
                    "give click_id alone, or user_id (with merchant_id, or the merchant its reference maps to), or \
                     merchant_id alone"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Processes again every conversion with `status` (parked or failed), of one merchant
    /// or all, oldest first. Returns (processed again, still parked or failed).
    pub async fn reprocess_all(
        &self,
        merchant: Option<&str>,
        status: Status,
        reason: &str,
    ) -> Result<(usize, usize), ServiceError> {
        if !matches!(status, Status::Parked | Status::Failed) {
            return Err(ServiceError::Invalid(format!("status: {status} is not parked or failed")));
        }
        if let Some(m) = merchant
            && sqlx::query("SELECT 1 FROM merchants WHERE id = $1")
                .bind(m)
                .fetch_optional(&self.db.pool)
                .await?
                .is_none()
        {
            return Err(ServiceError::NotFound(format!("no merchant {m:?}")));
        }
        // A snapshot of the ids first: each one is then decided on its own fresh state.
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM conversions WHERE status = $1 AND ($2 = '' OR merchant_id = $2) ORDER BY reported_at, id",
        )
        .bind(status.as_str())
        .bind(merchant.unwrap_or(""))
        .fetch_all(&self.db.pool)
        .await?;
        let (mut done, mut still) = (0, 0);
        for id in ids {
            match self.reprocess_with(&id, Some(reason), None).await? {
                Outcome::Applied { status: Status::Parked | Status::Failed, .. } => still += 1,
                Outcome::Applied { .. } => done += 1,
                _ => {}
            }
        }
        Ok((done, still))
    }

    /// A user account exists: conversions parked for it are processed.
    pub async fn register_user(&self, user_id: &str, email: Option<&str>) -> Result<Outcome, ServiceError> {
        let profile = crate::users::Profile { email: email.map(Into::into), name: None, notify: true };
        self.put_user(user_id, &profile, "api").await
    }

    /// Creates a user account or replaces its profile; conversions parked for the user
    /// are processed, and their history says why.
    pub async fn put_user(
        &self,
        user_id: &str,
        profile: &crate::users::Profile,
        source: &str,
    ) -> Result<Outcome, ServiceError> {
        crate::users::check_id(user_id).map_err(ServiceError::Invalid)?;
        profile.check().map_err(ServiceError::Invalid)?;
        let command = Command::RegisterUser {
            user_id: user_id.into(),
            email: profile.email.clone(),
            name: profile.name.clone(),
            notify: Some(profile.notify),
            source: Some(source.into()),
            update: true,
        };
        let outcome = self.writer.submit(command, None).await?;
        self.unpark(&outcome, &format!("user {user_id}'s account exists now")).await?;
        Ok(outcome)
    }

    /// A tracked click: conversions parked for it are processed.
    pub async fn register_click(&self, click: NewClick) -> Result<Outcome, ServiceError> {
        self.record_click(click, false).await
    }

    /// [`Service::register_click`]; with `create_user`, the user's account is created
    /// if it does not exist (`ingress.create_users_on_click`).
    pub async fn record_click(&self, click: NewClick, create_user: bool) -> Result<Outcome, ServiceError> {
        let reason = format!("click {} of user {} was recorded", click.click_id, click.user_id);
        let command = Command::RegisterClick {
            click_id: click.click_id,
            user_id: click.user_id,
            merchant_id: click.merchant_id,
            network_id: click.network_id,
            ref_id: click.ref_id,
            link_id: click.link_id,
            subs: click.subs,
            create_user,
        };
        let outcome = self.writer.submit(command, None).await?;
        self.unpark(&outcome, &reason).await?;
        Ok(outcome)
    }

    async fn unpark(&self, outcome: &Outcome, reason: &str) -> Result<(), ServiceError> {
        if let Outcome::Registered { unparked } = outcome {
            for id in unparked {
                self.reprocess_with(id, Some(reason), None).await?;
            }
        }
        Ok(())
    }

    /// An operator's review decision.
    pub async fn review(
        &self,
        id: &str,
        action: ReviewAction,
        operator: &str,
        reason: &str,
    ) -> Result<Outcome, ServiceError> {
        if operator.trim().is_empty() {
            return Err(ServiceError::Invalid("operator: required".into()));
        }
        let command =
            Command::Review { conversion_id: id.into(), action, operator: operator.into(), reason: reason.into() };
        self.submit_retrying(command).await
    }

    /// A manual credit or debit of a user's available cashback. `key` makes it idempotent.
    pub async fn adjust(
        &self,
        key: &str,
        user_id: &str,
        currency: &str,
        amount: i64,
        operator: &str,
        reason: &str,
    ) -> Result<Outcome, ServiceError> {
        if operator.trim().is_empty() {
            return Err(ServiceError::Invalid("operator: required".into()));
        }
        let command = Command::Adjustment {
            key: key.into(),
            user_id: user_id.into(),
            currency: currency.into(),
            amount,
            operator: operator.into(),
            reason: reason.into(),
        };
        Ok(self.writer.submit(command, None).await?)
    }

    /// Moves every completed conversion whose reward delay has passed from pending to
    /// available. Returns how many matured.
    pub async fn mature_due(&self) -> Result<usize, ServiceError> {
        let now = self.clock.now();
        let rows = sqlx::query(
            "SELECT id FROM conversions WHERE state = 'COMPLETED' AND status = 'processed' \
             AND matured_at IS NULL AND matures_at <= $1 ORDER BY matures_at, id",
        )
        .bind(now)
        .fetch_all(&self.db.pool)
        .await?;
        let mut matured = 0;
        for row in rows {
            let id: String = row.try_get(0)?;
            if let Outcome::Applied { .. } = self.submit_retrying(Command::Mature { conversion_id: id }).await? {
                matured += 1;
            }
        }
        Ok(matured)
    }

    /// A conversion as stored.
    pub async fn conversion(&self, id: &str) -> Result<Option<ConversionRow>, ServiceError> {
        let mut conn = self.db.pool.acquire().await?;
        Ok(store::load(&mut conn, id).await?)
    }

    /// Conversions with a status (the review queue: `PendingReview` and `Held`; parked;
    /// failed), oldest first.
    pub async fn by_status(&self, status: Status, limit: i64) -> Result<Vec<ConversionRow>, ServiceError> {
        let mut conn = self.db.pool.acquire().await?;
        Ok(store::by_status(&mut conn, status, limit).await?)
    }

    /// A page of the review queue (pending review and held), oldest report first: the
    /// conversions after `after` (`(reported_at, id)` of the previous page's last row),
    /// at most `limit`. The admin API and the dashboard both page it this way, so a page
    /// is a range read of the `(status, reported_at)` order however deep it goes.
    pub async fn review_queue(
        &self,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<ConversionRow>, ServiceError> {
        let mut conn = self.db.pool.acquire().await?;
        Ok(store::page_by_status(&mut conn, [Status::PendingReview, Status::Held], after, limit).await?)
    }

    /// A page of the parked and failed conversions, oldest report first, paged as
    /// [`Service::review_queue`] (the dashboard's review page lists them under the queue).
    pub async fn waiting(&self, after: Option<(i64, String)>, limit: i64) -> Result<Vec<ConversionRow>, ServiceError> {
        let mut conn = self.db.pool.acquire().await?;
        Ok(store::page_by_status(&mut conn, [Status::Failed, Status::Parked], after, limit).await?)
    }

    /// What happened to a conversion, oldest first.
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, ServiceError> {
        let rows = sqlx::query(
            "SELECT at, kind, from_state, to_state, detail FROM conversion_history WHERE conversion_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HistoryEntry {
                    at: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    from_state: r.try_get(2)?,
                    to_state: r.try_get(3)?,
                    detail: r.try_get(4)?,
                })
            })
            .collect()
    }

    // ---- configuration -------------------------------------------------------------

    /// Creates or updates a merchant. Switching mode affects new orders only (seed 002).
    pub async fn upsert_merchant(
        &self,
        id: &str,
        name: &str,
        manual: bool,
        reward_delay_days: i64,
    ) -> Result<(), ServiceError> {
        if !(0..=3650).contains(&reward_delay_days) {
            return Err(ServiceError::Invalid("reward_delay_days: must be between 0 and 3650".into()));
        }
        sqlx::query(
            "INSERT INTO merchants (id, name, processing_mode, reward_delay_days, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET name = $2, processing_mode = $3, reward_delay_days = $4",
        )
        .bind(id)
        .bind(name)
        .bind(if manual { "manual" } else { "automatic" })
        .bind(reward_delay_days)
        .bind(self.clock.now())
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Maps a network's merchant reference to a merchant; conversions parked because the
    /// reference was not mapped are processed. Returns how many of them were processed
    /// (and credited or decided; some may stay parked for another reason).
    pub async fn map_merchant_ref(
        &self,
        network: &str,
        merchant_ref: &str,
        merchant: &str,
    ) -> Result<usize, ServiceError> {
        if merchant_ref.is_empty() || merchant_ref.chars().count() > 255 {
            return Err(ServiceError::Invalid("merchant_ref: 1 to 255 characters".into()));
        }
        if sqlx::query("SELECT 1 FROM merchants WHERE id = $1")
            .bind(merchant)
            .fetch_optional(&self.db.pool)
            .await?
            .is_none()
        {
            return Err(ServiceError::Invalid(format!("merchant: no merchant {merchant:?}")));
        }
        sqlx::query(
            "INSERT INTO merchant_refs (network_id, merchant_ref, merchant_id) VALUES ($1, $2, $3) \
             ON CONFLICT (network_id, merchant_ref) DO UPDATE SET merchant_id = $3",
        )
        .bind(network)
        .bind(merchant_ref)
        .bind(merchant)
        .execute(&self.db.pool)
        .await?;
        let parked: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM conversions WHERE status = 'parked' AND network_id = $1 AND merchant_ref = $2 \
             ORDER BY reported_at, id",
        )
        .bind(network)
        .bind(merchant_ref)
        .fetch_all(&self.db.pool)
        .await?;
        let reason = format!("network {network}'s merchant ref {merchant_ref} was mapped to merchant {merchant}");
        let mut processed = 0;
        for id in &parked {
            if let Outcome::Applied { status, .. } = self.reprocess_with(id, Some(&reason), None).await?
                && status != Status::Parked
            {
                processed += 1;
            }
        }
        Ok(processed)
    }

    /// Whether a stored plugin may be put to use: it embeds fixtures and passes them all
    /// in the sandbox ([`crate::plugin::fixtures::prove`], what `plugin upload` checks).
    /// Checked again at every activation, so that a component stored before the registry
    /// checked fixtures (or by any other way around it) cannot go live.
    pub async fn prove_plugin(&self, plugin: &LoadedPlugin) -> Result<usize, ServiceError> {
        // The loaded plugin is cached by digest: this is a lookup, not a compilation.
        let (runtime, p) = (self.runtime.clone(), self.runtime.load_digest(&plugin.digest)?);
        tokio::task::spawn_blocking(move || crate::plugin::fixtures::prove(&runtime, &p))
            .await
            .map_err(|e| ServiceError::Invalid(format!("fixture task failed: {e}")))?
            .map_err(ServiceError::Invalid)
    }

    /// Sets a merchant's rule chain: plugins (by digest) with their configs, applied in
    /// order. Each plugin must prove itself ([`Service::prove_plugin`]) and each config is
    /// checked against its plugin's schema.
    pub async fn set_rules(&self, merchant: &str, chain: &[(String, serde_json::Value)]) -> Result<(), ServiceError> {
        let mut loaded = Vec::new();
        for (digest, config) in chain {
            let plugin = self.plugin(digest).await?;
            if plugin.kind() != PluginKind::MerchantRules {
                return Err(ServiceError::Invalid(format!(
                    "{} is a {}, not a rule plugin",
                    plugin.label(),
                    plugin.kind()
                )));
            }
            plugin
                .manifest
                .validate_config(config)
                .map_err(|e| ServiceError::Invalid(format!("{}: {e}", plugin.label())))?;
            self.prove_plugin(&plugin).await?;
            loaded.push((digest, config));
        }
        let mut tx = crate::db::begin(&self.db.pool).await?;
        sqlx::query("DELETE FROM merchant_rules WHERE merchant_id = $1").bind(merchant).execute(&mut *tx).await?;
        for (i, (digest, config)) in loaded.into_iter().enumerate() {
            sqlx::query(
                "INSERT INTO merchant_rules (merchant_id, position, plugin_digest, config) VALUES ($1, $2, $3, $4)",
            )
            .bind(merchant)
            .bind(i as i64)
            .bind(digest.as_str())
            .bind(config.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A stored plugin, loaded (compiled once per digest, then cached).
    pub async fn plugin(&self, digest: &str) -> Result<Arc<LoadedPlugin>, ServiceError> {
        let parsed = crate::plugin::Digest::parse(digest)
            .ok_or_else(|| ServiceError::Invalid(format!("bad digest {digest:?}")))?;
        if let Ok(p) = self.runtime.load_digest(&parsed) {
            return Ok(p);
        }
        let row = sqlx::query("SELECT bytes FROM plugins WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| ServiceError::Invalid(format!("plugin {digest} is not stored")))?;
        let bytes: Vec<u8> = row.try_get(0)?;
        Ok(self.runtime.load(&bytes)?)
    }

    /// Runs the merchant's rule chain on an order, with the merchant's configuration at
    /// version `config` or newer (from the catalog), and the user's prior orders at the
    /// merchant (`prior`, else counted here). Plugin failures become
    /// [`Evaluation::Failed`]; only infrastructure errors are `Err`.
    async fn evaluate(
        &self,
        merchant: &str,
        user: &str,
        order: latest::Order,
        config: i64,
        prior: Option<i64>,
    ) -> Result<Evaluation, ServiceError> {
        let config = self.catalog.merchant(&self.db, merchant, config).await?;
        let Some(config) = config.value else {
            return Err(ApplyError::Invalid(format!("merchant {merchant} does not exist")).into());
        };
        let prior: i64 = match prior {
            Some(n) => n,
            None => sqlx::query(
                "SELECT COUNT(*) FROM conversions WHERE user_id = $1 AND merchant_id = $2 AND id <> $3 \
                 AND status NOT IN ('rejected', 'reversed')",
            )
            .bind(user)
            .bind(merchant)
            .bind(&order.conversion_id)
            .fetch_one(&self.db.pool)
            .await?
            .try_get(0)?,
        };
        let mut chain = Vec::new();
        for (digest, link_config) in &config.chain {
            chain.push(Link { plugin: self.plugin(digest).await?, config: link_config.clone() });
        }
        let refs = rules::refs(&chain);
        if chain.is_empty() {
            return Ok(Evaluation::Failed { error: format!("merchant {merchant} has no rule plugin"), plugins: refs });
        }
        let (mode, default_delay_days) = (config.processing_mode.clone(), config.reward_delay_days);
        let shadow = match &config.shadow {
            Some((digest, position, shadow_config)) => {
                let link = Link { plugin: self.plugin(digest).await?, config: shadow_config.clone() };
                Some((digest.clone(), super::shadow::substitute(&chain, *position, link)))
            }
            None => None,
        };
        let inputs =
            RuleInputs { order, now: self.clock.now(), prior_orders: u32::try_from(prior).unwrap_or(u32::MAX) };
        let runtime = self.runtime.clone();
        let (result, shadow) = {
            let inputs = inputs.clone();
            tokio::task::spawn_blocking(move || {
                let live = rules::run_chain(&runtime, &chain, &inputs);
                let shadow = shadow.map(|(candidate, chain)| (candidate, rules::run_chain(&runtime, &chain, &inputs)));
                (live, shadow)
            })
            .await
            .map_err(|e| ServiceError::Invalid(format!("rule evaluation task failed: {e}")))?
        };
        if let Some((candidate, outcome)) = shadow {
            // Recorded, never posted. A failure to record it must not fail the live
            // conversion: it is logged and the shadow report simply lacks this one.
            if let Err(e) =
                super::shadow::record_shadow(&self.db, merchant, &inputs, &refs, &result, &candidate, &outcome).await
            {
                tracing::warn!(merchant, error = %e, "shadow decision not recorded");
            }
        }
        Ok(match result {
            Ok(d) => Evaluation::Decided {
                cashback: d.total.minor,
                hold: d.hold.clone(),
                reward_delay_days: d.reward_delay_days,
                manual_review: mode == "manual",
                default_delay_days,
                plugins: refs,
                decision: serde_json::to_value(&d).unwrap_or_default(),
                inputs: Some(Box::new(inputs)),
            },
            Err(error) => Evaluation::Failed { error, plugins: refs },
        })
    }

    /// Replays this database's journal, in order, into `target` (which must be empty):
    /// the same commands with the same rule evaluations and times. Configuration
    /// (merchants, their network references) is copied first. Returns the number of
    /// commands replayed.
    pub async fn replay_into(&self, target: &Db) -> Result<usize, ServiceError> {
        for r in sqlx::query("SELECT id, name, processing_mode, reward_delay_days, created_at FROM merchants")
            .fetch_all(&self.db.pool)
            .await?
        {
            sqlx::query("INSERT INTO merchants (id, name, processing_mode, reward_delay_days, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(r.try_get::<String, _>(0)?)
                .bind(r.try_get::<String, _>(1)?)
                .bind(r.try_get::<String, _>(2)?)
                .bind(r.try_get::<i64, _>(3)?)
                .bind(r.try_get::<i64, _>(4)?)
                .execute(&target.pool)
                .await?;
        }
        for r in sqlx::query("SELECT network_id, merchant_ref, merchant_id FROM merchant_refs")
            .fetch_all(&self.db.pool)
            .await?
        {
            sqlx::query("INSERT INTO merchant_refs (network_id, merchant_ref, merchant_id) VALUES ($1, $2, $3)")
                .bind(r.try_get::<String, _>(0)?)
                .bind(r.try_get::<String, _>(1)?)
                .bind(r.try_get::<String, _>(2)?)
                .execute(&target.pool)
                .await?;
        }
        let rows =
            sqlx::query("SELECT seq, payload, recorded_at FROM journal ORDER BY seq").fetch_all(&self.db.pool).await?;
        for row in &rows {
            let seq: i64 = row.try_get(0)?;
            let payload: String = row.try_get(1)?;
            let at: i64 = row.try_get(2)?;
            let command: Command =
                serde_json::from_str(&payload).map_err(|e| ServiceError::Invalid(format!("journal {seq}: {e}")))?;
            let mut tx = crate::db::begin(&target.pool).await?;
            store::journal_and_apply(&mut tx, &command, at, None, Some(seq)).await?;
            tx.commit().await?;
        }
        if target.backend == Backend::Postgres {
            // Explicit sequence numbers do not advance the sequence; later inserts must not collide.
            sqlx::query(
                "SELECT setval(pg_get_serial_sequence('journal', 'seq'), COALESCE((SELECT MAX(seq) FROM journal), 1))",
            )
            .execute(&target.pool)
            .await?;
        }
        Ok(rows.len())
    }
}

/// The order a rule sees for an incoming event.
fn order_from_event(
    id: &str,
    e: &latest::ConversionEvent,
    merchant: &str,
    user: &str,
    clicked_at: Option<i64>,
) -> latest::Order {
    latest::Order {
        conversion_id: id.to_string(),
        merchant: merchant.to_string(),
        network: e.network.clone(),
        order_id: e.order_id.clone().unwrap_or_else(|| e.transaction_id.clone()),
        event_type: e.event_type.clone(),
        state: e.state,
        amount: latest::Money { minor: e.amount, currency: e.currency.clone() },
        commission: latest::Money { minor: e.commission, currency: e.currency.clone() },
        line_items: lines_or_whole(e.line_items.clone(), e.amount),
        event_time: e.event_time,
        click_time: clicked_at,
        user_id: Some(user.to_string()),
    }
}

fn order_from_row(r: &ConversionRow, merchant: &str, user: &str) -> latest::Order {
    let lines: Vec<latest::LineItem> = serde_json::from_str(&r.line_items).unwrap_or_default();
    let state = match r.state {
        super::State::Created => latest::ConversionState::Created,
        super::State::Pending => latest::ConversionState::Pending,
        super::State::Adjusted => latest::ConversionState::Adjusted,
        super::State::Completed => latest::ConversionState::Completed,
        super::State::Rejected => latest::ConversionState::Rejected,
        super::State::Reversed => latest::ConversionState::Reversed,
    };
    latest::Order {
        conversion_id: r.id.clone(),
        merchant: merchant.to_string(),
        network: r.network_id.clone(),
        order_id: r.order_id.clone().unwrap_or_else(|| r.transaction_id.clone()),
        event_type: r.event_type.clone(),
        state,
        amount: latest::Money { minor: r.amount, currency: r.currency.clone() },
        commission: latest::Money { minor: r.commission, currency: r.currency.clone() },
        line_items: lines_or_whole(lines, r.amount),
        event_time: r.event_time,
        click_time: r.clicked_at,
        user_id: Some(user.to_string()),
    }
}

/// The contract: when the network reports no lines, the rule sees one line holding the
/// whole order, with id "order".
fn lines_or_whole(lines: Vec<latest::LineItem>, amount: i64) -> Vec<latest::LineItem> {
    if lines.is_empty() {
        vec![latest::LineItem { id: "order".into(), sku: String::new(), category: String::new(), quantity: 1, amount }]
    } else {
        lines
    }
}

/// Counts one event's outcome in the metrics (`cashbackd_ingest_events_total`).
fn record_outcome(network: &str, via: &'static str, result: &Result<Outcome, ServiceError>) {
    use crate::conversions::ApplyError;
    let outcome = match result {
        Ok(Outcome::Applied { created: true, .. }) => "created",
        Ok(Outcome::Applied { created: false, .. }) => "updated",
        Ok(Outcome::Duplicate { .. }) => "duplicate",
        Ok(Outcome::Ignored { .. }) => "ignored",
        Ok(Outcome::Registered { .. } | Outcome::Adjusted { .. } | Outcome::Payout { .. }) => return,
        Err(ServiceError::Invalid(_) | ServiceError::Apply(ApplyError::Invalid(_))) => "rejected",
        Err(_) => "failed",
    };
    crate::metrics::ingest_event(network, via, outcome);
}

/// Payouts go through this service's writer (`payouts::service` takes it as a trait, so
/// that payouts need not know the conversions).
impl crate::payouts::service::PayoutWrites for Service {
    fn db(&self) -> &crate::db::Db {
        Service::db(self)
    }

    async fn write(
        &self,
        command: crate::payouts::service::PayoutCommand,
        expected_version: Option<i64>,
    ) -> Result<(crate::payouts::Payout, bool), crate::payouts::PayoutError> {
        use crate::payouts::service::PayoutCommand;
        let command = match command {
            PayoutCommand::Request { payout_id, user_id, currency, amount, minimum, request_key, requested_by } => {
                Command::PayoutRequest { payout_id, user_id, currency, amount, minimum, request_key, requested_by }
            }
            PayoutCommand::Step { payout_id, action, operator } => Command::PayoutStep { payout_id, action, operator },
        };
        match self.submit(command, expected_version).await.map_err(payout_error)? {
            Outcome::Payout { payout, changed } => Ok((*payout, changed)),
            other => Err(crate::payouts::PayoutError::Unavailable(format!(
                "unexpected outcome of a payout command: {other:?}"
            ))),
        }
    }
}

/// A writer's refusal or failure, as the payouts' callers see it.
fn payout_error(e: ApplyError) -> crate::payouts::PayoutError {
    use crate::payouts::PayoutError;
    match e {
        ApplyError::Payout(r) => PayoutError::Refused(r),
        ApplyError::Db(e) | ApplyError::Ledger(crate::ledger::LedgerError::Db(e)) => PayoutError::Db(e),
        other => PayoutError::Unavailable(other.to_string()),
    }
}
