//! Go's duration syntax (`time.ParseDuration`), which the seed documents for
//! `SPACELIFT_LAUNCHER_RUN_TIMEOUT` and `SPACELIFT_LAUNCHER_LOGS_TIMEOUT`: `3600s`, `1h30m`,
//! `1.5h`, `300ms`. A sign is refused: a timeout cannot be negative.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{input:?} is not a Go duration ({why}): write e.g. 3600s, 90m or 1h30m")]
pub struct DurationError {
    input: String,
    why: &'static str,
}

/// Parses a Go duration into a [`Duration`].
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |why| DurationError {
        input: input.to_string(),
        why,
    };
    let text = input.trim();
    if text.starts_with(['-', '+']) {
        return Err(fail("a timeout has no sign"));
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(fail("it is empty"));
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or(fail("a number has no unit"))?;
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            "" => return Err(fail("a number has no unit")),
            _ => return Err(fail("unknown unit: use ns, us, ms, s, m or h")),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(fail("a unit has no number"));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| fail("a number is too large"))?
        };
        let mut value = whole
            .checked_mul(nanos_per_unit)
            .ok_or(fail("it is too large"))?;
        // The fraction's digits, each worth a tenth of the one before (Go truncates too).
        let mut scale = nanos_per_unit;
        for digit in fraction.bytes() {
            scale /= 10;
            value += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(value).ok_or(fail("it is too large"))?;
        rest = after;
    }
    // Go's durations are int64 nanoseconds.
    if total > i64::MAX as u128 {
        return Err(fail("it is too large"));
    }
    Ok(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_and_gos_examples_parse() {
        let cases = [
            ("3600s", Duration::from_secs(3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5h", Duration::from_secs(5400)),
            ("300ms", Duration::from_millis(300)),
            (
                "2h45m30.5s",
                Duration::from_millis((2 * 3600 + 45 * 60 + 30) * 1000 + 500),
            ),
            ("1us", Duration::from_micros(1)),
            ("1µs", Duration::from_micros(1)),
            ("10ns", Duration::from_nanos(10)),
            (".5s", Duration::from_millis(500)),
            ("5.s", Duration::from_secs(5)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            (" 90m ", Duration::from_secs(5400)),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_go_duration(input), Ok(expected), "{input}");
        }
    }

    #[test]
    fn bad_durations_say_why() {
        let cases = [
            ("", "it is empty"),
            ("3600", "a number has no unit"),
            ("1h30", "a number has no unit"),
            ("5d", "unknown unit"),
            ("-5s", "a timeout has no sign"),
            ("s", "a unit has no number"),
            (".s", "a unit has no number"),
            ("1.2.3s", "a unit has no number"),
            ("9999999999h", "it is too large"),
        ];
        for (input, why) in cases {
            let err = parse_go_duration(input).unwrap_err().to_string();
            assert!(err.contains(why), "{input}: {err}");
            assert!(err.ends_with("write e.g. 3600s, 90m or 1h30m"), "{err}");
        }
    }
}
