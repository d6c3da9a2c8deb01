//! The stored byte encoding of each column type, and of the row key. These are a stored
//! format: a value loaded today is read by clients tomorrow, so every encoding is written
//! down here and pinned by tests with worked examples.
//!
//! | type        | value bytes                                                                 |
//! |-------------|-----------------------------------------------------------------------------|
//! | text        | the UTF-8 bytes, as they are                                                |
//! | integer     | i64, 8 bytes big-endian, sign bit flipped (byte order = numeric order)      |
//! | decimal     | canonical text: `-`? digits (`.` digits)?, digits exactly as given          |
//! | boolean     | 1 byte: 0 false, 1 true                                                     |
//! | date        | i32 days since 1970-01-01, 4 bytes big-endian, sign bit flipped             |
//! | timestamptz | i64 microseconds since 1970-01-01T00:00:00Z, 8 bytes big-endian, sign flipped |
//! | bytes       | the bytes, as they are                                                      |
//! | json        | the JSON text (validated)                                                   |
//!
//! NULL is no cell. The row key is one column's value bytes, or for several columns each
//! part in an order-preserving self-delimiting form ([`encode_key`]).

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};

use super::mapping::{Bound, ColType, ColumnAction};

/// The nodes' default limits (`limits.*` of a node's config): a row key, a qualifier, a value.
pub const KEY_BYTES_MAX_DEFAULT: usize = 4096;
pub const QUALIFIER_BYTES_MAX_DEFAULT: usize = 4096;
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1 << 20;

/// The longest piece of a bad value quoted in a reason, characters.
const QUOTED_CHARS_MAX: usize = 48;

/// In a composite key, the end of a variable-length part (text, bytes): 0x00 0x01.
const KEY_PART_END: [u8; 2] = [0x00, 0x01];
/// In a composite key, a 0x00 inside a variable-length part: 0x00 0xFF.
const KEY_ZERO_ESCAPED: [u8; 2] = [0x00, 0xFF];

/// One value of a source record, before it is checked against its column's type.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    Null,
    /// Text form from CSV or JSON, not yet checked for UTF-8.
    Raw(Vec<u8>),
    Text(String),
    Int(i64),
    Bool(bool),
    /// Canonical decimal text, e.g. from PostgreSQL's numeric.
    Decimal(String),
    Date(NaiveDate),
    Timestamp(DateTime<Utc>),
    Bytes(Vec<u8>),
    /// JSON text (from a JSON Lines object or array value: compact).
    Json(String),
}

/// Limits a node puts on what it stores; a row over one is rejected before it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub key_bytes_max: usize,
    pub qualifier_bytes_max: usize,
    pub value_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: KEY_BYTES_MAX_DEFAULT,
            qualifier_bytes_max: QUALIFIER_BYTES_MAX_DEFAULT,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
        }
    }
}

/// A record as it is written: the row key and its cells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedRow {
    pub key: Vec<u8>,
    /// (family, qualifier, value).
    pub cells: Vec<(String, Vec<u8>, Vec<u8>)>,
}

/// A value quoted for a reason: Rust-escaped, at most `QUOTED_CHARS_MAX` characters.
fn quote(s: &str) -> String {
    if s.chars().count() <= QUOTED_CHARS_MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(QUOTED_CHARS_MAX).collect();
        format!("{head:?}…")
    }
}

/// The text of a `Raw` field, or the reason it is not UTF-8.
fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))
}

fn flip64(i: i64) -> [u8; 8] {
    ((i as u64) ^ (1 << 63)).to_be_bytes()
}

#[cfg(test)]
fn unflip64(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

fn flip32(i: i32) -> [u8; 4] {
    ((i as u32) ^ (1 << 31)).to_be_bytes()
}

#[cfg(test)]
fn unflip32(b: [u8; 4]) -> i32 {
    (u32::from_be_bytes(b) ^ (1 << 31)) as i32
}

const EPOCH_DATE: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");

/// Text to an integer: an optional sign and ASCII digits, nothing else (no spaces), in i64.
pub fn parse_integer(s: &str) -> Result<i64, String> {
    use std::num::IntErrorKind;
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("not an integer: {}", quote(s)));
    }
    s.parse::<i64>().map_err(|e| match e.kind() {
        IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => format!("integer out of range (64-bit): {}", quote(s)),
        _ => format!("not an integer: {}", quote(s)),
    })
}

/// Text to a canonical decimal: `[+-]?digits(.digits)?`; a leading `+` is dropped, every
/// digit is kept (no rounding, trailing zeros stay).
pub fn parse_decimal(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let unsigned = lower.strip_prefix(['+', '-']).unwrap_or(&lower);
    if ["nan", "inf", "infinity"].contains(&unsigned) {
        return Err(format!("not a decimal (NaN and infinities are not stored): {}", quote(s)));
    }
    let (int, frac) = match unsigned.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (unsigned, None),
    };
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() && frac.is_some_and(all_digits) {
        return Err(format!("not a decimal (write a digit before the point, 0.5 not .5): {}", quote(s)));
    }
    if !all_digits(int) || !frac.is_none_or(all_digits) {
        return Err(format!("not a decimal ([-]digits[.digits]): {}", quote(s)));
    }
    Ok(s.strip_prefix('+').unwrap_or(s).to_string())
}

