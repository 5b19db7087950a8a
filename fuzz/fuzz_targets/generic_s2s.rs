//! The generic S2S adapter's parameter mapping (`plugins/generic-s2s`, compiled natively):
//! an arbitrary configuration and an arbitrary postback (query string, form or JSON body,
//! or raw bytes with any content type).
//!
//! Properties:
//! - never a panic; a refusal is `Config` (the configuration) or `InvalidInput` (the
//!   postback), never another kind, and its message is not empty;
//! - when the postback is built by encoding parameters once (as a network does), an
//!   accepted event holds exactly the values sent: the transaction id, every mapped
//!   optional field, and `raw` with every parameter in order (decoded exactly once);
//! - the transaction id is never empty, the currency is three upper-case letters, the
//!   state is the one the configuration maps the status to (or PENDING without one), an
//!   amount in minor units is the number sent, and without an event time the receive time
//!   is used.
//!
//! An input starting with `#` is lines of text: the configuration (JSON), `GET` or `POST`
//! and a content type, the query string, then the body: the seed corpus holds the plugin's
//! fixtures in that form.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use cashback_sdk::prelude::{ConversionState, PluginError, PostbackRequest};
use cashbackd_fuzz::tricky_string;
use generic_s2s::{Config, Mapping};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// Event fields and the parameter names a configuration may map them to.
const FIELDS: [&str; 11] = [
    "transaction_id",
    "click_id",
    "order_id",
    "amount",
    "commission",
    "currency",
    "state",
    "event_type",
    "event_time",
    "reason",
    "merchant_ref",
];
const NAMES: [&str; 12] = ["tid", "sub", "oid", "amt", "com", "cur", "status", "type", "ts", "why", "mid", "x y&z"];
const STATES: [&str; 8] =
    ["PENDING", "ADJUSTED", "COMPLETED", "REJECTED", "REVERSED", "CREATED", "completed", "APPROVED"];

#[derive(Debug)]
enum Body {
    None,
    Form(Vec<(String, String)>),
    Json(Vec<(String, Value)>),
    Raw(Option<String>, Vec<u8>),
}

#[derive(Debug)]
struct Input {
    config: Value,
    query: Vec<(String, String)>,
    /// Replaces the encoded query when set: any text at all.
    raw_query: Option<String>,
    body: Body,
    received_at: i64,
}

