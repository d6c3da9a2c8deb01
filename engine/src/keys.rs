//! The data-key encoding of the data model tenant → table → row → family → qualifier.
//!
//! ```text
//! data key = tenant u32 BE ++ table u32 BE ++ enc(row) ++ family u16 BE ++ qualifier
//! enc(row) = row with every 0x00 written as 0x00 0xFF, then the terminator 0x00 0x01
//! ```
//!
//! `enc` is order-preserving (`a < b` ⇔ `enc(a) < enc(b)`) and prefix-free (no `enc(a)` is a
//! proper prefix of another `enc(b)`), so the byte order of data keys is the order of the
//! tuples `(tenant, table, row, family, qualifier)` and all cells of a row are contiguous.
//! The qualifier is the last component and is written raw. The layout is part of the
//! on-disk format: see `docs/FORMATS.md`.

use crate::error::{key_hex, Error, Result};

/// Identifies a tenant.
pub type TenantId = u32;
/// Identifies a table within its tenant.
pub type TableId = u32;
/// Identifies a column family within its table.
pub type FamilyId = u16;

/// Tenant id 0 is reserved for the cluster catalog (system tables).
pub const SYSTEM_TENANT: TenantId = 0;

/// The largest table id that may be allocated. `u32::MAX` is reserved: in tenant `u32::MAX`
/// the table prefix would be all 0xFF bytes, and its key range would have no finite end.
pub const TABLE_ID_MAX: TableId = TableId::MAX - 1;

/// Longest row key a caller may write, in bytes (see [`check_key_parts`]).
pub const ROW_BYTES_MAX: usize = 4 * 1024;

/// Longest qualifier a caller may write, in bytes (see [`check_key_parts`]).
pub const QUALIFIER_BYTES_MAX: usize = 4 * 1024;

/// Length of [`table_prefix`]: tenant u32 ++ table u32.
const TABLE_PREFIX_LEN: usize = 8;
/// Length of the encoded family id.
const FAMILY_LEN: usize = 2;
/// Escape byte: every 0x00 of a row is followed by [`ESCAPED_ZERO`] or [`TERMINATOR`].
const ESCAPE: u8 = 0x00;
/// Second byte of an escaped 0x00 of the row.
const ESCAPED_ZERO: u8 = 0xFF;
/// Second byte of the row terminator 0x00 0x01.
const TERMINATOR: u8 = 0x01;

/// Checks the caller-supplied parts of a data key against the engine's limits
/// ([`ROW_BYTES_MAX`], [`QUALIFIER_BYTES_MAX`], [`TABLE_ID_MAX`]).
///
/// Returns [`Error::InvalidKey`] naming the part and the reason.
pub fn check_key_parts(table: TableId, row: &[u8], qualifier: &[u8]) -> Result<()> {
    if table > TABLE_ID_MAX {
        return Err(Error::InvalidKey { reason: format!("table id {table} is reserved (largest is {TABLE_ID_MAX})") });
    }
    if row.len() > ROW_BYTES_MAX {
        return Err(Error::InvalidKey { reason: format!("row is {} bytes, limit is {ROW_BYTES_MAX}", row.len()) });
    }
    if qualifier.len() > QUALIFIER_BYTES_MAX {
        return Err(Error::InvalidKey { reason: format!("qualifier is {} bytes, limit is {QUALIFIER_BYTES_MAX}", qualifier.len()) });
    }
    Ok(())
}

/// Appends `row` with every 0x00 byte written as 0x00 0xFF, without terminator.
fn escape_row(out: &mut Vec<u8>, row: &[u8]) {
    for &byte in row {
        out.push(byte);
        if byte == ESCAPE {
            out.push(ESCAPED_ZERO);
        }
    }
}

/// Appends enc(row): every 0x00 byte is written as 0x00 0xFF, then terminator 0x00 0x01.
pub fn encode_row(out: &mut Vec<u8>, row: &[u8]) {
    out.reserve(row.len() + 2);
    escape_row(out, row);
    out.push(ESCAPE);
    out.push(TERMINATOR);
}

/// Decodes an escaped row at the start of `input`; returns (row, bytes consumed).
///
/// Returns [`Error::Corruption`] on a 0x00 followed by anything but 0xFF or 0x01, or if the
/// terminator is missing.
pub fn decode_row(input: &[u8]) -> Result<(Vec<u8>, usize)> {
    split_row(input).map_err(|reason| Error::Corruption { what: format!("row encoding {}: {reason}", key_hex(input)) })
}

