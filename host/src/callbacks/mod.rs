//! Partner callbacks (seeds 001, 003, 004): stateful postbacks to partners' endpoints.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | partners and endpoints: configuration, validation, retry policy |
//! | `template.rs` | URL templates: `[%CASHBACK:...%]` macros and `{name}` placeholders |
//! | `sign.rs` | HMAC query signatures (GET), Standard Webhooks (POST) |
//! | `deliver/` | the delivery worker, one file per phase (claim, render and sign, send, record) and its loop; the tester; the delivery log and replay (map in its `mod.rs`) |
//! | `net.rs` | outbound safety: no private addresses unless allowed, capped bodies |
//!
//! The changes they send come from the transactional outbox (`crate::outbox`), written
//! with every conversion and payout change.
//!
//! How it fits together, and what a partner must do to verify a callback:
//! `docs/CALLBACKS.md`.

pub mod deliver;
pub mod net;
pub mod sign;
pub mod template;

use crate::conversions::State;
use crate::db::Db;
use serde::Serialize;
use sign::Secret;
use sqlx::{AnyConnection, Row};
use std::collections::BTreeMap;

pub use deliver::{Deliverer, DeliveryConfig};

/// Why a callback operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// Bad input; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such partner, endpoint or delivery.
    #[error("{0}")]
    NotFound(String),
    /// The resource's state does not allow it (a delivery still pending cannot be replayed).
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

fn invalid(field: &str, why: impl std::fmt::Display) -> CallbackError {
    CallbackError::Invalid(format!("{field}: {why}"))
}

/// GET (the values in the URL) or POST (a JSON body as well, Standard Webhooks headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// GET.
    Get,
    /// POST with a JSON body.
    Post,
}

impl Method {
    /// `GET` or `POST`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }

    /// Parses `get`/`GET`/`post`/`POST`.
    pub fn parse(s: &str) -> Option<Method> {
        match s.to_ascii_uppercase().as_str() {
            "GET" => Some(Method::Get),
            "POST" => Some(Method::Post),
            _ => None,
        }
    }
}

/// How the wait between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// The same wait every time (seed 003: 5 minutes).
    Fixed,
    /// Doubling from the first wait up to the maximum (Svix-like).
    Exponential,
}

impl Backoff {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Backoff::Fixed => "fixed",
            Backoff::Exponential => "exponential",
        }
    }
}

/// What an endpoint gets for the settings its creator leaves out, the same for
/// `cashbackd endpoint add` and `PUT /api/v1/callbacks/endpoints/{id}`: built from the
/// `callbacks.*` configuration by [`crate::config::CallbackSettings::endpoint_defaults`].
/// Its `Default` is seed 003's (3 attempts, 5 minutes apart), which is also the
/// configuration's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointDefaults {
    /// The retry schedule.
    pub retry: RetryPolicy,
    /// Request timeout, ms.
    pub timeout_ms: i64,
    /// Failed attempts in a row before the endpoint is disabled.
    pub disable_after: u32,
}

impl Default for EndpointDefaults {
    fn default() -> Self {
        EndpointDefaults { retry: RetryPolicy::default(), timeout_ms: 10_000, disable_after: 20 }
    }
}

/// An endpoint's retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (seed 003: 3).
    pub max_attempts: u32,
    /// Fixed or exponential.
    pub backoff: Backoff,
    /// The (first) wait, ms (seed 003: 5 minutes).
    pub delay_ms: i64,
    /// The longest wait, ms (also caps a partner's `Retry-After`).
    pub max_delay_ms: i64,
    /// Each wait is moved randomly by up to this percentage, so that retries after an
    /// outage do not all arrive at once.
    pub jitter_pct: u32,
}

impl Default for RetryPolicy {
    /// Seed 003: 3 tries, 5 minutes apart.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Fixed,
            delay_ms: 5 * 60_000,
            max_delay_ms: 24 * 3_600_000,
            jitter_pct: 0,
        }
    }
}

impl RetryPolicy {
    /// The wait after the `attempts`-th failed attempt (1 = the first), `unit` a random
    /// number in [0, 1) for the jitter.
    pub fn delay_after(&self, attempts: u32, unit: f64) -> i64 {
        let base = match self.backoff {
            Backoff::Fixed => self.delay_ms,
            Backoff::Exponential => {
                let doublings = attempts.saturating_sub(1).min(40);
                self.delay_ms.saturating_mul(1i64 << doublings)
            }
        }
        .min(self.max_delay_ms.max(self.delay_ms));
        let spread = base as f64 * f64::from(self.jitter_pct) / 100.0;
        (base as f64 + spread * (2.0 * unit - 1.0)).round().max(0.0) as i64
    }
}

