//! The plugin manifest (`cashback-plugin.toml`, embedded in the component by the SDK):
//! who the plugin is, which world and contract version it implements, which hosts it may
//! call, which credentials the host injects for it, its limits and its config schema.
//!
//! Everything a plugin may do is declared here; the host grants nothing else.

use super::contract::SUPPORTED as SUPPORTED_API_VERSIONS;
use super::limits::{Limits, LimitsOverride};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Which world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// `merchant-rules`: computes cashback for orders.
    MerchantRules,
    /// `network-adapter`: turns a network's postbacks, reports and files into events.
    NetworkAdapter,
    /// `partner-callback` (since contract 0.2.0): renders a partner endpoint's requests.
    PartnerCallback,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::MerchantRules => "merchant-rules",
            PluginKind::NetworkAdapter => "network-adapter",
            PluginKind::PartnerCallback => "partner-callback",
        })
    }
}

/// A parsed, validated manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name: lower-case letters, digits and dashes.
    pub name: String,
    /// The plugin's own version (semver).
    pub version: semver::Version,
    /// The world it implements.
    pub kind: PluginKind,
    /// The `cashback:plugin` contract version it was built against.
    pub wit: String,
    /// One line for operators.
    #[serde(default)]
    pub description: String,
    /// Per-call limits it asks for; the host's defaults fill the rest and its maxima cap them.
    #[serde(default)]
    pub limits: LimitsOverride,
    /// What it may reach.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Secrets the host adds to outgoing requests, by name.
    #[serde(default)]
    pub credentials: BTreeMap<String, Credential>,
    /// The schema of its configuration, by field name.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigField>,
    /// How an adapter's `parse-file` may be fed: absent, it gets each file whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_file: Option<ParseFile>,
}

/// `[parse-file]`: an adapter that may be handed a file in pieces. Without it, a file is
/// one call, so its size is capped by the adapter's `max-input-bytes` and held in memory
/// whole; with it, the host streams the file and memory stays bounded (issue 14).
///
/// The contract behind `split = "csv-records"`: the host cuts the file at record
/// boundaries (RFC 4180: a line break inside quotes is no boundary) and passes the header
/// row followed by a run of whole records; the adapter numbers rows as for the whole file
/// (the header is row 1), returns events in row order, one per row it neither rejects nor
/// skips as blank (every field empty after trimming), and keeps one row per transaction
/// (the host enforces that rule across pieces with the same message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ParseFile {
    /// How the file may be split.
    pub split: FileSplit,
    /// The config field that holds the field delimiter (one ASCII character); the
    /// delimiter is `,` when the field is unset or not declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter_config: Option<String>,
}

/// The ways the host knows to split a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileSplit {
    /// CSV: the header row, then whole records.
    CsvRecords,
}

/// Capabilities a plugin declares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Capabilities {
    /// Hosts the plugin may call through `http.fetch`: `api.example.com`,
    /// `api.example.com:8443`, `*.example.com` for any subdomain, or `config:FIELD` for
    /// the host (and port) of the URL an operator puts in that config field, for adapters
    /// whose network is chosen at deployment.
    #[serde(default)]
    pub http_hosts: Vec<String>,
}

/// Where the host puts a credential's secret in an outgoing request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Credential {
    /// The config field (marked `secret = true`) that holds the value.
    pub config: String,
    /// Put it in this header...
    pub header: Option<String>,
    /// ...or in this query parameter.
    pub query: Option<String>,
    /// Header value template; `{secret}` is replaced by the value. Default `{secret}`.
    pub format: Option<String>,
}

/// The type of a config field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldType {
    /// A JSON string.
    String,
    /// A JSON integer (checked against `min`/`max`).
    Integer,
    /// `true` or `false`.
    Boolean,
    /// An array of strings.
    StringList,
    /// Any JSON value (tables, nested objects); the plugin validates it.
    Json,
}

