//! `generic-s2s`: S2S postbacks of any network that sends its conversions as URL or
//! body parameters, described by configuration only.
//!
//! The configuration names, for each field of a conversion event, the parameter the
//! network puts it in, and maps the network's status values to conversion states. The
//! adapter reads the query string and, for a POST, a form or JSON body; every parameter
//! also goes unchanged into the event's `raw` fields.
//!
//! What counts as an error (answered to the network with a 4xx and kept in the rejects
//! log): a missing or empty transaction id or click id, a mapped parameter that is absent
//! from the request (a postback URL that lacks it), a parameter given twice with different
//! values, a name or value that is not UTF-8, an unknown status value, an amount or time
//! that does not parse. An *empty* value of any other parameter means "not reported": no
//! order id, zero amount, the default currency and event type.
//!
//! The click id is required (in the configuration and in every postback) because it is
//! the only way a postback names the user: without it the conversion could only be
//! parked, with no operator action that resolves it. A postback without one is refused,
//! so the network and the rejects log both see it.

use cashback_sdk::adapter::try_form_decode;
use cashback_sdk::prelude::*;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The plugin's configuration (see `cashback-plugin.toml` for the schema).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// cashbackd's id of the network, copied into events (the host fills it in otherwise).
    #[serde(default)]
    pub network: String,
    /// Which parameter holds which event field.
    pub params: Params,
    /// The network's status values (compared case-insensitively) and their states.
    pub states: BTreeMap<String, String>,
    /// Currency when the postback names none.
    pub default_currency: Option<String>,
    /// Event type when the postback names none.
    #[serde(default = "sale")]
    pub default_event_type: String,
    /// How amounts are written.
    #[serde(default)]
    pub amount_format: AmountFormat,
}

fn sale() -> String {
    "sale".into()
}

/// The postback parameter that carries each event field; the transaction id and the
/// click id are required.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The network's transaction id (the deduplication key).
    pub transaction_id: String,
    /// The click id cashbackd minted and the network echoes (checked in [`Mapping::new`]:
    /// an `Option` so that its absence is a configuration error naming it, not a
    /// deserialization error).
    pub click_id: Option<String>,
    /// The merchant's order id.
    pub order_id: Option<String>,
    /// Order value.
    pub amount: Option<String>,
    /// Commission.
    pub commission: Option<String>,
    /// ISO 4217 code.
    pub currency: Option<String>,
    /// The network's status value.
    pub state: Option<String>,
    /// The event's name ("sale", "lead").
    pub event_type: Option<String>,
    /// When it happened.
    pub event_time: Option<String>,
    /// The network's reason for a rejection or adjustment.
    pub reason: Option<String>,
    /// The merchant's id at the network.
    pub merchant_ref: Option<String>,
}

/// How the network writes amounts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AmountFormat {
    /// "12.34": a decimal in the currency's major unit, rounded down to minor units.
    #[default]
    Decimal,
    /// "1234": already in minor units.
    Minor,
}

/// A configuration checked once per call: states parsed, currency normalised.
#[derive(Debug)]
pub struct Mapping {
    config: Config,
    /// (lower-cased status value, state)
    states: Vec<(String, ConversionState)>,
    default_currency: Option<String>,
}

