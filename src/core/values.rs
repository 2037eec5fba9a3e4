//! Values: an event's JSON value is checked against the declared property type and turned
//! into the exact string HubSpot accepts, numbers kept digit for digit; emails are normalised.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bigdecimal::{BigDecimal, Zero};
use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, SecondsFormat, TimeZone, Utc};
use serde_json::value::RawValue;

use super::vocabulary::{MergeRule, PropertyDef, PropertyType};

/// Longest email address (RFC 5321's path limit), the longest contact key.
pub(crate) const MAX_EMAIL_CHARS: usize = 254;

/// Longest text HubSpot stores in a property.
pub(crate) const MAX_STRING_CHARS: usize = 65_536;

/// Epoch values below this (1973-03-03) are almost surely seconds, which HubSpot reads as 1970.
const MIN_EPOCH_MS: i64 = 100_000_000_000;

const MS_PER_DAY: i64 = 86_400_000;

/// Why a value was refused; the message says what was expected and what to send instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ValueError {
    /// The property the value was for.
    pub property: String,
    /// The value as it arrived (JSON text).
    pub value: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "property \"{}\": value {}: {}",
            self.property,
            shown(&self.value),
            self.reason
        )
    }
}

/// Most items one message lists. Past them it says how many more there are, so that an event
/// with thousands of problems still gives a message (and a log line, and a DLQ detail) a
/// person can read, not megabytes.
pub(crate) const MAX_LISTED: usize = 20;

/// The first [`MAX_LISTED`] of `items` (of `total` in all) joined by `separator`, then
/// "and N more `noun`" when some are left out.
pub(crate) fn listed(
    items: impl IntoIterator<Item = String>,
    total: usize,
    separator: &str,
    noun: &str,
) -> String {
    let shown: Vec<String> = items.into_iter().take(MAX_LISTED).collect();
    let mut out = shown.join(separator);
    let more = total.saturating_sub(shown.len());
    if more > 0 {
        out.push_str(&format!("{separator}and {more} more"));
        if !noun.is_empty() {
            out.push(' ');
            out.push_str(noun);
        }
    }
    out
}

/// A JSON value as it arrived, with numbers kept as their exact text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JsonIn {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, as written (never through a float).
    Number(String),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<JsonIn>),
    /// An object (never a valid property value).
    Object,
}