/// Text to a boolean: true/false/t/f/1/0/yes/no, any case.
pub fn parse_boolean(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" => Ok(true),
        "false" | "f" | "0" | "no" => Ok(false),
        _ => Err(format!("not a boolean (true/false/t/f/1/0/yes/no): {}", quote(s))),
    }
}

/// `YYYY-MM-DD` exactly, at the start of `s`; `None` if `s` does not start with that shape.
fn date_prefix(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let shape = b.len() >= 10 && b[..10].iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() });
    if !shape {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().expect("ASCII digits");
    NaiveDate::from_ymd_opt(n(0..4) as i32, n(5..7), n(8..10))
}

/// Text to a date: `YYYY-MM-DD` only.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    match date_prefix(s) {
        Some(d) if s.len() == 10 => Ok(d),
        _ => Err(format!("not a date (YYYY-MM-DD): {}", quote(s))),
    }
}

/// Text to a timestamp with a time zone: RFC 3339 (`2024-05-01T10:00:00+07:00`, `…Z`) or
/// PostgreSQL's text form (`2024-05-01 10:00:00+07`, `+07:00`, `+0700`), with up to 6
/// fractional digits (more only if they are zeros: nothing is rounded). A timestamp without
/// an offset is refused.
pub fn parse_timestamptz(s: &str) -> Result<DateTime<Utc>, String> {
    let bad = |why: &str| Err(format!("not a timestamptz ({why}): {}", quote(s)));
    let Some(date) = date_prefix(s) else {
        return bad("YYYY-MM-DD hh:mm:ss+hh:mm");
    };
    let rest = &s[10..];
    let Some(rest) = rest.strip_prefix(['T', 't', ' ']) else {
        return bad("YYYY-MM-DD hh:mm:ss+hh:mm");
    };
    let b = rest.as_bytes();
    let hms_shape = b.len() >= 8 && b[..8].iter().enumerate().all(|(i, c)| if i == 2 || i == 5 { *c == b':' } else { c.is_ascii_digit() });
    if !hms_shape {
        return bad("YYYY-MM-DD hh:mm:ss+hh:mm");
    }
    let n = |r: std::ops::Range<usize>| rest[r].parse::<u32>().expect("ASCII digits");
    let (hour, minute, second) = (n(0..2), n(3..5), n(6..8));
    let mut rest = &rest[8..];
    let mut micros = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return bad("no digits after the point");
        }
        let (kept, beyond) = frac[..digits].split_at(digits.min(6));
        if beyond.bytes().any(|c| c != b'0') {
            return bad("more precise than microseconds");
        }
        micros = format!("{kept:0<6}").parse().expect("6 ASCII digits");
        rest = &frac[digits..];
    }
    let offset_secs: i32 = match rest {
        "" => return bad("no time zone"),
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return bad("YYYY-MM-DD hh:mm:ss+hh:mm"),
            };
            let o = &rest[1..];
            let (h, m) = match o.len() {
                2 => (o, "00"),
                5 if o.as_bytes()[2] == b':' => (&o[..2], &o[3..]),
                4 => (&o[..2], &o[2..]),
                _ => return bad("the offset is not +hh, +hh:mm or +hhmm"),
            };
            if !(h.bytes().chain(m.bytes()).all(|c| c.is_ascii_digit())) {
                return bad("the offset is not +hh, +hh:mm or +hhmm");
            }
            let (h, m): (i32, i32) = (h.parse().expect("digits"), m.parse().expect("digits"));
            if h > 15 || m > 59 {
                return bad("the offset is out of range");
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let Some(time) = NaiveTime::from_hms_micro_opt(hour, minute, second, micros) else {
        return bad("no such time");
    };
    let local = NaiveDateTime::new(date, time);
    let utc = local - chrono::TimeDelta::seconds(offset_secs as i64);
    Ok(utc.and_utc())
}

/// Text to bytes: PostgreSQL's hex form, `\x` then pairs of hex digits.
pub fn parse_bytes_hex(raw: &[u8]) -> Result<Vec<u8>, String> {
    let Some(hex) = raw.strip_prefix(b"\\x") else {
        let shown = String::from_utf8_lossy(raw);
        return Err(format!("bytes from text must be PostgreSQL hex, \\x…: {}", quote(&shown)));
    };
    if hex.len() % 2 != 0 {
        return Err(format!("bytes: an odd number of hex digits ({}) after \\x", hex.len()));
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    hex.chunks(2)
        .enumerate()
        .map(|(i, pair)| match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(format!("bytes: not a hex digit at byte {} after \\x", 2 * i + usize::from(digit(pair[0]).is_some()))),
        })
        .collect()
}