/// A partner (publisher) who receives callbacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Partner {
    /// Its id.
    pub id: String,
    /// Display name.
    pub name: String,
}

/// An endpoint as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSpec {
    /// Its id.
    pub id: String,
    /// The partner.
    pub partner_id: String,
    /// URL template with macros (`template.rs`).
    pub url_template: String,
    /// GET or POST.
    pub method: Method,
    /// Static custom parameters.
    pub params: BTreeMap<String, String>,
    /// Signing secrets, newest first; none: unsigned.
    pub secrets: Vec<Secret>,
    /// The query parameter of a GET signature.
    pub signature_param: String,
    /// Only this merchant's conversions.
    pub merchant_id: Option<String>,
    /// Only this network's conversions.
    pub network_id: Option<String>,
    /// Only conversions whose click carried a ref_id (seed 003).
    pub require_ref_id: bool,
    /// The states it receives, in the lifecycle's order; `None`: every state (seed 001:
    /// stateful), the click's CREATED included.
    pub states: Option<Vec<State>>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Per-request timeout, ms.
    pub timeout_ms: i64,
    /// Failed attempts in a row after which the endpoint is disabled.
    pub disable_after: u32,
    /// What it is sent: conversion changes, payout changes, or both.
    pub events: Events,
}

/// What an endpoint is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Events {
    /// Conversion changes (every state, seed 001).
    pub conversions: bool,
    /// Payout changes (requested, approved, rejected, paid, failed).
    pub payouts: bool,
}

impl Default for Events {
    /// Conversions only: an endpoint takes payout events when its partner asks for them.
    fn default() -> Self {
        Events { conversions: true, payouts: false }
    }
}

impl Events {
    /// Parses a list of `conversions` and `payouts` (`--events conversions,payouts`).
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Events, CallbackError> {
        let mut e = Events { conversions: false, payouts: false };
        for name in names {
            match name.trim() {
                "conversions" => e.conversions = true,
                "payouts" => e.payouts = true,
                "" => {}
                other => return Err(invalid("events", format!("{other:?} is not conversions or payouts"))),
            }
        }
        if !(e.conversions || e.payouts) {
            return Err(invalid("events", "at least one of conversions, payouts"));
        }
        Ok(e)
    }

    /// The names, as listed and returned by the API.
    pub fn names(self) -> Vec<&'static str> {
        [(self.conversions, "conversions"), (self.payouts, "payouts")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect()
    }
}

impl EndpointSpec {
    /// A GET endpoint with seed 003's defaults.
    pub fn new(id: &str, partner_id: &str, url_template: &str) -> EndpointSpec {
        EndpointSpec {
            id: id.into(),
            partner_id: partner_id.into(),
            url_template: url_template.into(),
            method: Method::Get,
            params: BTreeMap::new(),
            secrets: Vec::new(),
            signature_param: "signature".into(),
            merchant_id: None,
            network_id: None,
            require_ref_id: false,
            states: None,
            retry: EndpointDefaults::default().retry,
            timeout_ms: EndpointDefaults::default().timeout_ms,
            disable_after: EndpointDefaults::default().disable_after,
            events: Events::default(),
        }
    }

    /// A new endpoint with the given defaults for what its creator leaves out.
    pub fn with_defaults(id: &str, partner_id: &str, url_template: &str, defaults: &EndpointDefaults) -> EndpointSpec {
        EndpointSpec {
            retry: defaults.retry,
            timeout_ms: defaults.timeout_ms,
            disable_after: defaults.disable_after,
            ..EndpointSpec::new(id, partner_id, url_template)
        }
    }

    /// Checks every field; the error names the field as the admin API does
    /// (`retry_delay_secs: ...`). The CLI names it by its option: [`EndpointSpec::check`].
    pub fn validate(&self) -> Result<template::Template, CallbackError> {
        self.check().map_err(|e| CallbackError::Invalid(e.to_string()))
    }