impl Mapping {
    /// Checks a configuration; every error is a [`PluginError::Config`] naming the field.
    pub fn new(config: Config) -> Result<Mapping, PluginError> {
        let bad = |field: &str, why: String| Err(PluginError::Config(format!("{field}: {why}")));
        let p = &config.params;
        let named = [
            ("transaction_id", Some(&p.transaction_id)),
            ("click_id", p.click_id.as_ref()),
            ("order_id", p.order_id.as_ref()),
            ("amount", p.amount.as_ref()),
            ("commission", p.commission.as_ref()),
            ("currency", p.currency.as_ref()),
            ("state", p.state.as_ref()),
            ("event_type", p.event_type.as_ref()),
            ("event_time", p.event_time.as_ref()),
            ("reason", p.reason.as_ref()),
            ("merchant_ref", p.merchant_ref.as_ref()),
        ];
        for (field, name) in named {
            if name.is_some_and(|n| n.is_empty()) {
                return bad(&format!("params.{field}"), "the parameter name is empty".into());
            }
        }
        let mut states: Vec<(String, ConversionState)> = Vec::new();
        for (value, state) in &config.states {
            let Some(parsed) = ConversionState::parse(state) else {
                return bad(
                    &format!("states.{value}"),
                    format!("{state:?} is not one of PENDING, ADJUSTED, COMPLETED, REJECTED, REVERSED, CREATED"),
                );
            };
            let key = value.trim().to_lowercase();
            if let Some((_, other)) = states.iter().find(|(k, _)| *k == key)
                && *other != parsed
            {
                return bad(&format!("states.{value}"), "maps to two states (status values ignore case)".into());
            }
            states.push((key, parsed));
        }
        if p.state.is_some() && states.is_empty() {
            return bad("states", "params.state is set but no status value is mapped".into());
        }
        let default_currency = match &config.default_currency {
            Some(c) => match money::currency_code(c) {
                Some(c) => Some(c),
                None => return bad("default_currency", format!("{c:?} is not an ISO 4217 code")),
            },
            None if p.currency.is_none() => {
                return bad("default_currency", "required when params.currency is not set".into());
            }
            None => None,
        };
        if config.default_event_type.trim().is_empty() {
            return bad("default_event_type", "is empty".into());
        }
        if p.click_id.is_none() {
            return bad(
                "params.click_id",
                "required: a postback names its user only through the click id cashbackd minted (pass {click_id} to \
                 the network on your tracked links and map the parameter its postbacks return it in)"
                    .into(),
            );
        }
        Ok(Mapping { config, states, default_currency })
    }

    /// Turns one postback into its event.
    pub fn event(&self, request: &PostbackRequest) -> Result<ConversionEvent, PluginError> {
        let params = Parameters::of(request)?;
        let p = &self.config.params;

        let transaction_id = match params.get(&p.transaction_id)? {
            Some(v) if !v.is_empty() => v.to_string(),
            Some(_) => return Err(invalid(&p.transaction_id, "transaction_id", "is empty")),
            None => return Err(missing(&p.transaction_id, "transaction_id")),
        };
        let click_name = p.click_id.as_deref().unwrap_or_default();
        let click_id = match params.get(click_name)? {
            Some(v) if !v.trim().is_empty() => v.to_string(),
            Some(_) => {
                return Err(invalid(
                    click_name,
                    "click_id",
                    "is empty: without the click id cashbackd minted the conversion cannot be attributed to a user \
                     (the tracked link must pass {click_id} to the network, and the network must return it)",
                ));
            }
            None => return Err(missing(click_name, "click_id")),
        };
        let state = match &p.state {
            None => ConversionState::Pending,
            Some(name) => {
                let value = params.get(name)?.ok_or_else(|| missing(name, "state"))?;
                let key = value.trim().to_lowercase();
                match self.states.iter().find(|(k, _)| *k == key) {
                    Some((_, state)) => *state,
                    None => {
                        let known: Vec<&str> = self.config.states.keys().map(String::as_str).collect();
                        return Err(PluginError::InvalidInput(format!(
                            "unknown status {value:?} in parameter {name:?} (state); known: {}",
                            known.join(", ")
                        )));
                    }
                }
            }
        };
        let currency = match &p.currency {
            Some(name) => match params.get(name)?.map(str::trim) {
                None => return Err(missing(name, "currency")),
                Some("") => self.default_currency.clone().ok_or_else(|| {
                    invalid(name, "currency", "is empty and the configuration has no default_currency")
                })?,
                Some(v) => money::currency_code(v)
                    .ok_or_else(|| invalid(name, "currency", &format!("{v:?} is not an ISO 4217 currency code")))?,
            },
            None => self.default_currency.clone().unwrap_or_default(),
        };
        let amount = self.amount(&params, p.amount.as_deref(), "amount", &currency)?;
        let commission = self.amount(&params, p.commission.as_deref(), "commission", &currency)?;
        let event_time = match &p.event_time {
            Some(name) => match params.get(name)?.map(str::trim) {
                Some("") => request.received_at,
                Some(v) => parse_timestamp(v).map_err(|e| invalid(name, "event_time", e.message()))?,
                None => return Err(missing(name, "event_time")),
            },
            None => request.received_at,
        };
        // Mapped, a parameter must be in the postback; empty, it is not reported.
        let optional = |name: &Option<String>, field: &str| -> Result<Option<String>, PluginError> {
            Ok(match name {
                Some(n) => match params.get(n)? {
                    None => return Err(missing(n, field)),
                    Some(v) => Some(v).filter(|v| !v.is_empty()).map(str::to_string),
                },
                None => None,
            })
        };
        Ok(ConversionEvent {
            network: self.config.network.clone(),
            transaction_id,
            click_id: Some(click_id),
            order_id: optional(&p.order_id, "order_id")?,
            event_type: optional(&p.event_type, "event_type")?
                .unwrap_or_else(|| self.config.default_event_type.clone()),
            state,
            amount,
            commission,
            currency,
            event_time,
            reason: optional(&p.reason, "reason")?,
            merchant_ref: optional(&p.merchant_ref, "merchant_ref")?,
            line_items: Vec::new(),
            raw: params.pairs,
        })
    }

