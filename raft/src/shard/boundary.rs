//! [`Boundary`]: the keys a shard range may start or end at (tenant, table and row
//! boundaries), and the printable form of range keys that CLIs and JSON show.
//!
//! Printable keys (docs/FORMATS.md, "Printable keys"):
//!
//! ```text
//! t5                tenant boundary   00000005
//! t5/tb3            table boundary    00000005 00000003
//! t5/tb3/ruser\x00  row boundary      00000005 00000003 75736572 00ff 0001
//! 0x0000000500      anything else     the bytes in lowercase hex
//! ```
//!
//! In a row, printable ASCII (0x20 to 0x7E) stands for itself except `\` (written `\\`)
//! and `/` (written `\x2f`); every other byte is `\xNN` in lowercase hex. Numbers are
//! decimal without leading zeros. Each key has exactly one printable form, and
//! [`parse_printable_key`] accepts only that form, so the two are inverse bijections.

use std::fmt::Write as _;

use kho_engine::keys::{decode_row, row_prefix, table_prefix, TableId, TenantId};

/// A key at which no row is cut: every key of a tenant, table or row lies on one side of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Boundary {
    /// `tenant u32 BE` (4 bytes): the start of the tenant's keys.
    Tenant(TenantId),
    /// `table_prefix(tenant, table)` (8 bytes): the start of the table's keys.
    Table {
        /// The tenant.
        tenant: TenantId,
        /// The table.
        table: TableId,
    },
    /// `row_prefix(tenant, table, row)` = `table_prefix ++ enc(row)`: the smallest key of the
    /// row; every key of the row is ≥ it, every key of an earlier row is below it.
    Row {
        /// The tenant.
        tenant: TenantId,
        /// The table.
        table: TableId,
        /// The row key (as stored: the hash, for a table with hashed row keys).
        row: Vec<u8>,
    },
}

impl Boundary {
    /// Which boundary `key` is, or None if it is none: 4 bytes, 8 bytes, or 8 bytes then
    /// exactly one correctly escaped and terminated row.
    pub fn parse(key: &[u8]) -> Option<Boundary> {
        let (tenant, rest) = key.split_first_chunk::<4>()?;
        let tenant = TenantId::from_be_bytes(*tenant);
        if rest.is_empty() {
            return Some(Boundary::Tenant(tenant));
        }
        let (table, rest) = rest.split_first_chunk::<4>()?;
        let table = TableId::from_be_bytes(*table);
        if rest.is_empty() {
            return Some(Boundary::Table { tenant, table });
        }
        match decode_row(rest) {
            Ok((row, len)) if len == rest.len() => Some(Boundary::Row { tenant, table, row }),
            _ => None,
        }
    }

    /// The key of the boundary.
    pub fn to_key(&self) -> Vec<u8> {
        match self {
            Boundary::Tenant(tenant) => tenant.to_be_bytes().to_vec(),
            Boundary::Table { tenant, table } => table_prefix(*tenant, *table),
            Boundary::Row { tenant, table, row } => row_prefix(*tenant, *table, row),
        }
    }
}

/// The printable form of a range key: `t5`, `t5/tb3`, `t5/tb3/r<escaped row>` for
/// boundaries, `0x<hex>` for any other key (the empty key is `0x`). See the module doc.
pub fn printable_key(key: &[u8]) -> String {
    match Boundary::parse(key) {
        Some(Boundary::Tenant(tenant)) => format!("t{tenant}"),
        Some(Boundary::Table { tenant, table }) => format!("t{tenant}/tb{table}"),
        Some(Boundary::Row { tenant, table, row }) => {
            let mut out = format!("t{tenant}/tb{table}/r");
            for byte in row {
                push_row_byte(&mut out, byte);
            }
            out
        }
        None => {
            let mut out = String::with_capacity(2 + 2 * key.len());
            out.push_str("0x");
            for byte in key {
                let _ = write!(out, "{byte:02x}");
            }
            out
        }
    }
}