/// One field of a plugin's config schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConfigField {
    /// Its type.
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Must be present.
    #[serde(default)]
    pub required: bool,
    /// A secret: never passed to the plugin or logged, only injected by the host into
    /// requests through a credential.
    #[serde(default)]
    pub secret: bool,
    /// Smallest allowed integer.
    pub min: Option<i64>,
    /// Largest allowed integer.
    pub max: Option<i64>,
    /// What it means, for operators.
    #[serde(default)]
    pub description: String,
}

/// Why a manifest was refused. Each message names the field.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    /// Not valid TOML or a field has the wrong type.
    #[error("invalid manifest: {0}")]
    Parse(String),
    /// A field's value is not acceptable.
    #[error("manifest field `{field}`: {reason}")]
    Field {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
}

fn field_err(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError::Field { field: field.into(), reason: reason.into() }
}

impl Manifest {
    /// Parses and validates a manifest against the host's limit maxima.
    pub fn parse(text: &str, maxima: &Limits) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string().trim_end().to_string()))?;
        manifest.validate(maxima)?;
        Ok(manifest)
    }

    fn validate(&self, maxima: &Limits) -> Result<(), ManifestError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !self.name.starts_with('-');
        if !name_ok {
            return Err(field_err("name", format!("{:?} must be 1-64 of a-z, 0-9 and -", self.name)));
        }
        if !SUPPORTED_API_VERSIONS.contains(&self.wit.as_str()) {
            return Err(field_err(
                "wit",
                format!(
                    "the plugin targets cashback:plugin@{}; this cashbackd supports {}",
                    self.wit,
                    SUPPORTED_API_VERSIONS.join(", ")
                ),
            ));
        }
        self.limits
            .check_within(maxima)
            .map_err(|e| ManifestError::Field { field: format!("limits.{}", e.name), reason: e.reason })?;
        if self.kind == PluginKind::MerchantRules {
            if !self.capabilities.http_hosts.is_empty() {
                return Err(field_err("capabilities.http-hosts", "merchant rules are pure and cannot make requests"));
            }
            if !self.credentials.is_empty() {
                return Err(field_err("credentials", "merchant rules cannot use credentials"));
            }
        }
        if self.kind == PluginKind::PartnerCallback {
            if self.wit == super::contract::V0_1_0 {
                return Err(field_err(
                    "wit",
                    "the partner-callback world exists since cashback:plugin@0.2.0: build against 0.2.0",
                ));
            }
            // The host sends the request the plugin renders: the plugin itself reaches nothing.
            if !self.capabilities.http_hosts.is_empty() {
                return Err(field_err(
                    "capabilities.http-hosts",
                    "a partner-callback plugin makes no requests: the host sends the one it renders",
                ));
            }
            if !self.credentials.is_empty() {
                return Err(field_err(
                    "credentials",
                    "a partner-callback plugin signs with the endpoint's secret, passed to `render`",
                ));
            }
        }
        for host in &self.capabilities.http_hosts {
            if let Some(field) = host.strip_prefix("config:") {
                match self.config.get(field) {
                    Some(f) if f.ty == FieldType::String && !f.secret => continue,
                    _ => {
                        return Err(field_err(
                            "capabilities.http-hosts",
                            format!("{host:?} must name a non-secret string field of [config]"),
                        ));
                    }
                }
            }
            let bare = host.strip_prefix("*.").unwrap_or(host);
            let valid = !bare.is_empty()
                && !bare.contains('/')
                && !bare.contains('*')
                && url::Url::parse(&format!("http://{bare}/")).is_ok();
            if !valid {
                return Err(field_err("capabilities.http-hosts", format!("{host:?} is not a host name")));
            }
        }
        for (name, cred) in &self.credentials {
            let field = format!("credentials.{name}");
            match self.config.get(&cred.config) {
                Some(f) if f.secret => {}
                Some(_) => {
                    return Err(field_err(field, format!("config field `{}` must be marked secret", cred.config)));
                }
                None => {
                    return Err(field_err(
                        field,
                        format!("names config field `{}`, which is not declared", cred.config),
                    ));
                }
            }
            if cred.header.is_some() == cred.query.is_some() {
                return Err(field_err(field, "set exactly one of `header` or `query`"));
            }
        }
        if let Some(p) = &self.parse_file {
            if self.kind != PluginKind::NetworkAdapter {
                return Err(field_err("parse-file", "only a network adapter parses files"));
            }
            if let Some(field) = &p.delimiter_config {
                match self.config.get(field) {
                    Some(f) if f.ty == FieldType::String && !f.secret => {}
                    _ => {
                        return Err(field_err(
                            "parse-file.delimiter-config",
                            format!("{field:?} must name a non-secret string field of [config]"),
                        ));
                    }
                }
            }
        }
        for (name, f) in &self.config {
            if f.secret && f.ty != FieldType::String {
                return Err(field_err(format!("config.{name}"), "secret fields must be strings"));
            }
            if (f.min.is_some() || f.max.is_some()) && f.ty != FieldType::Integer {
                return Err(field_err(format!("config.{name}"), "min/max apply to integers only"));
            }
        }
        Ok(())
    }

    /// "name@version", how errors and logs name the plugin.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Checks a configuration against the schema and splits it into what the plugin may
    /// see and the secrets only the host uses. Errors name the field.
    pub fn validate_config(&self, config: &serde_json::Value) -> Result<PluginConfig, ConfigError> {
        let empty = serde_json::Map::new();
        let object = match config {
            serde_json::Value::Object(map) => map,
            serde_json::Value::Null => &empty,
            _ => {
                return Err(ConfigError { field: String::new(), reason: "configuration must be a JSON object".into() });
            }
        };
        for key in object.keys() {
            if !self.config.contains_key(key) {
                return Err(ConfigError {
                    field: key.clone(),
                    reason: "unknown field (not in the plugin's config schema)".into(),
                });
            }
        }
        let mut visible = serde_json::Map::new();
        let mut secrets = HashMap::new();
        for (name, field) in &self.config {
            let err = |reason: String| ConfigError { field: name.clone(), reason };
            let Some(value) = object.get(name).filter(|v| !v.is_null()) else {
                if field.required {
                    return Err(err("required but missing".into()));
                }
                continue;
            };
            match field.ty {
                FieldType::String if !value.is_string() => {
                    return Err(err("expected a string".into()));
                }
                FieldType::Boolean if !value.is_boolean() => {
                    return Err(err("expected true or false".into()));
                }
                FieldType::StringList
                    if !value.as_array().is_some_and(|a| a.iter().all(serde_json::Value::is_string)) =>
                {
                    return Err(err("expected a list of strings".into()));
                }
                FieldType::Integer => {
                    let Some(n) = value.as_i64() else {
                        return Err(err("expected an integer".into()));
                    };
                    if field.min.is_some_and(|min| n < min) || field.max.is_some_and(|max| n > max) {
                        let range = format!(
                            "between {} and {}",
                            field.min.map_or("-inf".to_string(), |m| m.to_string()),
                            field.max.map_or("+inf".to_string(), |m| m.to_string())
                        );
                        return Err(err(format!("{n} is not {range}")));
                    }
                }
                _ => {}
            }
            if field.secret {
                secrets.insert(name.clone(), value.as_str().unwrap_or_default().to_string());
            } else {
                visible.insert(name.clone(), value.clone());
            }
        }
        let mut hosts = Vec::new();
        for entry in &self.capabilities.http_hosts {
            let Some(field) = entry.strip_prefix("config:") else {
                hosts.push(entry.clone());
                continue;
            };
            let Some(value) = visible.get(field).and_then(|v| v.as_str()) else { continue };
            let url = url::Url::parse(value)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)));
            match url {
                Some(host) => hosts.push(host),
                None => {
                    return Err(ConfigError {
                        field: field.to_string(),
                        reason: format!("{value:?} is not an http(s) URL"),
                    });
                }
            }
        }
        Ok(PluginConfig { json: serde_json::Value::Object(visible).to_string(), secrets: Secrets(secrets), hosts })
    }
}