fn value(u: &mut Unstructured<'_>, field: &str) -> arbitrary::Result<String> {
    if u.ratio(1, 3)? {
        return tricky_string(u);
    }
    Ok(match field {
        "amount" | "commission" => {
            u.choose(&["12.34", "0", "", "-5", "1e3", "12,34", "99999999999999999999", "1234", " 7 ", ".5"])?
        }
        "currency" => u.choose(&["EUR", "usd", "", "EURO", " jpy", "KWD"])?,
        "state" => u.choose(&["pending", "Approved", "rejected", "", "on hold", "PENDING"])?,
        "event_time" => u.choose(&[
            "2026-01-03T10:20:30Z",
            "1767435630",
            "1767435630250",
            "",
            "2026-01-03",
            "9999-12-31T23:59:59.999+14:00",
            "0000-01-01T00:00:00Z",
            "2026-02-30",
            "99999999999",
        ])?,
        _ => u.choose(&["T-1", "", "a+b c", "%41", "€"])?,
    }
    .to_string())
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut params = serde_json::Map::new();
        for field in FIELDS {
            if field == "transaction_id" || u.arbitrary()? {
                let name = if u.ratio(1, 16)? { tricky_string(u)? } else { u.choose(&NAMES)?.to_string() };
                params.insert(field.into(), json!(name));
            }
        }
        let mut states = serde_json::Map::new();
        for _ in 0..u.int_in_range(0..=4)? {
            let key = u.choose(&["pending", "Approved", "APPROVED", "rejected", " on hold "])?.to_string();
            states.insert(key, json!(u.choose(&STATES)?));
        }
        let mut config = json!({ "params": params, "states": states });
        if u.ratio(3, 4)? {
            config["default_currency"] = json!(u.choose(&["EUR", "jpy", "EURO", ""])?);
        }
        if u.ratio(1, 4)? {
            config["amount_format"] = json!(u.choose(&["decimal", "minor", "cents"])?);
        }
        if u.ratio(1, 4)? {
            config["network"] = json!(u.choose(&["awin", ""])?);
        }
        if u.ratio(1, 8)? {
            config["default_event_type"] = json!(u.choose(&["lead", " ", ""])?);
        }
        if u.ratio(1, 32)? {
            config["unknown"] = json!(1);
        }

        let pick = |u: &mut Unstructured<'a>| -> arbitrary::Result<(String, String)> {
            let i = u.int_in_range(0..=FIELDS.len())?;
            match (FIELDS.get(i), NAMES.get(i)) {
                (Some(field), Some(name)) => Ok((name.to_string(), value(u, field)?)),
                _ => Ok((tricky_string(u)?, tricky_string(u)?)),
            }
        };
        let query = (0..u.int_in_range(0..=12)?).map(|_| pick(u)).collect::<arbitrary::Result<Vec<_>>>()?;
        let raw_query = if u.ratio(1, 8)? { Some(tricky_string(u)?) } else { None };
        let body = match u.int_in_range(0..=5)? {
            0 => Body::Form((0..u.int_in_range(0..=6)?).map(|_| pick(u)).collect::<arbitrary::Result<_>>()?),
            1 => Body::Json(
                (0..u.int_in_range(0..=6)?)
                    .map(|_| {
                        let (k, v) = pick(u)?;
                        let v = match u.int_in_range(0..=4)? {
                            0 => Value::Null,
                            1 => json!(i64::arbitrary(u)?),
                            2 => json!({ "nested": v }),
                            _ => Value::String(v),
                        };
                        Ok((k, v))
                    })
                    .collect::<arbitrary::Result<_>>()?,
            ),
            2 => Body::Raw(
                if u.arbitrary()? {
                    Some(
                        u.choose(&[
                            "application/json",
                            "application/x-www-form-urlencoded; charset=utf-8",
                            "text/plain",
                            "multipart/form-data",
                            "application/vnd.api+json",
                        ])?
                        .to_string(),
                    )
                } else {
                    None
                },
                Vec::<u8>::arbitrary(u)?,
            ),
            _ => Body::None,
        };
        Ok(Input { config, query, raw_query, body, received_at: i64::arbitrary(u)? })
    }
}

