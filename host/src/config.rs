//! Configuration in layers, each overriding the one before it: the commented defaults
//! built into the binary (`host/config/cashbackd.toml`, printed by `cashbackd config
//! default`), a config file (`--config FILE`, `CASHBACKD_CONFIG`), `CASHBACKD_*`
//! environment variables, then command-line flags.
//!
//! The whole of it is checked once at start: types by serde (every table denies unknown
//! keys), then values ([`Settings::validate`]). An error names the key and where its value
//! came from: `callbacks.max_attempts: expected an integer, got "x" (from
//! CASHBACKD_CALLBACKS_MAX_ATTEMPTS)`.
//!
//! Environment variables are read by [`ENV_KEYS`], not by pattern: the environment holds
//! other `CASHBACKD_` variables (secrets for `network add`, the test database), and a
//! name with underscores in it cannot be split back into a key unambiguously.

use crate::plugin::limits::{Limits, LimitsOverride};
use figment::providers::Format as _;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The defaults, commented: the first layer, and `cashbackd config default`.
pub const DEFAULTS: &str = include_str!("../config/cashbackd.toml");

/// Everything cashbackd reads from its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Storage.
    pub database: DatabaseSettings,
    /// The HTTP server.
    pub http: HttpSettings,
    /// Public ingress (clicks, postbacks): rate limits.
    pub ingress: IngressSettings,
    /// `/metrics`.
    pub metrics: MetricsSettings,
    /// Logs.
    pub log: LogSettings,
    /// The plugin runtime.
    pub plugin: PluginSettings,
    /// Partner callbacks.
    pub callbacks: CallbackSettings,
    /// The digests' SMTP server.
    pub smtp: SmtpSettings,
    /// User notification digests.
    pub notify: NotifySettings,
    /// Payouts.
    pub payouts: PayoutSettings,
}

/// `[database]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` or `postgres://...` (a secret: its password).
    pub url: String,
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Where `serve` listens.
    pub listen: SocketAddr,
    /// Largest request body: postbacks, admin API requests, dashboard forms.
    pub max_body_bytes: usize,
    /// Largest report file uploaded to `POST /api/v1/networks/{id}/imports`.
    pub max_import_bytes: usize,
    /// Largest plugin component uploaded to `POST /api/v1/plugins`.
    pub max_plugin_bytes: usize,
}

/// `[ingress]`: rate limits of `/c/{link}` and `/postback/{network}`, per process. A
/// rate is per second; 0 turns that limit off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSettings {
    /// false: no rate limit at all.
    pub rate_limit: bool,
    /// Addresses or CIDR ranges of reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// Clicks per second from one client address.
    pub click_rate_per_address: u32,
    /// Clicks at once from one client address.
    pub click_burst_per_address: u32,
    /// Postbacks per second from one client address.
    pub postback_rate_per_address: u32,
    /// Postbacks at once from one client address.
    pub postback_burst_per_address: u32,
    /// Postbacks per second to one network.
    pub postback_rate_per_network: u32,
    /// Postbacks at once to one network.
    pub postback_burst_per_network: u32,
    /// Per-network limits replacing the two above, by network id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, NetworkRateSettings>,
    /// A click for a user without an account creates the account (false: the user's
    /// conversions park until the site creates it).
    pub create_users_on_click: bool,
    /// When set, every click carries `sig`, the site's HMAC-SHA256 of the link and user
    /// id with this secret (docs/INGEST.md): a user id cannot be forged on a public link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_secret: Option<String>,
}

/// `[ingress.networks.ID]`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRateSettings {
    /// Postbacks per second to this network (0: no limit).
    pub postback_rate: u32,
    /// Postbacks at once to this network.
    pub postback_burst: u32,
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// `/metrics` asks for an admin API token (any scope).
    pub require_token: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// `tracing` filter directives.
    pub filter: String,
}

/// `[plugin]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// The content store.
    pub store: PathBuf,
    /// Plugin calls at once.
    pub max_concurrent_calls: u32,
    /// Adapters' `http.fetch` may reach private, loopback and link-local addresses.
    pub http_allow_private: bool,
    /// Limits of a plugin whose manifest asks for nothing.
    pub defaults: LimitSettings,
    /// The most a manifest may ask for.
    pub maxima: LimitSettings,
    /// An operator's limits per plugin name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, LimitOverrideSettings>,
}

/// Per-call limits, as [`Limits`] (whose field names are the manifest's, kebab-case; the
/// configuration's keys are snake_case like the rest of it, to map onto variable names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// See [`Limits::deadline_ms`].
    pub deadline_ms: u64,
    /// See [`Limits::memory_mib`].
    pub memory_mib: u64,
    /// See [`Limits::max_input_bytes`].
    pub max_input_bytes: u64,
    /// See [`Limits::max_output_bytes`].
    pub max_output_bytes: u64,
    /// See [`Limits::max_log_bytes`].
    pub max_log_bytes: u64,
    /// See [`Limits::max_http_requests`].
    pub max_http_requests: u32,
    /// See [`Limits::max_http_response_bytes`].
    pub max_http_response_bytes: u64,
    /// See [`Limits::http_timeout_ms`].
    pub http_timeout_ms: u64,
}

impl From<Limits> for LimitSettings {
    fn from(l: Limits) -> Self {
        LimitSettings {
            deadline_ms: l.deadline_ms,
            memory_mib: l.memory_mib,
            max_input_bytes: l.max_input_bytes,
            max_output_bytes: l.max_output_bytes,
            max_log_bytes: l.max_log_bytes,
            max_http_requests: l.max_http_requests,
            max_http_response_bytes: l.max_http_response_bytes,
            http_timeout_ms: l.http_timeout_ms,
        }
    }
}

impl From<LimitSettings> for Limits {
    fn from(l: LimitSettings) -> Self {
        Limits {
            deadline_ms: l.deadline_ms,
            memory_mib: l.memory_mib,
            max_input_bytes: l.max_input_bytes,
            max_output_bytes: l.max_output_bytes,
            max_log_bytes: l.max_log_bytes,
            max_http_requests: l.max_http_requests,
            max_http_response_bytes: l.max_http_response_bytes,
            http_timeout_ms: l.http_timeout_ms,
        }
    }
}

