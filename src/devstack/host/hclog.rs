//! Checks one stderr line against what the go-plugin host needs from an
//! hclog JSON log line (protocol doc §1.10).

/// The host reads stderr with a 64 KiB buffer; a line that does not fit
/// (with its newline) is split into fragments that are logged raw.
pub const MAX_LINE_BYTES: usize = 64 * 1024 - 1;

/// Levels the host maps to a log level; anything else is logged verbatim.
const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// Why a stderr line is not a well-formed hclog JSON line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HclogLineError {
    /// Longer than [`MAX_LINE_BYTES`]: the host would split it.
    #[error("line is {len} bytes; the host splits lines over {MAX_LINE_BYTES} bytes")]
    TooLong {
        /// The line's length in bytes.
        len: usize,
    },
    /// Not JSON at all (the host logs it raw at DEBUG).
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("JSON value is not an object")]
    NotAnObject,
    /// A required key is absent.
    #[error("missing key {0:?}")]
    MissingKey(&'static str),
    /// A required key is not a string (for `@message` and `@level` this
    /// panics the Nomad agent).
    #[error("key {key:?} must be a string, found {found}")]
    NotAString {
        /// The offending key.
        key: &'static str,
        /// The JSON type found instead.
        found: &'static str,
    },
    /// `@level` is not one the host maps.
    #[error("unknown @level {0:?}: expected trace, debug, info, warn or error")]
    UnknownLevel(String),
    /// `@timestamp` is not in Go layout `2006-01-02T15:04:05.000000Z07:00`.
    #[error("bad @timestamp {value:?}: {reason}")]
    BadTimestamp {
        /// The value found.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Validates one stderr line (without its newline) as hclog JSON: an object
/// whose `@message` and `@level` are strings, whose level is one of
/// `trace|debug|info|warn|error` (any case), and whose `@timestamp` is a
/// string with exactly six fractional digits and a `Z` or `±hh:mm` zone.
/// Other keys are free.
///
/// `off` is a level hclog parses, but a line logged at `off` is never
/// meaningful, so it is reported as unknown.
///
/// # Errors
///
/// The first problem found, as an [`HclogLineError`].
pub fn validate_hclog_line(line: &str) -> Result<(), HclogLineError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(HclogLineError::TooLong { len: line.len() });
    }
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| HclogLineError::NotJson(e.to_string()))?;
    let object = value.as_object().ok_or(HclogLineError::NotAnObject)?;
    let string_at = |key: &'static str| -> Result<&str, HclogLineError> {
        match object.get(key) {
            None => Err(HclogLineError::MissingKey(key)),
            Some(serde_json::Value::String(s)) => Ok(s),
            Some(other) => Err(HclogLineError::NotAString {
                key,
                found: json_type(other),
            }),
        }
    };

    string_at("@message")?;
    let level = string_at("@level")?;
    if !LEVELS.iter().any(|known| known.eq_ignore_ascii_case(level)) {
        return Err(HclogLineError::UnknownLevel(level.to_owned()));
    }
    let timestamp = string_at("@timestamp")?;
    check_timestamp(timestamp).map_err(|reason| HclogLineError::BadTimestamp {
        value: timestamp.to_owned(),
        reason,
    })
}

/// Checks `YYYY-MM-DDTHH:MM:SS.ffffff` followed by `Z` or `±hh:mm`, with
/// calendar and clock ranges checked as Go's time parser does (February 29th
/// only in leap years, seconds up to 59). Zone offsets beyond ±23:59 are
/// rejected.
///
/// # Errors
///
/// A short description of the first mismatch.
pub fn check_timestamp(value: &str) -> Result<(), &'static str> {
    let b = value.as_bytes();
    if b.len() < 19 {
        return Err("too short for YYYY-MM-DDTHH:MM:SS");
    }
    let literal = |index: usize, expected: u8| b[index] == expected;
    if !(literal(4, b'-')
        && literal(7, b'-')
        && literal(10, b'T')
        && literal(13, b':')
        && literal(16, b':'))
    {
        return Err("date and time must be YYYY-MM-DDTHH:MM:SS");
    }
    let year = digits(b, 0, 4).ok_or("year must be 4 digits")?;
    let month = digits(b, 5, 2).ok_or("month must be 2 digits")?;
    let day = digits(b, 8, 2).ok_or("day must be 2 digits")?;
    let hour = digits(b, 11, 2).ok_or("hour must be 2 digits")?;
    let minute = digits(b, 14, 2).ok_or("minute must be 2 digits")?;
    let second = digits(b, 17, 2).ok_or("second must be 2 digits")?;
    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err("day out of range");
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err("time of day out of range");
    }
    if b.get(19) != Some(&b'.') {
        return Err("exactly 6 fractional second digits are required");
    }
    let fraction_len = b[20..].iter().take_while(|c| c.is_ascii_digit()).count();
    if fraction_len != 6 {
        return Err("exactly 6 fractional second digits are required");
    }
    match &b[26..] {
        b"Z" => Ok(()),
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let hh = digits(&[*h1, *h2], 0, 2).ok_or("zone offset must be ±hh:mm")?;
            let mm = digits(&[*m1, *m2], 0, 2).ok_or("zone offset must be ±hh:mm")?;
            if hh > 23 || mm > 59 {
                return Err("zone offset out of range");
            }
            Ok(())
        }
        [] => Err("missing zone: expected Z or ±hh:mm"),
        _ => Err("zone must be Z or ±hh:mm"),
    }
}