impl JsonIn {
    /// Reads one JSON value without losing any digit of its numbers.
    pub(crate) fn parse(raw: &RawValue) -> Result<JsonIn, String> {
        let text = raw.get().trim();
        match text.as_bytes().first() {
            Some(b'n') => Ok(JsonIn::Null),
            Some(b't') => Ok(JsonIn::Bool(true)),
            Some(b'f') => Ok(JsonIn::Bool(false)),
            Some(b'"') => serde_json::from_str::<String>(text)
                .map(JsonIn::String)
                .map_err(|e| e.to_string()),
            Some(b'[') => {
                let items: Vec<Box<RawValue>> =
                    serde_json::from_str(text).map_err(|e| e.to_string())?;
                items
                    .iter()
                    .map(|item| JsonIn::parse(item))
                    .collect::<Result<_, _>>()
                    .map(JsonIn::Array)
            }
            Some(b'{') => Ok(JsonIn::Object),
            Some(_) => Ok(JsonIn::Number(text.to_string())),
            None => Err("empty value".to_string()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            JsonIn::Null => "null",
            JsonIn::Bool(_) => "a boolean",
            JsonIn::Number(_) => "a number",
            JsonIn::String(_) => "a string",
            JsonIn::Array(_) => "an array",
            JsonIn::Object => "an object",
        }
    }

    /// The value as JSON text, for error messages.
    pub(crate) fn to_json_text(&self) -> String {
        match self {
            JsonIn::Null => "null".into(),
            JsonIn::Bool(b) => b.to_string(),
            JsonIn::Number(n) => n.clone(),
            JsonIn::String(s) => serde_json::Value::String(s.clone()).to_string(),
            JsonIn::Array(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(JsonIn::to_json_text)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            JsonIn::Object => "{…}".into(),
        }
    }
}

/// Parses an event's `properties` object, keeping every number's exact digits.
pub(crate) fn parse_properties(json: &str) -> Result<Vec<(String, JsonIn)>, String> {
    let map: BTreeMap<String, Box<RawValue>> = serde_json::from_str(json).map_err(|e| {
        format!("properties must be a JSON object of property names to values ({e})")
    })?;
    map.into_iter()
        .map(|(k, v)| JsonIn::parse(&v).map(|value| (k, value)))
        .collect()
}

/// Most digits a number may have before its decimal point: HubSpot stores numbers far beyond
/// any count or amount a product sends, but not without end (`1e400` is refused).
pub(crate) const MAX_INTEGER_DIGITS: i64 = 32;

/// Most digits a number may have after its decimal point (trailing zeros aside).
pub(crate) const MAX_FRACTION_DIGITS: i64 = 32;

/// Longest number text looked at; anything longer cannot be within the bounds anyway.
const MAX_NUMBER_TEXT: usize = 200;

/// Parses a decimal number exactly, within the bounds HubSpot can store: finite, at most
/// [`MAX_INTEGER_DIGITS`] digits before the point and [`MAX_FRACTION_DIGITS`] after it.
/// The reason says what is wrong, for a person.
pub(crate) fn parse_number(text: &str) -> Result<BigDecimal, String> {
    let text = text.trim();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'));
    if !plain {
        return Err("is not a finite decimal number".into());
    }
    if text.len() > MAX_NUMBER_TEXT {
        return Err(format!(
            "is {} characters long; a number has at most {MAX_INTEGER_DIGITS} digits before the point and {MAX_FRACTION_DIGITS} after it",
            text.len()
        ));
    }
    let value = BigDecimal::from_str(text).map_err(|_| "is not a finite decimal number")?;
    check_number_bounds(&value)?;
    Ok(value)
}

/// Checks a number against the bounds without ever writing out its digits (an exponent such
/// as `1e999999999` stays cheap).
pub(crate) fn check_number_bounds(value: &BigDecimal) -> Result<(), String> {
    if value.is_zero() {
        return Ok(());
    }
    let normal = value.normalized();
    let (_, scale) = normal.as_bigint_and_exponent();
    let digits = i64::try_from(normal.digits()).unwrap_or(i64::MAX);
    bounds(digits, scale)
}

/// The bounds for a nonzero number of `digits` significant digits × 10^-`scale`, with no
/// trailing zero among its digits: the integer part has (digits - scale) digits.
fn bounds(digits: i64, scale: i64) -> Result<(), String> {
    let integer_digits = digits.saturating_sub(scale);
    if integer_digits > MAX_INTEGER_DIGITS {
        return Err(format!(
            "is too large: at most {MAX_INTEGER_DIGITS} digits before the decimal point can be stored"
        ));
    }
    if scale > MAX_FRACTION_DIGITS {
        return Err(format!(
            "has too many decimal places: at most {MAX_FRACTION_DIGITS} digits after the point can be stored"
        ));
    }
    Ok(())
}

/// Most significant digits a [`Plain`] number holds: well inside an `i128` (38 digits), so
/// that two of them can be added or compared after their scales are aligned, or the overflow
/// is seen and the exact path takes over.
const PLAIN_DIGITS: usize = 36;

/// A number within the bounds written plainly: an optional `-`, digits, and optionally `.`
/// and digits, no exponent, at most [`PLAIN_DIGITS`] significant digits. That is what
/// products send and how Postgres writes a jsonb number, and it is held exactly as
/// `units` × 10^-`scale`, always without trailing zeros (zero has scale 0). Reading, adding,
/// comparing and writing such numbers needs no arbitrary precision; any other text takes the
/// `BigDecimal` path, which gives the same results (the property test below checks that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plain {
    units: i128,
    scale: u32,
}

impl Plain {
    /// The number `text` holds when it is plain and within the bounds; `None` otherwise
    /// (which says nothing about whether the exact path accepts it).
    pub(crate) fn parse(text: &str) -> Option<Plain> {
        let text = text.trim();
        if text.len() > MAX_NUMBER_TEXT {
            return None;
        }
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (integer, fraction) = match rest.split_once('.') {
            Some((i, f)) if !f.is_empty() => (i, f),
            Some(_) => return None,
            None => (rest, ""),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if integer.is_empty() || !all_digits(integer) || !all_digits(fraction) {
            return None;
        }
        let (integer, fraction) = (
            integer.trim_start_matches('0'),
            fraction.trim_end_matches('0'),
        );
        if integer.len() + fraction.len() > PLAIN_DIGITS {
            return None;
        }
        let mut units: i128 = 0;
        for b in integer.bytes().chain(fraction.bytes()) {
            units = units * 10 + i128::from(b - b'0');
        }
        let plain = Plain {
            units: if negative { -units } else { units },
            scale: u32::try_from(fraction.len()).ok()?,
        };
        plain.check().ok()?;
        Some(plain)
    }

    /// Without trailing zeros (zero has scale 0): how every `Plain` is kept.
    fn normalized(mut self) -> Plain {
        if self.units == 0 {
            self.scale = 0;
        }
        while self.scale > 0 && self.units % 10 == 0 {
            self.units /= 10;
            self.scale -= 1;
        }
        self
    }

    /// The bounds, with the reasons [`check_number_bounds`] gives.
    pub(crate) fn check(self) -> Result<(), String> {
        if self.units == 0 {
            return Ok(());
        }
        let digits = i64::from(self.units.unsigned_abs().checked_ilog10().unwrap_or(0)) + 1;
        bounds(digits, i64::from(self.scale))
    }

    /// Both at the larger scale, or `None` when that would not fit.
    fn aligned(self, other: Plain) -> Option<(i128, i128, u32)> {
        let scale = self.scale.max(other.scale);
        let up = |p: Plain| 10i128.checked_pow(scale - p.scale)?.checked_mul(p.units);
        Some((up(self)?, up(other)?, scale))
    }

    /// The exact sum, or `None` when it does not fit in a `Plain`.
    pub(crate) fn checked_add(self, other: Plain) -> Option<Plain> {
        let (a, b, scale) = self.aligned(other)?;
        let units = a.checked_add(b)?;
        Some(Plain { units, scale }.normalized())
    }

    /// The order of the two numbers, or `None` when they cannot be aligned.
    pub(crate) fn compare(self, other: Plain) -> Option<std::cmp::Ordering> {
        let (a, b, _) = self.aligned(other)?;
        Some(a.cmp(&b))
    }

    /// The number as a whole `i64`, when it is one.
    fn whole(self) -> Option<i64> {
        if self.scale == 0 {
            i64::try_from(self.units).ok()
        } else {
            None
        }
    }

    /// As [`format_decimal`] writes it: plain digits, no trailing zeros after the point.
    pub(crate) fn format(self) -> String {
        let sign = if self.units < 0 { "-" } else { "" };
        let digits = self.units.unsigned_abs().to_string();
        let scale = self.scale as usize;
        if scale == 0 {
            return format!("{sign}{digits}");
        }
        let padded = if digits.len() <= scale {
            format!("{}{digits}", "0".repeat(scale + 1 - digits.len()))
        } else {
            digits
        };
        let (integer, fraction) = padded.split_at(padded.len() - scale);
        format!("{sign}{integer}.{fraction}")
    }
}

/// A number as HubSpot wants it ([`format_decimal`]), within the bounds; the reason otherwise.
pub(crate) fn canonical_number(text: &str) -> Result<String, String> {
    match Plain::parse(text) {
        Some(plain) => Ok(plain.format()),
        None => parse_number(text).map(|d| format_decimal(&d)),
    }
}

/// [`parse_number`] without the reason.
pub(crate) fn parse_decimal(text: &str) -> Option<BigDecimal> {
    parse_number(text).ok()
}

/// A decimal as HubSpot wants it: plain digits, no exponent, no trailing zeros after the point.
pub(crate) fn format_decimal(value: &BigDecimal) -> String {
    let normal = value.normalized();
    if normal.is_integer() {
        // normalized() turns 1000 into 1E+3; scale 0 writes it back as plain digits.
        normal.with_scale(0).to_plain_string()
    } else {
        normal.to_plain_string()
    }
}

fn epoch_ms(text: &str) -> Option<i64> {
    if let Some(plain) = Plain::parse(text) {
        return plain.whole();
    }
    let value = parse_decimal(text)?;
    if !value.is_integer() {
        return None;
    }
    value.with_scale(0).to_plain_string().parse().ok()
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z as epoch milliseconds: the first and last
/// times HubSpot stores.
const FIRST_MS: i64 = -62_135_596_800_000;
const LAST_MS: i64 = 253_402_300_799_999;

/// What a time value is for; the messages show an example of what that property takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeKind {
    /// A `date` property.
    Date,
    /// A `datetime` property.
    Datetime,
}

impl TimeKind {
    /// What to send instead, with an example.
    fn send(self) -> &'static str {
        match self {
            TimeKind::Date => "send \"YYYY-MM-DD\", e.g. \"2026-11-26\"",
            TimeKind::Datetime => {
                "send an RFC 3339 string such as \"2026-11-26T10:00:00Z\" or epoch milliseconds"
            }
        }
    }

