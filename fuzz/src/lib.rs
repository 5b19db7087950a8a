//! What the fuzz targets share: strict decoders used as oracles, and `Arbitrary` mirrors of
//! the contract's types (the bindgen-generated ones derive no `Arbitrary`).

use arbitrary::{Arbitrary, Unstructured};
use cashbackd::plugin::wit::latest;

/// RFC 3986's unreserved characters: what `encode_component` leaves as it is.
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes a value that was encoded exactly once by `ingest::encode_component`: only
/// unreserved characters and `%XX` escapes (upper-case hex) may appear, and the bytes must
/// be UTF-8. `None` for anything else, so a value that was not encoded, or encoded with
/// another alphabet, does not pass.
pub fn decode_component(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                if !hex.iter().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)) {
                    return None;
                }
                let byte = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                if is_unreserved(byte) {
                    // Encoded although it need not be: not the encoder we expect.
                    return None;
                }
                out.push(byte);
                i += 3;
            }
            c if is_unreserved(c) => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// A short string drawn mostly from an alphabet that makes URL encoding interesting
/// (reserved characters, `%`, `+`, braces, non-ASCII), sometimes fully arbitrary.
pub fn tricky_string(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    const ALPHABET: &[&str] = &[
        "a",
        "Z",
        "0",
        "9",
        "-",
        ".",
        "_",
        "~",
        " ",
        "+",
        "%",
        "%41",
        "%2",
        "&",
        "=",
        "?",
        "#",
        "/",
        ":",
        "@",
        "{",
        "}",
        "[%",
        "%]",
        "\"",
        "'",
        ";",
        ",",
        "\\",
        "\n",
        "\r",
        "\t",
        "\0",
        "é",
        "€",
        "🎉",
        "\u{feff}",
        "{click_id}",
        "{sub1}",
        "token",
        "signature",
    ];
    if u.ratio(1, 8)? {
        return String::arbitrary(u);
    }
    let n = u.int_in_range(0..=12)?;
    let mut s = String::new();
    for _ in 0..n {
        s.push_str(u.choose(ALPHABET)?);
    }
    Ok(s)
}

/// An amount: mostly ordinary, sometimes at the edges of `i64`.
pub fn amount(u: &mut Unstructured<'_>) -> arbitrary::Result<i64> {
    Ok(match u.int_in_range(0..=7)? {
        0 => i64::MAX,
        1 => i64::MIN,
        2 => i64::arbitrary(u)?,
        3 => -(u.int_in_range(0..=1_000_000)?),
        4 => u.int_in_range(1_000_000_000_000..=10_000_000_000_000_000)?,
        _ => u.int_in_range(0..=1_000_000)?,
    })
}

/// A currency code: mostly real ones, sometimes anything.
pub fn currency(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=5)? {
        0 => String::arbitrary(u)?,
        1 => u.choose(&["eur", "", "EURO", "E1R", " EUR"])?.to_string(),
        _ => u.choose(&["EUR", "USD", "JPY", "KWD", "GBP"])?.to_string(),
    })
}

/// A conversion state.
pub fn state(u: &mut Unstructured<'_>) -> arbitrary::Result<latest::ConversionState> {
    use latest::ConversionState as S;
    u.choose(&[S::Created, S::Pending, S::Adjusted, S::Completed, S::Rejected, S::Reversed]).copied()
}

/// A line id, mostly from a small set so that decisions refer to the order's lines.
pub fn line_id(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    if u.ratio(1, 6)? { String::arbitrary(u) } else { Ok(u.choose(&["order", "l1", "l2", "l3"])?.to_string()) }
}

/// An order as the host builds it for a rule.
pub fn order(u: &mut Unstructured<'_>) -> arbitrary::Result<latest::Order> {
    let currency = currency(u)?;
    let n = u.int_in_range(0..=4)?;
    let mut line_items = Vec::with_capacity(n);
    for _ in 0..n {
        line_items.push(latest::LineItem {
            id: line_id(u)?,
            sku: String::arbitrary(u)?,
            category: String::arbitrary(u)?,
            quantity: u32::arbitrary(u)?,
            amount: amount(u)?,
        });
    }
    let total = amount(u)?;
    Ok(latest::Order {
        conversion_id: String::arbitrary(u)?,
        merchant: String::arbitrary(u)?,
        network: String::arbitrary(u)?,
        order_id: String::arbitrary(u)?,
        event_type: String::arbitrary(u)?,
        state: state(u)?,
        amount: latest::Money { minor: total, currency: currency.clone() },
        commission: latest::Money { minor: amount(u)?, currency },
        line_items,
        event_time: i64::arbitrary(u)?,
        click_time: Option::<i64>::arbitrary(u)?,
        user_id: Option::<String>::arbitrary(u)?,
    })
}

