//! `json-api`: imports conversions from the reference JSON reporting API, one page per
//! call, with an API key the host adds to every request (the plugin never sees it).
//!
//! ```text
//! GET {base_url}/transactions?from={window_start}&to={window_end}&limit={page_size}[&cursor={cursor}]
//! Authorization: Bearer {api_key}        <- added by the host (credential "api-key")
//!
//! {"transactions": [{"id": "T-1", "status": "approved", "amount": "12.34", ...}], "next_cursor": "..." | null}
//! ```
//!
//! Errors: an answer other than 200, a body that is not the JSON page described above, or
//! a failed request is [`PluginError::Upstream`] (the host retries later); a transaction
//! that cannot be turned into an event is [`PluginError::InvalidInput`] naming its id and
//! field (the contract's `page` has no place for rejected transactions, so one malformed
//! transaction fails its page).

use cashback_sdk::prelude::*;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The manifest credential whose secret (config field `api_key`) the host adds as
/// `Authorization: Bearer ...` to every request.
pub const CREDENTIAL: &str = "api-key";

/// The reference API's status values and the states they mean; `states` in the
/// configuration overrides or extends them.
pub const DEFAULT_STATES: [(&str, ConversionState); 5] = [
    ("pending", ConversionState::Pending),
    ("approved", ConversionState::Completed),
    ("declined", ConversionState::Rejected),
    ("adjusted", ConversionState::Adjusted),
    ("reversed", ConversionState::Reversed),
];

/// The plugin's configuration (see `cashback-plugin.toml`). `api_key` is secret: the
/// host keeps it and never passes it here.
#[derive(Debug, Deserialize)]
pub struct Config {
    /// The API's base URL, e.g. `https://api.network.example/v1`.
    pub base_url: String,
    /// Transactions per page (1-1000).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// cashbackd's id of the network, copied into events.
    #[serde(default)]
    pub network: String,
    /// Status value → state overrides (values: PENDING, COMPLETED...).
    #[serde(default)]
    pub states: BTreeMap<String, String>,
}

fn default_page_size() -> u32 {
    100
}

/// A checked configuration.
#[derive(Debug)]
pub struct Api {
    base_url: String,
    page_size: u32,
    network: String,
    /// (lower-cased status value, state), overrides first.
    states: Vec<(String, ConversionState)>,
}

impl Api {
    /// Checks a configuration; errors are [`PluginError::Config`] naming the field.
    pub fn new(config: Config) -> Result<Api, PluginError> {
        let base = config.base_url.trim().trim_end_matches('/');
        let scheme_ok = base.starts_with("https://") || base.starts_with("http://");
        if !scheme_ok || base.contains(['?', '#']) || base.split("://").nth(1).is_none_or(str::is_empty) {
            return Err(PluginError::Config(format!(
                "base_url: {:?} is not an http(s) URL without query or fragment",
                config.base_url
            )));
        }
        if !(1..=1000).contains(&config.page_size) {
            return Err(PluginError::Config(format!("page_size: {} is not between 1 and 1000", config.page_size)));
        }
        let mut states = Vec::new();
        for (value, state) in &config.states {
            let Some(parsed) = ConversionState::parse(state) else {
                return Err(PluginError::Config(format!(
                    "states.{value}: {state:?} is not one of PENDING, ADJUSTED, COMPLETED, REJECTED, REVERSED, CREATED"
                )));
            };
            states.push((value.trim().to_lowercase(), parsed));
        }
        states.extend(DEFAULT_STATES.iter().map(|(v, s)| (v.to_string(), *s)));
        Ok(Api { base_url: base.to_string(), page_size: config.page_size, network: config.network, states })
    }

    /// The URL of one page.
    pub fn page_url(&self, request: &ImportRequest) -> String {
        let mut url = format!(
            "{}/transactions?from={}&to={}&limit={}",
            self.base_url, request.window_start, request.window_end, self.page_size
        );
        if let Some(cursor) = &request.cursor {
            url.push_str("&cursor=");
            url.push_str(&percent_encode(cursor));
        }
        url
    }