/// One plugin's limits set by the operator; unset ones keep the manifest's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrideSettings {
    /// See [`Limits::deadline_ms`].
    pub deadline_ms: Option<u64>,
    /// See [`Limits::memory_mib`].
    pub memory_mib: Option<u64>,
    /// See [`Limits::max_input_bytes`].
    pub max_input_bytes: Option<u64>,
    /// See [`Limits::max_output_bytes`].
    pub max_output_bytes: Option<u64>,
    /// See [`Limits::max_log_bytes`].
    pub max_log_bytes: Option<u64>,
    /// See [`Limits::max_http_requests`].
    pub max_http_requests: Option<u32>,
    /// See [`Limits::max_http_response_bytes`].
    pub max_http_response_bytes: Option<u64>,
    /// See [`Limits::http_timeout_ms`].
    pub http_timeout_ms: Option<u64>,
}

impl From<LimitOverrideSettings> for LimitsOverride {
    fn from(o: LimitOverrideSettings) -> Self {
        LimitsOverride {
            deadline_ms: o.deadline_ms,
            memory_mib: o.memory_mib,
            max_input_bytes: o.max_input_bytes,
            max_output_bytes: o.max_output_bytes,
            max_log_bytes: o.max_log_bytes,
            max_http_requests: o.max_http_requests,
            max_http_response_bytes: o.max_http_response_bytes,
            http_timeout_ms: o.http_timeout_ms,
        }
    }
}

/// `[callbacks]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackSettings {
    /// Callbacks may reach private addresses.
    pub allow_private: bool,
    /// `endpoint add`'s default: attempts in all.
    pub max_attempts: u32,
    /// `endpoint add`'s default: `fixed` or `exponential`.
    pub backoff: String,
    /// `endpoint add`'s default: the (first) wait, seconds.
    pub retry_delay_secs: i64,
    /// `endpoint add`'s default: the longest wait, seconds.
    pub max_delay_secs: i64,
    /// `endpoint add`'s default: random spread of each wait, percent.
    pub jitter_pct: u32,
    /// `endpoint add`'s default: request timeout, ms.
    pub timeout_ms: i64,
    /// `endpoint add`'s default: failures in a row before the endpoint is disabled.
    pub disable_after: u32,
    /// The delivery worker: how long a replica owns the deliveries it claimed, seconds.
    /// A replica that dies holds its claims this long; a request that could outlast the
    /// claim is not started.
    pub lease_secs: i64,
    /// The delivery worker: deliveries claimed at a time.
    pub batch: usize,
    /// The delivery worker: requests in flight at once.
    pub concurrency: usize,
    /// The delivery worker: requests in flight at once to one endpoint.
    pub endpoint_concurrency: usize,
}

impl CallbackSettings {
    /// What an endpoint gets for the settings its creator leaves out: the one place
    /// `cashbackd endpoint add` and the admin API take them from. The values were
    /// checked when the settings were loaded (`Settings::validate`).
    pub fn endpoint_defaults(&self) -> crate::callbacks::EndpointDefaults {
        use crate::callbacks::{Backoff, EndpointDefaults, RetryPolicy};
        EndpointDefaults {
            retry: RetryPolicy {
                max_attempts: self.max_attempts,
                backoff: if self.backoff == "exponential" { Backoff::Exponential } else { Backoff::Fixed },
                delay_ms: self.retry_delay_secs.saturating_mul(1000),
                max_delay_ms: self.max_delay_secs.saturating_mul(1000),
                jitter_pct: self.jitter_pct,
            },
            timeout_ms: self.timeout_ms,
            disable_after: self.disable_after,
        }
    }

    /// The delivery worker's settings (`allow_private` may also come from its flag).
    pub fn delivery(&self, allow_private: bool) -> crate::callbacks::DeliveryConfig {
        crate::callbacks::DeliveryConfig {
            allow_private,
            lease_ms: self.lease_secs.saturating_mul(1000),
            batch: self.batch,
            concurrency: self.concurrency,
            endpoint_concurrency: self.endpoint_concurrency,
            ..Default::default()
        }
    }
}

/// `[smtp]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// The server (a secret: its password); none, no digest is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The sender.
    pub from: String,
    /// A PEM file of the certificate authorities to trust for the server's TLS certificate,
    /// instead of the public web roots (a company's own CA, a self-signed relay). Only with
    /// a URL that uses TLS (`smtps://` or `?tls=required|opportunistic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// `[notify]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    /// The `notify` job's cron expression.
    pub schedule: String,
    /// Attempts per e-mail.
    pub max_attempts: i64,
    /// Wait after a failed attempt, seconds (times the attempts so far).
    pub retry_delay_secs: i64,
    /// Templates overriding the built-in ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<PathBuf>,
}

/// `[payouts]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutSettings {
    /// The smallest payout per currency (ISO code), in minor units; a currency not
    /// listed takes any amount above zero.
    #[serde(default)]
    pub minimum: BTreeMap<String, i64>,
}

impl PayoutSettings {
    /// The policy the payouts module applies.
    pub fn policy(&self) -> crate::payouts::PayoutPolicy {
        crate::payouts::PayoutPolicy { minimum: self.minimum.clone() }
    }
}