    /// Checks every field; the error says which, so that each interface can name it its
    /// own way ([`EndpointField`]).
    pub fn check(&self) -> Result<template::Template, FieldError> {
        use EndpointField as F;
        let bad = |field: EndpointField, why: String| Err(FieldError { field, why });
        if !valid_id(&self.id) {
            return bad(F::Id, "1 to 64 characters: letters, digits, '-', '_', '.'".into());
        }
        let t = match template::Template::parse(&self.url_template) {
            Ok(t) => t,
            Err(e) => return bad(F::Url, e.to_string()),
        };
        // The template must make an http(s) URL whatever the values.
        let sample = t.render(&template::Values::new());
        let parsed = match url::Url::parse(&sample) {
            Ok(u) => u,
            Err(e) => return bad(F::Url, format!("not a valid URL ({e})")),
        };
        if !matches!(parsed.scheme(), "http" | "https") {
            return bad(F::Url, "must start with https:// or http://".into());
        }
        if parsed.host_str().is_none_or(|h| h.is_empty()) {
            return bad(F::Url, "has no host (the host cannot be a macro)".into());
        }
        for k in self.params.keys() {
            if k.is_empty() || k == &self.signature_param {
                return bad(F::Param, format!("{k:?} is empty or the signature parameter"));
            }
        }
        if self.signature_param.is_empty()
            || !self.signature_param.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return bad(F::SignatureParam, "letters, digits and '_' only".into());
        }
        if self.method == Method::Post && self.secrets.iter().any(|s| !s.expose().starts_with(sign::PREFIX)) {
            return bad(F::Secret, "POST endpoints sign with Standard Webhooks: whsec_ secrets only".into());
        }
        let r = &self.retry;
        if !(1..=MAX_ATTEMPTS).contains(&r.max_attempts) {
            return bad(F::MaxAttempts, format!("between 1 and {MAX_ATTEMPTS}, got {}", r.max_attempts));
        }
        if !(MIN_RETRY_DELAY_MS..=MAX_RETRY_DELAY_MS).contains(&r.delay_ms) {
            return bad(
                F::RetryDelay,
                format!(
                    "between {} and {} seconds (1 s to 7 days), got {}",
                    MIN_RETRY_DELAY_MS / 1000,
                    MAX_RETRY_DELAY_MS / 1000,
                    seconds(r.delay_ms)
                ),
            );
        }
        if r.max_delay_ms < r.delay_ms || r.max_delay_ms > MAX_LONGEST_WAIT_MS {
            return bad(
                F::MaxDelay,
                format!(
                    "at least the retry delay ({} s) and at most {} seconds (30 days), got {}",
                    seconds(r.delay_ms),
                    MAX_LONGEST_WAIT_MS / 1000,
                    seconds(r.max_delay_ms)
                ),
            );
        }
        if r.jitter_pct > 100 {
            return bad(F::Jitter, format!("a percentage, 0 to 100, got {}", r.jitter_pct));
        }
        if !(100..=120_000).contains(&self.timeout_ms) {
            return bad(F::Timeout, format!("between 100 and 120000 ms, got {}", self.timeout_ms));
        }
        if !(1..=10_000).contains(&self.disable_after) {
            return bad(F::DisableAfter, format!("between 1 and 10000, got {}", self.disable_after));
        }
        if self.states.as_ref().is_some_and(Vec::is_empty) {
            return bad(F::States, "at least one state (leave it out for every state)".into());
        }
        if !(self.events.conversions || self.events.payouts) {
            return bad(F::Events, "at least one of conversions, payouts".into());
        }
        Ok(t)
    }
}

/// Every state, in the lifecycle's order: what an endpoint without a states filter gets.
pub const ALL_STATES: [State; 6] =
    [State::Created, State::Pending, State::Adjusted, State::Completed, State::Rejected, State::Reversed];

/// An endpoint's states filter from the names an operator gave (any case, each once or
/// more): the states in the lifecycle's order. The error names the field `states` and
/// the name it does not know.
pub fn parse_states<S: AsRef<str>>(names: &[S]) -> Result<Vec<State>, CallbackError> {
    let mut wanted = Vec::new();
    for name in names {
        let name = name.as_ref().trim();
        let state = State::parse(&name.to_ascii_uppercase()).ok_or_else(|| {
            let known = ALL_STATES.map(State::as_str).join(", ");
            invalid("states", format!("{name:?} is not a state (one of {known})"))
        })?;
        wanted.push(state);
    }
    Ok(ALL_STATES.into_iter().filter(|s| wanted.contains(s)).collect())
}

/// The column `callback_endpoints.states`: `CREATED,PENDING`, or NULL for every state.
fn states_column(states: Option<&[State]>) -> Option<String> {
    states.map(|v| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","))
}

/// Most attempts of one delivery.
pub const MAX_ATTEMPTS: u32 = 50;
/// The shortest wait between attempts: 1 s (a partner that fails gets at least that long).
pub const MIN_RETRY_DELAY_MS: i64 = 1_000;
/// The longest first wait between attempts: 7 days.
pub const MAX_RETRY_DELAY_MS: i64 = 7 * 86_400_000;
/// The longest wait between attempts (with backoff, or a partner's `Retry-After`): 30 days.
pub const MAX_LONGEST_WAIT_MS: i64 = 30 * 86_400_000;