    /// Fetches and converts one page.
    pub fn import(&self, request: &ImportRequest) -> Result<Page, PluginError> {
        let url = self.page_url(request);
        let mut http_request = http::get(&url, Some(CREDENTIAL));
        http_request.headers.push(("accept".into(), "application/json".into()));
        let response = http::fetch(&http_request)?;
        if response.status != 200 {
            return Err(PluginError::Upstream(format!(
                "GET {url} answered HTTP {}: {}",
                response.status,
                excerpt(&response.body)
            )));
        }
        let body: Value = serde_json::from_slice(&response.body).map_err(|e| {
            PluginError::Upstream(format!("GET {url} answered unparsable JSON ({e}): {}", excerpt(&response.body)))
        })?;
        let not_a_page = |why: &str| {
            PluginError::Upstream(format!(
                "GET {url} answered JSON that is not a page ({why}): {}",
                excerpt(&response.body)
            ))
        };
        let Some(transactions) = body.get("transactions").and_then(Value::as_array) else {
            return Err(not_a_page("no `transactions` array"));
        };
        let next_cursor = match body.get("next_cursor") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(not_a_page("`next_cursor` is neither a string nor null")),
        };
        if next_cursor.is_some() && next_cursor == request.cursor {
            return Err(PluginError::Upstream(format!(
                "GET {url} answered the cursor it was given ({:?}) as the next one; stopping instead of looping",
                request.cursor.as_deref().unwrap_or_default()
            )));
        }
        // One malformed transaction is reported, not allowed to fail the whole page.
        let mut events = Vec::with_capacity(transactions.len());
        let mut rejected = Vec::new();
        for (i, tx) in transactions.iter().enumerate() {
            match self.event(i + 1, tx) {
                Ok(event) => events.push(event),
                Err(e) => rejected.push(RejectedItem {
                    reference: tx_reference(i + 1, tx),
                    reason: match e {
                        PluginError::InvalidInput(m)
                        | PluginError::Config(m)
                        | PluginError::Upstream(m)
                        | PluginError::Internal(m) => m,
                    },
                }),
            }
        }
        Ok(Page { events, rejected, next_cursor })
    }

    /// One transaction of the page (`position` is 1-based, for errors before the id is known).
    fn event(&self, position: usize, tx: &Value) -> Result<ConversionEvent, PluginError> {
        let Some(fields) = tx.as_object() else {
            return Err(PluginError::InvalidInput(format!("transaction #{position} of the page is not a JSON object")));
        };
        let id = match fields.get("id").and_then(text) {
            Some(id) if !id.is_empty() => id,
            _ => {
                return Err(PluginError::InvalidInput(format!(
                    "transaction #{position} of the page: field \"id\" is missing or not a string: {}",
                    fields.get("id").map_or("absent".to_string(), Value::to_string)
                )));
            }
        };
        let t = Transaction { id: &id, fields };
        let status = t.required_text("status")?;
        let key = status.trim().to_lowercase();
        let Some((_, state)) = self.states.iter().find(|(k, _)| *k == key) else {
            let mut known: Vec<&str> = self.states.iter().map(|(k, _)| k.as_str()).collect();
            known.sort_unstable();
            known.dedup();
            return Err(t.invalid("status", &format!("unknown status {status:?}; known: {}", known.join(", "))));
        };
        let currency_text = t.required_text("currency")?;
        let currency = money::currency_code(&currency_text)
            .ok_or_else(|| t.invalid("currency", &format!("{currency_text:?} is not an ISO 4217 code")))?;
        let amount = t.amount("amount", fields.get("amount"), &currency)?;
        let commission = t.amount("commission", fields.get("commission"), &currency)?;
        let date = t.required_text("date")?;
        let event_time = parse_timestamp(&date).map_err(|e| t.invalid("date", e.message()))?;
        let mut line_items = Vec::new();
        match fields.get("items") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let line = t.line_item(i, item, &currency)?;
                    if line_items.iter().any(|l: &LineItem| l.id == line.id) {
                        return Err(t.invalid(&format!("items[{i}].id"), &format!("{:?} appears twice", line.id)));
                    }
                    line_items.push(line);
                }
            }
            Some(other) => return Err(t.invalid("items", &format!("{other} is not a list"))),
        }
        Ok(ConversionEvent {
            network: self.network.clone(),
            transaction_id: id.clone(),
            click_id: t.optional_text("click_id")?,
            order_id: t.optional_text("order_id")?,
            event_type: "sale".into(),
            state: *state,
            amount,
            commission,
            currency,
            event_time,
            reason: t.optional_text("reason")?,
            merchant_ref: t.optional_text("merchant_id")?,
            line_items,
            raw: fields
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                .collect(),
        })
    }
}

/// A transaction being converted, for errors that name it.
struct Transaction<'a> {
    id: &'a str,
    fields: &'a Map<String, Value>,
}