/// [`decode_row`], with the reason of a failure as the error.
fn split_row(input: &[u8]) -> std::result::Result<(Vec<u8>, usize), String> {
    let mut row = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let byte = input[at];
        if byte != ESCAPE {
            row.push(byte);
            at += 1;
            continue;
        }
        match input.get(at + 1) {
            Some(&ESCAPED_ZERO) => {
                row.push(ESCAPE);
                at += 2;
            }
            Some(&TERMINATOR) => return Ok((row, at + 2)),
            Some(&other) => return Err(format!("byte 0x00 followed by 0x{other:02x} at row offset {at}")),
            None => break,
        }
    }
    Err("row terminator 0x00 0x01 missing".to_owned())
}

/// The first 8 bytes of every key of the table: tenant u32 BE ++ table u32 BE.
pub fn table_prefix(tenant: TenantId, table: TableId) -> Vec<u8> {
    let mut out = Vec::with_capacity(TABLE_PREFIX_LEN);
    out.extend_from_slice(&tenant.to_be_bytes());
    out.extend_from_slice(&table.to_be_bytes());
    out
}

/// `table_prefix ++ enc(row)`: the prefix of every cell of the row, and of no other row's.
pub fn row_prefix(tenant: TenantId, table: TableId, row: &[u8]) -> Vec<u8> {
    let mut out = table_prefix(tenant, table);
    encode_row(&mut out, row);
    out
}

/// `row_prefix ++ family u16 BE`: the prefix of every cell of the family in the row.
pub fn family_prefix(tenant: TenantId, table: TableId, row: &[u8], family: FamilyId) -> Vec<u8> {
    let mut out = row_prefix(tenant, table, row);
    out.extend_from_slice(&family.to_be_bytes());
    out
}

/// The data key of one cell: `tenant u32 BE ++ table u32 BE ++ enc(row) ++ family u16 BE ++ qualifier`.
pub fn data_key(tenant: TenantId, table: TableId, row: &[u8], family: FamilyId, qualifier: &[u8]) -> Vec<u8> {
    // Exact unless the row holds 0x00 bytes (one more byte each).
    let encoded_row_len = row.len() + 2;
    let mut out = Vec::with_capacity(TABLE_PREFIX_LEN + encoded_row_len + FAMILY_LEN + qualifier.len());
    out.extend_from_slice(&tenant.to_be_bytes());
    out.extend_from_slice(&table.to_be_bytes());
    encode_row(&mut out, row);
    out.extend_from_slice(&family.to_be_bytes());
    out.extend_from_slice(qualifier);
    out
}

/// The components of a data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedKey {
    /// The tenant owning the table.
    pub tenant: TenantId,
    /// The table within the tenant.
    pub table: TableId,
    /// The row key, unescaped.
    pub row: Vec<u8>,
    /// The column family within the table.
    pub family: FamilyId,
    /// The column qualifier (possibly empty).
    pub qualifier: Vec<u8>,
}

/// Decodes a data key produced by [`data_key`].
///
/// Returns [`Error::Corruption`] if the key is too short or its row is badly escaped.
/// Decoding is strict, so `data_key` of the result gives back exactly `key`.
pub fn decode_data_key(key: &[u8]) -> Result<DecodedKey> {
    let too_short = || Error::Corruption { what: format!("data key too short ({} bytes): {}", key.len(), key_hex(key)) };
    let (tenant_bytes, rest) = key.split_first_chunk::<4>().ok_or_else(too_short)?;
    let (table_bytes, rest) = rest.split_first_chunk::<4>().ok_or_else(too_short)?;
    let (row, row_len) = split_row(rest).map_err(|reason| Error::Corruption { what: format!("data key {}: {reason}", key_hex(key)) })?;
    let (family_bytes, qualifier) = rest[row_len..].split_first_chunk::<FAMILY_LEN>().ok_or_else(too_short)?;
    Ok(DecodedKey {
        tenant: TenantId::from_be_bytes(*tenant_bytes),
        table: TableId::from_be_bytes(*table_bytes),
        row,
        family: FamilyId::from_be_bytes(*family_bytes),
        qualifier: qualifier.to_vec(),
    })
}

/// The smallest byte string greater than every string that starts with `prefix`;
/// None if there is none (`prefix` is empty or all 0xFF).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&byte| byte != 0xFF)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