/// The text form of a field that is not `Raw` or `Text` (a typed value from PostgreSQL or
/// JSON), for a text column and for reasons.
fn typed_text(f: &Field) -> Option<String> {
    Some(match f {
        Field::Int(i) => i.to_string(),
        Field::Bool(b) => b.to_string(),
        Field::Decimal(d) => d.clone(),
        Field::Date(d) => d.format("%Y-%m-%d").to_string(),
        Field::Timestamp(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        Field::Json(j) => j.clone(),
        Field::Null | Field::Raw(_) | Field::Text(_) | Field::Bytes(_) => return None,
    })
}

/// The name of a field's kind, for "a date cannot be stored as integer".
fn kind(f: &Field) -> &'static str {
    match f {
        Field::Null => "NULL",
        Field::Raw(_) | Field::Text(_) => "text",
        Field::Int(_) => "integer",
        Field::Bool(_) => "boolean",
        Field::Decimal(_) => "decimal",
        Field::Date(_) => "date",
        Field::Timestamp(_) => "timestamptz",
        Field::Bytes(_) => "bytes",
        Field::Json(_) => "json",
    }
}

/// Encodes one field as a value of type `ty`: `Ok(None)` for NULL (no cell), `Err(reason)`
/// for a value that does not fit the type. The encodings (a stored format):
///
/// - **text**: the UTF-8 bytes as they are. A typed field is stored as its text form
///   (an integer's digits; a timestamp as RFC 3339 in UTC). Bytes are refused.
/// - **integer**: i64 as 8 bytes big-endian with the sign bit flipped, so byte order is
///   numeric order: -1 → `7F FF FF FF FF FF FF FF`, 0 → `80 00 00 00 00 00 00 00`,
///   1 → `80 00 00 00 00 00 00 01`. From text: an optional sign and ASCII digits, no spaces.
/// - **decimal**: the canonical text `-`? digits (`.` digits)?, every digit kept as given
///   (`1.50` stays `1.50`), a leading `+` dropped. Not order-preserving. NaN, infinities,
///   exponents and `.5` are refused.
/// - **boolean**: one byte, 0 or 1. From text: true/false/t/f/1/0/yes/no, any case.
/// - **date**: i32 days since 1970-01-01, 4 bytes big-endian with the sign bit flipped:
///   1970-01-02 → `80 00 00 01`. From text: `YYYY-MM-DD` only.
/// - **timestamptz**: i64 microseconds since 1970-01-01T00:00:00Z, 8 bytes big-endian with
///   the sign bit flipped. From text: RFC 3339 or PostgreSQL's text form with an offset.
/// - **bytes**: the bytes as they are. From text (CSV, JSON): PostgreSQL's hex `\x0a1b…` only.
/// - **json**: the JSON text, checked to parse, stored as given (not re-serialized); a JSON
///   Lines object or array value arrives as its compact text.
pub fn encode_value(ty: ColType, f: &Field) -> Result<Option<Vec<u8>>, String> {
    if *f == Field::Null {
        return Ok(None);
    }
    let text: Option<&str> = match f {
        Field::Raw(b) => Some(utf8(b).map_err(|e| format!("{e} (a {ty} value is text)"))?),
        Field::Text(s) => Some(s),
        _ => None,
    };
    let mismatch = || format!("a {} value cannot be stored as {ty}: {}", kind(f), quote(&typed_text(f).unwrap_or_default()));
    let bytes = match ty {
        ColType::Text => match (text, f) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Field::Bytes(_)) => return Err("a bytes value cannot be stored as text: map the column as bytes".into()),
            (None, _) => typed_text(f).expect("a typed field").into_bytes(),
        },
        ColType::Integer => match (text, f) {
            (Some(s), _) => flip64(parse_integer(s)?).to_vec(),
            (None, Field::Int(i)) => flip64(*i).to_vec(),
            (None, Field::Decimal(d)) => flip64(parse_integer(d)?).to_vec(),
            _ => return Err(mismatch()),
        },
        ColType::Decimal => match (text, f) {
            (Some(s), _) => parse_decimal(s)?.into_bytes(),
            (None, Field::Decimal(d)) => parse_decimal(d)?.into_bytes(),
            (None, Field::Int(i)) => i.to_string().into_bytes(),
            _ => return Err(mismatch()),
        },
        ColType::Boolean => match (text, f) {
            (Some(s), _) => vec![u8::from(parse_boolean(s)?)],
            (None, Field::Bool(b)) => vec![u8::from(*b)],
            _ => return Err(mismatch()),
        },
        ColType::Date => {
            let d = match (text, f) {
                (Some(s), _) => parse_date(s)?,
                (None, Field::Date(d)) => *d,
                _ => return Err(mismatch()),
            };
            let days = d.signed_duration_since(EPOCH_DATE).num_days();
            flip32(i32::try_from(days).expect("chrono's dates are within ±2^31 days")).to_vec()
        }
        ColType::Timestamptz => match (text, f) {
            (Some(s), _) => flip64(parse_timestamptz(s)?.timestamp_micros()).to_vec(),
            (None, Field::Timestamp(t)) => flip64(t.timestamp_micros()).to_vec(),
            _ => return Err(mismatch()),
        },
        ColType::Bytes => match f {
            // Not through `text`: a Raw field need not be UTF-8 to be refused clearly.
            Field::Raw(b) => parse_bytes_hex(b)?,
            Field::Text(s) => parse_bytes_hex(s.as_bytes())?,
            Field::Bytes(b) => b.clone(),
            _ => return Err(mismatch()),
        },
        ColType::Json => {
            let s = match (text, f) {
                (Some(s), _) => s.to_string(),
                (None, Field::Bytes(_) | Field::Date(_) | Field::Timestamp(_)) => return Err(mismatch()),
                (None, _) => typed_text(f).expect("a typed field"),
            };
            serde_json::from_str::<serde::de::IgnoredAny>(&s).map_err(|e| format!("not JSON: {e}"))?;
            s.into_bytes()
        }
    };
    Ok(Some(bytes))
}