fn encode(pairs: &[(String, String)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fuzz_target!(|data: &[u8]| {
    if let Some(text) = data.strip_prefix(b"#") {
        let mut lines = text.splitn(4, |b| *b == b'\n');
        let mut line = || String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
        let Ok(config) = serde_json::from_str::<Value>(&line()) else { return };
        let method = line();
        let query = line();
        let body = lines.next().unwrap_or_default().to_vec();
        let body = match method.strip_prefix("POST") {
            Some(content_type) => {
                let content_type = content_type.trim();
                Body::Raw((!content_type.is_empty()).then(|| content_type.to_string()), body)
            }
            None => Body::None,
        };
        check(Input { config, query: Vec::new(), raw_query: Some(query), body, received_at: 1_767_225_600_000 });
    } else if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        check(input);
    }
});

fn check(input: Input) {
    let Ok(config) = serde_json::from_value::<Config>(input.config.clone()) else {
        return; // The host checks the configuration against the plugin's schema first.
    };
    let mut request = PostbackRequest {
        method: "GET".into(),
        path: String::new(),
        query: input.raw_query.clone().unwrap_or_else(|| encode(&input.query)),
        headers: Vec::new(),
        body: Vec::new(),
        received_at: input.received_at,
    };
    // What was sent, in order, when it was sent encoded once (`None`: no round trip to check).
    let mut sent: Option<Vec<(String, String)>> =
        if input.raw_query.is_some() { None } else { Some(input.query.clone()) };
    match &input.body {
        Body::None => {}
        Body::Form(pairs) => {
            request.method = "POST".into();
            request.headers.push(("content-type".into(), "application/x-www-form-urlencoded".into()));
            request.body = encode(pairs).into_bytes();
            if let Some(s) = &mut sent {
                s.extend(pairs.iter().cloned());
            }
        }
        Body::Json(members) => {
            request.method = "POST".into();
            request.headers.push(("content-type".into(), "application/json".into()));
            let object: String = members
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v))
                .collect::<Vec<_>>()
                .join(",");
            request.body = format!("{{{object}}}").into_bytes();
            if let Some(s) = &mut sent {
                s.extend(members.iter().map(|(k, v)| {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (k.clone(), text)
                }));
            }
        }
        Body::Raw(content_type, bytes) => {
            request.method = "POST".into();
            if let Some(c) = content_type {
                request.headers.push(("content-type".into(), c.clone()));
            }
            request.body = bytes.clone();
            sent = None;
        }
    }

    let mapping = match Mapping::new(config) {
        Ok(m) => m,
        Err(PluginError::Config(m)) => {
            assert!(!m.is_empty());
            return;
        }
        Err(other) => panic!("a configuration mistake is a Config error, got {other:?}"),
    };
    let event = match mapping.event(&request) {
        Ok(e) => e,
        Err(PluginError::InvalidInput(m)) => {
            assert!(!m.is_empty());
            return;
        }
        Err(other) => panic!("a bad postback is InvalidInput, got {other:?}"),
    };

    assert!(!event.transaction_id.is_empty(), "an event without a transaction id");
    let c = &event.currency;
    assert!(c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()), "currency {c:?}");
    assert!(event.line_items.is_empty());
    let cfg = &input.config;
    let param = |field: &str| cfg["params"].get(field).and_then(Value::as_str).map(str::to_string);
    if param("event_time").is_none() {
        assert_eq!(event.event_time, input.received_at, "no event time mapped: the receive time");
    }
    if param("state").is_none() {
        assert_eq!(event.state, ConversionState::Pending);
    }

    let Some(sent) = sent else { return };
    assert_eq!(event.raw, sent, "raw holds every parameter, decoded exactly once, in order");
    let first = |name: &str| sent.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let tid = param("transaction_id").expect("required");
    assert_eq!(Some(event.transaction_id.clone()), first(&tid), "transaction id");
    for (field, got) in [
        ("click_id", &event.click_id),
        ("order_id", &event.order_id),
        ("reason", &event.reason),
        ("merchant_ref", &event.merchant_ref),
    ] {
        match param(field) {
            Some(name) => assert_eq!(*got, first(&name).filter(|v| !v.is_empty()), "{field} from {name:?}"),
            None => assert_eq!(*got, None, "{field} is not mapped"),
        }
    }
    if let Some(name) = param("state") {
        let status = first(&name).expect("a mapped status is present").trim().to_lowercase();
        let mapped = cfg["states"]
            .as_object()
            .and_then(|m| m.iter().find(|(k, _)| k.trim().to_lowercase() == status))
            .and_then(|(_, s)| s.as_str())
            .and_then(ConversionState::parse);
        assert_eq!(Some(event.state), mapped, "state of status {status:?}");
    }
    if cfg["amount_format"] == json!("minor") {
        for (field, got) in [("amount", event.amount), ("commission", event.commission)] {
            let sent = param(field).and_then(|n| first(&n)).map(|v| v.trim().to_string()).unwrap_or_default();
            let expected = if sent.is_empty() { 0 } else { sent.parse::<i64>().expect("accepted") };
            assert_eq!(got, expected, "{field} in minor units");
        }
    }
}