/// Milliseconds as the seconds an operator gave (`1.5` for 1500 ms).
fn seconds(ms: i64) -> String {
    if ms % 1000 == 0 { (ms / 1000).to_string() } else { format!("{:.3}", ms as f64 / 1000.0) }
}

/// A field of an endpoint, as each interface names it: the admin API's JSON, the CLI's
/// option, the configuration's default. An error message is only useful if it names what
/// the operator typed (`--retry-delay`, not `--retry_delay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointField {
    /// The endpoint's id.
    Id,
    /// The URL template.
    Url,
    /// A static parameter.
    Param,
    /// The GET signature's parameter.
    SignatureParam,
    /// The signing secret.
    Secret,
    /// Attempts in all.
    MaxAttempts,
    /// The (first) wait between attempts.
    RetryDelay,
    /// The longest wait.
    MaxDelay,
    /// The random spread.
    Jitter,
    /// The request timeout.
    Timeout,
    /// The auto-disable threshold.
    DisableAfter,
    /// The states it receives.
    States,
    /// What it is sent: conversions, payouts.
    Events,
}

impl EndpointField {
    /// Its name in `PUT /api/v1/callbacks/endpoints/{id}`.
    pub fn api_name(self) -> &'static str {
        match self {
            EndpointField::Id => "id",
            EndpointField::Url => "url_template",
            EndpointField::Param => "params",
            EndpointField::SignatureParam => "signature_param",
            EndpointField::Secret => "secret",
            EndpointField::MaxAttempts => "max_attempts",
            EndpointField::RetryDelay => "retry_delay_secs",
            EndpointField::MaxDelay => "max_delay_secs",
            EndpointField::Jitter => "jitter_pct",
            EndpointField::Timeout => "timeout_ms",
            EndpointField::DisableAfter => "disable_after",
            EndpointField::States => "states",
            EndpointField::Events => "events",
        }
    }

    /// Its option in `cashbackd endpoint add` (the id is the positional `ID`).
    pub fn flag(self) -> &'static str {
        match self {
            EndpointField::Id => "ID",
            EndpointField::Url => "--url",
            EndpointField::Param => "--param",
            EndpointField::SignatureParam => "--signature-param",
            EndpointField::Secret => "--secret",
            EndpointField::MaxAttempts => "--max-attempts",
            EndpointField::RetryDelay => "--retry-delay",
            EndpointField::MaxDelay => "--max-delay",
            EndpointField::Jitter => "--jitter",
            EndpointField::Timeout => "--timeout-ms",
            EndpointField::DisableAfter => "--disable-after",
            EndpointField::States => "--states",
            EndpointField::Events => "--events",
        }
    }

    /// The configuration key that gives its default, for the fields that have one.
    pub fn config_key(self) -> Option<&'static str> {
        match self {
            EndpointField::MaxAttempts => Some("callbacks.max_attempts"),
            EndpointField::RetryDelay => Some("callbacks.retry_delay_secs"),
            EndpointField::MaxDelay => Some("callbacks.max_delay_secs"),
            EndpointField::Jitter => Some("callbacks.jitter_pct"),
            EndpointField::Timeout => Some("callbacks.timeout_ms"),
            EndpointField::DisableAfter => Some("callbacks.disable_after"),
            _ => None,
        }
    }
}

/// A field of an endpoint that is refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {why}", field.api_name())]
pub struct FieldError {
    /// Which.
    pub field: EndpointField,
    /// Why, without the field's name.
    pub why: String,
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An endpoint with its state.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Its configuration.
    pub spec: EndpointSpec,
    /// Whether deliveries are sent.
    pub enabled: bool,
    /// Failed attempts in a row.
    pub consecutive_failures: i64,
    /// When it was disabled.
    pub disabled_at: Option<i64>,
    /// Why.
    pub disabled_reason: Option<String>,
    /// Its active partner-callback plugin, which renders its requests instead of the
    /// built-in template (`deliver/plugin.rs`); none: the template.
    pub plugin: Option<deliver::plugin::EndpointPlugin>,
}

/// An endpoint as shown to operators: secrets masked.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    /// Id.
    pub id: String,
    /// Partner.
    pub partner_id: String,
    /// URL template.
    pub url_template: String,
    /// Method.
    pub method: Method,
    /// Static parameters.
    pub params: BTreeMap<String, String>,
    /// Secrets, masked.
    pub secrets: Vec<String>,
    /// GET signature parameter.
    pub signature_param: String,
    /// Merchant filter.
    pub merchant_id: Option<String>,
    /// Network filter.
    pub network_id: Option<String>,
    /// ref_id required.
    pub require_ref_id: bool,
    /// The states it receives; null: every state.
    pub states: Option<Vec<State>>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Timeout, ms.
    pub timeout_ms: i64,
    /// Auto-disable threshold.
    pub disable_after: u32,
    /// What it is sent: `conversions`, `payouts`.
    pub events: Vec<&'static str>,
    /// Enabled.
    pub enabled: bool,
    /// Failed attempts in a row.
    pub consecutive_failures: i64,
    /// When disabled.
    pub disabled_at: Option<i64>,
    /// Why.
    pub disabled_reason: Option<String>,
    /// Deliveries waiting (pending).
    pub backlog: i64,
    /// The digest of the partner-callback plugin that renders its requests; null: the
    /// built-in template.
    pub plugin: Option<String>,
}

