//! What cashbackd takes of its input and writes into URLs, in one place: the limits on identifiers (a
//! click's user, ref_id and sub ids; an event's transaction, click, order and line ids
//! and merchant ref) and the decoding of URL-encoded text (query strings, form bodies).
//! Pure functions, so that every path (clicks, postbacks, API imports, files) applies the
//! same rule and the rule is tested without a server. `docs/INGEST.md` lists the limits.
//!
//! **Characters, not bytes.** A limit counts characters (Unicode scalar values), as the
//! networks state theirs (seed 003: a conversion id of "up to 64 chars", a ref_id "up to
//! 32 chars"): counted in bytes, a 64-character id of 4-byte characters (256 bytes) was
//! refused under a 255-byte cap. Its byte cap follows: UTF-8 takes at most 4 bytes a
//! character, so an id of at most N characters is at most 4N bytes.
//!
//! **No control characters** (U+0000–U+001F, U+007F–U+009F) in an identifier:
//! PostgreSQL cannot store U+0000 in text (the write failed, a 503 where SQLite had
//! accepted the same id), and a line break or a tab in an id breaks the logs, CSV exports
//! and partner URLs it is copied into.
//!
//! **UTF-8 or nothing.** Percent-decoded bytes that are not UTF-8 are refused, never
//! replaced with U+FFFD: `tid=A%FF%FE` and `tid=A%FE%FF` would otherwise both become
//! `A��` and two conversions collapse into one.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// One kind of identifier and its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdLimit {
    /// How errors name it (`transaction id`, `ref_id`).
    pub field: &'static str,
    /// At most this many characters.
    pub max_chars: usize,
}

impl IdLimit {
    /// The byte cap that follows from the character limit (4 bytes a character at most).
    pub const fn max_bytes(self) -> usize {
        self.max_chars * 4
    }

    /// Checks `value`: at most [`max_chars`](Self::max_chars) characters, none of them a
    /// control character. The error names the field.
    pub fn check(self, value: &str) -> Result<(), String> {
        let chars = value.chars().count();
        if chars > self.max_chars {
            return Err(format!(
                "{}: {chars} characters, at most {} (at most {} bytes in UTF-8)",
                self.field,
                self.max_chars,
                self.max_bytes()
            ));
        }
        if let Some((i, c)) = value.chars().enumerate().find(|(_, c)| c.is_control()) {
            return Err(format!(
                "{}: a control character (U+{:04X}) at character {} is not allowed in an identifier",
                self.field,
                u32::from(c),
                i + 1
            ));
        }
        Ok(())
    }
}

/// The ids a network reports (transaction, click, order, merchant ref) and an event's
/// type: 255 characters, four times seed 003's 64 for a conversion id, and the bound the
/// host has always had for them.
pub const MAX_EVENT_ID_CHARS: usize = 255;

/// A network's transaction id (the deduplication key with the network).
pub const TRANSACTION_ID: IdLimit = IdLimit { field: "transaction id", max_chars: MAX_EVENT_ID_CHARS };
/// The click id a network echoes back (cashbackd's own are 32 hex digits).
pub const CLICK_ID: IdLimit = IdLimit { field: "click id", max_chars: MAX_EVENT_ID_CHARS };
/// The merchant's order id.
pub const ORDER_ID: IdLimit = IdLimit { field: "order id", max_chars: MAX_EVENT_ID_CHARS };
/// The merchant's id at the network (seed 001's `MERCHANT:REF`).
pub const MERCHANT_REF: IdLimit = IdLimit { field: "merchant ref", max_chars: MAX_EVENT_ID_CHARS };
/// The tracked event's name (`sale`, `lead`).
pub const EVENT_TYPE: IdLimit = IdLimit { field: "event type", max_chars: MAX_EVENT_ID_CHARS };
/// A line item's id (seed 001's `LINE_ID`).
pub const LINE_ID: IdLimit = IdLimit { field: "line id", max_chars: MAX_EVENT_ID_CHARS };
/// A line item's SKU.
pub const LINE_SKU: IdLimit = IdLimit { field: "line sku", max_chars: MAX_EVENT_ID_CHARS };
/// A line item's category.
pub const LINE_CATEGORY: IdLimit = IdLimit { field: "line category", max_chars: MAX_EVENT_ID_CHARS };
/// The site's user id on a tracked link.
pub const USER_ID: IdLimit = IdLimit { field: "user", max_chars: 128 };
/// A partner's ref_id on a tracked link (seed 003: "String (up to 32 chars)").
pub const REF_ID: IdLimit = IdLimit { field: "ref_id", max_chars: 32 };
/// `sub1`..`sub5` on a tracked link (the field names the sub id).
pub const SUB_ID: IdLimit = IdLimit { field: "sub id", max_chars: 255 };