/// Key range `[start, end)` covering exactly the cells of the rows `r` of the table with
/// `start_row <= r < end_row` (`end_row` None = to the end of the table) and, if `row_prefix`
/// is non-empty, `r` starting with `row_prefix`.
///
/// If no row can satisfy both, the result has `start >= end`: callers check `start < end`.
///
/// # Panics
///
/// If `table > TABLE_ID_MAX` (a reserved id: its range may have no finite end).
pub fn row_range(tenant: TenantId, table: TableId, start_row: &[u8], end_row: Option<&[u8]>, row_prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    assert!(table <= TABLE_ID_MAX, "row_range: reserved table id {table}");
    let table_start = table_prefix(tenant, table);
    // The table prefix has a byte other than 0xFF (table <= TABLE_ID_MAX), so every
    // prefix_end below is Some.
    let no_end = "prefix_end of a key starting with a valid table prefix";

    // enc is order-preserving and prefix-free, so rows r >= start_row are exactly those whose
    // keys are >= table_start ++ enc(start_row); the same holds for end_row.
    let mut start = self::row_prefix(tenant, table, start_row);
    let mut end = match end_row {
        Some(end_row) => self::row_prefix(tenant, table, end_row),
        None => prefix_end(&table_start).expect(no_end),
    };
    if !row_prefix.is_empty() {
        // r starts with row_prefix exactly when enc(r) starts with the escaped prefix
        // (without terminator): the escaping is a prefix code.
        let mut escaped = table_start;
        escape_row(&mut escaped, row_prefix);
        let escaped_end = prefix_end(&escaped).expect(no_end);
        if escaped > start {
            start = escaped;
        }
        if escaped_end < end {
            end = escaped_end;
        }
    }
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes that stress the escaping: 0x00, 0x01, 0xFE, 0xFF and an ordinary letter.
    fn tricky_bytes(len: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(vec![0x00u8, 0x01, 0xFE, 0xFF, b'a']), 0..len)
    }

    type Tuple = (TenantId, TableId, Vec<u8>, FamilyId, Vec<u8>);

    fn tuple() -> impl Strategy<Value = Tuple> {
        (
            prop::sample::select(vec![0u32, 1, 0xFF, 0x100, u32::MAX]),
            prop::sample::select(vec![0u32, 1, 0xFF00, TABLE_ID_MAX, u32::MAX]),
            tricky_bytes(6),
            prop::sample::select(vec![0u16, 1, 0xFF, 0x100, u16::MAX]),
            tricky_bytes(4),
        )
    }

    fn key_of(t: &Tuple) -> Vec<u8> {
        data_key(t.0, t.1, &t.2, t.3, &t.4)
    }

    #[test]
    fn worked_example_matches_the_format_document() {
        let key = data_key(1, 2, b"a\0b", 3, b"q");
        // tenant 00000001 | table 00000002 | row 61 00ff 62 0001 | family 0003 | qualifier 71
        assert_eq!(crate::error::key_hex(&key), "00000001000000026100ff620001000371");
    }

    #[test]
    fn decode_row_rejects_bad_escapes() {
        for bad in [&b""[..], b"a", b"a\x00", b"a\x00\x02", b"\x00\xfe\x00\x01"] {
            assert!(matches!(decode_row(bad), Err(Error::Corruption { .. })), "{bad:?} decoded");
        }
        assert_eq!(decode_row(b"\x00\xff\x00\x01rest").ok(), Some((vec![0], 4)));
        let err = decode_data_key(b"\0\0\0\x01\0\0\0\x02a\x00\x02").expect_err("bad escape");
        assert_eq!(err.to_string(), "corruption: data key 0000000100000002610002: byte 0x00 followed by 0x02 at row offset 1");
    }

    #[test]
    fn decode_data_key_rejects_short_keys() {
        let key = data_key(1, 2, b"row", 3, b"");
        for len in 0..key.len() {
            assert!(matches!(decode_data_key(&key[..len]), Err(Error::Corruption { .. })), "prefix of {len} bytes decoded");
        }
        assert!(decode_data_key(&key).is_ok());
    }

    #[test]
    fn prefix_end_examples() {
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_end(&[0x01, 0xFF]), Some(vec![0x02]));
        assert_eq!(prefix_end(&[0x01, 0x00]), Some(vec![0x01, 0x01]));
    }

    #[test]
    fn check_key_parts_limits() {
        assert!(check_key_parts(TABLE_ID_MAX, &[0; ROW_BYTES_MAX], &[0; QUALIFIER_BYTES_MAX]).is_ok());
        for (table, row, qualifier) in [(u32::MAX, 0, 0), (1, ROW_BYTES_MAX + 1, 0), (1, 0, QUALIFIER_BYTES_MAX + 1)] {
            assert!(matches!(check_key_parts(table, &vec![0; row], &vec![0; qualifier]), Err(Error::InvalidKey { .. })));
        }
    }

    #[test]
    #[should_panic(expected = "reserved table id")]
    fn row_range_refuses_reserved_table() {
        let _ = row_range(u32::MAX, u32::MAX, b"", None, b"");
    }

    proptest! {
        #[test]
        fn data_key_round_trips(t in tuple()) {
            let key = key_of(&t);
            let decoded = decode_data_key(&key).expect("decodes");
            prop_assert_eq!(decoded, DecodedKey {
                tenant: t.0, table: t.1, row: t.2.clone(), family: t.3, qualifier: t.4.clone(),
            });
            prop_assert!(key.starts_with(&family_prefix(t.0, t.1, &t.2, t.3)));
            prop_assert!(key.starts_with(&row_prefix(t.0, t.1, &t.2)));
            prop_assert!(key.starts_with(&table_prefix(t.0, t.1)));
        }

        #[test]
        fn data_key_order_is_tuple_order(a in tuple(), b in tuple()) {
            prop_assert_eq!(key_of(&a).cmp(&key_of(&b)), a.cmp(&b));
        }

        #[test]
        fn row_encoding_is_ordered_and_prefix_free(a in tricky_bytes(8), b in tricky_bytes(8)) {
            let (mut ea, mut eb) = (Vec::new(), Vec::new());
            encode_row(&mut ea, &a);
            encode_row(&mut eb, &b);
            prop_assert_eq!(ea.cmp(&eb), a.cmp(&b));
            prop_assert_eq!(eb.starts_with(&ea), a == b);
            prop_assert_eq!(decode_row(&ea).expect("decodes"), (a.clone(), ea.len()));
        }

        #[test]
        fn decode_data_key_of_any_bytes_is_strict(bytes in tricky_bytes(24)) {
            // Never panics; anything that decodes re-encodes to the same bytes.
            match decode_data_key(&bytes) {
                Ok(k) => prop_assert_eq!(data_key(k.tenant, k.table, &k.row, k.family, &k.qualifier), bytes),
                Err(err) => prop_assert!(matches!(&err, Error::Corruption { .. }), "{}", err),
            }
        }

        #[test]
        fn prefix_end_bounds_exactly_the_extensions(prefix in tricky_bytes(4), s in tricky_bytes(6)) {
            let inside = s.as_slice() >= prefix.as_slice()
                && prefix_end(&prefix).is_none_or(|end| s < end);
            prop_assert_eq!(inside, s.starts_with(&prefix));
        }

        #[test]
        fn row_range_matches_brute_force(
            rows in prop::collection::vec(tricky_bytes(5), 1..24),
            start_row in tricky_bytes(4),
            end_row in prop::option::of(tricky_bytes(4)),
            prefix in tricky_bytes(3),
            tenant in prop::sample::select(vec![0u32, 7, u32::MAX]),
            table in prop::sample::select(vec![0u32, 9, TABLE_ID_MAX]),
        ) {
            let (start, end) = row_range(tenant, table, &start_row, end_row.as_deref(), &prefix);
            let in_range = |key: &Vec<u8>| start < end && *key >= start && *key < end;
            // Neighbouring tables must stay outside the range.
            let neighbours = [(tenant, table.wrapping_sub(1)), (tenant, table.wrapping_add(1)), (tenant.wrapping_add(1), table)];
            for row in &rows {
                let wanted = row.as_slice() >= start_row.as_slice()
                    && end_row.as_ref().is_none_or(|end_row| row < end_row)
                    && row.starts_with(&prefix);
                for (family, qualifier) in [(0u16, &b""[..]), (0, b"\x00"), (u16::MAX, b"\xff\xff\xff")] {
                    let key = data_key(tenant, table, row, family, qualifier);
                    prop_assert_eq!(in_range(&key), wanted, "row {:?} key {:?}", row, key);
                    for (other_tenant, other_table) in neighbours {
                        if (other_tenant, other_table) != (tenant, table) {
                            prop_assert!(!in_range(&data_key(other_tenant, other_table, row, family, qualifier)));
                        }
                    }
                }
                prop_assert_eq!(in_range(&row_prefix(tenant, table, row)), wanted);
            }
        }
    }
}
