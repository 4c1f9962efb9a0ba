//! Ids, money, time and exact decimals.
//!
//! Money is an integer count of minor units (cents) and never passes through `f64`; sensor readings
//! are fixed-point integers (thousandths) so that they can be compared, ordered and summed exactly
//! inside the dataflows. Time is UTC epoch milliseconds in one newtype.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A machine's id as the machine and the registry spell it (`mach_xyz789`, `m00042`).
///
/// Ids are 1 to 64 characters of ASCII letters, digits and `_ - . :`, so they are safe in MQTT
/// topics, Kafka keys, file names and SQL literals.
/// Short text kept inline (up to 24 bytes) instead of on the heap: ids and codes are cloned into
/// many dataflow records, and a clone must not cost an allocation.
pub type Text = compact_str::CompactString;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MachineId(Text);

impl MachineId {
    /// Checks and wraps an id.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > 64 {
            return Err(ParseError::new(format!(
                "machine id must be 1 to 64 characters, got {}",
                s.len()
            )));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
        {
            return Err(ParseError::new(format!(
                "machine id contains {c:?}; allowed are letters, digits and _ - . :"
            )));
        }
        Ok(MachineId(Text::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A value that does not parse (an id, a time, a decimal): bad input, with a message that
/// tells whoever sent it what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl ParseError {
    pub fn new(message: impl Into<String>) -> ParseError {
        ParseError(message.into())
    }
}

/// The message, for errors that carry one (a decoder's [`crate::DecodeError`]).
impl From<ParseError> for String {
    fn from(e: ParseError) -> String {
        e.0
    }
}

/// A point in time: UTC milliseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

pub const MS_PER_MINUTE: i64 = 60_000;
pub const MS_PER_HOUR: i64 = 3_600_000;
pub const MS_PER_DAY: i64 = 86_400_000;

impl Timestamp {
    /// The wall clock (0 if the system clock is before 1970).
    pub fn now() -> Self {
        Timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        )
    }

    /// Parses RFC 3339 (`2024-01-15T10:28:15Z`, `…+01:00`, fractional seconds allowed).
    pub fn parse_rfc3339(s: &str) -> Result<Self, ParseError> {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Timestamp(t.timestamp_millis()))
            .map_err(|e| ParseError::new(format!("timestamp {s:?} is not RFC 3339: {e}")))
    }

    /// Parses a calendar date (`2024-01-15`) as its midnight UTC.
    pub fn parse_date(s: &str) -> Result<Self, ParseError> {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|e| ParseError::new(format!("date {s:?} is not YYYY-MM-DD: {e}")))
            .and_then(|d| {
                d.and_hms_opt(0, 0, 0)
                    .map(|t| Timestamp(t.and_utc().timestamp_millis()))
                    .ok_or_else(|| ParseError::new(format!("date {s:?} has no midnight")))
            })
    }

    /// Parses either RFC 3339 or a calendar date.
    pub fn parse_text(s: &str) -> Result<Self, ParseError> {
        if s.len() == 10 {
            Self::parse_date(s)
        } else {
            Self::parse_rfc3339(s)
        }
    }

    /// The UTC day this instant falls in, as days since the epoch.
    pub fn day(self) -> i64 {
        self.0.div_euclid(MS_PER_DAY)
    }

    /// Start of the tumbling window of `width_ms` this instant falls in.
    pub fn window_start(self, width_ms: i64) -> Timestamp {
        Timestamp(self.0 - self.0.rem_euclid(width_ms))
    }

    /// Day of week, 0 = Monday … 6 = Sunday (1970-01-01 was a Thursday).
    pub fn weekday(self) -> u8 {
        ((self.day() + 3).rem_euclid(7)) as u8
    }

    /// Hour of the UTC day, 0–23.
    pub fn hour(self) -> u8 {
        (self.0.rem_euclid(MS_PER_DAY) / MS_PER_HOUR) as u8
    }

    /// RFC 3339 text with millisecond precision, e.g. `2024-01-15T10:28:15.000Z`.
    pub fn to_rfc3339(self) -> String {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            None => format!("{}ms", self.0),
        }
    }
}