impl Default for Settings {
    /// The same values as [`DEFAULTS`] (a test keeps them so).
    fn default() -> Self {
        Settings {
            database: DatabaseSettings { url: "sqlite://.cashbackd/cashbackd.db".into() },
            http: HttpSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                max_body_bytes: 1 << 20,
                max_import_bytes: 64 << 20,
                max_plugin_bytes: 32 << 20,
            },
            ingress: IngressSettings {
                rate_limit: true,
                trusted_proxies: vec!["127.0.0.1".into(), "::1".into()],
                click_rate_per_address: 20,
                click_burst_per_address: 100,
                postback_rate_per_address: 200,
                postback_burst_per_address: 2000,
                postback_rate_per_network: 200,
                postback_burst_per_network: 2000,
                networks: BTreeMap::new(),
                create_users_on_click: true,
                click_secret: None,
            },
            metrics: MetricsSettings { require_token: false },
            log: LogSettings { format: LogFormat::Text, filter: "warn".into() },
            plugin: PluginSettings {
                store: ".cashbackd/plugins".into(),
                max_concurrent_calls: 64,
                http_allow_private: false,
                defaults: Limits::host_defaults().into(),
                maxima: Limits::host_maxima().into(),
                overrides: BTreeMap::new(),
            },
            callbacks: CallbackSettings {
                allow_private: false,
                max_attempts: 3,
                backoff: "fixed".into(),
                retry_delay_secs: 300,
                max_delay_secs: 86_400,
                jitter_pct: 0,
                timeout_ms: 10_000,
                disable_after: 20,
                lease_secs: 180,
                batch: 128,
                concurrency: 32,
                endpoint_concurrency: 8,
            },
            smtp: SmtpSettings { url: None, from: "cashbackd <cashback@localhost>".into(), ca_file: None },
            notify: NotifySettings {
                schedule: "0 */4 * * *".into(),
                max_attempts: 5,
                retry_delay_secs: 600,
                templates: None,
            },
            payouts: PayoutSettings::default(),
        }
    }
}

/// What a key's environment variable holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Bool,
    Int,
    /// Comma-separated.
    List,
    /// Comma-separated `NAME=INTEGER` pairs (a table of integers).
    Map,
}

/// Every key an environment variable can set: `CASHBACKD_` and the key in capitals with
/// `.` as `_`. (`plugin.overrides.NAME.*` is only for files: plugin names are free text.)
const ENV_KEYS: &[(&str, Kind)] = &[
    ("database.url", Kind::Text),
    ("http.listen", Kind::Text),
    ("http.max_body_bytes", Kind::Int),
    ("http.max_import_bytes", Kind::Int),
    ("http.max_plugin_bytes", Kind::Int),
    ("ingress.rate_limit", Kind::Bool),
    ("ingress.trusted_proxies", Kind::List),
    ("ingress.click_rate_per_address", Kind::Int),
    ("ingress.click_burst_per_address", Kind::Int),
    ("ingress.postback_rate_per_address", Kind::Int),
    ("ingress.postback_burst_per_address", Kind::Int),
    ("ingress.postback_rate_per_network", Kind::Int),
    ("ingress.postback_burst_per_network", Kind::Int),
    ("ingress.create_users_on_click", Kind::Bool),
    ("ingress.click_secret", Kind::Text),
    ("metrics.require_token", Kind::Bool),
    ("log.format", Kind::Text),
    ("log.filter", Kind::Text),
    ("plugin.store", Kind::Text),
    ("plugin.max_concurrent_calls", Kind::Int),
    ("plugin.http_allow_private", Kind::Bool),
    ("plugin.defaults.deadline_ms", Kind::Int),
    ("plugin.defaults.memory_mib", Kind::Int),
    ("plugin.defaults.max_input_bytes", Kind::Int),
    ("plugin.defaults.max_output_bytes", Kind::Int),
    ("plugin.defaults.max_log_bytes", Kind::Int),
    ("plugin.defaults.max_http_requests", Kind::Int),
    ("plugin.defaults.max_http_response_bytes", Kind::Int),
    ("plugin.defaults.http_timeout_ms", Kind::Int),
    ("plugin.maxima.deadline_ms", Kind::Int),
    ("plugin.maxima.memory_mib", Kind::Int),
    ("plugin.maxima.max_input_bytes", Kind::Int),
    ("plugin.maxima.max_output_bytes", Kind::Int),
    ("plugin.maxima.max_log_bytes", Kind::Int),
    ("plugin.maxima.max_http_requests", Kind::Int),
    ("plugin.maxima.max_http_response_bytes", Kind::Int),
    ("plugin.maxima.http_timeout_ms", Kind::Int),
    ("callbacks.allow_private", Kind::Bool),
    ("callbacks.max_attempts", Kind::Int),
    ("callbacks.backoff", Kind::Text),
    ("callbacks.retry_delay_secs", Kind::Int),
    ("callbacks.max_delay_secs", Kind::Int),
    ("callbacks.jitter_pct", Kind::Int),
    ("callbacks.timeout_ms", Kind::Int),
    ("callbacks.disable_after", Kind::Int),
    ("callbacks.lease_secs", Kind::Int),
    ("callbacks.batch", Kind::Int),
    ("callbacks.concurrency", Kind::Int),
    ("callbacks.endpoint_concurrency", Kind::Int),
    ("smtp.url", Kind::Text),
    ("smtp.from", Kind::Text),
    ("smtp.ca_file", Kind::Text),
    ("notify.schedule", Kind::Text),
    ("notify.max_attempts", Kind::Int),
    ("notify.retry_delay_secs", Kind::Int),
    ("notify.templates", Kind::Text),
    ("payouts.minimum", Kind::Map),
];

/// Shorter names kept from before the configuration file; the `CASHBACKD_*` name of the
/// same key wins when both are set.
const ENV_ALIASES: &[(&str, &str)] =
    &[("DATABASE_URL", "database.url"), ("CASHBACKD_LISTEN", "http.listen"), ("CASHBACKD_LOG", "log.filter")];

/// Variables that start with `CASHBACKD_` but are not settings: secrets for one command,
/// and the test suite's and scripts' own.
const NOT_SETTINGS: &[&str] = &[
    "CASHBACKD_CONFIG",
    "CASHBACKD_NETWORK_SECRET",
    "CASHBACKD_CALLBACK_SECRET",
    "CASHBACKD_TEST_POSTGRES",
    "CASHBACKD_CRASH_CYCLES",
    "CASHBACKD_CRASH_SEED",
    "CASHBACKD_WASM_TOOLCHAIN",
    "CASHBACKD_TOOLCHAIN_DIR",
];