#[cfg(test)]
fn fixed<const N: usize>(ty: ColType, bytes: &[u8]) -> Result<[u8; N], String> {
    bytes.try_into().map_err(|_| format!("a stored {ty} is {N} bytes, this one is {}", bytes.len()))
}

/// Renders a stored value as text (for messages and tests): the inverse of `encode_value`.
/// Integers and dates as digits, timestamps as RFC 3339 in UTC, bytes as `\x` hex.
#[cfg(test)]
pub fn decode_value(ty: ColType, bytes: &[u8]) -> Result<String, String> {
    Ok(match ty {
        ColType::Text | ColType::Decimal | ColType::Json => utf8(bytes)?.to_string(),
        ColType::Integer => unflip64(fixed(ty, bytes)?).to_string(),
        ColType::Boolean => match fixed::<1>(ty, bytes)? {
            [0] => "false".into(),
            [1] => "true".into(),
            [b] => return Err(format!("a stored boolean is 0 or 1, this one is {b}")),
        },
        ColType::Date => {
            let days = unflip32(fixed(ty, bytes)?);
            let d = EPOCH_DATE
                .checked_add_signed(chrono::TimeDelta::days(days.into()))
                .ok_or_else(|| format!("date out of range: {days} days"))?;
            d.format("%Y-%m-%d").to_string()
        }
        ColType::Timestamptz => {
            let micros = unflip64(fixed(ty, bytes)?);
            let t = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(|| format!("timestamp out of range: {micros} µs"))?;
            t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
        }
        ColType::Bytes => {
            let mut s = String::with_capacity(2 + 2 * bytes.len());
            s.push_str("\\x");
            for b in bytes {
                s.push_str(&format!("{b:02x}"));
            }
            s
        }
    })
}

/// Appends one part of a row key. NULL is refused with the reason "is NULL" (the caller
/// puts the column's name before it). In a composite key (`composite`), text and bytes are
/// escaped (0x00 → 0x00 0xFF) and terminated (0x00 0x01) so parts cannot run together and
/// byte order follows the parts' order; fixed-width types are their value encoding.
pub fn encode_key_part(ty: ColType, f: &Field, composite: bool, out: &mut Vec<u8>) -> Result<(), String> {
    if let Some(why) = ty.key_refusal() {
        return Err(why.to_string());
    }
    let value = encode_value(ty, f)?.ok_or_else(|| "is NULL".to_string())?;
    let variable = matches!(ty, ColType::Text | ColType::Bytes);
    if composite && variable {
        for &b in &value {
            if b == 0 {
                out.extend_from_slice(&KEY_ZERO_ESCAPED);
            } else {
                out.push(b);
            }
        }
        out.extend_from_slice(&KEY_PART_END);
    } else {
        out.extend_from_slice(&value);
    }
    Ok(())
}

/// The row key of a record from its key columns' fields, in key order.
///
/// One column: the value encoding of its type (a text key is its UTF-8 bytes: a CSV
/// `citizen_id` column becomes exactly that row key). Several columns: the parts one after
/// another, each order-preserving and self-delimiting (`encode_key_part`): integer 8 bytes,
/// boolean 1, date 4, timestamptz 8 as their value encoding; text and bytes with 0x00
/// written 0x00 0xFF and ended by 0x00 0x01. So ("a", 1) < ("ab", 0) and byte order is the
/// order of the tuples. A reason names the part: `key part 2: is NULL`.
#[cfg(test)]
pub fn encode_key(parts: &[(ColType, &Field)]) -> Result<Vec<u8>, String> {
    let mut key = Vec::new();
    for (i, (ty, f)) in parts.iter().enumerate() {
        encode_key_part(*ty, f, parts.len() > 1, &mut key).map_err(|e| format!("key part {}: {e}", i + 1))?;
    }
    Ok(key)
}