    /// A value this kind of property takes, quoted.
    fn example(self) -> &'static str {
        match self {
            TimeKind::Date => "\"2026-11-26\"",
            TimeKind::Datetime => "\"2026-11-26T10:00:00Z\"",
        }
    }

    /// `instant` as a string this kind of property takes, quoted.
    fn written(self, instant: DateTime<Utc>) -> String {
        match self {
            TimeKind::Date => format!("\"{}\"", instant.format("%Y-%m-%d")),
            TimeKind::Datetime => format!("\"{}\"", rfc3339(instant)),
        }
    }

    fn noun(self) -> &'static str {
        match self {
            TimeKind::Date => "date",
            TimeKind::Datetime => "time",
        }
    }
}

fn rfc3339(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn outside_the_years(kind: TimeKind) -> String {
    format!(
        "is outside the years 0001 to 9999 that HubSpot stores; send a {} within them",
        kind.noun()
    )
}

fn epoch_out_of_range(kind: TimeKind) -> String {
    format!(
        "is out of range: the years 0001 to 9999 that HubSpot stores are epoch milliseconds {FIRST_MS} to {LAST_MS}; send a {} within them",
        kind.noun()
    )
}

/// A time of the years 0001 to 9999, from a string or epoch milliseconds; the reason otherwise.
fn parse_instant(value: &JsonIn, kind: TimeKind) -> Result<DateTime<Utc>, String> {
    let instant = match value {
        JsonIn::String(s) => parse_time_text(s.trim(), kind)?,
        JsonIn::Number(n) => parse_epoch_ms(n, kind)?,
        other => return Err(format!("is {}; {}", other.kind(), kind.send())),
    };
    // An offset can carry an RFC 3339 time of year 0001 or 9999 outside them.
    if !(1..=9999).contains(&instant.year()) {
        return Err(outside_the_years(kind));
    }
    Ok(instant)
}

fn parse_time_text(s: &str, kind: TimeKind) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN)));
    }
    if let Some(reason) = calendar_problem(s, kind) {
        return Err(reason);
    }
    Err(match kind {
        TimeKind::Date => format!(
            "is not a date; {} (an RFC 3339 time or epoch milliseconds at midnight UTC also do)",
            kind.send()
        ),
        TimeKind::Datetime => format!("is not an RFC 3339 timestamp; {}", kind.send()),
    })
}