/// Appends the printable form of one row byte.
fn push_row_byte(out: &mut String, byte: u8) {
    match byte {
        b'\\' => out.push_str("\\\\"),
        b'/' => out.push_str("\\x2f"),
        0x20..=0x7e => out.push(char::from(byte)),
        _ => {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
}

/// The key whose [`printable_key`] is `text`. Only that exact form is accepted (no
/// leading zeros, lowercase hex, `0x` only for keys that are not boundaries), so
/// `printable_key(&parse_printable_key(s)?) == s`. The error says what is wrong.
pub fn parse_printable_key(text: &str) -> Result<Vec<u8>, String> {
    let bad = |reason: String| format!("bad printable key `{text}`: {reason}");
    if let Some(hex) = text.strip_prefix("0x") {
        let key = parse_hex(hex).map_err(bad)?;
        if Boundary::parse(&key).is_some() {
            return Err(bad(format!("a boundary is written `{}`", printable_key(&key))));
        }
        return Ok(key);
    }
    let Some(rest) = text.strip_prefix('t') else {
        return Err(bad("expected `t<tenant>…` or `0x<hex>`".to_owned()));
    };
    let mut parts = rest.splitn(3, '/');
    let tenant = parse_number(parts.next().unwrap_or_default(), "tenant").map_err(bad)?;
    let Some(table) = parts.next() else {
        return Ok(Boundary::Tenant(tenant).to_key());
    };
    let Some(table) = table.strip_prefix("tb") else {
        return Err(bad("expected `tb<table>` after the tenant".to_owned()));
    };
    let table = parse_number(table, "table").map_err(bad)?;
    let Some(row) = parts.next() else {
        return Ok(Boundary::Table { tenant, table }.to_key());
    };
    let Some(row) = row.strip_prefix('r') else {
        return Err(bad("expected `r<row>` after the table".to_owned()));
    };
    let row = unescape_row(row).map_err(bad)?;
    Ok(Boundary::Row { tenant, table, row }.to_key())
}

/// A canonical decimal u32: digits only, no leading zero (but `0`).
fn parse_number(digits: &str, name: &str) -> Result<u32, String> {
    let canonical = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return Err(format!("{name} `{digits}` is not a decimal number without leading zeros"));
    }
    digits.parse().map_err(|_| format!("{name} {digits} does not fit in 32 bits"))
}

/// Lowercase hex digits, two per byte.
fn parse_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("odd number of hex digits".to_owned());
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| match (hex_digit(pair[0]), hex_digit(pair[1])) {
            (Some(high), Some(low)) => Ok(high << 4 | low),
            _ => Err(format!("`{}` is not two lowercase hex digits", String::from_utf8_lossy(pair))),
        })
        .collect()
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