/// A configuration value that does not fit the schema.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("config field `{field}`: {reason}")]
pub struct ConfigError {
    /// The field (empty when the whole value is wrong).
    pub field: String,
    /// Why.
    pub reason: String,
}

/// A validated configuration, ready for calls.
#[derive(Clone, Default)]
pub struct PluginConfig {
    /// What `config.get` returns: the non-secret fields as a JSON object.
    pub json: String,
    /// Secret fields, for credentials. Never handed to the plugin.
    pub secrets: Secrets,
    /// The hosts `http.fetch` may reach: the manifest's, with `config:FIELD` entries
    /// resolved from this configuration.
    pub hosts: Vec<String>,
}

impl fmt::Debug for PluginConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginConfig")
            .field("json", &self.json)
            .field("secrets", &self.secrets)
            .field("hosts", &self.hosts)
            .finish()
    }
}

/// Secret values by config field. Its `Debug` prints names only, so a secret cannot reach
/// a log through a `{:?}`.
#[derive(Clone, Default)]
pub struct Secrets(pub HashMap<String, String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.0.keys().collect();
        names.sort();
        write!(f, "Secrets({names:?}, values redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RULE: &str = r#"
        name = "flat-rate"
        version = "1.2.3"
        kind = "merchant-rules"
        wit = "0.1.0"
        [config.rate_bps]
        type = "integer"
        required = true
        min = 0
        max = 10000
        [config.skip]
        type = "string-list"
    "#;

    const ADAPTER: &str = r#"
        name = "json-api"
        version = "0.1.0"
        kind = "network-adapter"
        wit = "0.1.0"
        [capabilities]
        http-hosts = ["api.network.example", "*.cdn.example"]
        [credentials.api]
        config = "api_key"
        header = "Authorization"
        format = "Bearer {secret}"
        [config.api_key]
        type = "string"
        secret = true
        required = true
        [config.base_url]
        type = "string"
    "#;

    fn maxima() -> Limits {
        Limits::host_maxima()
    }

    #[test]
    fn a_valid_manifest_parses() {
        let m = Manifest::parse(RULE, &maxima()).expect("valid");
        assert_eq!(m.label(), "flat-rate@1.2.3");
        assert_eq!(m.kind, PluginKind::MerchantRules);
        let a = Manifest::parse(ADAPTER, &maxima()).expect("valid");
        assert_eq!(a.capabilities.http_hosts.len(), 2);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (RULE.replace("flat-rate", "Flat Rate"), "`name`"),
            (RULE.replace("wit = \"0.1.0\"", "wit = \"0.9.0\""), "`wit`"),
            // The partner-callback world exists since 0.2.0.
            (RULE.replace("merchant-rules", "partner-callback"), "`wit`"),
            (
                RULE.replace("merchant-rules", "partner-callback").replace("0.1.0\"", "0.2.0\"")
                    + "\n[capabilities]\nhttp-hosts = [\"x.example\"]",
                "capabilities.http-hosts",
            ),
            (format!("{RULE}\n[capabilities]\nhttp-hosts = [\"x.example\"]"), "capabilities.http-hosts"),
            (ADAPTER.replace("secret = true", ""), "credentials.api"),
            (ADAPTER.replace("header = \"Authorization\"", ""), "credentials.api"),
            (ADAPTER.replace("\"*.cdn.example\"", "\"http://x/y\""), "capabilities.http-hosts"),
            (
                RULE.replace("[config.rate_bps]", "[limits]\nmemory-mib = 100000\n[config.rate_bps]"),
                "limits.memory-mib",
            ),
        ];
        for (text, field) in cases {
            let err = Manifest::parse(&text, &maxima()).expect_err(field).to_string();
            assert!(err.contains(field), "{err:?} should name {field}");
        }
        let err = Manifest::parse("name = 1", &maxima()).expect_err("type");
        assert!(matches!(err, ManifestError::Parse(_)));
    }

    #[test]
    fn an_adapter_may_take_files_in_pieces() {
        let split = "\n[parse-file]\nsplit = \"csv-records\"\ndelimiter-config = \"base_url\"\n";
        let m = Manifest::parse(&format!("{ADAPTER}{split}"), &maxima()).expect("valid");
        let p = m.parse_file.expect("parse-file");
        assert_eq!((p.split, p.delimiter_config.as_deref()), (FileSplit::CsvRecords, Some("base_url")));
        assert_eq!(Manifest::parse(ADAPTER, &maxima()).expect("valid").parse_file, None, "whole files by default");
        for (text, field) in [
            (format!("{ADAPTER}{}", split.replace("base_url", "api_key")), "parse-file.delimiter-config"),
            (format!("{ADAPTER}{}", split.replace("base_url", "nope")), "parse-file.delimiter-config"),
            (format!("{RULE}\n[parse-file]\nsplit = \"csv-records\"\n"), "parse-file"),
        ] {
            let err = Manifest::parse(&text, &maxima()).expect_err(field).to_string();
            assert!(err.contains(&format!("`{field}`")), "{err:?} should name {field}");
        }
        let err = Manifest::parse(&format!("{ADAPTER}\n[parse-file]\nsplit = \"lines\"\n"), &maxima());
        assert!(matches!(err, Err(ManifestError::Parse(_))), "{err:?}");
    }

    #[test]
    fn config_is_checked_against_the_schema() {
        let m = Manifest::parse(RULE, &maxima()).expect("valid");
        assert!(m.validate_config(&json!({"rate_bps": 250})).is_ok());
        let e = m.validate_config(&json!({})).expect_err("missing");
        assert_eq!(e.field, "rate_bps");
        let e = m.validate_config(&json!({"rate_bps": 20000})).expect_err("range");
        assert!(e.to_string().contains("between 0 and 10000"), "{e}");
        let e = m.validate_config(&json!({"rate_bps": 1, "rate_bsp": 2})).expect_err("typo");
        assert_eq!(e.field, "rate_bsp");
        let e = m.validate_config(&json!({"rate_bps": 1, "skip": [1]})).expect_err("list");
        assert_eq!(e.field, "skip");
    }

    #[test]
    fn a_host_can_be_granted_through_a_config_field() {
        let text = ADAPTER
            .replace("http-hosts = [\"api.network.example\", \"*.cdn.example\"]", "http-hosts = [\"config:base_url\"]");
        let m = Manifest::parse(&text, &maxima()).expect("valid");
        let c = m.validate_config(&json!({"api_key": "k", "base_url": "http://127.0.0.1:8080/v1"})).expect("ok");
        assert_eq!(c.hosts, vec!["127.0.0.1:8080".to_string()]);
        let c = m.validate_config(&json!({"api_key": "k", "base_url": "https://api.net.example/"})).expect("ok");
        assert_eq!(c.hosts, vec!["api.net.example:443".to_string()]);
        let e = m.validate_config(&json!({"api_key": "k", "base_url": "ftp://x"})).expect_err("scheme");
        assert_eq!(e.field, "base_url");
        let bad = text.replace("config:base_url", "config:api_key");
        assert!(Manifest::parse(&bad, &maxima()).expect_err("secret").to_string().contains("non-secret"));
    }

    #[test]
    fn secrets_are_split_out_and_never_printed() {
        let m = Manifest::parse(ADAPTER, &maxima()).expect("valid");
        let c = m
            .validate_config(&json!({"api_key": "s3cr3t-value", "base_url": "https://api.network.example"}))
            .expect("ok");
        assert!(!c.json.contains("s3cr3t"), "the plugin must not see secrets: {}", c.json);
        assert_eq!(c.secrets.0.get("api_key").map(String::as_str), Some("s3cr3t-value"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