impl Transaction<'_> {
    fn invalid(&self, field: &str, why: &str) -> PluginError {
        PluginError::InvalidInput(format!("transaction {:?}: field {field:?}: {why}", self.id))
    }

    fn required_text(&self, field: &str) -> Result<String, PluginError> {
        match self.fields.get(field) {
            Some(v) => text(v).ok_or_else(|| self.invalid(field, &format!("{v} is not a string"))),
            None => Err(self.invalid(field, "missing")),
        }
    }

    /// A string (or number) field; null, absent and empty are not reported.
    fn optional_text(&self, field: &str) -> Result<Option<String>, PluginError> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match text(v) {
                Some(s) => Ok(Some(s).filter(|s| !s.is_empty())),
                None => Err(self.invalid(field, &format!("{v} is not a string"))),
            },
        }
    }

    /// A decimal amount ("12.34" or 12.34) in minor units of `currency`, rounded down.
    fn amount(&self, field: &str, value: Option<&Value>, currency: &str) -> Result<i64, PluginError> {
        let text = match value {
            None => return Err(self.invalid(field, "missing")),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => return Err(self.invalid(field, &format!("{other} is not a decimal amount"))),
        };
        money::parse_decimal(&text, currency, Rounding::Down).map_err(|e| self.invalid(field, &e.to_string()))
    }

    fn line_item(&self, index: usize, item: &Value, currency: &str) -> Result<LineItem, PluginError> {
        let field = |name: &str| format!("items[{index}].{name}");
        let Some(obj) = item.as_object() else {
            return Err(self.invalid(&format!("items[{index}]"), &format!("{item} is not an object")));
        };
        let id = match obj.get("id").and_then(text) {
            Some(id) if !id.is_empty() => id,
            _ => return Err(self.invalid(&field("id"), "missing or not a string")),
        };
        let string = |name: &str| -> Result<String, PluginError> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(v) => text(v).ok_or_else(|| self.invalid(&field(name), &format!("{v} is not a string"))),
            }
        };
        let quantity = match obj.get("quantity") {
            None | Some(Value::Null) => 1,
            Some(v) => v
                .as_u64()
                .and_then(|q| u32::try_from(q).ok())
                .ok_or_else(|| self.invalid(&field("quantity"), &format!("{v} is not a whole number of units")))?,
        };
        Ok(LineItem {
            sku: string("sku")?,
            category: string("category")?,
            quantity,
            amount: self.amount(&field("amount"), obj.get("amount"), currency)?,
            id,
        })
    }
}

/// A JSON string as is, or an integer as its digits (ids are sometimes numbers).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Percent-encodes a query value: everything but RFC 3986's unreserved characters.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The start of a response body for an error message: at most 200 characters, control
/// characters as spaces.
fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(MAX).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().nth(MAX).is_some() {
        out.push_str("...");
    }
    if out.trim().is_empty() { "(empty body)".to_string() } else { out }
}

/// The adapter.
pub struct JsonApi;

impl Adapter for JsonApi {
    fn import_page(request: &ImportRequest) -> Result<Page, PluginError> {
        Api::new(config::get()?)?.import(request)
    }
}

export_adapter!(JsonApi, fixtures = "fixtures.json");