/// Turns one record's fields into a row, by a bound mapping. A reason names the column:
/// `column "birth_date": not a date (YYYY-MM-DD): "1990-13-01"`.
pub fn map_record(bound: &Bound, fields: &[Field], limits: &Limits) -> Result<MappedRow, String> {
    if fields.len() != bound.columns.len() {
        return Err(format!("record has {} fields, the header has {}", fields.len(), bound.columns.len()));
    }
    let composite = bound.key.len() > 1;
    let mut key = Vec::new();
    for &i in &bound.key {
        let name = &bound.columns[i];
        let ty = bound.type_of(i).expect("a key column is not skipped (Mapping::validate)");
        if fields[i] == Field::Null {
            return Err(format!("key column {name:?} is NULL"));
        }
        encode_key_part(ty, &fields[i], composite, &mut key).map_err(|e| format!("key column {name:?}: {e}"))?;
    }
    if key.is_empty() {
        return Err("the row key is empty".into());
    }
    if key.len() > limits.key_bytes_max {
        return Err(format!("row key: {} bytes exceeds the key limit of {} bytes", key.len(), limits.key_bytes_max));
    }
    let mut cells = Vec::new();
    for (i, action) in bound.actions.iter().enumerate() {
        let ColumnAction::Use { ty, cell: Some((family, qualifier)) } = action else {
            continue;
        };
        let name = &bound.columns[i];
        if qualifier.len() > limits.qualifier_bytes_max {
            return Err(format!(
                "column {name:?}: qualifier of {} bytes exceeds the limit of {} bytes",
                qualifier.len(),
                limits.qualifier_bytes_max
            ));
        }
        let Some(value) = encode_value(*ty, &fields[i]).map_err(|e| format!("column {name:?}: {e}"))? else {
            continue;
        };
        if value.len() > limits.value_bytes_max {
            return Err(format!("column {name:?}: value of {} bytes exceeds the limit of {} bytes", value.len(), limits.value_bytes_max));
        }
        cells.push((family.clone(), qualifier.as_bytes().to_vec(), value));
    }
    if cells.is_empty() {
        return Err("no cell to store: every stored column is NULL (a row without cells does not exist); \
                    give a key column a cell to keep such rows"
            .into());
    }
    Ok(MappedRow { key, cells })
}

#[cfg(test)]
mod tests {
    use rand::{Rng as _, SeedableRng as _};

    use super::super::mapping::Mapping;
    use super::*;

    fn raw(s: &str) -> Field {
        Field::Raw(s.as_bytes().to_vec())
    }

    fn enc(ty: ColType, s: &str) -> Result<Vec<u8>, String> {
        encode_value(ty, &raw(s)).map(|v| v.expect("not NULL"))
    }

    fn round_trip(ty: ColType, s: &str) -> String {
        decode_value(ty, &enc(ty, s).unwrap()).unwrap()
    }

