//! Human durations ("250ms", "5s", "1.5s", "1m30s") and percentages ("10%").

use std::time::Duration;

/// A duration string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string is empty.
    #[error("expected a duration such as \"500ms\", \"5s\" or \"1m\", found an empty string")]
    Empty,
    /// A number has no unit after it.
    #[error("{number:?} has no unit: write for example \"{number}s\" or \"{number}ms\"")]
    MissingUnit {
        /// The number without a unit.
        number: String,
    },
    /// A unit is not one of the accepted ones.
    #[error("unknown unit {unit:?}: use ns, us, ms, s, m or h")]
    UnknownUnit {
        /// The rejected unit.
        unit: String,
    },
    /// Something other than a number appears where a number is expected.
    #[error("expected a number followed by a unit (ns, us, ms, s, m, h), found {found:?}")]
    BadNumber {
        /// The rest of the string from the bad character on.
        found: String,
    },
    /// The value does not fit in a `Duration`, or has more precision than a nanosecond.
    #[error("{text:?} is out of range (nanosecond precision, at most about 584 years)")]
    OutOfRange {
        /// The whole string.
        text: String,
    },
}

/// Nanoseconds per unit, longest spelling first so "ms" wins over "m".
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a duration written as one or more `<number><unit>` parts: `"250ms"`, `"5s"`,
/// `"1.5s"`, `"1m30s"`. Units are ns, us (or µs), ms, s, m and h. A bare `"0"` is zero.
///
/// Fractions are computed exactly in integer nanoseconds, so `"0.1s"` is 100ms.
///
/// # Errors
///
/// A [`DurationError`] saying what is wrong with `text`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let out_of_range = || DurationError::OutOfRange {
        text: text.to_owned(),
    };
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits_ok(fraction) || (number.contains('.') && fraction.is_empty())
        {
            return Err(DurationError::BadNumber {
                found: rest.to_owned(),
            });
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit {
                number: number.to_owned(),
            });
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit {
                unit: unit.to_owned(),
            });
        };
        let whole: u128 = whole.parse().map_err(|_| out_of_range())?;
        let mut nanos = whole.checked_mul(scale).ok_or_else(out_of_range)?;
        // Exact fixed-point fraction: digits / 10^len * scale must be a whole nanosecond.
        if !fraction.is_empty() {
            let denominator = 10u128
                .checked_pow(u32::try_from(fraction.len()).map_err(|_| out_of_range())?)
                .ok_or_else(out_of_range)?;
            let numerator: u128 = fraction.parse().map_err(|_| out_of_range())?;
            let scaled = numerator.checked_mul(scale).ok_or_else(out_of_range)?;
            if !scaled.is_multiple_of(denominator) {
                return Err(out_of_range());
            }
            nanos += scaled / denominator;
        }
        total = total.checked_add(nanos).ok_or_else(out_of_range)?;
        rest = next;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| out_of_range())?;
    let subsec = u32::try_from(total % 1_000_000_000).map_err(|_| out_of_range())?;
    Ok(Duration::new(secs, subsec))
}

/// Formats a duration the way it is written in the config file: `"1.5s"`, `"250ms"`,
/// `"2m"`, `"90s"`, `"0s"`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    const SECOND: u128 = 1_000_000_000;
    for (unit, scale) in [("h", 3_600 * SECOND), ("m", 60 * SECOND)] {
        if nanos.is_multiple_of(scale) {
            return format!("{}{unit}", nanos / scale);
        }
    }
    if nanos >= SECOND {
        // "90s", or "1.5s" with trailing zeros trimmed.
        let fraction = format!("{:09}", nanos % SECOND);
        let fraction = fraction.trim_end_matches('0');
        let point = if fraction.is_empty() { "" } else { "." };
        return format!("{}{point}{fraction}s", nanos / SECOND);
    }
    for (unit, scale) in [("ms", 1_000_000), ("us", 1_000)] {
        if nanos.is_multiple_of(scale) {
            return format!("{}{unit}", nanos / scale);
        }
    }
    format!("{nanos}ns")
}

/// A percentage string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a whole percentage such as \"10%\", found {found:?}")]
pub struct PercentError {
    /// The rejected text.
    pub found: String,
}

/// Parses a whole percentage such as `"10%"` (0..=100; callers apply tighter limits).
///
/// # Errors
///
/// [`PercentError`] if `text` is not a whole number from 0 to 100 followed by `%`.
pub fn parse_percent(text: &str) -> Result<u8, PercentError> {
    let fail = || PercentError {
        found: text.to_owned(),
    };
    let number = text.trim().strip_suffix('%').ok_or_else(fail)?.trim_end();
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail());
    }
    match number.parse::<u8>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(fail()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_durations() {
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("250ms", ms(250)),
            ("5s", ms(5_000)),
            ("1m", ms(60_000)),
            ("1.5s", ms(1_500)),
            ("0.1s", ms(100)),
            ("1m30s", ms(90_000)),
            ("2h", ms(7_200_000)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            (" 10ms ", ms(10)),
            ("750us", Duration::from_micros(750)),
            ("20µs", Duration::from_micros(20)),
            ("15ns", Duration::from_nanos(15)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn rejects_bad_durations() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(
            parse_duration("5"),
            Err(DurationError::MissingUnit { number: "5".into() })
        );
        assert_eq!(
            parse_duration("5sec"),
            Err(DurationError::UnknownUnit { unit: "sec".into() })
        );
        assert_eq!(
            parse_duration("5 s"),
            Err(DurationError::UnknownUnit { unit: " s".into() })
        );
        assert!(matches!(
            parse_duration("-1s"),
            Err(DurationError::BadNumber { .. })
        ));
        assert!(matches!(
            parse_duration(".5s"),
            Err(DurationError::BadNumber { .. })
        ));
        assert!(matches!(
            parse_duration("1.s"),
            Err(DurationError::BadNumber { .. })
        ));
        assert!(matches!(
            parse_duration("1.2.3s"),
            Err(DurationError::BadNumber { .. })
        ));
        assert!(matches!(
            parse_duration("0.5ns"),
            Err(DurationError::OutOfRange { .. })
        ));
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::OutOfRange { .. })
        ));
        let message = parse_duration("5").unwrap_err().to_string();
        assert!(message.contains("\"5s\""), "{message}");
    }

    #[test]
    fn formats_durations_like_the_file() {
        let ms = Duration::from_millis;
        assert_eq!(format_duration(ms(1_500)), "1.5s");
        assert_eq!(format_duration(ms(250)), "250ms");
        assert_eq!(format_duration(ms(120_000)), "2m");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_nanos(7)), "7ns");
        assert_eq!(format_duration(ms(90_000)), "90s");
        assert_eq!(format_duration(Duration::from_micros(2_000_500)), "2.0005s");
        for text in ["1.5s", "250ms", "2m", "1h", "90s", "3us"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn parses_percentages() {
        assert_eq!(parse_percent("10%"), Ok(10));
        assert_eq!(parse_percent("0%"), Ok(0));
        assert_eq!(parse_percent("100%"), Ok(100));
        for bad in ["10", "%", "-5%", "101%", "1.5%", "ten%"] {
            assert!(parse_percent(bad).is_err(), "{bad:?}");
        }
    }
}
