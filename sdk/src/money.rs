//! Money arithmetic for plugins: integer minor units, rates in basis points, rounding
//! that is always explicit, and overflow that is an error instead of a wrap.
//!
//! Never use `f64` for money: 0.1 + 0.2 is not 0.3, and a plugin that rounds differently
//! from the host breaks replays. Every function here works on `i64` minor units with
//! `i128` intermediates.

use std::fmt;

/// A rate in basis points: 1 bps is 0.01 %, 10 000 bps is 100 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bps(pub u32);

impl Bps {
    /// 100 %.
    pub const FULL: Bps = Bps(10_000);

    /// Applies the rate to `amount` (minor units) with the given rounding.
    pub fn of(self, amount: i64, rounding: Rounding) -> Result<i64, MoneyError> {
        apply_bps(amount, self.0, rounding)
    }
}

impl fmt::Display for Bps {
    /// As a percentage: `Bps(250)` is "2.5%", `Bps(300)` is "3%".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        match frac {
            0 => write!(f, "{whole}%"),
            f10 if f10 % 10 == 0 => write!(f, "{whole}.{}%", f10 / 10),
            _ => write!(f, "{whole}.{frac:02}%"),
        }
    }
}

/// How to round a result that falls between two minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rounding {
    /// Toward zero (truncate). The usual choice for cashback: never pay a fraction of a
    /// cent that was not earned.
    Down,
    /// Away from zero.
    Up,
    /// To the nearest; halves away from zero (commercial rounding).
    HalfUp,
    /// To the nearest; halves to the even neighbour (banker's rounding).
    HalfEven,
    /// Toward negative infinity.
    Floor,
    /// Toward positive infinity.
    Ceiling,
}

/// Why a money computation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoneyError {
    /// The result does not fit in an `i64` of minor units.
    Overflow,
    /// Two amounts in different currencies were combined.
    CurrencyMismatch {
        /// Currency of the left operand.
        left: String,
        /// Currency of the right operand.
        right: String,
    },
    /// A decimal amount could not be parsed.
    InvalidAmount(String),
}

impl fmt::Display for MoneyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoneyError::Overflow => write!(f, "amount overflows 64-bit minor units"),
            MoneyError::CurrencyMismatch { left, right } => {
                write!(f, "cannot combine {left} with {right}")
            }
            MoneyError::InvalidAmount(why) => write!(f, "invalid amount: {why}"),
        }
    }
}

impl std::error::Error for MoneyError {}

impl From<MoneyError> for crate::types::PluginError {
    fn from(e: MoneyError) -> Self {
        crate::types::PluginError::InvalidInput(e.to_string())
    }
}

/// `numerator / denominator` rounded as asked. `denominator` must be positive.
pub fn div_round(numerator: i128, denominator: i128, rounding: Rounding) -> Result<i128, MoneyError> {
    if denominator <= 0 {
        return Err(MoneyError::InvalidAmount("division by a non-positive number".into()));
    }
    let q = numerator / denominator; // truncates toward zero
    let r = numerator % denominator;
    if r == 0 {
        return Ok(q);
    }
    let negative = numerator < 0;
    let away = if negative { q - 1 } else { q + 1 };
    let twice = r.unsigned_abs() * 2;
    let d = denominator.unsigned_abs();
    Ok(match rounding {
        Rounding::Down => q,
        Rounding::Up => away,
        Rounding::Floor => {
            if negative {
                away
            } else {
                q
            }
        }
        Rounding::Ceiling => {
            if negative {
                q
            } else {
                away
            }
        }
        Rounding::HalfUp => {
            if twice >= d {
                away
            } else {
                q
            }
        }
        Rounding::HalfEven => {
            if twice > d || (twice == d && q % 2 != 0) {
                away
            } else {
                q
            }
        }
    })
}

fn to_i64(v: i128) -> Result<i64, MoneyError> {
    i64::try_from(v).map_err(|_| MoneyError::Overflow)
}

/// `amount × bps / 10 000`, rounded as asked.
pub fn apply_bps(amount: i64, bps: u32, rounding: Rounding) -> Result<i64, MoneyError> {
    to_i64(div_round(i128::from(amount) * i128::from(bps), 10_000, rounding)?)
}

/// `amount × numerator / denominator`, rounded as asked (pro-rating, partial refunds).
pub fn mul_div(amount: i64, numerator: i64, denominator: i64, rounding: Rounding) -> Result<i64, MoneyError> {
    to_i64(div_round(i128::from(amount) * i128::from(numerator), i128::from(denominator), rounding)?)
}