impl Endpoint {
    /// The operator's view (secrets masked).
    pub fn view(&self, backlog: i64) -> EndpointView {
        let s = &self.spec;
        EndpointView {
            id: s.id.clone(),
            partner_id: s.partner_id.clone(),
            url_template: s.url_template.clone(),
            method: s.method,
            params: s.params.clone(),
            secrets: s.secrets.iter().map(Secret::masked).collect(),
            signature_param: s.signature_param.clone(),
            merchant_id: s.merchant_id.clone(),
            network_id: s.network_id.clone(),
            require_ref_id: s.require_ref_id,
            states: s.states.clone(),
            retry: s.retry,
            timeout_ms: s.timeout_ms,
            disable_after: s.disable_after,
            events: s.events.names(),
            enabled: self.enabled,
            consecutive_failures: self.consecutive_failures,
            disabled_at: self.disabled_at,
            disabled_reason: self.disabled_reason.clone(),
            backlog,
            plugin: self.plugin.as_ref().map(|p| p.digest.clone()),
        }
    }
}

/// Creates or renames a partner.
pub async fn upsert_partner(db: &Db, id: &str, name: &str, now: i64) -> Result<(), CallbackError> {
    if !valid_id(id) {
        return Err(invalid("id", "1 to 64 characters: letters, digits, '-', '_', '.'"));
    }
    if name.trim().is_empty() {
        return Err(invalid("name", "required"));
    }
    sqlx::query(
        "INSERT INTO partners (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET name = $2",
    )
    .bind(id)
    .bind(name)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Every partner.
pub async fn partners(db: &Db) -> Result<Vec<Partner>, CallbackError> {
    let rows = sqlx::query("SELECT id, name FROM partners ORDER BY id").fetch_all(&db.pool).await?;
    Ok(rows
        .iter()
        .map(|r| Ok(Partner { id: r.try_get(0)?, name: r.try_get(1)? }))
        .collect::<Result<_, sqlx::Error>>()?)
}

/// Creates or replaces an endpoint's configuration (its state is kept).
pub async fn save_endpoint(db: &Db, spec: &EndpointSpec, now: i64) -> Result<(), CallbackError> {
    spec.validate()?;
    let partner =
        sqlx::query("SELECT 1 FROM partners WHERE id = $1").bind(&spec.partner_id).fetch_optional(&db.pool).await?;
    if partner.is_none() {
        return Err(invalid("partner", format!("no partner {:?} (cashbackd partner add)", spec.partner_id)));
    }
    let secrets = spec.secrets.iter().map(|s| s.expose().to_string()).collect::<Vec<_>>().join("\n");
    let params = serde_json::to_string(&spec.params).map_err(|e| invalid("param", e))?;
    let r = &spec.retry;
    sqlx::query(
        "INSERT INTO callback_endpoints (id, partner_id, url_template, method, params, secrets, signature_param, \
         merchant_id, network_id, require_ref_id, max_attempts, backoff, retry_delay_ms, max_delay_ms, jitter_pct, \
         timeout_ms, disable_after, created_at, updated_at, states, send_conversions, send_payouts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $18, $19, $20, $21) \
         ON CONFLICT (id) DO UPDATE SET partner_id = $2, url_template = $3, method = $4, params = $5, secrets = $6, \
         signature_param = $7, merchant_id = $8, network_id = $9, require_ref_id = $10, max_attempts = $11, backoff = $12, \
         retry_delay_ms = $13, max_delay_ms = $14, jitter_pct = $15, timeout_ms = $16, disable_after = $17, updated_at = $18, \
         states = $19, send_conversions = $20, send_payouts = $21",
    )
    .bind(&spec.id)
    .bind(&spec.partner_id)
    .bind(&spec.url_template)
    .bind(spec.method.as_str())
    .bind(params)
    .bind(secrets)
    .bind(&spec.signature_param)
    .bind(&spec.merchant_id)
    .bind(&spec.network_id)
    .bind(i64::from(spec.require_ref_id))
    .bind(i64::from(r.max_attempts))
    .bind(r.backoff.as_str())
    .bind(r.delay_ms)
    .bind(r.max_delay_ms)
    .bind(i64::from(r.jitter_pct))
    .bind(spec.timeout_ms)
    .bind(i64::from(spec.disable_after))
    .bind(now)
    .bind(states_column(spec.states.as_deref()))
    .bind(i64::from(spec.events.conversions))
    .bind(i64::from(spec.events.payouts))
    .execute(&db.pool)
    .await?;
    Ok(())
}

const ENDPOINT_COLUMNS: &str = "id, partner_id, url_template, method, params, secrets, signature_param, merchant_id, \
    network_id, require_ref_id, max_attempts, backoff, retry_delay_ms, max_delay_ms, jitter_pct, timeout_ms, \
    disable_after, enabled, consecutive_failures, disabled_at, disabled_reason, states, send_conversions, send_payouts, plugin_digest, plugin_config";

fn endpoint_from_row(r: &sqlx::any::AnyRow) -> Result<Endpoint, sqlx::Error> {
    let bad = |what: &str| sqlx::Error::Decode(format!("callback_endpoints: bad {what}").into());
    let method: String = r.try_get(3)?;
    let params: String = r.try_get(4)?;
    let secrets: String = r.try_get(5)?;
    let backoff: String = r.try_get(11)?;
    let method = Method::parse(&method).ok_or_else(|| bad("method"))?;
    let states = r
        .try_get::<Option<String>, _>(21)?
        .map(|list| list.split(',').map(|s| State::parse(s).ok_or_else(|| bad("states"))).collect())
        .transpose()?;
    Ok(Endpoint {
        spec: EndpointSpec {
            id: r.try_get(0)?,
            partner_id: r.try_get(1)?,
            url_template: r.try_get(2)?,
            method,
            params: serde_json::from_str(&params).map_err(|_| bad("params"))?,
            secrets: secrets
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| Secret::parse(l, false))
                .collect::<Result<_, _>>()
                .map_err(|_| bad("secret"))?,
            signature_param: r.try_get(6)?,
            merchant_id: r.try_get(7)?,
            network_id: r.try_get(8)?,
            require_ref_id: r.try_get::<i64, _>(9)? != 0,
            states,
            retry: RetryPolicy {
                max_attempts: u32::try_from(r.try_get::<i64, _>(10)?).map_err(|_| bad("max_attempts"))?,
                backoff: if backoff == "exponential" { Backoff::Exponential } else { Backoff::Fixed },
                delay_ms: r.try_get(12)?,
                max_delay_ms: r.try_get(13)?,
                jitter_pct: u32::try_from(r.try_get::<i64, _>(14)?).map_err(|_| bad("jitter_pct"))?,
            },
            timeout_ms: r.try_get(15)?,
            disable_after: u32::try_from(r.try_get::<i64, _>(16)?).map_err(|_| bad("disable_after"))?,
            events: Events { conversions: r.try_get::<i64, _>(22)? != 0, payouts: r.try_get::<i64, _>(23)? != 0 },
        },
        enabled: r.try_get::<i64, _>(17)? != 0,
        consecutive_failures: r.try_get(18)?,
        disabled_at: r.try_get(19)?,
        disabled_reason: r.try_get(20)?,
        plugin: match (r.try_get::<Option<String>, _>(24)?, r.try_get::<Option<String>, _>(25)?) {
            (Some(digest), config) => {
                Some(deliver::plugin::EndpointPlugin { digest, config: config.unwrap_or_else(|| "{}".into()) })
            }
            (None, _) => None,
        },
    })
}