/// A key's environment variable.
pub fn env_name(key: &str) -> String {
    format!("CASHBACKD_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Keys holding secrets, masked by [`Settings::masked`].
const SECRET_KEYS: &[&str] = &["database.url", "smtp.url", "ingress.click_secret"];

/// Why the configuration was refused: the key, what is wrong, and where the value came
/// from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}{}", origin.as_ref().map(|o| format!(" ({o})")).unwrap_or_default())]
pub struct ConfigError {
    /// The key (`callbacks.max_attempts`), or the file or variable when no key applies.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// `from CASHBACKD_X`, `in FILE`, `from --flag`.
    pub origin: Option<String>,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { key: key.into(), message: message.into(), origin: None }
    }
}

/// A layer of values by key with where each came from: the environment or the flags.
#[derive(Debug, Clone)]
pub struct Layer {
    name: &'static str,
    entries: Vec<(String, Value, String)>,
}

impl Layer {
    const ENV: &'static str = "environment variables";
    const ENV_ALIASES: &'static str = "environment variables (short names)";
    const FLAGS: &'static str = "command-line flags";

    /// Command-line flags: `(key, value, flag)`, e.g. `("http.listen", "...", "--listen")`.
    pub fn flags(entries: Vec<(&str, Value, &str)>) -> Layer {
        Layer {
            name: Layer::FLAGS,
            entries: entries.into_iter().map(|(k, v, f)| (k.to_string(), v, f.to_string())).collect(),
        }
    }

    /// The settings among `vars`, as two layers (short names first: the `CASHBACKD_`
    /// names win), and the `CASHBACKD_` variables that are not settings (a typo, most
    /// likely: they are reported, not refused, as other tools share the prefix).
    fn from_env(vars: &[(String, String)]) -> (Layer, Layer, Vec<String>) {
        let mut aliases = Layer { name: Layer::ENV_ALIASES, entries: Vec::new() };
        let mut canonical = Layer { name: Layer::ENV, entries: Vec::new() };
        let mut unknown = Vec::new();
        for (name, raw) in vars {
            if let Some((_, key)) = ENV_ALIASES.iter().find(|(alias, _)| alias == name) {
                let kind = ENV_KEYS.iter().find(|(k, _)| k == key).map_or(Kind::Text, |(_, kind)| *kind);
                aliases.entries.push((key.to_string(), typed(raw, kind), name.clone()));
            } else if let Some((key, kind)) = ENV_KEYS.iter().find(|(k, _)| env_name(k) == *name) {
                canonical.entries.push((key.to_string(), typed(raw, *kind), name.clone()));
            } else if name.starts_with("CASHBACKD_") && !NOT_SETTINGS.contains(&name.as_str()) {
                unknown.push(name.clone());
            }
        }
        (aliases, canonical, unknown)
    }

    fn origin(&self, key: &str) -> Option<String> {
        // A key inside a table-valued setting (`payouts.minimum.EUR`) comes from the
        // variable of the table.
        let within = |k: &str| k == key || key.strip_prefix(k).is_some_and(|rest| rest.starts_with('.'));
        self.entries.iter().rev().find(|(k, _, _)| within(k)).map(|(_, _, from)| format!("from {from}"))
    }
}

/// A variable's text as the key's type, where it reads as one; otherwise the text, so that
/// the error quotes it (`expected an integer, got "x"`).
fn typed(raw: &str, kind: Kind) -> Value {
    match kind {
        Kind::Int => raw.trim().parse::<i64>().map_or_else(|_| Value::from(raw.to_string()), Value::from),
        // The words clap accepted for these flags' variables before.
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "y" | "on" => Value::from(true),
            "false" | "0" | "no" | "n" | "off" | "" => Value::from(false),
            _ => Value::from(raw.to_string()),
        },
        Kind::Text => Value::from(raw.to_string()),
        Kind::List => {
            Value::from(raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect::<Vec<_>>())
        }
        Kind::Map => {
            let mut dict = Dict::new();
            for pair in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                // Not NAME=VALUE: the text as it is, so that the error quotes it.
                let Some((name, value)) = pair.split_once('=') else { return Value::from(raw.to_string()) };
                dict.insert(name.trim().to_string(), typed(value, Kind::Int));
            }
            Value::from(dict)
        }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, value, _) in &self.entries {
            insert(&mut dict, &key.split('.').collect::<Vec<_>>(), value.clone());
        }
        Ok(Profile::Default.collect(dict))
    }
}

fn insert(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = dict.entry(first.to_string()).or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// The settings in effect and how they were made.
#[derive(Debug)]
pub struct Loaded {
    /// The settings.
    pub settings: Settings,
    /// `CASHBACKD_` variables that are not settings (to warn about once logging is up).
    pub unknown_env: Vec<String>,
    figment: Figment,
    layers: Vec<Layer>,
    file: Option<PathBuf>,
}

impl Loaded {
    /// Where a key's value came from: a variable, a flag, the file, or the defaults.
    pub fn origin(&self, key: &str) -> String {
        let name = self.figment.find_metadata(key).map(|m| m.name.to_string()).unwrap_or_default();
        if let Some(layer) = self.layers.iter().find(|l| l.name == name)
            && let Some(origin) = layer.origin(key)
        {
            return origin;
        }
        match &self.file {
            Some(file) if name != DEFAULTS_NAME => format!("in {}", file.display()),
            _ => "default".to_string(),
        }
    }
}

const DEFAULTS_NAME: &str = "TOML source string";

/// Loads the settings: defaults, then `file`, then the process's environment, then
/// `flags`; checked.
pub fn load(file: Option<&Path>, flags: Layer) -> Result<Loaded, ConfigError> {
    let vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with("CASHBACKD_") || k == "DATABASE_URL")
        .collect();
    load_from(file, &vars, flags)
}