/// A rule's decision on `order`: usually consistent with it (its currency, lines that
/// add up), so that the fuzzer spends its time near the edge of what is accepted.
pub fn decision(u: &mut Unstructured<'_>, order: &latest::Order) -> arbitrary::Result<latest::RuleDecision> {
    let n = u.int_in_range(0..=5)?;
    let mut lines = Vec::with_capacity(n);
    for _ in 0..n {
        let line_id = match order.line_items.get(u.int_in_range(0..=5)?) {
            Some(l) if !u.ratio(1, 10)? => l.id.clone(),
            _ => line_id(u)?,
        };
        lines.push(latest::LineCashback {
            line_id,
            amount: amount(u)?,
            rate_bps: Option::<u32>::arbitrary(u)?,
            reason: String::arbitrary(u)?,
        });
    }
    let sum = lines.iter().fold(0i64, |a, l| a.wrapping_add(l.amount));
    let total = if u.ratio(7, 8)? { sum } else { amount(u)? };
    let currency = if u.ratio(7, 8)? { order.amount.currency.clone() } else { currency(u)? };
    let exclusions = (0..u.int_in_range(0..=2)?)
        .map(|_| Ok(latest::Exclusion { line_id: line_id(u)?, reason: String::arbitrary(u)? }))
        .collect::<arbitrary::Result<Vec<_>>>()?;
    Ok(latest::RuleDecision {
        lines,
        exclusions,
        total: latest::Money { minor: total, currency },
        hold: Option::<String>::arbitrary(u)?,
        reward_delay_days: match u.int_in_range(0..=3)? {
            0 => None,
            1 => Some(u32::arbitrary(u)?),
            _ => Some(u.int_in_range(0..=4000)?),
        },
        notes: Vec::<String>::arbitrary(u)?,
    })
}

/// A conversion event as an adapter might return it: usually plausible, sometimes not.
pub fn event(u: &mut Unstructured<'_>) -> arbitrary::Result<latest::ConversionEvent> {
    let currency = currency(u)?;
    let n = u.int_in_range(0..=3)?;
    let mut line_items = Vec::with_capacity(n);
    for _ in 0..n {
        line_items.push(latest::LineItem {
            id: line_id(u)?,
            sku: String::arbitrary(u)?,
            category: String::arbitrary(u)?,
            quantity: u32::arbitrary(u)?,
            amount: amount(u)?,
        });
    }
    let id = |u: &mut Unstructured<'_>| -> arbitrary::Result<String> {
        Ok(match u.int_in_range(0..=5)? {
            0 => String::new(),
            1 => " ".repeat(u.int_in_range(1..=3)?),
            2 => "x".repeat(u.int_in_range(200..=600)?),
            _ => String::arbitrary(u)?,
        })
    };
    Ok(latest::ConversionEvent {
        network: if u.ratio(1, 2)? { String::new() } else { String::arbitrary(u)? },
        transaction_id: id(u)?,
        click_id: if u.arbitrary()? { Some(id(u)?) } else { None },
        order_id: if u.arbitrary()? { Some(id(u)?) } else { None },
        event_type: if u.ratio(3, 4)? { "sale".into() } else { id(u)? },
        state: state(u)?,
        amount: amount(u)?,
        commission: amount(u)?,
        currency,
        event_time: match u.int_in_range(0..=3)? {
            0 => i64::arbitrary(u)?,
            _ => u.int_in_range(0..=4_102_444_800_000)?,
        },
        reason: Option::<String>::arbitrary(u)?,
        merchant_ref: if u.arbitrary()? { Some(id(u)?) } else { None },
        line_items,
        raw: Vec::<(String, String)>::arbitrary(u)?,
    })
}