/// What is wrong with the day of a string that starts like a date, `YYYY-MM-DD`, when its
/// year, month or day does not exist or is outside what HubSpot stores; `None` when the string
/// does not start like a date or its day is a real one.
fn calendar_problem(s: &str, kind: TimeKind) -> Option<String> {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let unsigned = s.trim_start_matches(['+', '-']);
    let sign = &s[..s.len() - unsigned.len()];
    let mut parts = unsigned.splitn(3, '-');
    let (year, month, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let day = rest.get(..2)?;
    let after = &rest[2..];
    let shaped = sign.len() <= 1
        && digits(year)
        && month.len() == 2
        && digits(month)
        && digits(day)
        && (after.is_empty() || after.starts_with(['T', 't', ' ']));
    if !shaped {
        return None;
    }
    let year: i32 = format!("{sign}{year}").parse().unwrap_or(i32::MAX);
    if !(1..=9999).contains(&year) {
        return Some(outside_the_years(kind));
    }
    let (month, day): (u32, u32) = (month.parse().ok()?, day.parse().ok()?);
    let why = if (1..=12).contains(&month) {
        let first = NaiveDate::from_ymd_opt(year, month, 1)?;
        let days = (first.checked_add_months(chrono::Months::new(1))? - first).num_days();
        if day != 0 && i64::from(day) <= days {
            return None;
        }
        format!("{} {year} has {days} days", first.format("%B"))
    } else {
        format!("there is no month {month}")
    };
    Some(format!(
        "{year:04}-{month:02}-{day:02} does not exist ({why}); send a day that exists, e.g. {}",
        kind.example()
    ))
}

/// Epoch milliseconds within the years 0001 to 9999, told from seconds; the reason otherwise.
fn parse_epoch_ms(text: &str, kind: TimeKind) -> Result<DateTime<Utc>, String> {
    let Some(ms) = epoch_ms(text) else {
        // Not an i64 of milliseconds: too large in either direction, or not whole.
        let beyond = text
            .trim()
            .parse::<f64>()
            .is_ok_and(|f| !f.is_finite() || f.abs() > LAST_MS as f64);
        return Err(if beyond {
            epoch_out_of_range(kind)
        } else {
            format!(
                "is not a whole number of epoch milliseconds; send whole milliseconds or a string such as {}",
                kind.example()
            )
        });
    };
    if ms.abs() < MIN_EPOCH_MS {
        return Err(seconds_or_milliseconds(ms, kind));
    }
    if !(FIRST_MS..=LAST_MS).contains(&ms) {
        return Err(epoch_out_of_range(kind));
    }
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| epoch_out_of_range(kind))
}

/// Why an epoch number near 1970 is refused: read as seconds it is another time, and HubSpot
/// reads every number as milliseconds. A positive one is surely seconds (as milliseconds it
/// would be 1970 to 1973-03-03); a negative one (1966-10-31 to 1970 as milliseconds) may be
/// either, so both readings are given.
fn seconds_or_milliseconds(ms: i64, kind: TimeKind) -> String {
    let (Some(as_ms), Some(as_s)) = (
        Utc.timestamp_millis_opt(ms).single(),
        Utc.timestamp_millis_opt(ms * 1000).single(),
    ) else {
        return epoch_out_of_range(kind);
    };
    if ms == 0 {
        return format!(
            "is epoch 0, refused with the other numbers from -{MIN_EPOCH_MS} to {MIN_EPOCH_MS}, where seconds and milliseconds look alike; send the time as a string: {}",
            kind.written(as_ms)
        );
    }
    if ms > 0 {
        format!(
            "looks like epoch seconds ({}), which HubSpot would read as milliseconds ({}); send epoch milliseconds ({}) or {}",
            rfc3339(as_s),
            rfc3339(as_ms),
            ms * 1000,
            kind.written(as_s)
        )
    } else {
        // Read as seconds, the number may be before the year 0001: then only one fix is real.
        let if_seconds = if as_s.year() >= 1 {
            format!(", {} if seconds", kind.written(as_s))
        } else {
            String::new()
        };
        format!(
            "is {} as epoch milliseconds but {} as epoch seconds, and between -{MIN_EPOCH_MS} and {MIN_EPOCH_MS} hubsync cannot tell which was meant; send the time as a string: {} if milliseconds were meant{if_seconds}",
            rfc3339(as_ms),
            rfc3339(as_s),
            kind.written(as_ms),
        )
    }
}