/// [`load`] with the environment given (tests).
pub fn load_from(file: Option<&Path>, env: &[(String, String)], flags: Layer) -> Result<Loaded, ConfigError> {
    let mut figment = Figment::from(figment::providers::Toml::string(DEFAULTS));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError {
                key: path.display().to_string(),
                message: "no such file".into(),
                origin: Some("the config file, from --config or CASHBACKD_CONFIG".into()),
            });
        }
        figment = figment.merge(figment::providers::Toml::file_exact(path));
    }
    let (aliases, canonical, unknown_env) = Layer::from_env(env);
    let layers = vec![aliases, canonical, flags];
    for layer in &layers {
        figment = figment.merge(layer.clone());
    }
    let mut loaded =
        Loaded { settings: Settings::default(), unknown_env, figment, layers, file: file.map(Path::to_path_buf) };
    loaded.settings = loaded.figment.extract::<Settings>().map_err(|e| describe(&loaded, e))?;
    if let Err(mut e) = loaded.settings.validate() {
        e.origin = Some(loaded.origin(&e.key));
        return Err(e);
    }
    Ok(loaded)
}

/// A figment error as `key: what is wrong (where)`.
fn describe(loaded: &Loaded, e: figment::Error) -> ConfigError {
    use figment::error::{Actual, Kind as K};
    let mut path = e.path.clone();
    let got = |a: &Actual| match a {
        Actual::Str(s) => format!("{s:?}"),
        Actual::Bool(b) => b.to_string(),
        Actual::Unsigned(n) => n.to_string(),
        Actual::Signed(n) => n.to_string(),
        Actual::Float(n) => n.to_string(),
        Actual::Map => "a table".into(),
        Actual::Seq => "an array".into(),
        other => other.to_string(),
    };
    let message = match &e.kind {
        K::InvalidType(actual, expected) | K::InvalidValue(actual, expected) => {
            format!("expected {}, got {}", expected_words(expected), got(actual))
        }
        K::UnknownField(field, known) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            format!("unknown key; {} has {}", parent(&path), known.join(", "))
        }
        K::UnknownVariant(found, known) => format!("expected one of {}, got {found:?}", known.join(", ")),
        K::MissingField(field) => {
            if path.last().map(String::as_str) != Some(field) {
                path.push(field.to_string());
            }
            "required".into()
        }
        K::Message(m) => m.clone(),
        other => other.to_string(),
    };
    let key = path.join(".");
    let from = e.metadata.as_ref().map(|m| m.name.to_string()).unwrap_or_default();
    let origin = match loaded.layers.iter().find(|l| l.name == from) {
        Some(layer) => layer.origin(&key).or_else(|| Some(format!("from the {from}"))),
        None => match (&loaded.file, from.as_str()) {
            (_, DEFAULTS_NAME) => Some("in the built-in defaults".into()),
            (Some(file), _) => Some(format!("in {}", file.display())),
            (None, _) => None,
        },
    };
    ConfigError { key: if key.is_empty() { "configuration".into() } else { key }, message, origin }
}

fn parent(path: &[String]) -> String {
    match path.len() {
        0 | 1 => "the configuration".into(),
        n => format!("[{}]", path[..n - 1].join(".")),
    }
}

/// serde's name of a type as words.
fn expected_words(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "i8" | "i16" | "i32" | "i64" | "usize" | "isize" => "an integer".into(),
        "a boolean" | "bool" => "true or false".into(),
        "a string" | "string" => "a string".into(),
        "socket address" => "an address and port (127.0.0.1:8080)".into(),
        other => other.to_string(),
    }
}