/// Formats a day number (days since the epoch) as `YYYY-MM-DD`.
pub fn format_day(day: i64) -> String {
    let date = chrono::DateTime::from_timestamp_millis(day * MS_PER_DAY).map(|t| t.date_naive());
    match date {
        Some(d) => d.format("%Y-%m-%d").to_string(),
        None => format!("day {day}"),
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Money in minor units (cents). Amounts are parsed from their decimal text exactly.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Cents(pub i64);

impl Cents {
    /// Parses `2.50`, `2.5`, `3` or `0.05` exactly; a third decimal place is refused, not rounded.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        parse_decimal(text, 2, Rounding::Exact).map(Cents)
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

/// A sensor reading in thousandths (m°C, mA): `4.1` is `Milli(4100)`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Milli(pub i64);

impl Milli {
    /// Parses a decimal, rounding half away from zero past the third decimal place.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        parse_decimal(text, 3, Rounding::HalfAwayFromZero).map(Milli)
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl fmt::Display for Milli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", trim_decimal(self.0, 3))
    }
}

/// A coordinate in millionths of a degree.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Micro(pub i64);

impl Micro {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        parse_decimal(text, 6, Rounding::HalfAwayFromZero).map(Micro)
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

/// Formats a fixed-point integer with `scale` decimals, dropping trailing zeros (`4100, 3` → `4.1`).
pub fn trim_decimal(value: i64, scale: u32) -> String {
    let unit = 10i64.pow(scale);
    let sign = if value < 0 { "-" } else { "" };
    let abs = value.unsigned_abs();
    let (int, frac) = (abs / unit as u64, abs % unit as u64);
    if frac == 0 {
        return format!("{sign}{int}");
    }
    let digits = format!("{frac:0width$}", width = scale as usize);
    format!("{sign}{int}.{}", digits.trim_end_matches('0'))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// More decimal places than the scale is an error.
    Exact,
    /// Extra places are rounded half away from zero.
    HalfAwayFromZero,
}

/// Parses decimal text (`-12.345`, `3`, `1e2` is refused) into an integer scaled by `10^scale`.
///
/// This never goes through a float, so `0.1 + 0.2` stays `0.3`.
pub fn parse_decimal(text: &str, scale: u32, rounding: Rounding) -> Result<i64, ParseError> {
    let t = text.trim();
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (int_part, frac_part) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty() || !all_digits(int_part) || !all_digits(frac_part) {
        return Err(ParseError::new(format!(
            "{t:?} is not a plain decimal number"
        )));
    }
    if digits.contains('.') && frac_part.is_empty() {
        return Err(ParseError::new(format!(
            "{t:?} is not a plain decimal number"
        )));
    }
    let scale = scale as usize;
    let (kept, extra) = if frac_part.len() > scale {
        frac_part.split_at(scale)
    } else {
        (frac_part, "")
    };
    if rounding == Rounding::Exact && extra.bytes().any(|b| b != b'0') {
        return Err(ParseError::new(format!(
            "{t:?} has more than {scale} decimal places"
        )));
    }
    let overflow = || ParseError::new(format!("{t:?} is too large"));
    let mut value: i64 = 0;
    for b in int_part.bytes().chain(kept.bytes()) {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or_else(overflow)?;
    }
    for _ in kept.len()..scale {
        value = value.checked_mul(10).ok_or_else(overflow)?;
    }
    if rounding == Rounding::HalfAwayFromZero
        && extra.as_bytes().first().is_some_and(|&b| b >= b'5')
    {
        value = value.checked_add(1).ok_or_else(overflow)?;
    }
    Ok(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_parsed_exactly_from_decimal_text() {
        assert_eq!(Cents::parse("2.50"), Ok(Cents(250)));
        assert_eq!(Cents::parse("2.5"), Ok(Cents(250)));
        assert_eq!(Cents::parse("3"), Ok(Cents(300)));
        assert_eq!(Cents::parse("0.05"), Ok(Cents(5)));
        assert_eq!(Cents::parse("1.10"), Ok(Cents(110)));
        assert_eq!(Cents::parse("2.500"), Ok(Cents(250)));
        assert!(Cents::parse("2.505").is_err());
        assert!(Cents::parse("1e2").is_err());
        assert!(Cents::parse("").is_err());
        assert!(Cents::parse(".5").is_err());
        assert!(Cents::parse("5.").is_err());
        assert!(Cents::parse("99999999999999999999").is_err());
        assert_eq!(Cents(-1234).to_string(), "-12.34");
    }

    #[test]
    fn sensor_readings_round_past_three_places() {
        assert_eq!(Milli::parse("4.1"), Ok(Milli(4100)));
        assert_eq!(Milli::parse("-80"), Ok(Milli(-80000)));
        assert_eq!(Milli::parse("1.2345"), Ok(Milli(1235)));
        assert_eq!(Milli::parse("-1.2345"), Ok(Milli(-1235)));
        assert_eq!(Milli(4100).to_string(), "4.1");
        assert_eq!(Milli(-80000).to_string(), "-80");
    }

    #[test]
    fn timestamps_parse_rfc3339_and_dates() {
        let t = Timestamp::parse_rfc3339("2024-01-15T10:28:15Z").unwrap_or_default();
        assert_eq!(t, Timestamp(1_705_314_495_000));
        assert_eq!(t.to_rfc3339(), "2024-01-15T10:28:15.000Z");
        assert_eq!(t.weekday(), 0, "2024-01-15 was a Monday");
        assert_eq!(t.hour(), 10);
        assert_eq!(format_day(t.day()), "2024-01-15");
        assert_eq!(
            Timestamp::parse_text("2024-01-15"),
            Ok(Timestamp(1_705_276_800_000))
        );
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn machine_ids_are_checked() {
        assert!(MachineId::parse("mach_xyz789").is_ok());
        assert!(MachineId::parse("").is_err());
        assert!(MachineId::parse("a/b").is_err());
        assert!(MachineId::parse("+").is_err());
        assert!(MachineId::parse(&"x".repeat(65)).is_err());
    }
}