/// The inverse of the row escaping of [`printable_key`], refusing non-canonical escapes.
fn unescape_row(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut row = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        match byte {
            b'\\' => match bytes.get(at + 1) {
                Some(b'\\') => {
                    row.push(b'\\');
                    at += 2;
                }
                Some(b'x') => {
                    let escaped = bytes
                        .get(at + 2..at + 4)
                        .and_then(|pair| Some(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?))
                        .ok_or_else(|| format!("row offset {at}: `\\x` needs two lowercase hex digits"))?;
                    if escaped != b'/' && (0x20..=0x7e).contains(&escaped) {
                        let mut canonical = String::new();
                        push_row_byte(&mut canonical, escaped);
                        return Err(format!("row offset {at}: byte 0x{escaped:02x} is written `{canonical}`"));
                    }
                    row.push(escaped);
                    at += 4;
                }
                _ => return Err(format!("row offset {at}: `\\` must start `\\\\` or `\\xNN`")),
            },
            b'/' => return Err(format!("row offset {at}: `/` is written `\\x2f`")),
            0x20..=0x7e => {
                row.push(byte);
                at += 1;
            }
            _ => return Err(format!("row offset {at}: only printable ASCII, other bytes are written `\\xNN`")),
        }
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kho_engine::keys::data_key;
    use proptest::prelude::*;

    #[test]
    fn printable_examples() {
        let cases: [(Vec<u8>, &str); 9] = [
            (vec![0, 0, 0, 5], "t5"),
            (table_prefix(5, 3), "t5/tb3"),
            (row_prefix(5, 3, b"user\x00"), "t5/tb3/ruser\\x00"),
            (row_prefix(5, 3, b""), "t5/tb3/r"),
            (row_prefix(5, 3, b"a/b\\c d~\x7f\xff"), "t5/tb3/ra\\x2fb\\\\c d~\\x7f\\xff"),
            (row_prefix(u32::MAX, u32::MAX, b"z"), "t4294967295/tb4294967295/rz"),
            (vec![0, 0, 0, 5, 0], "0x0000000500"),
            (data_key(5, 3, b"r", 1, b"q"), "0x0000000500000003720001000171"),
            (vec![], "0x"),
        ];
        for (key, text) in cases {
            assert_eq!(printable_key(&key), text);
            assert_eq!(parse_printable_key(text), Ok(key), "{text}");
        }
    }

    #[test]
    fn non_canonical_forms_are_refused() {
        for (text, reason) in [
            ("", "expected `t<tenant>"),
            ("t", "tenant `` is not"),
            ("t05", "leading zeros"),
            ("t4294967296", "does not fit"),
            ("t5/", "expected `tb<table>`"),
            ("t5/tb", "table `` is not"),
            ("t5/tb3/", "expected `r<row>`"),
            ("t5/tb3/ra/b", "`/` is written"),
            ("t5/tb3/r\\x41", "byte 0x41 is written `A`"),
            ("t5/tb3/r\\x5c", "byte 0x5c is written `\\\\`"),
            ("t5/tb3/r\\xFF", "two lowercase hex digits"),
            ("t5/tb3/r\\x0", "two lowercase hex digits"),
            ("t5/tb3/r\\n", "must start"),
            ("t5/tb3/ré", "only printable ASCII"),
            ("0x00000005", "a boundary is written `t5`"),
            ("0x0000000500000003", "a boundary is written `t5/tb3`"),
            ("0x000", "odd number"),
            ("0xAB", "lowercase hex"),
            ("T5", "expected `t<tenant>"),
        ] {
            let err = parse_printable_key(text).expect_err(text);
            assert!(err.contains(reason), "{text}: {err:?} does not say {reason:?}");
        }
    }

    #[test]
    fn boundary_kinds() {
        assert_eq!(Boundary::parse(&[0, 0, 5]), None);
        assert_eq!(Boundary::parse(&[0, 0, 0, 5, 0, 0, 0]), None);
        assert_eq!(Boundary::parse(&data_key(5, 3, b"r", 0, b"")), None);
        assert_eq!(Boundary::parse(&table_prefix(5, 3)), Some(Boundary::Table { tenant: 5, table: 3 }));
        let row = Boundary::Row { tenant: 5, table: 3, row: b"a\0".to_vec() };
        assert_eq!(Boundary::parse(&row.to_key()), Some(row));
    }

    /// Keys of every kind: boundaries with arbitrary rows, data keys, short byte strings.
    fn any_key() -> impl Strategy<Value = Vec<u8>> {
        let id = prop::sample::select(vec![0u32, 1, 5, 0xff, u32::MAX]);
        prop_oneof![
            id.clone().prop_map(|t| t.to_be_bytes().to_vec()),
            (id.clone(), id.clone()).prop_map(|(t, tb)| table_prefix(t, tb)),
            (id.clone(), id.clone(), prop::collection::vec(any::<u8>(), 0..12)).prop_map(|(t, tb, row)| row_prefix(t, tb, &row)),
            (id.clone(), id, prop::collection::vec(any::<u8>(), 0..6), any::<u16>())
                .prop_map(|(t, tb, row, f)| data_key(t, tb, &row, f, b"q")),
            prop::collection::vec(any::<u8>(), 0..14),
        ]
    }

    proptest! {
        #[test]
        fn printable_keys_round_trip(key in any_key()) {
            let text = printable_key(&key);
            prop_assert!(text.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{}", text);
            prop_assert_eq!(parse_printable_key(&text), Ok(key));
        }

        #[test]
        fn parsed_text_is_canonical(text in "(t[0-9]{0,3}(/tb[0-9]{0,2}(/r([a-z/ \\\\]|\\\\x[0-9a-fA-F]{0,2})*)?)?|0x[0-9a-f]{0,20})") {
            // Never panics; whatever parses prints back as the same text.
            if let Ok(key) = parse_printable_key(&text) {
                prop_assert_eq!(printable_key(&key), text);
            }
        }

        #[test]
        fn parse_of_any_text_never_panics(text in any::<String>()) {
            if let Ok(key) = parse_printable_key(&text) {
                prop_assert_eq!(printable_key(&key), text);
            }
        }
    }
}