impl Settings {
    /// Checks what types cannot: schemes, ranges, cron expressions, filters. The error's
    /// key is the first one found wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database.url;
        if !(url.starts_with("sqlite:") || url.starts_with("postgres:") || url.starts_with("postgresql:")) {
            let scheme = url.split_once(':').map_or(url.as_str(), |(s, _)| s);
            return Err(ConfigError::new(
                "database.url",
                format!("unsupported scheme {scheme:?}: use sqlite://PATH or postgres://USER@HOST/DB"),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(ConfigError::new("log.filter", format!("{e} (in {:?})", self.log.filter)));
        }
        self.validate_plugin()?;
        self.validate_http()?;
        let c = &self.callbacks;
        if !matches!(c.backoff.as_str(), "fixed" | "exponential") {
            return Err(ConfigError::new(
                "callbacks.backoff",
                format!("expected fixed or exponential, got {:?}", c.backoff),
            ));
        }
        // The defaults of `endpoint add`: the bounds every endpoint is held to
        // (`EndpointSpec::check`), so that a default cannot be one no endpoint may have.
        use crate::callbacks::{MAX_ATTEMPTS, MAX_LONGEST_WAIT_MS, MAX_RETRY_DELAY_MS, MIN_RETRY_DELAY_MS};
        let (min_delay, max_delay, longest) =
            (MIN_RETRY_DELAY_MS / 1000, MAX_RETRY_DELAY_MS / 1000, MAX_LONGEST_WAIT_MS / 1000);
        for (key, value, range) in [
            ("callbacks.max_attempts", i64::from(c.max_attempts), 1..=i64::from(MAX_ATTEMPTS)),
            ("callbacks.retry_delay_secs", c.retry_delay_secs, min_delay..=max_delay),
            ("callbacks.max_delay_secs", c.max_delay_secs, c.retry_delay_secs.max(min_delay)..=longest),
            ("callbacks.timeout_ms", c.timeout_ms, 100..=120_000),
            ("callbacks.jitter_pct", i64::from(c.jitter_pct), 0..=100),
            ("callbacks.disable_after", i64::from(c.disable_after), 1..=10_000),
        ] {
            if !range.contains(&value) {
                return Err(ConfigError::new(
                    key,
                    format!("between {} and {}, got {value}", range.start(), range.end()),
                ));
            }
        }
        if !(5..=86_400).contains(&c.lease_secs) {
            return Err(ConfigError::new("callbacks.lease_secs", format!("between 5 and 86400, got {}", c.lease_secs)));
        }
        for (key, value) in [
            ("callbacks.batch", c.batch),
            ("callbacks.concurrency", c.concurrency),
            ("callbacks.endpoint_concurrency", c.endpoint_concurrency),
        ] {
            if !(1..=10_000).contains(&value) {
                return Err(ConfigError::new(key, format!("between 1 and 10000, got {value}")));
            }
        }
        if let Some(smtp) = &self.smtp.url {
            // The URL may hold a password: the message names the scheme, never the URL.
            match url::Url::parse(smtp) {
                Ok(u) if matches!(u.scheme(), "smtp" | "smtps") => {
                    let tls = u.scheme() == "smtps" || u.query_pairs().any(|(k, _)| k == "tls");
                    if self.smtp.ca_file.is_some() && !tls {
                        // A CA with a plain connection is a setup that believes it is
                        // encrypted while it is not: say so instead of ignoring the file.
                        return Err(ConfigError::new(
                            "smtp.ca_file",
                            "smtp.url uses no TLS: add ?tls=required or use smtps://",
                        ));
                    }
                }
                Ok(u) => {
                    return Err(ConfigError::new(
                        "smtp.url",
                        format!("unsupported scheme {:?}: use smtp:// or smtps://", u.scheme()),
                    ));
                }
                Err(e) => return Err(ConfigError::new("smtp.url", format!("not a URL ({e})"))),
            }
        }
        if let Some(path) = &self.smtp.ca_file {
            crate::notify::read_ca_file(path).map_err(|e| ConfigError::new("smtp.ca_file", e))?;
        }
        if let Err(e) = self.smtp.from.parse::<lettre::message::Mailbox>() {
            return Err(ConfigError::new("smtp.from", format!("{e}: expected `Name <address>` or an address")));
        }
        crate::scheduler::parse_schedule(&self.notify.schedule).map_err(|e| ConfigError::new("notify.schedule", e))?;
        if self.notify.max_attempts < 1 {
            return Err(ConfigError::new("notify.max_attempts", "at least 1"));
        }
        if self.notify.retry_delay_secs < 0 {
            return Err(ConfigError::new("notify.retry_delay_secs", "must not be negative"));
        }
        if let Some(dir) = &self.notify.templates {
            crate::notify::Templates::load(Some(dir))
                .map_err(|e| ConfigError::new("notify.templates", e.to_string()))?;
        }
        for (currency, minimum) in &self.payouts.minimum {
            let key = format!("payouts.minimum.{currency}");
            if crate::payouts::service::check_currency(currency).is_err() {
                return Err(ConfigError::new(key, "not an ISO 4217 currency code (three capital letters, EUR)"));
            }
            if *minimum < 1 {
                return Err(ConfigError::new(key, format!("at least 1 (minor units), got {minimum}")));
            }
        }
        Ok(())
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("http.max_body_bytes", self.http.max_body_bytes),
            ("http.max_import_bytes", self.http.max_import_bytes),
            ("http.max_plugin_bytes", self.http.max_plugin_bytes),
        ] {
            if value < 1024 {
                return Err(ConfigError::new(key, format!("at least 1024 bytes, got {value}")));
            }
        }
        let i = &self.ingress;
        for proxy in &i.trusted_proxies {
            if parse_net(proxy).is_none() {
                return Err(ConfigError::new(
                    "ingress.trusted_proxies",
                    format!("{proxy:?} is not an IP address or CIDR range (10.0.0.0/8, ::1)"),
                ));
            }
        }
        let key = |k: &str| format!("ingress.{k}");
        let mut limits = vec![
            (
                key("click_rate_per_address"),
                key("click_burst_per_address"),
                i.click_rate_per_address,
                i.click_burst_per_address,
            ),
            (
                key("postback_rate_per_address"),
                key("postback_burst_per_address"),
                i.postback_rate_per_address,
                i.postback_burst_per_address,
            ),
            (
                key("postback_rate_per_network"),
                key("postback_burst_per_network"),
                i.postback_rate_per_network,
                i.postback_burst_per_network,
            ),
        ];
        for (network, n) in &i.networks {
            let k = |f: &str| format!("ingress.networks.{network}.{f}");
            limits.push((k("postback_rate"), k("postback_burst"), n.postback_rate, n.postback_burst));
        }
        for (rate_key, burst_key, rate, burst) in limits {
            if rate > 0 && burst == 0 {
                return Err(ConfigError::new(
                    burst_key,
                    format!("at least 1 while {rate_key} is {rate} (a rate of 0 turns the limit off)"),
                ));
            }
        }
        Ok(())
    }

    fn validate_plugin(&self) -> Result<(), ConfigError> {
        let p = &self.plugin;
        if p.max_concurrent_calls == 0 {
            return Err(ConfigError::new("plugin.max_concurrent_calls", "at least 1"));
        }
        let (defaults, maxima) = (Limits::from(p.defaults), Limits::from(p.maxima));
        let pairs = |l: &Limits| -> [(&'static str, u64); 8] {
            [
                ("deadline_ms", l.deadline_ms),
                ("memory_mib", l.memory_mib),
                ("max_input_bytes", l.max_input_bytes),
                ("max_output_bytes", l.max_output_bytes),
                ("max_log_bytes", l.max_log_bytes),
                ("max_http_requests", u64::from(l.max_http_requests)),
                ("max_http_response_bytes", l.max_http_response_bytes),
                ("http_timeout_ms", l.http_timeout_ms),
            ]
        };
        for ((name, default), (_, max)) in pairs(&defaults).into_iter().zip(pairs(&maxima)) {
            if max == 0 && name != "max_http_requests" {
                return Err(ConfigError::new(format!("plugin.maxima.{name}"), "must be greater than 0"));
            }
            if default == 0 && name != "max_http_requests" {
                return Err(ConfigError::new(format!("plugin.defaults.{name}"), "must be greater than 0"));
            }
            if default > max {
                return Err(ConfigError::new(
                    format!("plugin.defaults.{name}"),
                    format!("{default} exceeds plugin.maxima.{name} ({max})"),
                ));
            }
        }
        for (plugin, over) in &p.overrides {
            if let Err(e) = LimitsOverride::from(*over).check_within(&maxima) {
                // The manifest's name is kebab-case; the configuration's key is ours.
                let field = e.name.replace('-', "_");
                return Err(ConfigError::new(format!("plugin.overrides.{plugin}.{field}"), e.reason));
            }
        }
        Ok(())
    }

    /// The settings with their secrets masked (a URL's password as `***`), for
    /// `config check`.
    pub fn masked(&self) -> Settings {
        let mut s = self.clone();
        s.database.url = mask_url(&s.database.url);
        s.smtp.url = s.smtp.url.as_deref().map(mask_url);
        if s.ingress.click_secret.is_some() {
            s.ingress.click_secret = Some("***".into());
        }
        s
    }

    /// The plugin runtime's settings, storing under `store`.
    pub fn runtime_config(&self, store: &Path) -> crate::plugin::RuntimeConfig {
        let mut c = crate::plugin::RuntimeConfig::new(store);
        c.defaults = self.plugin.defaults.into();
        c.maxima = self.plugin.maxima.into();
        c.max_concurrent_calls = self.plugin.max_concurrent_calls;
        c.overrides = self.plugin.overrides.iter().map(|(k, v)| (k.clone(), (*v).into())).collect();
        c.http_allow_private = self.plugin.http_allow_private;
        c
    }
}

/// A URL with its password masked; text that is not a URL with a password as it is
/// (a SQLite path has none).
fn mask_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if u.password().is_some() => crate::db::redact(url),
        // A password the parser does not read as one (`postgres:://user:pw@db`) too.
        Ok(_) if crate::db::has_stray_credentials(url) => crate::db::redact(url),
        Ok(_) => url.to_string(),
        Err(_) => "***".to_string(),
    }
}