/// An endpoint by id.
pub async fn endpoint(db: &Db, id: &str) -> Result<Endpoint, CallbackError> {
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM callback_endpoints WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(&db.pool).await?;
    let row = row.ok_or_else(|| CallbackError::NotFound(format!("no callback endpoint {id:?}")))?;
    Ok(endpoint_from_row(&row)?)
}

/// Endpoints by id, in one query (the delivery worker's, for a claim's endpoints).
pub(crate) async fn endpoints_by_id(conn: &mut AnyConnection, ids: &[&str]) -> Result<Vec<Endpoint>, CallbackError> {
    let list = match crate::db::rows::backend(conn) {
        crate::db::Backend::Sqlite => "SELECT value FROM json_each($1)",
        crate::db::Backend::Postgres => "SELECT jsonb_array_elements_text($1::jsonb)",
    };
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM callback_endpoints WHERE id IN ({list})");
    let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
    let rows = sqlx::query(&sql).bind(ids).fetch_all(&mut *conn).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(endpoint_from_row(r)?);
    }
    Ok(out)
}

/// Every endpoint with its backlog, secrets masked.
pub async fn endpoints(db: &Db) -> Result<Vec<EndpointView>, CallbackError> {
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM callback_endpoints ORDER BY id");
    let rows = sqlx::query(&sql).fetch_all(&db.pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let e = endpoint_from_row(r)?;
        let backlog: i64 =
            sqlx::query("SELECT COUNT(*) FROM callback_deliveries WHERE endpoint_id = $1 AND state = 'pending'")
                .bind(&e.spec.id)
                .fetch_one(&db.pool)
                .await?
                .try_get(0)?;
        out.push(e.view(backlog));
    }
    Ok(out)
}