    /// An amount parameter in minor units: an unmapped or empty one is zero, an absent
    /// one (the postback URL lacks it) is an error.
    fn amount(&self, params: &Parameters, name: Option<&str>, field: &str, currency: &str) -> Result<i64, PluginError> {
        let Some(name) = name else { return Ok(0) };
        let value = params.get(name)?.ok_or_else(|| missing(name, field))?.trim();
        if value.is_empty() {
            return Ok(0);
        }
        let parsed = match self.config.amount_format {
            AmountFormat::Decimal => money::parse_decimal(value, currency, Rounding::Down).map_err(|e| e.to_string()),
            AmountFormat::Minor => {
                value.parse::<i64>().map_err(|_| format!("{value:?} is not a whole number of minor units"))
            }
        };
        parsed.map_err(|why| invalid(name, field, &why))
    }
}

/// The request's parameters: query string first, then the body's, in order.
struct Parameters {
    pairs: Vec<(String, String)>,
}

impl Parameters {
    fn of(request: &PostbackRequest) -> Result<Parameters, PluginError> {
        let mut pairs = request.try_query_pairs()?;
        if !request.body.is_empty() {
            pairs.extend(body_pairs(request)?);
        }
        Ok(Parameters { pairs })
    }

    /// The value of `name`; the same name twice with different values is an error.
    fn get(&self, name: &str) -> Result<Option<&str>, PluginError> {
        let mut found: Option<&str> = None;
        for (k, v) in &self.pairs {
            if k != name {
                continue;
            }
            match found {
                Some(first) if first != v => {
                    return Err(PluginError::InvalidInput(format!(
                        "parameter {name:?} appears more than once with different values ({first:?}, {v:?})"
                    )));
                }
                _ => found = Some(v),
            }
        }
        Ok(found)
    }
}

/// A POST body's parameters: `application/json` (an object) or
/// `application/x-www-form-urlencoded`. Without a content type (or with another one) a
/// body that starts with `{` is read as JSON, anything else as a form.
fn body_pairs(request: &PostbackRequest) -> Result<Vec<(String, String)>, PluginError> {
    let content_type = request.header("content-type").unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json = match mime.as_str() {
        "application/json" => true,
        "application/x-www-form-urlencoded" => false,
        m if m.ends_with("+json") => true,
        m if m.starts_with("multipart/") => {
            return Err(PluginError::InvalidInput(format!("unsupported body content type {content_type:?}")));
        }
        _ => request.body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
    };
    let text = std::str::from_utf8(&request.body)
        .map_err(|e| PluginError::InvalidInput(format!("the postback body is not UTF-8: {e}")))?;
    if !json {
        return try_form_decode(text);
    }
    let OrderedObject(object) = serde_json::from_str(text)
        .map_err(|e| PluginError::InvalidInput(format!("the postback body is not a JSON object: {e}")))?;
    Ok(object
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            (k, text)
        })
        .collect())
}

