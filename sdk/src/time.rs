//! Timestamps as networks send them, turned into the contract's [`Timestamp`]
//! (milliseconds since the Unix epoch, UTC).
//!
//! [`parse_timestamp`] accepts the forms affiliate networks actually use:
//!
//! | text | meaning |
//! |---|---|
//! | `2026-01-03T10:20:30Z`, `2026-01-03T10:20:30.250+02:00` | RFC 3339 (fraction and offset optional parts of it; `T` or a space) |
//! | `2026-01-03 10:20:30` | UTC |
//! | `2026-01-03` | midnight UTC |
//! | `1767435630` | Unix seconds (up to 11 digits) |
//! | `1767435630250` | Unix milliseconds (exactly 13 digits) |
//!
//! Everything else is refused, in particular a `T` date-time without an offset
//! (`2026-01-03T10:20:30`): it is a local time of an unknown zone, and guessing UTC would
//! shift events by hours without anybody noticing. Twelve digits are refused too: they
//! are neither seconds of this era nor milliseconds.
//!
//! No time-zone database and no external crate: the civil date is converted with the
//! days-from-civil algorithm (proleptic Gregorian calendar), so the same text gives the
//! same instant on every target.

use crate::types::{PluginError, Timestamp};

const MS_PER_DAY: i64 = 86_400_000;

/// Parses a timestamp in one of the forms listed in the [module documentation](self) into
/// milliseconds since the Unix epoch, UTC. Surrounding whitespace is ignored. A fraction
/// of a second beyond milliseconds is truncated; a leap second (`:60`) counts as the
/// last millisecond of its minute.
///
/// ```
/// use cashback_sdk::time::parse_timestamp;
///
/// assert_eq!(parse_timestamp("2026-01-03T10:20:30Z"), Ok(1_767_435_630_000));
/// assert_eq!(parse_timestamp("2026-01-03T12:20:30.5+02:00"), Ok(1_767_435_630_500));
/// assert_eq!(parse_timestamp("2026-01-03 10:20:30"), Ok(1_767_435_630_000));
/// assert_eq!(parse_timestamp("1767435630"), Ok(1_767_435_630_000));
/// assert!(parse_timestamp("03/01/2026").is_err());
/// ```
///
/// # Errors
///
/// [`PluginError::InvalidInput`] naming the text and what is wrong with it.
pub fn parse_timestamp(text: &str) -> Result<Timestamp, PluginError> {
    parse(text.trim()).map_err(|why| {
        PluginError::InvalidInput(format!(
            "{text:?} is not a timestamp ({why}; expected RFC 3339, YYYY-MM-DD HH:MM:SS or YYYY-MM-DD in UTC, \
             or Unix seconds or milliseconds)"
        ))
    })
}

/// Formats a timestamp as RFC 3339 in UTC with milliseconds: `2026-01-03T10:20:30.000Z`.
/// [`parse_timestamp`] reads it back to the same value.
pub fn format_rfc3339(at: Timestamp) -> String {
    let days = at.div_euclid(MS_PER_DAY);
    let ms_of_day = at.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s, ms) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1_000 % 60, ms_of_day % 1_000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

fn parse(s: &str) -> Result<Timestamp, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if !s.is_ascii() {
        return Err("non-ASCII characters".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return unix(s);
    }
    let bytes = s.as_bytes();
    if bytes.len() < 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return Err("not a date of the form YYYY-MM-DD".into());
    }
    let year = digits(&s[0..4], "year")?;
    let month = digits(&s[5..7], "month")?;
    let day = digits(&s[8..10], "day")?;
    if !(1..=12).contains(&month) {
        return Err(format!("month {month} is not 1-12"));
    }
    let last = days_in_month(year, month);
    if day < 1 || day > last {
        return Err(format!("day {day} is not 1-{last} in {year:04}-{month:02}"));
    }
    let date_ms = days_from_civil(year, month, day) * MS_PER_DAY;
    let rest = &s[10..];
    if rest.is_empty() {
        return Ok(date_ms);
    }
    let separator = rest.as_bytes()[0];
    if !matches!(separator, b'T' | b't' | b' ') {
        return Err("the date must be followed by `T` or a space and a time".into());
    }
    let rest = &rest[1..];
    let rb = rest.as_bytes();
    if rb.len() < 8 || rb[2] != b':' || rb[5] != b':' {
        return Err("not a time of the form HH:MM:SS".into());
    }
    let hour = digits(&rest[0..2], "hour")?;
    let minute = digits(&rest[3..5], "minute")?;
    let second = digits(&rest[6..8], "second")?;
    if hour > 23 || minute > 59 || second > 60 {
        return Err(format!("{hour:02}:{minute:02}:{second:02} is not a time of day"));
    }
    let mut rest = &rest[8..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return Err("a `.` must be followed by the fraction's digits".into());
        }
        // Milliseconds: the first three digits, padded; further digits are truncated.
        millis = fraction[..len]
            .bytes()
            .take(3)
            .chain(std::iter::repeat(b'0'))
            .take(3)
            .fold(0, |acc, b| acc * 10 + i64::from(b - b'0'));
        rest = &fraction[len..];
    }
    let (second, millis) = if second == 60 { (59, 999) } else { (second, millis) };
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        "" if separator == b' ' => 0,
        "" => {
            return Err(
                "a date-time with `T` needs an offset (`Z` or `+HH:MM`); without one its zone is unknown".into()
            );
        }
        _ => offset(rest)?,
    };
    let time_ms = ((hour * 60 + minute - offset_minutes) * 60 + second) * 1_000 + millis;
    Ok(date_ms + time_ms)
}