/// Checks `value` against the property and returns the exact string to send to HubSpot.
/// `null` clears the property (an empty string) and is refused by rules that need a value.
pub(crate) fn serialize_value(def: &PropertyDef, value: &JsonIn) -> Result<String, ValueError> {
    let refuse = |reason: String| ValueError {
        property: def.name.clone(),
        value: value.to_json_text(),
        reason,
    };
    if let JsonIn::Null = value {
        return match def.merge {
            MergeRule::Set => Ok(String::new()),
            rule => Err(refuse(format!(
                "null clears a property, which only merge = \"set\" allows (this one is \"{}\")",
                rule.name()
            ))),
        };
    }
    match &def.ptype {
        PropertyType::String => match value {
            JsonIn::String(s) if s.chars().count() > MAX_STRING_CHARS => Err(refuse(format!(
                "is {} characters long; HubSpot stores at most {MAX_STRING_CHARS}",
                s.chars().count()
            ))),
            JsonIn::String(s) => Ok(s.clone()),
            other => Err(refuse(format!(
                "is {}, but the property is a string; send it as a JSON string",
                other.kind()
            ))),
        },
        PropertyType::Number => match value {
            JsonIn::Number(n) => canonical_number(n).map_err(refuse),
            other => Err(refuse(format!(
                "is {}, but the property is a number; send a JSON number such as 47 or -3.25",
                other.kind()
            ))),
        },
        PropertyType::Bool => match value {
            JsonIn::Bool(b) => Ok(b.to_string()),
            other => Err(refuse(format!(
                "is {}, but the property is a bool; send true or false",
                other.kind()
            ))),
        },
        PropertyType::Date => {
            let instant = parse_instant(value, TimeKind::Date).map_err(refuse)?;
            if instant.timestamp_millis().rem_euclid(MS_PER_DAY) != 0 {
                return Err(refuse(format!(
                    "is at {} UTC, not midnight; a date property takes \"YYYY-MM-DD\" or a midnight-UTC time",
                    instant.format("%H:%M:%S%.3f")
                )));
            }
            Ok(instant.format("%Y-%m-%d").to_string())
        }
        PropertyType::Datetime => parse_instant(value, TimeKind::Datetime)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .map_err(refuse),
        PropertyType::Enumeration { options, multiple } => {
            let chosen: Vec<String> = match (value, multiple) {
                (JsonIn::String(s), false) => vec![s.clone()],
                (JsonIn::String(s), true) => s
                    .split(';')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(String::from)
                    .collect(),
                (JsonIn::Array(items), true) => items
                    .iter()
                    .map(|item| match item {
                        JsonIn::String(s) => Ok(s.clone()),
                        other => Err(refuse(format!(
                            "holds {}; a multi-select takes strings that are option values",
                            other.kind()
                        ))),
                    })
                    .collect::<Result<_, _>>()?,
                (other, false) => {
                    return Err(refuse(format!(
                        "is {}; an enumeration takes one option value as a string",
                        other.kind()
                    )));
                }
                (other, true) => {
                    return Err(refuse(format!(
                        "is {}; a multi-select takes an array of option values or a \";\"-joined string",
                        other.kind()
                    )));
                }
            };
            let mut out: Vec<String> = Vec::with_capacity(chosen.len());
            for v in chosen {
                if !options.contains(&v) {
                    return Err(refuse(format!(
                        "\"{v}\" is not an option; options are [{}]: add it to options in hubsync.toml or send one of them",
                        listed(options.iter().cloned(), options.len(), ", ", "")
                    )));
                }
                if !out.contains(&v) {
                    out.push(v);
                }
            }
            Ok(out.join(";"))
        }
    }
}

/// A producer's value as shown in a message: whole when short, else its start.
pub(crate) fn shown(value: &str) -> String {
    const MAX: usize = 80;
    if value.chars().count() <= MAX {
        return value.to_string();
    }
    let mut s: String = value.chars().take(MAX).collect();
    s.push_str(&format!("… ({} characters)", value.chars().count()));
    s
}