/// Decodes `application/x-www-form-urlencoded` text, as query strings and form bodies
/// are written: `&`-separated `name=value` pairs, `+` a space, `%XX` a byte; an invalid
/// escape is kept as it is (as browsers and the `url` crate do). A name or value whose
/// bytes are not UTF-8 once decoded is refused, naming the parameter and quoting it as
/// it was sent.
pub fn form_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for part in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = match String::from_utf8(percent_decode(name)) {
            Ok(n) => n,
            Err(_) => return Err(format!("a parameter name is not UTF-8 once percent-decoded ({name:?})")),
        };
        match String::from_utf8(percent_decode(value)) {
            Ok(v) => pairs.push((name, v)),
            Err(_) => {
                return Err(format!("parameter {name:?}: the value is not UTF-8 once percent-decoded ({value:?})"));
            }
        }
    }
    Ok(pairs)
}

/// `+` is a space, then `%XX` a byte (`percent_encoding` keeps an invalid escape as it is).
fn percent_decode(s: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).collect()
}

/// Everything but RFC 3986's unreserved characters is percent-encoded: a value can then
/// stand anywhere in a URL (path or query) and decodes back to itself exactly once.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Encodes one value for a URL, once.
pub fn encode_component(value: &str) -> String {
    utf8_percent_encode(value, COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_limited_in_characters_not_bytes() {
        // Seed 003's longest conversion id, in 4-byte characters: 64 characters, 256 bytes.
        let emoji = "🎉".repeat(64);
        assert_eq!(emoji.len(), 256);
        assert_eq!(TRANSACTION_ID.check(&emoji), Ok(()));
        assert_eq!(TRANSACTION_ID.check(&"🎉".repeat(255)), Ok(()), "1020 bytes: the byte cap");
        let e = TRANSACTION_ID.check(&"x".repeat(256)).expect_err("too long");
        assert_eq!(e, "transaction id: 256 characters, at most 255 (at most 1020 bytes in UTF-8)");
        assert_eq!(REF_ID.check(&"é".repeat(32)), Ok(()));
        assert!(REF_ID.check(&"é".repeat(33)).expect_err("33").starts_with("ref_id: 33 characters, at most 32"));
    }

    #[test]
    fn an_id_has_no_control_characters() {
        let e = TRANSACTION_ID.check("A\u{0}B").expect_err("NUL");
        assert_eq!(e, "transaction id: a control character (U+0000) at character 2 is not allowed in an identifier");
        assert!(USER_ID.check("bob\n").is_err());
        assert!(CLICK_ID.check("a\u{85}").is_err(), "C1 controls too");
        assert_eq!(USER_ID.check("Zoë O'Brien & co"), Ok(()), "spaces and punctuation are fine");
    }

    #[test]
    fn form_text_decodes_once_and_refuses_what_is_not_utf8() {
        let pairs = form_pairs("tid=a%2Bb+c%26d%2541&sub=%E2%82%AC&empty=&bare&bad=%zz%4").expect("pairs");
        assert_eq!(
            pairs,
            vec![
                ("tid".into(), "a+b c&d%41".into()),
                ("sub".into(), "€".into()),
                ("empty".into(), String::new()),
                ("bare".into(), String::new()),
                ("bad".into(), "%zz%4".into()),
            ]
        );
        let e = form_pairs("ok=1&tid=A%FF%FE").expect_err("not UTF-8");
        assert_eq!(e, r#"parameter "tid": the value is not UTF-8 once percent-decoded ("A%FF%FE")"#);
        let e = form_pairs("%C3=1").expect_err("name");
        assert!(e.starts_with("a parameter name is not UTF-8"), "{e}");
        // Two different byte strings never decode to the same text.
        assert!(form_pairs("tid=A%FE%FF").is_err());
        assert_eq!(form_pairs("tid=%C3%A9").expect("é"), vec![("tid".into(), "é".into())]);
    }
}