/// `len` ASCII digits at `start`, as a number.
fn digits(b: &[u8], start: usize, len: usize) -> Option<u32> {
    let slice = b.get(start..start + len)?;
    slice.iter().try_fold(0u32, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(message: &str, level: &str, timestamp: &str) -> String {
        format!(
            r#"{{"@message":{message},"@level":{level},"@timestamp":{timestamp},"@module":"ecs"}}"#
        )
    }

    #[test]
    fn well_formed_line_is_accepted() {
        let good = r#"{"@level":"info","@message":"task started","@module":"my-driver","@timestamp":"2025-01-29T13:08:34.123456Z","task_id":"x"}"#;
        assert_eq!(validate_hclog_line(good), Ok(()));
    }

    #[test]
    fn numeric_zone_offsets_are_accepted() {
        for ts in [
            "2025-01-29T13:08:34.123456+01:00",
            "2025-01-29T13:08:34.123456-07:30",
        ] {
            assert_eq!(check_timestamp(ts), Ok(()), "{ts}");
        }
    }

    #[test]
    fn level_matches_case_insensitively() {
        let l = line(r#""m""#, r#""WARN""#, r#""2025-01-29T13:08:34.123456Z""#);
        assert_eq!(validate_hclog_line(&l), Ok(()));
    }

    #[test]
    fn non_string_message_is_rejected() {
        let l = line("42", r#""info""#, r#""2025-01-29T13:08:34.123456Z""#);
        assert_eq!(
            validate_hclog_line(&l),
            Err(HclogLineError::NotAString {
                key: "@message",
                found: "a number"
            })
        );
    }

    #[test]
    fn non_string_level_is_rejected() {
        let l = line(r#""m""#, "3", r#""2025-01-29T13:08:34.123456Z""#);
        assert!(matches!(
            validate_hclog_line(&l),
            Err(HclogLineError::NotAString { key: "@level", .. })
        ));
    }

    #[test]
    fn warning_is_not_a_level() {
        let l = line(r#""m""#, r#""warning""#, r#""2025-01-29T13:08:34.123456Z""#);
        assert_eq!(
            validate_hclog_line(&l),
            Err(HclogLineError::UnknownLevel("warning".into()))
        );
    }

    #[test]
    fn three_fractional_digits_are_rejected() {
        let l = line(r#""m""#, r#""info""#, r#""2025-01-29T13:08:34.123Z""#);
        assert!(matches!(
            validate_hclog_line(&l),
            Err(HclogLineError::BadTimestamp { .. })
        ));
    }

    #[test]
    fn nine_fractional_digits_are_rejected() {
        assert!(check_timestamp("2025-01-29T13:08:34.123456789Z").is_err());
    }

    #[test]
    fn missing_zone_is_rejected() {
        assert_eq!(
            check_timestamp("2025-01-29T13:08:34.123456"),
            Err("missing zone: expected Z or ±hh:mm")
        );
    }

    #[test]
    fn other_timestamp_shapes_are_rejected() {
        for ts in [
            "2025-01-29 13:08:34.123456Z",
            "2025-01-29T13:08:34Z",
            "2025-01-29T13:08:34.123456z",
            "2025-01-29T13:08:34.123456+0100",
            "2025-13-29T13:08:34.123456Z",
            "2025-02-29T13:08:34.123456Z",
            "2025-01-29T24:08:34.123456Z",
            "1738156114",
        ] {
            assert!(check_timestamp(ts).is_err(), "{ts} should be rejected");
        }
        assert_eq!(check_timestamp("2024-02-29T13:08:34.123456Z"), Ok(()));
    }

    #[test]
    fn numeric_timestamp_is_not_a_string() {
        let l = line(r#""m""#, r#""info""#, "1738156114");
        assert!(matches!(
            validate_hclog_line(&l),
            Err(HclogLineError::NotAString {
                key: "@timestamp",
                ..
            })
        ));
    }

    #[test]
    fn missing_keys_are_rejected() {
        let l = r#"{"@message":"m","@level":"info"}"#;
        assert_eq!(
            validate_hclog_line(l),
            Err(HclogLineError::MissingKey("@timestamp"))
        );
    }

    #[test]
    fn plain_text_and_non_objects_are_rejected() {
        assert!(matches!(
            validate_hclog_line("[INFO] started"),
            Err(HclogLineError::NotJson(_))
        ));
        assert!(matches!(
            validate_hclog_line(""),
            Err(HclogLineError::NotJson(_))
        ));
        assert_eq!(
            validate_hclog_line("[1,2]"),
            Err(HclogLineError::NotAnObject)
        );
    }

    #[test]
    fn overlong_line_is_rejected() {
        let message = "x".repeat(MAX_LINE_BYTES);
        let l = line(
            &format!("\"{message}\""),
            r#""info""#,
            r#""2025-01-29T13:08:34.123456Z""#,
        );
        assert!(matches!(
            validate_hclog_line(&l),
            Err(HclogLineError::TooLong { .. })
        ));
    }
}