/// What enabling an endpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Enabled {
    /// Deliveries waiting, sent from now on in order.
    pub backlog: i64,
    /// Deliveries given up during the failures, queued again.
    pub requeued: u64,
}

/// Enables an endpoint: its backlog (the deliveries that waited while it was disabled)
/// is sent, in order; with `replay_failed`, the deliveries given up since its run of
/// failures began are queued again first.
pub async fn enable(db: &Db, id: &str, replay_failed: bool, now: i64) -> Result<Enabled, CallbackError> {
    let e = endpoint(db, id).await?;
    let mut tx = crate::db::begin(&db.pool).await?;
    let requeued = if replay_failed {
        let since: Option<i64> = sqlx::query("SELECT failing_since FROM callback_endpoints WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        match since.or(e.disabled_at) {
            Some(since) => sqlx::query(
                "UPDATE callback_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, updated_at = $1, \
                 lease_owner = NULL, lease_until = NULL WHERE endpoint_id = $2 AND state = 'failed' AND updated_at >= $3",
            )
            .bind(now)
            .bind(id)
            .bind(since)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            None => 0,
        }
    } else {
        0
    };
    sqlx::query(
        "UPDATE callback_endpoints SET enabled = 1, consecutive_failures = 0, failing_since = NULL, disabled_at = NULL, \
         disabled_reason = NULL, updated_at = $1 WHERE id = $2",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    // Waiting deliveries are due now (their retry times passed while it was off).
    sqlx::query(
        "UPDATE callback_deliveries SET next_attempt_at = $1 WHERE endpoint_id = $2 AND state = 'pending' AND next_attempt_at > $1",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let backlog: i64 =
        sqlx::query("SELECT COUNT(*) FROM callback_deliveries WHERE endpoint_id = $1 AND state = 'pending'")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
    tx.commit().await?;
    Ok(Enabled { backlog, requeued })
}

/// Disables an endpoint by hand; its deliveries wait (the backlog).
pub async fn disable(db: &Db, id: &str, reason: &str, now: i64) -> Result<(), CallbackError> {
    endpoint(db, id).await?;
    sqlx::query("UPDATE callback_endpoints SET enabled = 0, disabled_at = $1, disabled_reason = $2, updated_at = $1 WHERE id = $3")
        .bind(now)
        .bind(reason)
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// An alert an operator must see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Alert {
    /// Id.
    pub id: i64,
    /// When.
    pub at: i64,
    /// Kind (`endpoint_disabled`...).
    pub kind: String,
    /// What it is about.
    pub subject: String,
    /// What happened.
    pub message: String,
}

/// The latest alerts, newest first.
pub async fn alerts(db: &Db, limit: i64) -> Result<Vec<Alert>, CallbackError> {
    alerts_before(db, None, limit).await
}

/// The alerts older than the one with id `before` (none: the latest), newest first.
pub async fn alerts_before(db: &Db, before: Option<i64>, limit: i64) -> Result<Vec<Alert>, CallbackError> {
    let rows = sqlx::query("SELECT id, at, kind, subject, message FROM alerts WHERE id < $2 ORDER BY id DESC LIMIT $1")
        .bind(limit)
        .bind(before.unwrap_or(i64::MAX))
        .fetch_all(&db.pool)
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            Ok(Alert {
                id: r.try_get(0)?,
                at: r.try_get(1)?,
                kind: r.try_get(2)?,
                subject: r.try_get(3)?,
                message: r.try_get(4)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?)
}

/// Money for partners: a decimal in the currency's major unit (`12.34`), from minor units.
pub fn decimal(minor: i64, currency: &str) -> String {
    let formatted = cashback_sdk::money::format(minor, currency);
    formatted.rsplit_once(' ').map_or(formatted.clone(), |(n, _)| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_003_is_the_default_and_exponential_backoff_doubles_with_jitter_and_a_cap() {
        let d = RetryPolicy::default();
        assert_eq!((d.max_attempts, d.delay_after(1, 0.9), d.delay_after(2, 0.1)), (3, 300_000, 300_000));
        let e = RetryPolicy {
            max_attempts: 10,
            backoff: Backoff::Exponential,
            delay_ms: 5_000,
            max_delay_ms: 60_000,
            jitter_pct: 20,
        };
        assert_eq!(e.delay_after(1, 0.5), 5_000);
        assert_eq!(e.delay_after(3, 0.5), 20_000);
        assert_eq!(e.delay_after(9, 0.5), 60_000, "capped");
        assert_eq!(e.delay_after(3, 0.0), 16_000, "-20 %");
        assert_eq!(e.delay_after(3, 1.0), 24_000, "+20 %");
    }

    #[test]
    fn money_for_partners_is_a_decimal_in_major_units() {
        assert_eq!(decimal(1234, "EUR"), "12.34");
        assert_eq!(decimal(-5, "EUR"), "-0.05");
        assert_eq!(decimal(1234, "JPY"), "1234");
    }

    #[test]
    fn bad_endpoints_are_refused_naming_the_field() {
        let ok = EndpointSpec::new("e1", "p1", "https://p.example/cb?s=[%CASHBACK:STATE%]&c={click_id}");
        assert!(ok.validate().is_ok());
        let e = |spec: EndpointSpec| spec.validate().expect_err("refused").to_string();
        assert!(
            e(EndpointSpec { url_template: "https://p.example/?x={nope}".into(), ..ok.clone() })
                .starts_with("url_template:")
        );
        assert!(e(EndpointSpec { url_template: "ftp://p.example/".into(), ..ok.clone() }).starts_with("url_template:"));
        assert!(
            e(EndpointSpec { url_template: "https://{click_id}/".into(), ..ok.clone() }).starts_with("url_template:")
        );
        assert_eq!(e(EndpointSpec { timeout_ms: 5, ..ok.clone() }), "timeout_ms: between 100 and 120000 ms, got 5");
        let r = |delay_ms, max_delay_ms| EndpointSpec {
            retry: RetryPolicy { delay_ms, max_delay_ms, ..ok.retry },
            ..ok.clone()
        };
        assert_eq!(
            e(r(500, 60_000)),
            "retry_delay_secs: between 1 and 604800 seconds (1 s to 7 days), got 0.500",
            "the 1 s minimum"
        );
        assert!(r(1_000, 60_000).validate().is_ok(), "1 s is allowed");
        let err = r(0, 60_000).check().expect_err("0 s");
        assert_eq!(
            (err.field, err.field.flag(), err.field.config_key()),
            (EndpointField::RetryDelay, "--retry-delay", Some("callbacks.retry_delay_secs"))
        );
        assert!(e(r(60_000, 1_000)).starts_with("max_delay_secs: at least the retry delay (60 s)"));
        let plain = Secret::parse("a-long-enough-plain-secret", false).expect("secret");
        assert!(e(EndpointSpec { method: Method::Post, secrets: vec![plain], ..ok.clone() }).starts_with("secret:"));
        assert!(e(EndpointSpec { states: Some(Vec::new()), ..ok.clone() }).starts_with("states:"));
        assert!(e(EndpointSpec { id: "bad id".into(), ..ok.clone() }).starts_with("id:"));
        let none = Events { conversions: false, payouts: false };
        assert!(e(EndpointSpec { events: none, ..ok }).starts_with("events:"));
    }

    #[test]
    fn an_endpoint_takes_conversions_by_default_and_payouts_when_asked() {
        assert_eq!(Events::default().names(), ["conversions"]);
        let both = Events::parse("conversions,payouts".split(',')).expect("both");
        assert_eq!(both.names(), ["conversions", "payouts"]);
        assert_eq!(Events::parse(["payouts"]).expect("payouts").names(), ["payouts"]);
        let e = Events::parse(["payout"]).expect_err("typo").to_string();
        assert_eq!(e, "events: \"payout\" is not conversions or payouts");
        assert!(Events::parse([""]).is_err(), "nothing");
    }

    #[test]
    fn a_states_filter_is_read_in_any_case_and_order_and_an_unknown_state_is_refused_by_name() {
        let states = parse_states(&["completed", " PENDING", "Created", "pending"]).expect("states");
        assert_eq!(states, vec![State::Created, State::Pending, State::Completed]);
        assert_eq!(states_column(Some(&states)).as_deref(), Some("CREATED,PENDING,COMPLETED"));
        assert_eq!(states_column(None), None, "no filter: every state");
        let refused = parse_states(&["PENDING", "PAID"]).expect_err("PAID is no state").to_string();
        assert!(refused.starts_with("states: \"PAID\" is not a state"), "{refused}");
        assert!(refused.contains("CREATED, PENDING, ADJUSTED, COMPLETED, REJECTED, REVERSED"), "{refused}");
    }
}