/// Normalises a contact key: trims and lower-cases an email, refusing what is not one.
pub(crate) fn normalize_email(raw: &str) -> Result<String, String> {
    let shown = shown(raw);
    let email = raw.trim().to_lowercase();
    if email.chars().count() > MAX_EMAIL_CHARS {
        return Err(format!(
            "\"{shown}\" is {} characters long; an email address has at most {MAX_EMAIL_CHARS}",
            email.chars().count()
        ));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(format!("\"{shown}\" is not an email address (no @)"));
    };
    let ok = !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(email)
    } else {
        Err(format!("\"{shown}\" is not a valid email address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn def(ptype: PropertyType, merge: MergeRule) -> PropertyDef {
        PropertyDef::test(ptype, merge)
    }

    fn json(text: &str) -> JsonIn {
        let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
        JsonIn::parse(&raw).unwrap()
    }

    fn enumeration(multiple: bool) -> PropertyType {
        PropertyType::Enumeration {
            options: vec!["free".into(), "pro".into(), "enterprise".into()],
            multiple,
        }
    }

    #[test]
    fn every_type_serialises_valid_values_exactly() {
        use PropertyType::*;
        let cases: Vec<(PropertyType, &str, &str)> = vec![
            (String, r#""hello""#, "hello"),
            (String, r#""""#, ""),
            (String, r#""ünïcode ✓""#, "ünïcode ✓"),
            (Number, "47", "47"),
            (Number, "-3.25", "-3.25"),
            (Number, "0.1", "0.1"),
            (Number, "12345678901234567890", "12345678901234567890"),
            (
                Number,
                "123456789012345678901234567890.000000000000000001",
                "123456789012345678901234567890.000000000000000001",
            ),
            (Number, "1e3", "1000"),
            (Number, "1E-3", "0.001"),
            (Number, "2.50", "2.5"),
            (Number, "-0", "0"),
            (Number, "100", "100"),
            (Bool, "true", "true"),
            (Bool, "false", "false"),
            (Date, r#""2026-11-26""#, "2026-11-26"),
            (Date, r#""2026-11-26T00:00:00Z""#, "2026-11-26"),
            (Date, r#""2026-11-26T01:00:00+01:00""#, "2026-11-26"),
            (Date, "1795651200000", "2026-11-26"),
            (
                Datetime,
                r#""2026-11-26T10:00:00Z""#,
                "2026-11-26T10:00:00.000Z",
            ),
            (
                Datetime,
                r#""2026-11-26T11:00:00.5+01:00""#,
                "2026-11-26T10:00:00.500Z",
            ),
            (Datetime, "1795687200123", "2026-11-26T10:00:00.123Z"),
            (Datetime, r#""2026-11-26""#, "2026-11-26T00:00:00.000Z"),
            (enumeration(false), r#""pro""#, "pro"),
            (enumeration(true), r#"["pro","free"]"#, "pro;free"),
            (enumeration(true), r#""pro;free;pro""#, "pro;free"),
            (enumeration(true), "[]", ""),
        ];
        for (ptype, input, expected) in cases {
            let d = def(ptype.clone(), MergeRule::Set);
            assert_eq!(
                serialize_value(&d, &json(input)).as_deref(),
                Ok(expected),
                "{} {input}",
                ptype.name()
            );
        }
    }

    #[test]
    fn every_type_refuses_invalid_values_with_a_reason() {
        use PropertyType::*;
        let long = format!("\"{}\"", "x".repeat(MAX_STRING_CHARS + 1));
        let cases: Vec<(PropertyType, &str, &str)> = vec![
            (String, "42", "send it as a JSON string"),
            (String, &long, "at most 65536"),
            (String, r#"{"a":1}"#, "an object"),
            (Number, r#""47""#, "send a JSON number"),
            (Number, "true", "is a boolean"),
            (Number, "[1]", "an array"),
            (Bool, r#""true""#, "send true or false"),
            (Bool, "1", "send true or false"),
            (
                Date,
                r#""2026-11-26T22:18:55.865Z""#,
                "22:18:55.865 UTC, not midnight",
            ),
            (Date, "1795687200000", "not midnight"),
            (Date, r#""26/11/2026""#, "is not a date"),
            (Date, r#""2026-02-30""#, "does not exist"),
            (Datetime, "1795687200", "looks like epoch seconds"),
            (Datetime, "1795687200.5", "whole number"),
            (Datetime, r#""yesterday""#, "not an RFC 3339 timestamp"),
            (Datetime, "true", "is a boolean"),
            (
                enumeration(false),
                r#""platinum""#,
                "\"platinum\" is not an option",
            ),
            (enumeration(false), r#"["pro"]"#, "one option value"),
            (
                enumeration(true),
                r#"["pro","gold"]"#,
                "\"gold\" is not an option",
            ),
            (enumeration(true), "[1]", "holds a number"),
        ];
        for (ptype, input, expected) in cases {
            let d = def(ptype.clone(), MergeRule::Set);
            let err = serialize_value(&d, &json(input)).expect_err(input);
            assert!(
                err.to_string().contains(expected),
                "{} {input}: {err}",
                ptype.name()
            );
            assert_eq!(err.property, "p");
        }
    }

    #[test]
    fn null_clears_only_under_set() {
        let set = def(PropertyType::Number, MergeRule::Set);
        assert_eq!(serialize_value(&set, &JsonIn::Null).as_deref(), Ok(""));
        for rule in [
            MergeRule::SetOnce,
            MergeRule::Increment,
            MergeRule::Max,
            MergeRule::Min,
        ] {
            let d = def(PropertyType::Number, rule);
            assert!(serialize_value(&d, &JsonIn::Null).is_err(), "{rule:?}");
        }
    }

    #[test]
    fn merge_rules_must_fit_the_type() {
        assert!(MergeRule::Increment.misfit(&PropertyType::Number).is_none());
        assert!(MergeRule::Increment.misfit(&PropertyType::String).is_some());
        assert!(MergeRule::Max.misfit(&PropertyType::Datetime).is_none());
        assert!(MergeRule::Min.misfit(&PropertyType::Date).is_none());
        assert!(MergeRule::Max.misfit(&PropertyType::Bool).is_some());
        assert!(MergeRule::SetOnce.misfit(&enumeration(true)).is_none());
    }

    #[test]
    fn emails_are_trimmed_lower_cased_and_checked() {
        assert_eq!(
            normalize_email("  Alice@Acme.COM ").as_deref(),
            Ok("alice@acme.com")
        );
        for bad in [
            "alice",
            "alice@",
            "@acme.com",
            "a b@acme.com",
            "a@acme",
            "a@@acme.com",
            "",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn properties_keep_every_digit() {
        let props = parse_properties(r#"{"n": 12345678901234567890123.5, "s": "x"}"#).unwrap();
        assert_eq!(
            props[0],
            (
                "n".into(),
                JsonIn::Number("12345678901234567890123.5".into())
            )
        );
        assert!(parse_properties("[1,2]").is_err());
    }

    /// Number texts of every shape: signs, leading and trailing zeros, digit runs around the
    /// bounds and around what a `Plain` holds, exponents, and some that are not numbers.
    fn number_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "-?[0-9]{1,40}(\\.[0-9]{1,40})?",
            "[-+]?0{0,3}[0-9]{0,3}\\.?[0-9]{0,3}0{0,3}([eE][-+]?[0-9]{1,3})?",
            "-?[1-9][0-9]{29,34}(\\.[0-9]{0,4})?",
            "-?0\\.0{28,34}[1-9]0{0,3}",
            "-?[0-9]{1,19}",
            " ?-?[0-9]{1,3}\\.[0-9]{1,3} ?",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

        /// The plain path gives what the exact path gives: the same text for HubSpot, the same
        /// refusal, sums, order and epoch milliseconds.
        #[test]
        fn plain_numbers_agree_with_the_exact_path(a in number_text(), b in number_text()) {
            let exact = |t: &str| parse_number(t).map(|d| format_decimal(&d));
            prop_assert_eq!(canonical_number(&a), exact(&a));
            let slow_ms = parse_decimal(&a)
                .filter(BigDecimal::is_integer)
                .and_then(|d| d.with_scale(0).to_plain_string().parse::<i64>().ok());
            prop_assert_eq!(epoch_ms(&a), slow_ms);
            if let (Some(x), Some(y)) = (Plain::parse(&a), Plain::parse(&b)) {
                let (dx, dy) = (parse_decimal(&a).unwrap(), parse_decimal(&b).unwrap());
                if let Some(sum) = x.checked_add(y) {
                    let exact_sum = &dx + &dy;
                    prop_assert_eq!(sum.check(), check_number_bounds(&exact_sum));
                    prop_assert_eq!(sum.format(), format_decimal(&exact_sum));
                }
                if let Some(order) = x.compare(y) {
                    prop_assert_eq!(order, dx.cmp(&dy));
                }
            }
        }
    }

    #[test]
    fn plain_numbers_cover_what_products_send() {
        for t in [
            "0",
            "-0.0",
            "47",
            "-3.25",
            "1767225600000",
            "0.000001",
            "12345678901234567890",
        ] {
            assert!(Plain::parse(t).is_some(), "{t}");
        }
        for t in [
            "1e3",
            "+1",
            ".5",
            "5.",
            "1_000",
            &"9".repeat(33),
            &format!("0.{}1", "0".repeat(32)),
        ] {
            assert!(Plain::parse(t).is_none(), "{t}");
        }
        let sum = Plain::parse("0.1")
            .unwrap()
            .checked_add(Plain::parse("-0.1").unwrap())
            .unwrap();
        assert_eq!(sum.format(), "0");
        assert_eq!(Plain::parse("-0.50").unwrap().format(), "-0.5");
        assert_eq!(Plain::parse("100").unwrap().format(), "100");
    }

    #[test]
    fn numbers_are_bounded_to_what_hubspot_stores() {
        let d = def(PropertyType::Number, MergeRule::Set);
        let ok = |t: &str| serialize_value(&d, &json(t));
        assert_eq!(ok("12345678901234567890").unwrap(), "12345678901234567890");
        assert_eq!(ok("0.000001").unwrap(), "0.000001");
        assert_eq!(ok("1e31").unwrap(), format!("1{}", "0".repeat(31)));
        assert_eq!(ok("0").unwrap(), "0");
        assert_eq!(ok("-0.0").unwrap(), "0");
        for bad in [
            "1e400",
            "-1e400",
            "1e32",
            "1e-400",
            "1e999999999999",
            "1e-33",
        ] {
            let e = ok(bad).unwrap_err();
            assert!(
                e.reason.contains("too large") || e.reason.contains("decimal places"),
                "{bad}: {e}"
            );
        }
        assert!(ok(&"9".repeat(500)).is_err());
        // A time far outside what HubSpot stores is refused, not sent.
        let t = def(PropertyType::Datetime, MergeRule::Set);
        assert!(serialize_value(&t, &json("253402300800000")).is_err());
        assert!(serialize_value(&t, &json("253402300799000")).is_ok());
    }

    #[test]
    fn dates_take_the_years_0001_to_9999_like_datetimes() {
        let date = def(PropertyType::Date, MergeRule::Set);
        let time = def(PropertyType::Datetime, MergeRule::Set);
        let sent = |d: &PropertyDef, t: &str| serialize_value(d, &json(t));
        assert_eq!(sent(&date, r#""0001-01-01""#).as_deref(), Ok("0001-01-01"));
        assert_eq!(sent(&date, r#""9999-12-31""#).as_deref(), Ok("9999-12-31"));
        // 0001-01-01 and 9999-12-31 at midnight UTC, as epoch milliseconds.
        assert_eq!(sent(&date, "-62135596800000").as_deref(), Ok("0001-01-01"));
        assert_eq!(sent(&date, "253402214400000").as_deref(), Ok("9999-12-31"));
        for outside in [
            r#""0000-01-01""#,
            r#""-0001-01-01""#,
            r#""0000-12-31T00:00:00Z""#,
            r#""0001-01-01T00:00:00+01:00""#,
            r#""10000-01-01""#,
            r#""+10000-01-01""#,
            "-62167219200000",
            "253402300800000",
        ] {
            for d in [&date, &time] {
                let e = sent(d, outside).expect_err(outside);
                assert!(
                    e.reason.contains("0001 to 9999"),
                    "{} {outside}: {e}",
                    d.ptype.name()
                );
            }
        }
    }

    #[test]
    fn epoch_numbers_are_refused_for_what_is_wrong_with_them() {
        let date = def(PropertyType::Date, MergeRule::Set);
        let time = def(PropertyType::Datetime, MergeRule::Set);
        let reason = |d: &PropertyDef, t: &str| serialize_value(d, &json(t)).expect_err(t).reason;
        // Before 1970 is within the bounds: outside the window where seconds and
        // milliseconds look alike, a negative number is milliseconds.
        assert_eq!(
            serialize_value(&time, &json("-2208988800000")).as_deref(),
            Ok("1900-01-01T00:00:00.000Z")
        );
        assert_eq!(
            serialize_value(&date, &json("-2208988800000")).as_deref(),
            Ok("1900-01-01")
        );
        // Near 1970 a negative number is either: both readings are named, and the fix.
        let r = reason(&time, "-86400000");
        assert!(!r.contains("looks like epoch seconds"), "{r}");
        assert!(r.contains("1969-12-31T00:00:00Z"), "{r}");
        assert!(r.contains("1967-04-07T00:00:00Z"), "{r}");
        assert!(r.contains("\"1969-12-31T00:00:00Z\""), "{r}");
        let r = reason(&date, "-86400000");
        assert!(r.contains("\"1969-12-31\""), "{r}");
        // Read as seconds, -99999936000 is in the year -1199: only the milliseconds fix is given.
        let r = reason(&date, "-99999936000");
        assert!(
            r.contains("\"1966-10-31\" if milliseconds were meant"),
            "{r}"
        );
        assert!(!r.contains("if seconds"), "{r}");
        // A positive one is seconds for a later time.
        let r = reason(&time, "1795687200");
        assert!(
            r.contains("looks like epoch seconds (2026-11-26T10:00:00Z)"),
            "{r}"
        );
        assert!(r.contains("1795687200000"), "{r}");
        // Whole numbers beyond any year HubSpot stores are out of range, not "not whole".
        for huge in [
            "1e30",
            "-1e30",
            "1e400",
            "1e999999999",
            "9223372036854775808",
            "1000000000000000",
            "100000000000000000000.5",
        ] {
            for d in [&date, &time] {
                let r = reason(d, huge);
                assert!(r.contains("out of range"), "{huge}: {r}");
                assert!(!r.contains("whole number"), "{huge}: {r}");
                assert!(r.contains("253402300799999"), "{huge}: {r}");
            }
        }
        for fraction in ["1795687200000.5", "1e-400", "0.5"] {
            let r = reason(&time, fraction);
            assert!(r.contains("not a whole number"), "{fraction}: {r}");
        }
    }

    #[test]
    fn days_that_do_not_exist_are_named_and_dates_get_a_date_example() {
        let date = def(PropertyType::Date, MergeRule::Set);
        let time = def(PropertyType::Datetime, MergeRule::Set);
        let reason = |d: &PropertyDef, t: &str| serialize_value(d, &json(t)).expect_err(t).reason;
        let r = reason(&date, r#""2026-02-30""#);
        assert!(r.contains("2026-02-30 does not exist"), "{r}");
        assert!(r.contains("February 2026 has 28 days"), "{r}");
        assert!(r.contains("\"2026-11-26\""), "{r}");
        assert!(!r.contains("T10:00:00Z"), "{r}");
        let r = reason(&date, r#""2025-02-29""#);
        assert!(r.contains("February 2025 has 28 days"), "{r}");
        assert_eq!(
            serialize_value(&date, &json(r#""2024-02-29""#)).as_deref(),
            Ok("2024-02-29")
        );
        let r = reason(&date, r#""2026-13-01""#);
        assert!(
            r.contains("2026-13-01 does not exist (there is no month 13)"),
            "{r}"
        );
        let r = reason(&date, r#""2026-04-31T00:00:00Z""#);
        assert!(r.contains("April 2026 has 30 days"), "{r}");
        let r = reason(&time, r#""2026-02-30T10:00:00Z""#);
        assert!(r.contains("2026-02-30 does not exist"), "{r}");
        assert!(r.contains("\"2026-11-26T10:00:00Z\""), "{r}");
        // Not a date at all: a date example for a date, a time example for a datetime.
        let r = reason(&date, r#""26/11/2026""#);
        assert!(r.contains("\"2026-11-26\""), "{r}");
        assert!(!r.contains("T10:00:00Z"), "{r}");
        assert!(!r.contains("timestamp"), "{r}");
        let r = reason(&time, r#""yesterday""#);
        assert!(r.contains("\"2026-11-26T10:00:00Z\""), "{r}");
    }
}
