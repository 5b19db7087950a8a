//! Callback URL templates: seed 001's `[%CASHBACK:...%]` macros and the common `{name}`
//! placeholders (seeds 003, 004), each value URL-encoded exactly once.
//!
//! The template's own text is the operator's and is left as it is. A value is inserted
//! percent-encoded (RFC 3986 unreserved characters stay, everything else is encoded), so
//! `a b&c=d` arrives as one parameter value and `%41` arrives as `%41`, not as `A`. The
//! opt-out for a value the operator knows to be URL-safe, or wants to pass through as it
//! came: `{raw:NAME}` and `[%RAW:CASHBACK:...%]`.
//!
//! Templates are parsed when an endpoint is saved: an unknown macro is refused then, with
//! its name, rather than sent as literal text to a partner.

use std::collections::BTreeMap;

/// Seed 001's macros and the placeholder each stands for.
pub const CASHBACK_MACROS: [(&str, &str); 8] = [
    ("CASHBACK:STATE", "state"),
    ("CASHBACK:MERCHANT:REF", "merchant_ref"),
    ("CASHBACK:MERCHANT:NAME", "merchant_name"),
    ("CASHBACK:EVENT:NAME", "event"),
    ("CASHBACK:ORDER:ID", "order_id"),
    ("CASHBACK:REASON", "reason"),
    ("CASHBACK:LINE_ID", "line_id"),
    ("CASHBACK:REWARD_DELAY_DAYS", "reward_delay_days"),
];

/// Every `{name}` placeholder.
pub const PLACEHOLDERS: [&str; 33] = [
    "click_id",
    "ref_id",
    "user_id",
    "status",
    "payout",
    "payout_minor",
    "transaction_id",
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
    "state",
    "merchant_ref",
    "merchant_name",
    "event",
    "order_id",
    "reason",
    "line_id",
    "reward_delay_days",
    "currency",
    "amount",
    "commission",
    "conversion_id",
    "delivery_id",
    "network",
    "timestamp",
    // Every kind of event: `conversion.changed`, `click.created` or `payout.changed`
    // (`user_id` is with the first names: clicks and payouts fill it too).
    "type",
    // Payout events (docs/CALLBACKS.md).
    "payout_id",
    "payout_status",
    "payout_amount",
    "payout_amount_minor",
    "payout_reference",
];

/// The values of one callback, by placeholder name. An absent value renders empty.
pub type Values = BTreeMap<&'static str, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Value { name: &'static str, raw: bool },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{name}` or `[%NAME%]` names nothing we know.
    #[error("unknown macro {0}: see docs/CALLBACKS.md for the list")]
    Unknown(String),
    /// `{` or `[%` without its end.
    #[error("unterminated macro starting at byte {0}")]
    Unterminated(usize),
}

fn placeholder(name: &str) -> Option<&'static str> {
    PLACEHOLDERS.iter().copied().find(|p| *p == name)
}

impl Template {
    /// Parses a template.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut offset = 0;
        while !rest.is_empty() {
            let (open, close) = if rest.starts_with("[%") {
                ("[%", "%]")
            } else if rest.starts_with('{') {
                ("{", "}")
            } else {
                let c = rest.chars().next().unwrap_or_default();
                literal.push(c);
                rest = &rest[c.len_utf8()..];
                offset += c.len_utf8();
                continue;
            };
            let end = rest[open.len()..].find(close).ok_or(TemplateError::Unterminated(offset))?;
            let written = &rest[..open.len() + end + close.len()];
            let inner = &rest[open.len()..open.len() + end];
            let (inner, raw) = match open {
                "[%" => inner.strip_prefix("RAW:").map_or((inner, false), |i| (i, true)),
                _ => inner.strip_prefix("raw:").map_or((inner, false), |i| (i, true)),
            };
            let name = match open {
                "[%" => CASHBACK_MACROS.iter().find(|(m, _)| *m == inner).map(|(_, p)| *p),
                _ => placeholder(inner),
            }
            .ok_or_else(|| TemplateError::Unknown(written.to_string()))?;
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Value { name, raw });
            let used = open.len() + end + close.len();
            rest = &rest[used..];
            offset += used;
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    /// Whether the template names the placeholder `name`.
    pub fn names(&self, name: &str) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Value { name: n, .. } if *n == name))
    }

    /// Fills the template: each value encoded once, raw ones as they are.
    pub fn render(&self, values: &Values) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Value { name, raw } => {
                    let v = values.get(name).map(String::as_str).unwrap_or("");
                    if *raw {
                        out.push_str(v);
                    } else {
                        out.push_str(&crate::input::encode_component(v));
                    }
                }
            }
        }
        out
    }
}

/// Appends static parameters to a URL's query, each name and value encoded once.
pub fn append_params(url: &str, params: &BTreeMap<String, String>) -> String {
    if params.is_empty() {
        return url.to_string();
    }
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let mut out = base.to_string();
    for (k, v) in params {
        if !out.contains('?') {
            out.push('?');
        } else if !(out.ends_with('?') || out.ends_with('&')) {
            out.push('&');
        }
        out.push_str(&crate::input::encode_component(k));
        out.push('=');
        out.push_str(&crate::input::encode_component(v));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        let mut v = Values::new();
        v.insert("click_id", "c 1&x=y".into());
        v.insert("state", "PENDING".into());
        v.insert("sub1", "%41".into());
        v.insert("reason", "ünï €".into());
        v
    }

    #[test]
    fn every_value_is_encoded_once_and_raw_opts_out() {
        let t = Template::parse("https://p.example/cb?s=[%CASHBACK:STATE%]&c={click_id}&r={raw:click_id}&s1={sub1}&why=[%CASHBACK:REASON%]&w=[%RAW:CASHBACK:REASON%]&n={ref_id}")
            .expect("parse");
        assert_eq!(
            t.render(&values()),
            "https://p.example/cb?s=PENDING&c=c%201%26x%3Dy&r=c 1&x=y&s1=%2541&why=%C3%BCn%C3%AF%20%E2%82%AC&w=ünï €&n="
        );
    }

    #[test]
    fn unknown_or_unterminated_macros_are_refused_with_their_name() {
        assert_eq!(Template::parse("x={clickid}"), Err(TemplateError::Unknown("{clickid}".into())));
        assert_eq!(Template::parse("x=[%CASHBACK:STATUS%]"), Err(TemplateError::Unknown("[%CASHBACK:STATUS%]".into())));
        assert_eq!(Template::parse("x={click_id"), Err(TemplateError::Unterminated(2)));
        // Found by the fuzz target callback_template: named without its `raw:`, the
        // refused macro was not the one in the text.
        assert_eq!(Template::parse("x={raw:clickid}"), Err(TemplateError::Unknown("{raw:clickid}".into())));
        assert_eq!(
            Template::parse("x=[%RAW:CASHBACK:STATUS%]"),
            Err(TemplateError::Unknown("[%RAW:CASHBACK:STATUS%]".into()))
        );
    }

    #[test]
    fn static_params_are_appended_before_the_fragment() {
        let p: BTreeMap<String, String> = [("a b".to_string(), "1&2".to_string())].into();
        assert_eq!(append_params("https://x/y", &p), "https://x/y?a%20b=1%262");
        assert_eq!(append_params("https://x/y?q=1#f", &p), "https://x/y?q=1&a%20b=1%262#f");
        assert_eq!(append_params("https://x/y?", &p), "https://x/y?a%20b=1%262");
    }
}