/// A JSON object's members in the order they were sent (`serde_json::Map` sorts them),
/// so that `raw` keeps the network's order.
struct OrderedObject(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = OrderedObject;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, serde_json::Value>()? {
                    members.push(member);
                }
                Ok(OrderedObject(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

fn missing(name: &str, field: &str) -> PluginError {
    PluginError::InvalidInput(format!("missing parameter {name:?} ({field})"))
}

fn invalid(name: &str, field: &str, why: &str) -> PluginError {
    PluginError::InvalidInput(format!("parameter {name:?} ({field}): {why}"))
}

/// The adapter.
pub struct GenericS2s;

impl Adapter for GenericS2s {
    fn parse_postback(request: &PostbackRequest) -> Result<Vec<ConversionEvent>, PluginError> {
        let mapping = Mapping::new(config::get()?)?;
        Ok(vec![mapping.event(request)?])
    }
}

export_adapter!(GenericS2s, fixtures = "fixtures.json");

#[cfg(test)]
mod tests {
    use super::*;
    use cashback_sdk::testing;

    const CONFIG: &str = r#"{
        "network": "awin",
        "params": {
            "transaction_id": "tid", "click_id": "sub", "order_id": "oid", "amount": "amt",
            "commission": "com", "currency": "cur", "state": "status", "event_time": "ts",
            "reason": "why", "merchant_ref": "mid", "event_type": "type"
        },
        "states": { "pending": "PENDING", "Approved": "completed", "rejected": "REJECTED" },
        "default_currency": "EUR"
    }"#;

    const RECEIVED_AT: i64 = 1_767_225_600_000;

    /// A postback URL with every parameter CONFIG maps, as a network fills it in, with
    /// `changes`: `Some` sets a value, `None` leaves the parameter out of the URL.
    fn query(changes: &[(&str, Option<&str>)]) -> String {
        let base = [
            ("tid", "T-1"),
            ("sub", "c-1"),
            ("oid", ""),
            ("amt", "1"),
            ("com", "0"),
            ("cur", ""),
            ("status", "pending"),
            ("ts", "0"),
            ("why", ""),
            ("mid", ""),
            ("type", ""),
        ];
        base.iter()
            .filter_map(|(name, value)| match changes.iter().find(|(n, _)| n == name) {
                Some((_, None)) => None,
                Some((_, Some(v))) => Some(format!("{name}={v}")),
                None => Some(format!("{name}={value}")),
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    fn get(query: &str) -> PostbackRequest {
        PostbackRequest {
            method: "GET".into(),
            path: String::new(),
            query: query.into(),
            headers: Vec::new(),
            body: Vec::new(),
            received_at: RECEIVED_AT,
        }
    }

    fn post(content_type: Option<&str>, body: &str) -> PostbackRequest {
        PostbackRequest {
            method: "POST".into(),
            path: String::new(),
            query: String::new(),
            headers: content_type.map(|c| vec![("content-type".to_string(), c.to_string())]).unwrap_or_default(),
            body: body.as_bytes().to_vec(),
            received_at: RECEIVED_AT,
        }
    }

    fn parse(config: &str, request: &PostbackRequest) -> Result<ConversionEvent, PluginError> {
        testing::set_config(config);
        let mut events = GenericS2s::parse_postback(request)?;
        assert_eq!(events.len(), 1, "one postback is one event");
        Ok(events.remove(0))
    }

    fn invalid_input(config: &str, request: &PostbackRequest) -> String {
        match parse(config, request) {
            Err(PluginError::InvalidInput(m)) => m,
            other => panic!("expected invalid input, got {other:?}"),
        }
    }

    #[test]
    fn a_get_postback_maps_every_configured_parameter() {
        let q = "tid=T-1&sub=c-9&oid=o-7&amt=12.34&com=1.23&cur=usd&status=approved&ts=2026-01-03T10:20:30Z\
                 &why=&mid=m-1&type=lead&extra=kept";
        let e = parse(CONFIG, &get(q)).expect("event");
        assert_eq!(e.network, "awin");
        assert_eq!(e.transaction_id, "T-1");
        assert_eq!(e.click_id.as_deref(), Some("c-9"));
        assert_eq!(e.order_id.as_deref(), Some("o-7"));
        assert_eq!((e.amount, e.commission, e.currency.as_str()), (1234, 123, "USD"));
        assert_eq!(e.state, ConversionState::Completed);
        assert_eq!(e.event_time, 1_767_435_630_000);
        assert_eq!(e.event_type, "lead");
        assert_eq!(e.reason, None, "an empty value is not reported");
        assert_eq!(e.merchant_ref.as_deref(), Some("m-1"));
        assert!(e.line_items.is_empty());
        assert_eq!(e.raw.len(), 12);
        assert_eq!(e.raw.last(), Some(&("extra".to_string(), "kept".to_string())));
    }

    #[test]
    fn values_are_url_decoded_exactly_once() {
        let q = query(&[("tid", Some("a%2Bb+c%26d%2541")), ("sub", Some("%E2%82%AC%F0%9F%8E%89"))]);
        let e = parse(CONFIG, &get(&q)).expect("event");
        assert_eq!(e.transaction_id, "a+b c&d%41");
        assert_eq!(e.click_id.as_deref(), Some("€🎉"));
        assert!(e.raw.contains(&("tid".to_string(), "a+b c&d%41".to_string())));
    }

    #[test]
    fn a_name_or_value_that_is_not_utf8_is_refused_in_the_query_and_in_a_form_body() {
        // Replaced by U+FFFD, A%FF%FE and A%FE%FF would be one transaction id.
        let m = invalid_input(CONFIG, &get(&query(&[("tid", Some("A%FF%FE"))])));
        assert_eq!(m, r#"parameter "tid": the value is not UTF-8 once percent-decoded ("A%FF%FE")"#);
        let body = query(&[("tid", Some("A%FE%FF"))]);
        let m = invalid_input(CONFIG, &post(Some("application/x-www-form-urlencoded"), &body));
        assert_eq!(m, r#"parameter "tid": the value is not UTF-8 once percent-decoded ("A%FE%FF")"#);
        let m = invalid_input(CONFIG, &post(None, &body));
        assert!(m.contains("not UTF-8"), "a sniffed form body too: {m}");
        let mut raw = post(Some("application/x-www-form-urlencoded"), "");
        raw.body = b"tid=A\xff\xfe".to_vec();
        assert!(invalid_input(CONFIG, &raw).contains("not UTF-8"));
    }

    #[test]
    fn a_form_body_is_read_alongside_the_query() {
        let mut request = post(
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            "sub=c-2&oid=&amt=5.5&com=0&cur=&status=Rejected&why=fraud+check&mid=&type=",
        );
        request.query = "tid=T-2&ts=1767435630".into();
        let e = parse(CONFIG, &request).expect("event");
        assert_eq!(e.transaction_id, "T-2");
        assert_eq!(e.click_id.as_deref(), Some("c-2"));
        assert_eq!(e.amount, 550);
        assert_eq!(e.state, ConversionState::Rejected);
        assert_eq!(e.reason.as_deref(), Some("fraud check"));
        assert_eq!(e.currency, "EUR", "an empty currency: the default currency");
        assert_eq!(e.raw.len(), 11);
    }

    #[test]
    fn a_json_body_is_read_and_its_values_are_not_url_decoded() {
        let body = r#"{"tid": "T%2B3", "sub": "c-3", "amt": 12.5, "com": "0.99", "cur": null, "status": "PENDING",
                       "ts": 1767435630250, "oid": null, "why": null, "mid": null, "type": null, "meta": {"a": 1}}"#;
        let e = parse(CONFIG, &post(Some("application/json"), body)).expect("event");
        assert_eq!(e.transaction_id, "T%2B3");
        assert_eq!((e.amount, e.commission), (1250, 99));
        assert_eq!(e.state, ConversionState::Pending);
        assert_eq!(e.event_time, 1_767_435_630_250);
        assert_eq!((e.click_id.as_deref(), e.order_id), (Some("c-3"), None), "null is not reported");
        assert_eq!(e.raw.first(), Some(&("tid".to_string(), "T%2B3".to_string())), "in the order sent");
        assert_eq!(e.raw.last(), Some(&("meta".to_string(), r#"{"a":1}"#.to_string())));
        let m = invalid_input(CONFIG, &post(Some("application/json"), r#"["tid", "T-3"]"#));
        assert!(m.contains("not a JSON object"), "{m}");
    }

    #[test]
    fn a_body_without_a_content_type_is_sniffed() {
        let json = r#" {"tid": "T-4", "sub": "c-4", "status": "pending", "ts": "0", "amt": "", "com": "", "cur": "",
                        "oid": "", "why": "", "mid": "", "type": ""}"#;
        assert_eq!(parse(CONFIG, &post(None, json)).expect("json").transaction_id, "T-4");
        let form = parse(CONFIG, &post(None, &query(&[("tid", Some("T-5"))]))).expect("form");
        assert_eq!(form.transaction_id, "T-5");
    }

    #[test]
    fn an_unknown_status_names_the_parameter_and_the_value() {
        let m = invalid_input(CONFIG, &get(&query(&[("tid", Some("T-6")), ("status", Some("on-hold"))])));
        assert!(m.contains("\"on-hold\"") && m.contains("\"status\""), "{m}");
        assert!(m.contains("Approved, pending, rejected"), "lists the known values: {m}");
    }

    #[test]
    fn a_bad_amount_names_the_parameter_and_the_value() {
        let m = invalid_input(CONFIG, &get(&query(&[("amt", Some("12,34"))])));
        assert!(m.contains("\"amt\"") && m.contains("12,34"), "{m}");
        let minor = CONFIG.replace(r#""default_currency""#, r#""amount_format": "minor", "default_currency""#);
        let m = invalid_input(&minor, &get(&query(&[("com", Some("12.34"))])));
        assert!(m.contains("\"com\"") && m.contains("12.34"), "{m}");
        // The adapter reads the sign as written; the host decides what a state may carry.
        let e = parse(&minor, &get(&query(&[("amt", Some("1234")), ("com", Some("-5"))]))).expect("minor units");
        assert_eq!((e.amount, e.commission), (1234, -5));
    }

    #[test]
    fn decimals_round_down_to_the_currency_minor_unit() {
        let e = parse(CONFIG, &get(&query(&[("amt", Some("10.129")), ("com", Some("-0.019"))]))).expect("euros");
        assert_eq!((e.amount, e.commission, e.currency.as_str()), (1012, -1, "EUR"));
        let yen = query(&[("amt", Some("1500.7")), ("com", Some("15")), ("cur", Some("JPY"))]);
        let e = parse(CONFIG, &get(&yen)).expect("yen");
        assert_eq!((e.amount, e.commission, e.currency.as_str()), (1500, 15, "JPY"));
        let e = parse(CONFIG, &get(&query(&[("amt", Some("1.2345")), ("cur", Some("kwd"))]))).expect("dinars");
        assert_eq!((e.amount, e.currency.as_str()), (1234, "KWD"));
    }

    #[test]
    fn every_mapped_parameter_absent_from_the_postback_is_an_error() {
        // A postback URL that lacks a mapped parameter is misconfigured at the network: a
        // currency left out would book dollars as euros, a click id left out loses the user.
        for (name, field) in [
            ("tid", "transaction_id"),
            ("sub", "click_id"),
            ("status", "state"),
            ("cur", "currency"),
            ("amt", "amount"),
            ("com", "commission"),
            ("ts", "event_time"),
            ("oid", "order_id"),
            ("why", "reason"),
            ("mid", "merchant_ref"),
            ("type", "event_type"),
        ] {
            let m = invalid_input(CONFIG, &get(&query(&[(name, None)])));
            assert_eq!(m, format!("missing parameter {name:?} ({field})"));
        }
    }

    #[test]
    fn empty_values_are_not_reported_except_the_transaction_id_and_the_click_id() {
        assert!(
            invalid_input(CONFIG, &get(&query(&[("tid", Some(""))]))).contains("\"tid\" (transaction_id): is empty")
        );
        // A lead has no order value, a network without order ids sends none.
        let e = parse(CONFIG, &get(&query(&[("amt", Some("")), ("com", Some(""))]))).expect("empty values");
        assert_eq!((e.amount, e.commission, e.order_id, e.reason), (0, 0, None, None));
        assert_eq!((e.event_type.as_str(), e.currency.as_str(), e.merchant_ref), ("sale", "EUR", None));
        let no_default = CONFIG.replace(r#""default_currency": "EUR""#, r#""default_event_type": "sale""#);
        let m = invalid_input(&no_default, &get(&query(&[])));
        assert!(m.contains("\"cur\" (currency): is empty and the configuration has no default_currency"), "{m}");
    }

    #[test]
    fn a_postback_without_a_click_id_is_refused_not_parked() {
        for empty in ["", "+", "%20"] {
            let m = invalid_input(CONFIG, &get(&query(&[("sub", Some(empty))])));
            assert!(m.starts_with("parameter \"sub\" (click_id): is empty: without the click id"), "{empty:?}: {m}");
        }
        let json = r#"{"tid": "T-3", "sub": null, "amt": 1, "com": 0, "cur": "", "status": "pending", "ts": 0,
                       "oid": "", "why": "", "mid": "", "type": ""}"#;
        assert!(invalid_input(CONFIG, &post(Some("application/json"), json)).contains("(click_id): is empty"));
        // And a configuration without it cannot attribute anything: refused as such.
        let unmapped = r#"{"params": {"transaction_id": "tid"}, "states": {}, "default_currency": "EUR"}"#;
        match parse(unmapped, &get("tid=T-1")) {
            Err(PluginError::Config(m)) => assert!(m.starts_with("params.click_id: required"), "{m}"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn the_same_parameter_twice_with_different_values_is_refused() {
        let m = invalid_input(CONFIG, &get(&format!("{}&tid=T-11", query(&[("tid", Some("T-10"))]))));
        assert!(m.contains("\"T-10\"") && m.contains("\"T-11\""), "{m}");
        let mut request = post(
            Some("application/x-www-form-urlencoded"),
            &query(&[("tid", Some("T-12")), ("status", Some("pending"))]),
        );
        request.query = "tid=T-12".into();
        assert_eq!(parse(CONFIG, &request).expect("same value twice").transaction_id, "T-12");
    }

    #[test]
    fn without_an_event_time_the_receive_time_is_used() {
        let minimal =
            r#"{"params": {"transaction_id": "tid", "click_id": "sub"}, "states": {}, "default_currency": "EUR"}"#;
        let e = parse(minimal, &get("tid=T-13&sub=c-13")).expect("event");
        assert_eq!(e.event_time, RECEIVED_AT, "the host's receive time, not a clock of the plugin's own");
        assert_eq!(e.state, ConversionState::Pending, "no status parameter: pending");
        assert_eq!((e.amount, e.commission), (0, 0));
        assert_eq!(e.event_type, "sale");
        assert_eq!(e.network, "");
        let e = parse(CONFIG, &get(&query(&[("ts", Some(""))]))).expect("empty time");
        assert_eq!(e.event_time, RECEIVED_AT, "an empty time is not reported");
    }

    #[test]
    fn a_bad_time_or_currency_names_the_parameter() {
        let m = invalid_input(CONFIG, &get(&query(&[("ts", Some("yesterday"))])));
        assert!(m.contains("\"ts\"") && m.contains("\"yesterday\""), "{m}");
        let m = invalid_input(CONFIG, &get(&query(&[("cur", Some("euro"))])));
        assert!(m.contains("\"cur\"") && m.contains("\"euro\""), "{m}");
    }

    #[test]
    fn configuration_mistakes_are_config_errors_naming_the_field() {
        let cases = [
            (r#"{"params": {}, "states": {}, "default_currency": "EUR"}"#, "transaction_id"),
            (
                r#"{"params": {"transaction_id": "t", "clickid": "c"}, "states": {}, "default_currency": "EUR"}"#,
                "clickid",
            ),
            (
                r#"{"params": {"transaction_id": "t", "click_id": "c"}, "states": {"ok": "APPROVED"}, "default_currency": "EUR"}"#,
                "states.ok",
            ),
            (r#"{"params": {"transaction_id": "t", "click_id": "c"}, "states": {}}"#, "default_currency"),
            (
                r#"{"params": {"transaction_id": "t", "click_id": "c", "state": "s"}, "states": {}, "default_currency": "EUR"}"#,
                "states",
            ),
            (
                r#"{"params": {"transaction_id": "t", "click_id": "c"}, "states": {}, "default_currency": "EURO"}"#,
                "default_currency",
            ),
            (r#"{"params": {"transaction_id": ""}, "states": {}, "default_currency": "EUR"}"#, "params.transaction_id"),
            (
                r#"{"params": {"transaction_id": "t", "click_id": "c"}, "states": {"ok": "PENDING", "OK": "REJECTED"}, "default_currency": "EUR"}"#,
                "two states",
            ),
            (
                r#"{"params": {"transaction_id": "t", "click_id": "c"}, "states": {}, "default_currency": "EUR", "amount_format": "cents"}"#,
                "cents",
            ),
            (r#"{"params": {"transaction_id": "t"}, "states": {}, "default_currency": "EUR"}"#, "params.click_id"),
        ];
        for (config, needle) in cases {
            match parse(config, &get("t=1&c=2")) {
                Err(PluginError::Config(m)) => assert!(m.contains(needle), "{m:?} should name {needle}"),
                other => panic!("{config}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_embedded_fixtures_are_valid_json_for_postbacks() {
        let fixtures: serde_json::Value =
            serde_json::from_str(include_str!("../fixtures.json")).expect("fixtures.json is JSON");
        let cases = fixtures.as_array().expect("an array");
        assert!(cases.len() >= 4);
        assert!(cases.iter().all(|c| c.get("postback").is_some()));
    }
}
