//! Runs a plugin against JSON fixtures inside the real sandbox: what `cashbackd plugin
//! test` does, and what an upload will check before a version can be activated.
//!
//! A fixture file is a JSON array of cases:
//!
//! ```json
//! [{
//!   "name": "3% on books",
//!   "config": { "rate_bps": 300 },
//!   "order": { ... },                    // rules: an Order (context optional)
//!   "postback": { "method": "GET", "query": "tx=1&amount=10.00" },   // adapters
//!   "file": { "name": "report.csv", "contents": "..." },           // adapters
//!   "import": { "window_start": 0, "window_end": 1, "cursor": null,  // adapters: a page
//!               "http": [{ "url": "https://...", "status": 200, "body": "..." }] },
//!   "expect": { "total": { "minor": 338 } },   // a subset of the result's JSON
//!   "expect_error": "Config"                   // or: text the error must contain
//! }]
//! ```
//!
//! A partner-callback case gives `change` and `endpoint` (the two arguments of `render`)
//! and expects the request.
//!
//! `expect` matches when every key it names has the same value in the result (objects
//! recursively; arrays element by element with the same length), so a fixture states only
//! what it is about.
//!
//! An `import` case runs one `import-page` call whose HTTP requests are answered from
//! `http`, in order, and never leave the host: each request must be the next one listed
//! (method and URL, as the plugin asks for it), and still passes the host's checks
//! (declared hosts, declared credentials, the response cap).

use super::http::{Exchange, HttpClient};
use super::manifest::PluginKind;
use super::runtime::{LoadedPlugin, PluginRuntime};
use super::wit::latest;
use serde::Deserialize;
use serde_json::Value;

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// What the case shows.
    pub name: String,
    /// The plugin configuration.
    #[serde(default)]
    pub config: Value,
    /// Rules: the order.
    pub order: Option<latest::Order>,
    /// Rules: the context; defaults to `now` = the order's event time, no history.
    pub context: Option<latest::RuleContext>,
    /// Adapters: a postback.
    pub postback: Option<FixturePostback>,
    /// Adapters: a file.
    pub file: Option<FixtureFile>,
    /// Adapters: one page of an API import, with the network's recorded answers.
    pub import: Option<FixtureImport>,
    /// Partner callbacks: the change to render.
    pub change: Option<latest::Change>,
    /// Partner callbacks: the endpoint it goes to.
    pub endpoint: Option<latest::CallbackEndpoint>,
    /// The expected result (subset).
    pub expect: Option<Value>,
    /// Text the error must contain.
    pub expect_error: Option<String>,
}

/// A postback in a fixture; the body is text for readability.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixturePostback {
    /// GET or POST.
    #[serde(default = "get")]
    pub method: String,
    /// Path after `/postback/{network}`.
    #[serde(default)]
    pub path: String,
    /// Raw query string.
    #[serde(default)]
    pub query: String,
    /// Headers.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Body text.
    #[serde(default)]
    pub body: String,
    /// When the host received it (ms); default 2026-01-01T00:00:00Z, so a fixture that
    /// relies on it is reproducible.
    #[serde(default = "fixture_received_at")]
    pub received_at: i64,
}

fn fixture_received_at() -> i64 {
    1_767_225_600_000
}

fn get() -> String {
    "GET".into()
}

/// A file in a fixture.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureFile {
    /// File name.
    pub name: String,
    /// Contents as text.
    pub contents: String,
}

/// One page of an API import in a fixture.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureImport {
    /// Start of the window (ms, inclusive).
    pub window_start: i64,
    /// End of the window (ms, exclusive).
    pub window_end: i64,
    /// The previous page's cursor; none for the first page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// The requests the adapter must make, in order, each with the network's answer.
    #[serde(default)]
    pub http: Vec<FixtureExchange>,
}

/// A request an import fixture expects, and the answer it gets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureExchange {
    /// GET, POST or PUT.
    #[serde(default = "get")]
    pub method: String,
    /// The URL the plugin asks for (before the host adds a credential).
    pub url: String,
    /// The answer's status.
    #[serde(default = "ok")]
    pub status: u16,
    /// The answer's headers.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The answer's body, as text.
    #[serde(default)]
    pub body: String,
}