    /// The seed of a randomized test: `KHO_TEST_SEED` replays one; printed either way.
    fn seed(test: &str) -> u64 {
        let seed = std::env::var("KHO_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
        println!("{test}: seed {seed} (KHO_TEST_SEED)");
        seed
    }

    #[test]
    fn null_is_no_cell_for_every_type() {
        for ty in ColType::ALL {
            assert_eq!(encode_value(ty, &Field::Null), Ok(None), "{ty}");
        }
    }

    #[test]
    fn worked_examples_of_each_encoding() {
        assert_eq!(enc(ColType::Text, "Nguyễn").unwrap(), "Nguyễn".as_bytes());
        assert_eq!(enc(ColType::Integer, "-1").unwrap(), [0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(enc(ColType::Integer, "0").unwrap(), [0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(enc(ColType::Integer, "+1").unwrap(), [0x80, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(enc(ColType::Integer, "-9223372036854775808").unwrap(), [0; 8]);
        assert_eq!(enc(ColType::Integer, "9223372036854775807").unwrap(), [0xFF; 8]);
        assert_eq!(enc(ColType::Decimal, "+1.50").unwrap(), b"1.50");
        assert_eq!(enc(ColType::Decimal, "-0").unwrap(), b"-0");
        assert_eq!(enc(ColType::Boolean, "YES").unwrap(), [1]);
        assert_eq!(enc(ColType::Boolean, "f").unwrap(), [0]);
        assert_eq!(enc(ColType::Date, "1970-01-02").unwrap(), [0x80, 0, 0, 1]);
        assert_eq!(enc(ColType::Date, "1969-12-31").unwrap(), [0x7F, 0xFF, 0xFF, 0xFF]);
        assert_eq!(enc(ColType::Timestamptz, "1970-01-01T00:00:00.000001Z").unwrap(), [0x80, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(enc(ColType::Timestamptz, "1970-01-01 07:00:01+07").unwrap(), flip64(1_000_000));
        assert_eq!(enc(ColType::Bytes, "\\x00ff0A").unwrap(), [0x00, 0xFF, 0x0A]);
        assert_eq!(enc(ColType::Bytes, "\\x").unwrap(), Vec::<u8>::new());
        assert_eq!(enc(ColType::Json, "{ \"a\" : [1, 2] }").unwrap(), b"{ \"a\" : [1, 2] }", "stored as given");
    }

    #[test]
    fn timestamps_in_every_accepted_form_are_the_same_instant() {
        let want = enc(ColType::Timestamptz, "2024-05-01T03:00:00Z").unwrap();
        for s in [
            "2024-05-01T10:00:00+07:00",
            "2024-05-01 10:00:00+07",
            "2024-05-01 10:00:00+0700",
            "2024-05-01t03:00:00z",
            "2024-05-01 03:00:00.000000000Z",
            "2024-04-30 22:30:00-04:30",
        ] {
            assert_eq!(enc(ColType::Timestamptz, s).unwrap(), want, "{s}");
        }
        assert_eq!(round_trip(ColType::Timestamptz, "2024-05-01 10:00:00.25+07"), "2024-05-01T03:00:00.250Z");
        assert_eq!(round_trip(ColType::Timestamptz, "1900-01-01T00:00:00.123456Z"), "1900-01-01T00:00:00.123456Z");
    }

    #[test]
    fn values_that_do_not_fit_are_refused_with_a_short_reason_naming_the_type() {
        let cases = [
            (ColType::Integer, "12a", "not an integer: \"12a\""),
            (ColType::Integer, " 12", "not an integer: \" 12\""),
            (ColType::Integer, "12 ", "not an integer: \"12 \""),
            (ColType::Integer, "", "not an integer: \"\""),
            (ColType::Integer, "-", "not an integer: \"-\""),
            (ColType::Integer, "1.0", "not an integer: \"1.0\""),
            (ColType::Integer, "9223372036854775808", "integer out of range (64-bit): \"9223372036854775808\""),
            (ColType::Decimal, ".5", "0.5 not .5"),
            (ColType::Decimal, "5.", "not a decimal ([-]digits[.digits]): \"5.\""),
            (ColType::Decimal, "1e5", "not a decimal ([-]digits[.digits]): \"1e5\""),
            (ColType::Decimal, "NaN", "NaN and infinities are not stored"),
            (ColType::Decimal, "-Infinity", "NaN and infinities are not stored"),
            (ColType::Decimal, "1,5", "not a decimal"),
            (ColType::Boolean, "maybe", "not a boolean (true/false/t/f/1/0/yes/no): \"maybe\""),
            (ColType::Date, "31/12/2020", "not a date (YYYY-MM-DD): \"31/12/2020\""),
            (ColType::Date, "1990-13-01", "not a date (YYYY-MM-DD): \"1990-13-01\""),
            (ColType::Date, "2021-02-29", "not a date (YYYY-MM-DD)"),
            (ColType::Date, "2020-1-1", "not a date (YYYY-MM-DD)"),
            (ColType::Date, "2020-01-01 ", "not a date (YYYY-MM-DD)"),
            (ColType::Timestamptz, "2024-05-01T10:00:00", "not a timestamptz (no time zone)"),
            (ColType::Timestamptz, "2024-05-01 10:00:00.1234567Z", "more precise than microseconds"),
            (ColType::Timestamptz, "2024-05-01 25:00:00Z", "no such time"),
            (ColType::Timestamptz, "2024-05-01 10:00:00+7", "the offset is not"),
            (ColType::Timestamptz, "2024-05-01", "not a timestamptz"),
            (ColType::Bytes, "0a1b", "bytes from text must be PostgreSQL hex, \\x…: \"0a1b\""),
            (ColType::Bytes, "\\x0a1", "odd number of hex digits (3)"),
            (ColType::Bytes, "\\x0g", "not a hex digit at byte 1"),
            (ColType::Json, "{\"a\":", "not JSON: EOF while parsing"),
            (ColType::Json, "hello", "not JSON"),
        ];
        for (ty, input, want) in cases {
            let e = enc(ty, input).unwrap_err();
            assert!(e.contains(want), "{ty} {input:?}: {e:?}, wanted {want:?}");
        }
        let e = encode_value(ColType::Text, &Field::Raw(vec![b'a', b'b', b'c', 0xFF])).unwrap_err();
        assert!(e.starts_with("invalid UTF-8 at byte 3"), "{e}");
        let e = encode_value(ColType::Integer, &Field::Date(NaiveDate::from_ymd_opt(2020, 1, 2).unwrap())).unwrap_err();
        assert_eq!(e, "a date value cannot be stored as integer: \"2020-01-02\"");
        let long = "x".repeat(1000);
        let e = enc(ColType::Integer, &long).unwrap_err();
        assert!(e.len() < 80 && e.ends_with('…'), "a long value is cut short in a reason: {e}");
    }

    #[test]
    fn typed_fields_encode_like_their_text() {
        let d = NaiveDate::from_ymd_opt(1990, 12, 31).unwrap();
        let t = parse_timestamptz("2024-05-01T10:00:00.5+07:00").unwrap();
        let cases: Vec<(ColType, Field, &str)> = vec![
            (ColType::Integer, Field::Int(-42), "-42"),
            (ColType::Integer, Field::Decimal("42".into()), "42"),
            (ColType::Decimal, Field::Decimal("-3.140".into()), "-3.140"),
            (ColType::Decimal, Field::Int(7), "7"),
            (ColType::Boolean, Field::Bool(true), "true"),
            (ColType::Date, Field::Date(d), "1990-12-31"),
            (ColType::Timestamptz, Field::Timestamp(t), "2024-05-01T03:00:00.5Z"),
            (ColType::Bytes, Field::Bytes(vec![1, 2]), "\\x0102"),
            (ColType::Json, Field::Json("{\"a\":1}".into()), "{\"a\":1}"),
            (ColType::Json, Field::Int(5), "5"),
            (ColType::Text, Field::Text("x".into()), "x"),
            (ColType::Text, Field::Int(5), "5"),
            (ColType::Text, Field::Date(d), "1990-12-31"),
            (ColType::Text, Field::Timestamp(t), "2024-05-01T03:00:00.500Z"),
        ];
        for (ty, f, text) in cases {
            assert_eq!(encode_value(ty, &f).unwrap().unwrap(), enc(ty, text).unwrap(), "{ty} {f:?}");
        }
        assert!(encode_value(ColType::Text, &Field::Bytes(vec![1])).unwrap_err().contains("map the column as bytes"));
        assert!(encode_value(ColType::Decimal, &Field::Decimal("NaN".into())).is_err());
    }

    #[test]
    fn decode_renders_what_encode_stored() {
        let cases = [
            (ColType::Text, "Hà Nội"),
            (ColType::Integer, "-9223372036854775808"),
            (ColType::Integer, "123"),
            (ColType::Decimal, "-0.0100"),
            (ColType::Boolean, "true"),
            (ColType::Boolean, "false"),
            (ColType::Date, "0001-01-01"),
            (ColType::Date, "9999-12-31"),
            (ColType::Date, "1969-07-20"),
            (ColType::Timestamptz, "1969-07-20T20:17:40Z"),
            (ColType::Bytes, "\\x00ff10"),
            (ColType::Json, "[1, {\"b\": null}]"),
        ];
        for (ty, s) in cases {
            assert_eq!(round_trip(ty, s), s, "{ty}");
        }
        assert_eq!(round_trip(ColType::Integer, "+007"), "7");
        assert_eq!(round_trip(ColType::Boolean, "Yes"), "true");
        assert!(decode_value(ColType::Integer, &[1, 2]).unwrap_err().contains("a stored integer is 8 bytes, this one is 2"));
        assert!(decode_value(ColType::Boolean, &[2]).is_err());
    }

    #[test]
    fn integer_date_and_timestamp_bytes_sort_in_value_order() {
        let seed = seed("integer_date_and_timestamp_bytes_sort_in_value_order");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut ints: Vec<i64> = (0..300)
            .map(|i| match i % 3 {
                0 => rng.random(),
                1 => rng.random_range(-1000..1000),
                _ => rng.random::<i32>() as i64,
            })
            .chain([i64::MIN, -1, 0, 1, i64::MAX])
            .collect();
        let by_bytes = |ty: ColType, texts: &[String]| {
            let mut encoded: Vec<(Vec<u8>, &String)> = texts.iter().map(|s| (enc(ty, s).unwrap(), s)).collect();
            encoded.sort();
            encoded
                .into_iter()
                .map(|(b, s)| {
                    assert_eq!(&decode_value(ty, &b).unwrap(), s, "{ty} round trip");
                    s.clone()
                })
                .collect::<Vec<_>>()
        };
        ints.sort();
        ints.dedup();
        let texts: Vec<String> = ints.iter().map(|i| i.to_string()).collect();
        assert_eq!(by_bytes(ColType::Integer, &texts), texts, "seed {seed}");

        // 0000-01-01 to 9999-12-31: what YYYY-MM-DD can write.
        let mut days: Vec<i64> = (0..300).map(|_| rng.random_range(-719_528..2_932_897)).collect();
        days.sort();
        days.dedup();
        let dates: Vec<String> = days.iter().map(|&d| (EPOCH_DATE + chrono::TimeDelta::days(d)).format("%Y-%m-%d").to_string()).collect();
        assert_eq!(by_bytes(ColType::Date, &dates), dates, "seed {seed}");

        let mut micros: Vec<i64> = (0..300).map(|_| rng.random_range(-60_000_000_000_000_000..250_000_000_000_000_000)).collect();
        micros.sort();
        micros.dedup();
        let stamps: Vec<String> = micros
            .iter()
            .map(|&m| DateTime::<Utc>::from_timestamp_micros(m).unwrap().to_rfc3339_opts(SecondsFormat::AutoSi, true))
            .collect();
        assert_eq!(by_bytes(ColType::Timestamptz, &stamps), stamps, "seed {seed}");
    }

    #[test]
    fn a_one_column_key_is_the_value_itself() {
        assert_eq!(encode_key(&[(ColType::Text, &raw("079123456789"))]).unwrap(), b"079123456789");
        assert_eq!(encode_key(&[(ColType::Integer, &raw("5"))]).unwrap(), enc(ColType::Integer, "5").unwrap());
        assert_eq!(encode_key(&[(ColType::Text, &Field::Null)]).unwrap_err(), "key part 1: is NULL");
        assert!(encode_key(&[(ColType::Json, &raw("{}"))]).unwrap_err().contains("cannot be json"));
    }

    #[test]
    fn composite_key_bytes_follow_the_order_of_the_tuples() {
        // (text, integer) tuples, including prefixes and embedded 0x00 and 0xFF bytes.
        let texts: [&[u8]; 9] = [b"", b"\x00", b"\x00\x00", b"\x00\x01", b"a", b"a\x00", b"a\x00b", b"ab", b"\xFF"];
        let ints = [i64::MIN, -1, 0, 7, i64::MAX];
        let mut tuples = Vec::new();
        for t in texts {
            for i in ints {
                tuples.push((t.to_vec(), i));
            }
        }
        type Tuple = (Vec<u8>, i64);
        let mut by_key: Vec<(Vec<u8>, Tuple)> = tuples
            .iter()
            .map(|(t, i)| {
                let key = encode_key(&[(ColType::Bytes, &Field::Bytes(t.clone())), (ColType::Integer, &Field::Int(*i))]).unwrap();
                (key, (t.clone(), *i))
            })
            .collect();
        by_key.sort();
        let mut want = tuples.clone();
        want.sort();
        assert_eq!(by_key.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>(), want);
        // Distinct tuples, distinct keys.
        by_key.dedup_by(|a, b| a.0 == b.0);
        assert_eq!(by_key.len(), tuples.len());

        // A worked example: ("a\0", 1) with the text part escaped and terminated.
        let key = encode_key(&[(ColType::Text, &raw("a\0")), (ColType::Integer, &Field::Int(1))]).unwrap();
        assert_eq!(key, [b'a', 0x00, 0xFF, 0x00, 0x01, 0x80, 0, 0, 0, 0, 0, 0, 1]);
        // Text before text: "a" then "b" differs from "ab" then "".
        let ab = encode_key(&[(ColType::Text, &raw("a")), (ColType::Text, &raw("b"))]).unwrap();
        let ab_ = encode_key(&[(ColType::Text, &raw("ab")), (ColType::Text, &raw(""))]).unwrap();
        assert!(ab < ab_);
        assert_eq!(encode_key(&[(ColType::Text, &raw("a")), (ColType::Date, &Field::Null)]).unwrap_err(), "key part 2: is NULL");
    }

    fn person_bound() -> Bound {
        let m = Mapping::parse_toml(
            r#"
version = 1
key = ["province", "citizen_id"]
[[column]]
name = "province"
type = "integer"
[[column]]
name = "citizen_id"
type = "text"
cell = "person:citizen_id"
[[column]]
name = "birth_date"
type = "date"
cell = "person:birth_date"
[[column]]
name = "photo"
type = "bytes"
cell = "person:photo"
[[column]]
name = "notes"
skip = true
"#,
        )
        .unwrap();
        let cols: Vec<String> = ["citizen_id", "province", "birth_date", "photo", "notes"].iter().map(|s| s.to_string()).collect();
        m.bind(&cols).unwrap()
    }

    #[test]
    fn a_record_maps_to_its_key_and_cells() {
        let b = person_bound();
        let row =
            map_record(&b, &[raw("0791"), raw("79"), raw("1990-12-31"), raw("\\x0102"), raw("whatever, not read")], &Limits::default())
                .unwrap();
        let mut want_key = enc(ColType::Integer, "79").unwrap();
        want_key.extend_from_slice(b"0791\x00\x01");
        assert_eq!(row.key, want_key);
        assert_eq!(
            row.cells,
            vec![
                ("person".to_string(), b"citizen_id".to_vec(), b"0791".to_vec()),
                ("person".to_string(), b"birth_date".to_vec(), enc(ColType::Date, "1990-12-31").unwrap()),
                ("person".to_string(), b"photo".to_vec(), vec![1, 2]),
            ]
        );
        // A NULL is no cell.
        let row = map_record(&b, &[raw("0791"), raw("79"), Field::Null, Field::Null, Field::Null], &Limits::default()).unwrap();
        assert_eq!(row.cells.len(), 1);
    }

    #[test]
    fn a_record_that_does_not_fit_is_refused_naming_the_column() {
        let b = person_bound();
        let l = Limits::default();
        let ok = || vec![raw("0791"), raw("79"), raw("1990-12-31"), Field::Null, Field::Null];
        let mut f = ok();
        f[2] = raw("1990-13-01");
        assert_eq!(map_record(&b, &f, &l).unwrap_err(), "column \"birth_date\": not a date (YYYY-MM-DD): \"1990-13-01\"");
        let mut f = ok();
        f[0] = Field::Null;
        assert_eq!(map_record(&b, &f, &l).unwrap_err(), "key column \"citizen_id\" is NULL");
        let mut f = ok();
        f[1] = raw("7x");
        assert_eq!(map_record(&b, &f, &l).unwrap_err(), "key column \"province\": not an integer: \"7x\"");
        let mut f = ok();
        f[0] = raw(&"9".repeat(5000));
        assert_eq!(map_record(&b, &f, &l).unwrap_err(), "row key: 5010 bytes exceeds the key limit of 4096 bytes");
        let mut f = ok();
        f[3] = raw(&format!("\\x{}", "ab".repeat(2_000_000)));
        assert_eq!(map_record(&b, &f, &l).unwrap_err(), "column \"photo\": value of 2000000 bytes exceeds the limit of 1048576 bytes");
        let f = ok();
        assert_eq!(map_record(&b, &f[..4], &l).unwrap_err(), "record has 4 fields, the header has 5");
        let small = Limits { qualifier_bytes_max: 5, ..Limits::default() };
        assert!(map_record(&b, &ok(), &small).unwrap_err().contains("qualifier of 10 bytes exceeds the limit of 5 bytes"));
    }

    #[test]
    fn a_row_without_cells_is_refused_not_dropped() {
        let m = Mapping::simple(&["id".to_string(), "name".to_string()], &["id".to_string()], "p").unwrap();
        let b = m.bind(&["id".to_string(), "name".to_string()]).unwrap();
        let e = map_record(&b, &[raw("1"), Field::Null], &Limits::default()).unwrap_err();
        assert!(e.starts_with("no cell to store"), "{e}");
    }
}