/// `a + b`, or [`MoneyError::Overflow`].
pub fn checked_add(a: i64, b: i64) -> Result<i64, MoneyError> {
    a.checked_add(b).ok_or(MoneyError::Overflow)
}

/// `a - b`, or [`MoneyError::Overflow`].
pub fn checked_sub(a: i64, b: i64) -> Result<i64, MoneyError> {
    a.checked_sub(b).ok_or(MoneyError::Overflow)
}

/// `a × n`, or [`MoneyError::Overflow`].
pub fn checked_mul(a: i64, n: i64) -> Result<i64, MoneyError> {
    a.checked_mul(n).ok_or(MoneyError::Overflow)
}

/// The sum of `amounts`, or [`MoneyError::Overflow`].
pub fn checked_sum<I: IntoIterator<Item = i64>>(amounts: I) -> Result<i64, MoneyError> {
    amounts.into_iter().try_fold(0i64, checked_add)
}

/// Splits `total` across `weights` in proportion, so that the parts add up to `total`
/// exactly (largest-remainder method; ties go to the earlier weight). Used to spread a
/// capped total back over line items. All weights zero splits evenly.
pub fn allocate(total: i64, weights: &[i64]) -> Result<Vec<i64>, MoneyError> {
    if weights.is_empty() {
        return Ok(Vec::new());
    }
    if weights.iter().any(|w| *w < 0) {
        return Err(MoneyError::InvalidAmount("negative weight".into()));
    }
    let even = vec![1i64; weights.len()];
    let weights = if weights.iter().all(|w| *w == 0) { &even[..] } else { weights };
    let sum: i128 = weights.iter().map(|w| i128::from(*w)).sum();
    let t = i128::from(total);
    let mut parts = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let exact = t * i128::from(*w);
        parts.push(exact / sum); // toward zero
        remainders.push(((exact % sum).abs(), i));
    }
    let mut left = t - parts.iter().sum::<i128>();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let step = if left < 0 { -1 } else { 1 };
    for (_, i) in remainders.iter().cycle() {
        if left == 0 {
            break;
        }
        parts[*i] += step;
        left -= step;
    }
    parts.into_iter().map(to_i64).collect()
}

/// A currency code as networks send it (`eur`, ` USD `), normalized to ISO 4217's upper
/// case; `None` unless it is three ASCII letters.
pub fn currency_code(text: &str) -> Option<String> {
    let t = text.trim();
    (t.len() == 3 && t.bytes().all(|b| b.is_ascii_alphabetic())).then(|| t.to_ascii_uppercase())
}

/// Number of decimal places of a currency's minor unit (ISO 4217): 2 unless listed.
pub fn minor_unit_exponent(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
        | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// Parses a decimal amount as networks send it ("12.34", "-5", "1234.5") into minor
/// units of `currency`. Digits beyond the currency's precision are rounded as asked.
pub fn parse_decimal(text: &str, currency: &str, rounding: Rounding) -> Result<i64, MoneyError> {
    let s = text.trim();
    let invalid = || MoneyError::InvalidAmount(format!("{text:?} is not a decimal number"));
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err(invalid());
    }
    if !whole.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid());
    }
    if whole.len() + frac.len() > 36 {
        return Err(MoneyError::Overflow);
    }
    let scale = frac.len() as u32;
    let mut n: i128 = 0;
    for c in whole.chars().chain(frac.chars()) {
        n = n * 10 + i128::from(c as u8 - b'0');
    }
    if negative {
        n = -n;
    }
    let exp = minor_unit_exponent(currency);
    let minor =
        if scale <= exp { n * 10i128.pow(exp - scale) } else { div_round(n, 10i128.pow(scale - exp), rounding)? };
    to_i64(minor)
}