/// How a rejected transaction is named: its id, or its position on the page.
fn tx_reference(position: usize, tx: &Value) -> String {
    match tx.get("id") {
        Some(Value::String(id)) => id.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => format!("#{position}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cashback_sdk::adapter::http::{HttpError, Request, Response};
    use cashback_sdk::testing;
    use std::cell::RefCell;
    use std::rc::Rc;

    const CONFIG: &str = r#"{"base_url": "https://api.network.example/v2/", "page_size": 2, "network": "refnet"}"#;
    const START: i64 = 1_767_225_600_000;
    const END: i64 = 1_767_312_000_000;

    const PAGE_1: &str = r#"{
        "transactions": [
            {"id": "T-1", "click_id": "clk-1", "order_id": "O-1", "status": "pending", "amount": "12.34",
             "commission": "1.23", "currency": "EUR", "date": "2026-01-01T10:00:00Z", "merchant_id": "m-7",
             "reason": null,
             "items": [{"id": "L1", "sku": "SKU-1", "category": "books", "quantity": 2, "amount": "10.00"},
                       {"id": "L2", "sku": "SKU-2", "category": "toys", "quantity": 1, "amount": "2.34"}]},
            {"id": 2002, "status": "APPROVED", "amount": 5.5, "commission": "0.55", "currency": "usd",
             "date": "1767261600"}
        ],
        "next_cursor": "page 2/+="
    }"#;

    const PAGE_2: &str = r#"{
        "transactions": [
            {"id": "T-3", "status": "declined", "amount": "7", "commission": "0", "currency": "EUR",
             "date": 1767268800000, "reason": "returned", "click_id": ""}
        ],
        "next_cursor": null
    }"#;

    fn ok(body: &str) -> Result<Response, HttpError> {
        Ok(Response { status: 200, headers: Vec::new(), body: body.as_bytes().to_vec() })
    }

    fn answer(status: u16, body: &str) -> Result<Response, HttpError> {
        Ok(Response { status, headers: Vec::new(), body: body.as_bytes().to_vec() })
    }

    /// Serves the two pages by cursor and records every request.
    fn serve_two_pages() -> Rc<RefCell<Vec<Request>>> {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let log = Rc::clone(&seen);
        testing::set_http_handler(move |r: &Request| {
            log.borrow_mut().push(r.clone());
            if r.url.contains("cursor=") { ok(PAGE_2) } else { ok(PAGE_1) }
        });
        seen
    }

    fn request(cursor: Option<&str>) -> ImportRequest {
        ImportRequest { window_start: START, window_end: END, cursor: cursor.map(str::to_string) }
    }

    fn import(config: &str, cursor: Option<&str>) -> Result<Page, PluginError> {
        testing::set_config(config);
        JsonApi::import_page(&request(cursor))
    }

    /// Calls `import_page` like the host: again with each next cursor until there is none.
    fn import_window(config: &str) -> Result<Vec<ConversionEvent>, PluginError> {
        let mut events = Vec::new();
        let mut cursor = None;
        for _ in 0..10 {
            let page = import(config, cursor.as_deref())?;
            events.extend(page.events);
            cursor = page.next_cursor;
            if cursor.is_none() {
                return Ok(events);
            }
        }
        panic!("the import did not end");
    }

    fn error(config: &str) -> PluginError {
        match import(config, None) {
            Err(e) => e,
            Ok(page) => panic!("expected an error, got {page:?}"),
        }
    }

    #[test]
    fn a_window_is_imported_page_by_page_until_the_cursor_runs_out() {
        let seen = serve_two_pages();
        let events = import_window(CONFIG).expect("import");
        assert_eq!(events.iter().map(|e| e.transaction_id.as_str()).collect::<Vec<_>>(), ["T-1", "2002", "T-3"]);
        let urls: Vec<String> = seen.borrow().iter().map(|r| r.url.clone()).collect();
        assert_eq!(
            urls,
            [
                "https://api.network.example/v2/transactions?from=1767225600000&to=1767312000000&limit=2",
                "https://api.network.example/v2/transactions?from=1767225600000&to=1767312000000&limit=2\
                 &cursor=page%202%2F%2B%3D",
            ]
        );
    }

    #[test]
    fn every_request_names_the_api_key_credential_and_never_carries_a_secret() {
        let seen = serve_two_pages();
        testing::set_config(r#"{"base_url": "https://api.network.example", "api_key": "s3cr3t"}"#);
        let page = JsonApi::import_page(&request(None)).expect("page");
        assert_eq!(page.next_cursor.as_deref(), Some("page 2/+="));
        let seen = seen.borrow();
        assert_eq!(seen.len(), 1, "one request per page");
        let r = &seen[0];
        assert_eq!(r.credential.as_deref(), Some("api-key"));
        assert_eq!(r.method, http::Method::Get);
        assert_eq!(r.body, None);
        assert!(r.url.ends_with("&limit=100"), "default page size: {}", r.url);
        assert!(!format!("{r:?}").contains("s3cr3t"), "the plugin never handles the key: {r:?}");
        assert!(r.headers.contains(&("accept".to_string(), "application/json".to_string())));
    }

    #[test]
    fn transactions_become_events_with_items_in_minor_units() {
        serve_two_pages();
        let page = import(CONFIG, None).expect("page");
        let e = &page.events[0];
        assert_eq!(e.network, "refnet");
        assert_eq!((e.click_id.as_deref(), e.order_id.as_deref()), (Some("clk-1"), Some("O-1")));
        assert_eq!(
            (e.state, e.amount, e.commission, e.currency.as_str()),
            (ConversionState::Pending, 1234, 123, "EUR")
        );
        assert_eq!(e.event_time, 1_767_261_600_000);
        assert_eq!(e.merchant_ref.as_deref(), Some("m-7"));
        assert_eq!((e.reason.as_deref(), e.event_type.as_str()), (None, "sale"));
        assert_eq!(e.line_items.len(), 2);
        assert_eq!(
            e.line_items[0],
            LineItem { id: "L1".into(), sku: "SKU-1".into(), category: "books".into(), quantity: 2, amount: 1000 }
        );
        assert!(e.raw.contains(&("status".to_string(), "pending".to_string())));
        assert!(e.raw.contains(&("reason".to_string(), "null".to_string())));
        let numeric = &page.events[1];
        assert_eq!(
            (numeric.state, numeric.amount, numeric.currency.as_str()),
            (ConversionState::Completed, 550, "USD")
        );
        assert_eq!(numeric.event_time, 1_767_261_600_000, "unix seconds");
        assert!(numeric.line_items.is_empty());
        let last = &import(CONFIG, Some("page 2/+=")).expect("page 2").events[0];
        assert_eq!(
            (last.state, last.reason.as_deref(), last.click_id.as_deref()),
            (ConversionState::Rejected, Some("returned"), None)
        );
        assert_eq!(last.event_time, 1_767_268_800_000, "unix milliseconds");
    }

    #[test]
    fn the_states_setting_overrides_and_extends_the_status_mapping() {
        testing::set_http_handler(|_| {
            ok(r#"{"transactions": [
                {"id": "a", "status": "approved", "amount": "1", "commission": "0", "currency": "EUR", "date": "0"},
                {"id": "b", "status": "On_Hold", "amount": "1", "commission": "0", "currency": "EUR", "date": "0"},
                {"id": "c", "status": "declined", "amount": "1", "commission": "0", "currency": "EUR", "date": "0"}
            ], "next_cursor": null}"#)
        });
        let config = r#"{"base_url": "https://x.example", "states": {"approved": "pending", "on_hold": "PENDING"}}"#;
        let page = import(config, None).expect("page");
        let states: Vec<ConversionState> = page.events.iter().map(|e| e.state).collect();
        assert_eq!(states, [ConversionState::Pending, ConversionState::Pending, ConversionState::Rejected]);
    }

    #[test]
    fn a_non_200_answer_is_an_upstream_error_with_the_status_and_an_excerpt() {
        let long = format!("{{\"error\": \"rate limited\"}}{}", "x".repeat(500));
        testing::set_http_handler(move |_| answer(429, &long));
        match error(CONFIG) {
            PluginError::Upstream(m) => {
                assert!(m.contains("HTTP 429") && m.contains("rate limited"), "{m}");
                assert!(m.ends_with("...") && m.len() < 400, "the excerpt is short: {m}");
            }
            other => panic!("expected upstream, got {other:?}"),
        }
    }

    #[test]
    fn unparsable_json_is_an_upstream_error() {
        testing::set_http_handler(|_| ok("<html>maintenance\n</html>"));
        match error(CONFIG) {
            PluginError::Upstream(m) => {
                assert!(m.contains("unparsable JSON") && m.contains("<html>maintenance"), "{m}")
            }
            other => panic!("expected upstream, got {other:?}"),
        }
        testing::set_http_handler(|_| ok(r#"{"data": []}"#));
        assert!(matches!(error(CONFIG), PluginError::Upstream(m) if m.contains("transactions")));
        testing::set_http_handler(|_| ok(r#"{"transactions": [], "next_cursor": 7}"#));
        assert!(matches!(error(CONFIG), PluginError::Upstream(m) if m.contains("next_cursor")));
    }

    #[test]
    fn a_failed_request_is_an_upstream_error() {
        testing::set_http_handler(|_| Err(HttpError::Timeout));
        assert!(matches!(error(CONFIG), PluginError::Upstream(m) if m.contains("Timeout")));
    }

    #[test]
    fn a_cursor_that_does_not_move_stops_the_import() {
        testing::set_http_handler(|_| ok(r#"{"transactions": [], "next_cursor": "same"}"#));
        match import(CONFIG, Some("same")) {
            Err(PluginError::Upstream(m)) => assert!(m.contains("\"same\""), "{m}"),
            other => panic!("expected upstream, got {other:?}"),
        }
        testing::set_http_handler(|_| ok(r#"{"transactions": [], "next_cursor": ""}"#));
        assert_eq!(import(CONFIG, Some("last")).expect("page").next_cursor, None, "an empty cursor ends the window");
    }

    #[test]
    fn a_malformed_transaction_names_its_id_and_field() {
        let cases = [
            (
                r#"{"id": "T-9", "status": "pending", "amount": "12,30", "commission": "0", "currency": "EUR", "date": "0"}"#,
                r#"transaction "T-9": field "amount""#,
                "12,30",
            ),
            (
                r#"{"id": "T-9", "status": "paid", "amount": "1", "commission": "0", "currency": "EUR", "date": "0"}"#,
                r#"field "status""#,
                "paid",
            ),
            (
                r#"{"id": "T-9", "status": "pending", "amount": "1", "commission": "0", "currency": "EUR", "date": "01/02/2026"}"#,
                r#"field "date""#,
                "01/02/2026",
            ),
            (
                r#"{"id": "T-9", "status": "pending", "amount": "1", "currency": "EUR", "date": "0"}"#,
                r#"field "commission""#,
                "missing",
            ),
            (
                r#"{"id": "T-9", "status": "pending", "amount": "1", "commission": "0", "currency": "euro", "date": "0"}"#,
                r#"field "currency""#,
                "euro",
            ),
            (
                r#"{"id": "T-9", "status": "pending", "amount": "1", "commission": "0", "currency": "EUR", "date": "0", "items": [{"id": "a", "amount": "x"}]}"#,
                r#"field "items[0].amount""#,
                "\"x\"",
            ),
            (
                r#"{"id": "T-9", "status": "pending", "amount": "1", "commission": "0", "currency": "EUR", "date": "0", "items": [{"id": "a", "amount": "1", "quantity": -1}]}"#,
                r#"field "items[0].quantity""#,
                "-1",
            ),
            (
                r#"{"id": "T-9", "status": "pending", "amount": "1", "commission": "0", "currency": "EUR", "date": "0", "items": [{"id": "a", "amount": "1"}, {"id": "a", "amount": "1"}]}"#,
                r#"field "items[1].id""#,
                "twice",
            ),
            (r#"{"status": "pending"}"#, "transaction #1", "\"id\""),
            (r#"{"id": {"n": 1}}"#, "transaction #1", "{\"n\":1}"),
        ];
        let good =
            r#"{"id": "OK-1", "status": "pending", "amount": "1", "commission": "0", "currency": "EUR", "date": "0"}"#;
        for (tx, names, value) in cases {
            // The malformed transaction is rejected with its reason; the good one beside it
            // still becomes an event: one bad item does not fail its page.
            let body = format!(r#"{{"transactions": [{tx}, {good}], "next_cursor": null}}"#);
            testing::set_http_handler(move |_| ok(&body));
            testing::set_config(CONFIG);
            let page = JsonApi::import_page(&ImportRequest { window_start: 0, window_end: 1, cursor: None })
                .unwrap_or_else(|e| panic!("{tx}: the page failed: {e:?}"));
            assert_eq!(page.events.len(), 1, "{tx}");
            assert_eq!(page.rejected.len(), 1, "{tx}");
            let m = &page.rejected[0].reason;
            assert!(m.contains(names) && m.contains(value), "{m:?} should name {names} and {value}");
        }
    }

    #[test]
    fn configuration_mistakes_are_config_errors() {
        for (config, field) in [
            (r#"{"base_url": "ftp://x.example"}"#, "base_url"),
            (r#"{"base_url": "https://x.example/?a=1"}"#, "base_url"),
            (r#"{"base_url": "https://"}"#, "base_url"),
            (r#"{"base_url": "https://x.example", "page_size": 0}"#, "page_size"),
            (r#"{"base_url": "https://x.example", "page_size": 1001}"#, "page_size"),
            (r#"{"base_url": "https://x.example", "states": {"paid": "PAID"}}"#, "states.paid"),
            (r#"{}"#, "base_url"),
        ] {
            match error(config) {
                PluginError::Config(m) => assert!(m.contains(field), "{m:?} should name {field}"),
                other => panic!("{config}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn cursors_are_percent_encoded() {
        assert_eq!(percent_encode("abc-._~XYZ019"), "abc-._~XYZ019");
        assert_eq!(percent_encode("a b&c=d/e+f?€"), "a%20b%26c%3Dd%2Fe%2Bf%3F%E2%82%AC");
    }
}