fn ok() -> u16 {
    200
}

/// The outcome of one case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed, or a summary of what it returned.
    pub detail: String,
}

/// Parses a fixture file.
pub fn parse(json: &str) -> Result<Vec<Fixture>, String> {
    serde_json::from_str(json).map_err(|e| format!("invalid fixtures: {e}"))
}

/// Runs every case and reports each.
pub fn run(runtime: &PluginRuntime, plugin: &LoadedPlugin, fixtures: &[Fixture]) -> Vec<CaseResult> {
    super::runtime::proving(|| fixtures.iter().map(|f| run_one(runtime, plugin, f)).collect())
}

fn run_one(runtime: &PluginRuntime, plugin: &LoadedPlugin, f: &Fixture) -> CaseResult {
    let result = |passed: bool, detail: String| CaseResult { name: f.name.clone(), passed, detail };
    let outcome: Result<Value, String> = match plugin.manifest.validate_config(&f.config) {
        Err(e) => Err(format!("Config: {e}")),
        Ok(config) if plugin.kind() == PluginKind::PartnerCallback => match (&f.change, &f.endpoint) {
            (Some(change), Some(endpoint)) if f.order.is_none() && f.postback.is_none() && f.file.is_none() => {
                to_json(runtime.render_callback(plugin, &config, change, endpoint).result)
            }
            _ => {
                return result(
                    false,
                    "a partner-callback fixture needs `change` and `endpoint`, and nothing else".into(),
                );
            }
        },
        Ok(config) => match (plugin.kind(), &f.order, &f.postback, &f.file, &f.import) {
            (PluginKind::MerchantRules, Some(order), None, None, None) => {
                let context = f.context.clone().unwrap_or(latest::RuleContext {
                    now: order.event_time,
                    prior_orders: 0,
                    decision_so_far: None,
                    attributes: Vec::new(),
                });
                to_json(runtime.evaluate(plugin, &config, order, &context).result)
            }
            (PluginKind::NetworkAdapter, None, Some(p), None, None) => {
                let request = latest::PostbackRequest {
                    method: p.method.clone(),
                    path: p.path.clone(),
                    query: p.query.clone(),
                    headers: p.headers.clone(),
                    body: p.body.clone().into_bytes(),
                    received_at: p.received_at,
                };
                to_json(runtime.parse_postback(plugin, &config, &request).result)
            }
            (PluginKind::NetworkAdapter, None, None, Some(file), None) => {
                to_json(runtime.parse_file(plugin, &config, &file.name, file.contents.as_bytes()).result)
            }
            (PluginKind::NetworkAdapter, None, None, None, Some(import)) => {
                let request = latest::ImportRequest {
                    window_start: import.window_start,
                    window_end: import.window_end,
                    cursor: import.cursor.clone(),
                };
                let exchanges = import
                    .http
                    .iter()
                    .map(|x| Exchange {
                        method: x.method.clone(),
                        url: x.url.clone(),
                        response: super::http::Response {
                            status: x.status,
                            headers: x.headers.clone(),
                            body: x.body.clone().into_bytes(),
                        },
                    })
                    .collect();
                to_json(runtime.import_page_with(plugin, &config, &request, &HttpClient::replay(exchanges)).result)
            }
            (kind, ..) => {
                let wanted = match kind {
                    PluginKind::MerchantRules => "`order`",
                    PluginKind::NetworkAdapter => "exactly one of `postback`, `file` or `import`",
                    PluginKind::PartnerCallback => "`change` and `endpoint`",
                };
                return result(false, format!("a {kind} fixture needs {wanted}"));
            }
        },
    };
    match (outcome, &f.expect, &f.expect_error) {
        (Ok(actual), Some(expected), None) => match subset_mismatch(expected, &actual, "$") {
            None => result(true, "matches".into()),
            Some(why) => result(false, format!("{why}\n  got: {actual}")),
        },
        (Err(e), None, Some(wanted)) if e.contains(wanted.as_str()) => result(true, format!("failed as expected: {e}")),
        (Err(e), None, Some(wanted)) => result(false, format!("expected an error containing {wanted:?}, got: {e}")),
        (Ok(actual), None, Some(wanted)) => {
            result(false, format!("expected an error containing {wanted:?}, got: {actual}"))
        }
        (Err(e), Some(_), None) => result(false, format!("unexpected error: {e}")),
        (_, None, None) | (_, Some(_), Some(_)) => {
            result(false, "set exactly one of `expect` or `expect_error`".into())
        }
    }
}