/// Formats minor units as a decimal with the currency code: `format(1234, "EUR")` is
/// `"12.34 EUR"`.
pub fn format(minor: i64, currency: &str) -> String {
    let exp = minor_unit_exponent(currency);
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if exp == 0 {
        return format!("{sign}{abs} {currency}");
    }
    let div = 10u64.pow(exp);
    format!("{sign}{}.{:0width$} {currency}", abs / div, abs % div, width = exp as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rounding_mode_on_positive_and_negative_halves() {
        let cases = [
            // (numerator, Down, Up, HalfUp, HalfEven, Floor, Ceiling) for /10
            (25i128, 2, 3, 3, 2, 2, 3),
            (35, 3, 4, 4, 4, 3, 4),
            (-25, -2, -3, -3, -2, -3, -2),
            (24, 2, 3, 2, 2, 2, 3),
            (26, 2, 3, 3, 3, 2, 3),
            (20, 2, 2, 2, 2, 2, 2),
        ];
        for (n, down, up, half_up, half_even, floor, ceil) in cases {
            assert_eq!(div_round(n, 10, Rounding::Down), Ok(down), "{n} down");
            assert_eq!(div_round(n, 10, Rounding::Up), Ok(up), "{n} up");
            assert_eq!(div_round(n, 10, Rounding::HalfUp), Ok(half_up), "{n} half up");
            assert_eq!(div_round(n, 10, Rounding::HalfEven), Ok(half_even), "{n} half even");
            assert_eq!(div_round(n, 10, Rounding::Floor), Ok(floor), "{n} floor");
            assert_eq!(div_round(n, 10, Rounding::Ceiling), Ok(ceil), "{n} ceiling");
        }
    }

    #[test]
    fn basis_points_round_explicitly() {
        // 3 % of 12.99 EUR is 0.3897 EUR.
        assert_eq!(apply_bps(1299, 300, Rounding::Down), Ok(38));
        assert_eq!(apply_bps(1299, 300, Rounding::HalfUp), Ok(39));
        assert_eq!(Bps(250).of(10_000, Rounding::Down), Ok(250));
        assert_eq!(Bps::FULL.of(-777, Rounding::Down), Ok(-777));
    }

    #[test]
    fn basis_points_display_as_percentages() {
        assert_eq!(Bps(300).to_string(), "3%");
        assert_eq!(Bps(250).to_string(), "2.5%");
        assert_eq!(Bps(1).to_string(), "0.01%");
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert_eq!(checked_add(i64::MAX, 1), Err(MoneyError::Overflow));
        assert_eq!(checked_sum([i64::MAX, 1]), Err(MoneyError::Overflow));
        assert_eq!(apply_bps(i64::MAX, 20_000, Rounding::Down), Err(MoneyError::Overflow));
        assert_eq!(apply_bps(i64::MAX, 10_000, Rounding::Down), Ok(i64::MAX));
        assert_eq!(checked_mul(i64::MIN, -1), Err(MoneyError::Overflow));
    }

    #[test]
    fn allocation_sums_exactly_and_is_proportional() {
        assert_eq!(allocate(100, &[1, 1, 1]), Ok(vec![34, 33, 33]));
        assert_eq!(allocate(1000, &[5000, 3000, 2000]), Ok(vec![500, 300, 200]));
        assert_eq!(allocate(-10, &[1, 2]), Ok(vec![-3, -7]));
        assert_eq!(allocate(7, &[0, 0]), Ok(vec![4, 3]));
        let parts = allocate(999_999, &[3, 7, 11, 13]).unwrap_or_default();
        assert_eq!(parts.iter().sum::<i64>(), 999_999);
    }

    #[test]
    fn decimals_parse_into_minor_units_of_the_currency() {
        assert_eq!(parse_decimal("12.34", "EUR", Rounding::Down), Ok(1234));
        assert_eq!(parse_decimal("12.3", "EUR", Rounding::Down), Ok(1230));
        assert_eq!(parse_decimal("-5", "USD", Rounding::Down), Ok(-500));
        assert_eq!(parse_decimal("1500", "JPY", Rounding::Down), Ok(1500));
        assert_eq!(parse_decimal("1.2345", "KWD", Rounding::HalfUp), Ok(1235));
        assert_eq!(parse_decimal("0.125", "EUR", Rounding::HalfEven), Ok(12));
        assert!(parse_decimal("1,5", "EUR", Rounding::Down).is_err());
        assert!(parse_decimal("", "EUR", Rounding::Down).is_err());
        assert!(parse_decimal("1e3", "EUR", Rounding::Down).is_err());
    }

    #[test]
    fn currency_codes_are_normalized_or_refused() {
        assert_eq!(currency_code(" eur "), Some("EUR".to_string()));
        assert_eq!(currency_code("euro"), None);
        assert_eq!(currency_code("E1R"), None);
    }

    #[test]
    fn formatting_follows_the_currency_exponent() {
        assert_eq!(format(1234, "EUR"), "12.34 EUR");
        assert_eq!(format(-5, "USD"), "-0.05 USD");
        assert_eq!(format(1500, "JPY"), "1500 JPY");
        assert_eq!(format(1, "KWD"), "0.001 KWD");
    }
}