/// Unix seconds (1 to 11 digits) or milliseconds (13 digits).
fn unix(s: &str) -> Result<Timestamp, String> {
    // At most 13 ASCII digits: fits an i64 with room to spare.
    let n = s.bytes().fold(0i64, |acc, b| acc.saturating_mul(10).saturating_add(i64::from(b - b'0')));
    match s.len() {
        1..=11 => Ok(n * 1_000),
        13 => Ok(n),
        len => Err(format!("{len} digits are neither Unix seconds (up to 11) nor milliseconds (13)")),
    }
}

/// `+HH:MM` or `-HH:MM`, in minutes east of UTC.
fn offset(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    let sign = match b.first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err(format!("unexpected {s:?} after the time (expected `Z` or an offset `+HH:MM`)")),
    };
    if b.len() != 6 || b[3] != b':' {
        return Err(format!("offset {s:?} is not of the form +HH:MM"));
    }
    let hours = digits(&s[1..3], "offset hours")?;
    let minutes = digits(&s[4..6], "offset minutes")?;
    if hours > 23 || minutes > 59 {
        return Err(format!("offset {s:?} is out of range"));
    }
    Ok(sign * (hours * 60 + minutes))
}

fn digits(s: &str, what: &str) -> Result<i64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {s:?} is not a number"));
    }
    Ok(s.bytes().fold(0, |acc, b| acc * 10 + i64::from(b - b'0')))
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`): eras of 400 years, years starting in March so that the leap day
/// is the last day of the year.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Timestamp {
        match parse_timestamp(text) {
            Ok(t) => t,
            Err(e) => panic!("{text:?} should parse: {e:?}"),
        }
    }

    fn refused(text: &str) -> String {
        match parse_timestamp(text) {
            Err(PluginError::InvalidInput(m)) => m,
            other => panic!("{text:?} should be refused as invalid input, got {other:?}"),
        }
    }

    #[test]
    fn rfc3339_in_utc_with_and_without_a_fraction() {
        assert_eq!(ok("1970-01-01T00:00:00Z"), 0);
        assert_eq!(ok("2026-01-03T10:20:30Z"), 1_767_435_630_000);
        assert_eq!(ok("2026-01-03t10:20:30z"), 1_767_435_630_000);
        assert_eq!(ok("2026-01-03T10:20:30.1Z"), 1_767_435_630_100);
        assert_eq!(ok("2026-01-03T10:20:30.25Z"), 1_767_435_630_250);
        assert_eq!(ok("2026-01-03T10:20:30.999999999Z"), 1_767_435_630_999);
        assert_eq!(ok("  2026-01-03T10:20:30Z \n"), 1_767_435_630_000);
    }

    #[test]
    fn offsets_move_the_instant_to_utc() {
        assert_eq!(ok("2026-01-03T12:20:30+02:00"), 1_767_435_630_000);
        assert_eq!(ok("2026-01-03T05:50:30-04:30"), 1_767_435_630_000);
        assert_eq!(ok("2026-01-03T10:20:30-00:00"), 1_767_435_630_000);
        // Crossing midnight and the year boundary.
        assert_eq!(ok("2026-01-01T01:00:00+02:00"), ok("2025-12-31T23:00:00Z"));
        assert_eq!(ok("2025-12-31T23:30:00-01:00"), ok("2026-01-01T00:30:00Z"));
        // RFC 3339 allows a space instead of `T`.
        assert_eq!(ok("2026-01-03 12:20:30+02:00"), 1_767_435_630_000);
    }

    #[test]
    fn space_separated_date_times_and_bare_dates_are_utc() {
        assert_eq!(ok("2026-01-03 10:20:30"), 1_767_435_630_000);
        assert_eq!(ok("2026-01-03 10:20:30.5"), 1_767_435_630_500);
        assert_eq!(ok("2026-01-03"), 1_767_398_400_000);
        assert_eq!(ok("1969-12-31"), -86_400_000);
    }

    #[test]
    fn unix_seconds_and_milliseconds_are_told_apart_by_length() {
        assert_eq!(ok("0"), 0);
        assert_eq!(ok("1767435630"), 1_767_435_630_000);
        assert_eq!(ok("01767435630"), 1_767_435_630_000);
        assert_eq!(ok("1767435630250"), 1_767_435_630_250);
        assert!(refused("176743563025").contains("12 digits"));
        assert!(refused("17674356302500").contains("14 digits"));
    }

    #[test]
    fn leap_years_follow_the_gregorian_rules() {
        assert_eq!(ok("2024-02-29"), ok("2024-02-28") + MS_PER_DAY);
        assert_eq!(ok("2024-03-01"), ok("2024-02-29") + MS_PER_DAY);
        assert_eq!(ok("2000-02-29"), 951_782_400_000);
        assert_eq!(ok("2025-03-01"), ok("2025-02-28") + MS_PER_DAY);
        assert!(refused("2025-02-29").contains("day 29 is not 1-28"));
        assert!(refused("1900-02-29").contains("day 29 is not 1-28"));
        assert!(refused("2100-02-29T00:00:00Z").contains("day 29"));
        // A whole leap year is 366 days, a common one 365.
        assert_eq!(ok("2025-01-01") - ok("2024-01-01"), 366 * MS_PER_DAY);
        assert_eq!(ok("2026-01-01") - ok("2025-01-01"), 365 * MS_PER_DAY);
    }

    #[test]
    fn a_leap_second_is_the_last_millisecond_of_its_minute() {
        assert_eq!(ok("2016-12-31T23:59:60Z"), ok("2016-12-31T23:59:59.999Z"));
    }

    #[test]
    fn civil_dates_round_trip_over_four_centuries() {
        let start = days_from_civil(1800, 1, 1);
        for days in (start..start + 146_097 * 2).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
            assert!(d >= 1 && d <= days_in_month(y, m));
        }
        for at in [0, 1_767_435_630_250, -1, 951_782_400_000, 253_402_300_799_999] {
            assert_eq!(parse_timestamp(&format_rfc3339(at)), Ok(at), "{}", format_rfc3339(at));
        }
        assert_eq!(format_rfc3339(1_767_435_630_250), "2026-01-03T10:20:30.250Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn malformed_text_is_refused_with_the_text_named() {
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            ("yesterday", "YYYY-MM-DD"),
            ("03/01/2026", "YYYY-MM-DD"),
            ("2026-1-3", "YYYY-MM-DD"),
            ("2026-13-01", "month 13"),
            ("2026-00-10", "month 0"),
            ("2026-04-31", "day 31 is not 1-30"),
            ("2026-01-00", "day 0"),
            ("2026-01-03T10:20:30", "needs an offset"),
            ("2026-01-03T24:00:00Z", "not a time of day"),
            ("2026-01-03T10:61:00Z", "not a time of day"),
            ("2026-01-03T10:20Z", "HH:MM:SS"),
            ("2026-01-03X10:20:30Z", "followed by `T`"),
            ("2026-01-03T10:20:30.Z", "fraction"),
            ("2026-01-03T10:20:30+0200", "+HH:MM"),
            ("2026-01-03T10:20:30+24:00", "out of range"),
            ("2026-01-03T10:20:30 UTC", "unexpected"),
            ("2026-01-03T10:20:30Zjunk", "unexpected"),
            ("-1767435630", "YYYY-MM-DD"),
            ("1767435630.5", "YYYY-MM-DD"),
            ("２０２６-01-03", "non-ASCII"),
        ];
        for (text, why) in cases {
            let message = refused(text);
            assert!(message.contains(&format!("{text:?}")), "{message:?} should name {text:?}");
            assert!(message.contains(why), "{message:?} should say {why:?}");
        }
    }
}