/// The registry's admission test, the same for every way a component comes in
/// (`plugin upload`, `merchant add --rule`, `network add --adapter`) and checked again
/// before a stored version is put to use: the plugin embeds fixtures, and passes every
/// one of them in the sandbox. Returns how many passed; the error says which failed and
/// why. Runs plugin code: call it off the async runtime's workers.
pub fn prove(runtime: &PluginRuntime, plugin: &LoadedPlugin) -> Result<usize, String> {
    let cases = match plugin.fixtures.as_deref() {
        Some(json) => parse(json).map_err(|e| format!("{}: embedded fixtures: {e}", plugin.label()))?,
        None => Vec::new(),
    };
    if cases.is_empty() {
        return Err(format!(
            "{} embeds no fixtures: the registry only takes plugins that prove themselves \
             (export_rule!/export_adapter! with fixtures = \"fixtures.json\")",
            plugin.label()
        ));
    }
    let results = run(runtime, plugin, &cases);
    let failed: Vec<String> =
        results.iter().filter(|r| !r.passed).map(|r| format!("{:?}: {}", r.name, r.detail)).collect();
    if !failed.is_empty() {
        return Err(format!(
            "{}: {} of {} fixtures failed: {}",
            plugin.label(),
            failed.len(),
            results.len(),
            failed.join("; ")
        ));
    }
    Ok(results.len())
}

fn to_json<T: serde::Serialize>(r: Result<T, super::CallError>) -> Result<Value, String> {
    match r {
        Ok(v) => serde_json::to_value(v).map_err(|e| e.to_string()),
        Err(super::CallError::Plugin { error, .. }) => Err(format!("{error:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Where `expected` is not a subset of `actual`, if anywhere.
pub fn subset_mismatch(expected: &Value, actual: &Value, path: &str) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().find_map(|(k, ev)| match a.get(k) {
            Some(av) => subset_mismatch(ev, av, &format!("{path}.{k}")),
            None => Some(format!("{path}.{k}: missing")),
        }),
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            e.iter().zip(a).enumerate().find_map(|(i, (ev, av))| subset_mismatch(ev, av, &format!("{path}[{i}]")))
        }
        (Value::Array(e), Value::Array(a)) => Some(format!("{path}: expected {} elements, got {}", e.len(), a.len())),
        (e, a) if e == a => None,
        (e, a) => Some(format!("{path}: expected {e}, got {a}")),
    }
}

#[cfg(test)]
mod tests {
    use super::subset_mismatch;
    use serde_json::json;

    #[test]
    fn expectations_match_as_subsets() {
        let actual = json!({"total": {"minor": 5, "currency": "EUR"}, "lines": [{"a": 1, "b": 2}], "hold": null});
        assert_eq!(subset_mismatch(&json!({"total": {"minor": 5}}), &actual, "$"), None);
        assert_eq!(subset_mismatch(&json!({"lines": [{"b": 2}]}), &actual, "$"), None);
        assert!(subset_mismatch(&json!({"lines": []}), &actual, "$").is_some());
        let why = subset_mismatch(&json!({"total": {"minor": 6}}), &actual, "$").unwrap_or_default();
        assert_eq!(why, "$.total.minor: expected 6, got 5");
        assert!(subset_mismatch(&json!({"nope": 1}), &actual, "$").is_some());
    }
}