/// An entry of `ingress.trusted_proxies`: a CIDR range, or one address.
pub fn parse_net(entry: &str) -> Option<ipnet::IpNet> {
    let entry = entry.trim();
    entry.parse::<ipnet::IpNet>().ok().or_else(|| entry.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// Whether a key holds a secret.
pub fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_endpoint_made_without_configuration_gets_the_configured_defaults_of_the_default_file() {
        // `EndpointSpec::new` (embedders, tests) and `endpoint add` / the API under the
        // default configuration give an endpoint the same settings.
        let defaults = Settings::default().callbacks.endpoint_defaults();
        assert_eq!(defaults, crate::callbacks::EndpointDefaults::default());
        let spec = crate::callbacks::EndpointSpec::new("e", "p", "https://p.example/");
        assert_eq!(
            (spec.retry, spec.timeout_ms, spec.disable_after),
            (defaults.retry, defaults.timeout_ms, defaults.disable_after)
        );
        let worker = Settings::default().callbacks.delivery(false);
        let code = crate::callbacks::DeliveryConfig::default();
        assert_eq!(
            (worker.batch, worker.concurrency, worker.endpoint_concurrency, worker.lease_ms),
            (code.batch, code.concurrency, code.endpoint_concurrency, code.lease_ms)
        );
    }

    fn no_flags() -> Layer {
        Layer::flags(Vec::new())
    }

    #[test]
    fn the_commented_defaults_file_holds_the_same_values_as_the_code() {
        let loaded = load_from(None, &[], no_flags()).expect("defaults load");
        assert_eq!(loaded.settings, Settings::default());
        assert_eq!(Settings::default().runtime_config(Path::new("x")).defaults, Limits::host_defaults());
    }

    #[test]
    fn every_key_of_the_defaults_file_has_an_environment_variable() {
        let doc: toml::Table = toml::from_str(DEFAULTS).expect("defaults parse");
        fn leaves(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                // A table-valued key (payouts.minimum) is one setting with one variable.
                let map = ENV_KEYS.iter().any(|(name, kind)| *name == key && *kind == Kind::Map);
                match v {
                    toml::Value::Table(inner) if !map => leaves(&key, inner, out),
                    _ => out.push(key),
                }
            }
        }
        let mut keys = Vec::new();
        leaves("", &doc, &mut keys);
        for key in &keys {
            assert!(ENV_KEYS.iter().any(|(k, _)| k == key), "{key} has no environment variable");
        }
        // And the commented-out optional ones.
        const OPTIONAL: [&str; 4] = ["smtp.url", "smtp.ca_file", "notify.templates", "ingress.click_secret"];
        for key in OPTIONAL {
            assert!(ENV_KEYS.iter().any(|(k, _)| *k == key));
            assert!(DEFAULTS.contains(&format!("# {}", key.rsplit('.').next().unwrap_or(key))), "{key} is documented");
        }
        assert_eq!(keys.len() + OPTIONAL.len(), ENV_KEYS.len(), "a variable for a key the file does not document");
    }

    #[test]
    fn a_bad_value_names_its_key_and_variable() {
        let e = load_from(None, &env(&[("CASHBACKD_CALLBACKS_MAX_ATTEMPTS", "x")]), no_flags()).expect_err("refused");
        assert_eq!(
            e.to_string(),
            r#"callbacks.max_attempts: expected an integer, got "x" (from CASHBACKD_CALLBACKS_MAX_ATTEMPTS)"#
        );
        let e = load_from(None, &env(&[("DATABASE_URL", "mysql://db/x")]), no_flags()).expect_err("refused");
        assert!(e.to_string().starts_with(r#"database.url: unsupported scheme "mysql""#), "{e}");
        assert!(e.to_string().ends_with("(from DATABASE_URL)"), "{e}");
        let e = load_from(None, &env(&[("CASHBACKD_LOG_FORMAT", "xml")]), no_flags()).expect_err("refused");
        assert!(e.to_string().starts_with("log.format: expected one of text, json, got \"xml\""), "{e}");
        let e =
            load_from(None, &env(&[("CASHBACKD_CALLBACKS_ALLOW_PRIVATE", "maybe")]), no_flags()).expect_err("refused");
        assert!(e.to_string().starts_with(r#"callbacks.allow_private: expected true or false, got "maybe""#), "{e}");
    }

    #[test]
    fn the_canonical_variable_wins_over_its_short_name_and_other_prefixed_variables_are_reported() {
        let loaded = load_from(
            None,
            &env(&[
                ("CASHBACKD_DATABASE_URL", "sqlite://a.db"),
                ("DATABASE_URL", "sqlite://b.db"),
                ("CASHBACKD_CALLBACKS_ALLOW_PRIVATE", "1"),
                ("CASHBACKD_NETWORK_SECRET", "s3cret"),
                ("CASHBACKD_CALLBAKS_MAX_ATTEMPTS", "4"),
            ]),
            no_flags(),
        )
        .expect("loads");
        assert_eq!(loaded.settings.database.url, "sqlite://a.db");
        assert!(loaded.settings.callbacks.allow_private);
        assert_eq!(loaded.origin("database.url"), "from CASHBACKD_DATABASE_URL");
        assert_eq!(loaded.unknown_env, vec!["CASHBACKD_CALLBAKS_MAX_ATTEMPTS".to_string()]);
    }

    #[test]
    fn secrets_are_masked() {
        let mut s = Settings::default();
        s.database.url = "postgres://app:hunter2@db/cb".into();
        s.smtp.url = Some("smtps://mailer:pa55@mail.example".into());
        let text = toml::to_string(&s.masked()).expect("toml");
        assert!(!text.contains("hunter2") && !text.contains("pa55"), "{text}");
        assert!(text.contains("app:***@db"), "{text}");
        // Found by the fuzz target `config`: `config check` showed the password of a URL
        // with one colon too many (it parses, as a path, with no password).
        s.database.url = "postgres:://app:hunter2@db/cb".into();
        s.smtp.url = Some("smtp:/mailer:pa55@mail.example".into());
        let text = toml::to_string(&s.masked()).expect("toml");
        assert!(!text.contains("hunter2") && !text.contains("pa55"), "{text}");
    }

    #[test]
    fn ingress_limits_and_trusted_proxies_are_checked_by_key() {
        let loaded = load_from(
            None,
            &env(&[
                ("CASHBACKD_INGRESS_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7"),
                ("CASHBACKD_INGRESS_RATE_LIMIT", "off"),
            ]),
            no_flags(),
        )
        .expect("loads");
        assert_eq!(loaded.settings.ingress.trusted_proxies, vec!["10.0.0.0/8".to_string(), "192.0.2.7".to_string()]);
        assert!(!loaded.settings.ingress.rate_limit);
        let e = load_from(None, &env(&[("CASHBACKD_INGRESS_TRUSTED_PROXIES", "10.0.0.0/33")]), no_flags())
            .expect_err("refused");
        assert!(e.to_string().starts_with(r#"ingress.trusted_proxies: "10.0.0.0/33" is not an IP address"#), "{e}");
        assert!(e.to_string().ends_with("(from CASHBACKD_INGRESS_TRUSTED_PROXIES)"), "{e}");
        let e = load_from(None, &env(&[("CASHBACKD_INGRESS_CLICK_BURST_PER_ADDRESS", "0")]), no_flags())
            .expect_err("refused");
        assert_eq!(e.key, "ingress.click_burst_per_address", "{e}");
        let mut s = Settings::default();
        s.ingress.networks.insert("big".into(), NetworkRateSettings { postback_rate: 10, postback_burst: 0 });
        assert_eq!(s.validate().expect_err("refused").key, "ingress.networks.big.postback_burst");
        s.ingress.networks.insert("big".into(), NetworkRateSettings { postback_rate: 0, postback_burst: 0 });
        assert!(s.validate().is_ok(), "a rate of 0 is no limit");
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[ingress]\nclick_rate = 5\n").expect("write");
        let e = load_from(Some(&file), &[], no_flags()).expect_err("unknown key");
        assert!(e.to_string().starts_with("ingress.click_rate: unknown key"), "{e}");
        let e = load_from(None, &env(&[("CASHBACKD_HTTP_MAX_BODY_BYTES", "10")]), no_flags()).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "http.max_body_bytes: at least 1024 bytes, got 10 (from CASHBACKD_HTTP_MAX_BODY_BYTES)"
        );
    }

    #[test]
    fn payout_minimums_come_from_the_file_and_the_variable_and_are_checked_by_currency() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[payouts.minimum]\nEUR = 1000\nGBP = 500\n").expect("write");
        let loaded = load_from(Some(&file), &env(&[("CASHBACKD_PAYOUTS_MINIMUM", "USD=2500, GBP=800")]), no_flags())
            .expect("loads");
        let m = &loaded.settings.payouts.minimum;
        assert_eq!((m.get("EUR"), m.get("GBP"), m.get("USD")), (Some(&1000), Some(&800), Some(&2500)));
        assert_eq!(loaded.settings.payouts.policy().minimum("JPY"), 1, "not listed: any amount above zero");
        let e = load_from(None, &env(&[("CASHBACKD_PAYOUTS_MINIMUM", "EUR=ten")]), no_flags()).expect_err("refused");
        assert_eq!(
            e.to_string(),
            r#"payouts.minimum.EUR: expected an integer, got "ten" (from CASHBACKD_PAYOUTS_MINIMUM)"#
        );
        let e = load_from(None, &env(&[("CASHBACKD_PAYOUTS_MINIMUM", "eur=1000")]), no_flags()).expect_err("refused");
        assert_eq!(e.key, "payouts.minimum.eur", "{e}");
        let e = load_from(None, &env(&[("CASHBACKD_PAYOUTS_MINIMUM", "EUR=0")]), no_flags()).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "payouts.minimum.EUR: at least 1 (minor units), got 0 (from CASHBACKD_PAYOUTS_MINIMUM)"
        );
    }

    #[test]
    fn limits_are_checked_against_the_maxima_by_key() {
        let mut s = Settings::default();
        s.plugin.defaults.deadline_ms = 500_000;
        let e = s.validate().expect_err("refused");
        assert_eq!(e.key, "plugin.defaults.deadline_ms");
        let mut s = Settings::default();
        s.plugin
            .overrides
            .insert("rate-table".into(), LimitOverrideSettings { memory_mib: Some(4096), ..Default::default() });
        let e = s.validate().expect_err("refused");
        assert_eq!(e.key, "plugin.overrides.rate-table.memory_mib", "{e}");
    }
}
