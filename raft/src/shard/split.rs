//! Split points. A shard splits only at a [`Boundary`] strictly inside its range, so a row
//! (whose cells are contiguous, `kho_engine::keys`) is never cut and a shard never spans
//! two tenants; a single-row write therefore stays inside one shard.

use kho_engine::keys::{check_key_parts, prefix_end, row_prefix, TableId, TenantId, SYSTEM_TENANT, TABLE_ID_MAX};

use crate::shard::boundary::{printable_key, Boundary};
use crate::shard::desc::{ShardDesc, BOUNDARY_BYTES_MAX, TENANT_ID_MAX};

/// Length of a table prefix: tenant u32 ++ table u32.
const TABLE_PREFIX_BYTES: usize = 8;

/// The row boundary of the row `key` belongs to: `table_prefix ++ enc(row)`, the first
/// `8 + |enc(row)|` bytes of `key`. It is the smallest key of that row: every key of the row
/// is ≥ it and every key of an earlier row (or table, or tenant) is below it. None if `key`
/// does not start with a table prefix and a correctly escaped, terminated row.
pub fn row_boundary(key: &[u8]) -> Option<Vec<u8>> {
    let rest = key.get(TABLE_PREFIX_BYTES..)?;
    let (_, row_len) = kho_engine::keys::decode_row(rest).ok()?;
    let boundary = key[..TABLE_PREFIX_BYTES + row_len].to_vec();
    debug_assert!(matches!(Boundary::parse(&boundary), Some(Boundary::Row { .. })));
    Some(boundary)
}

/// The first row boundary after every key of the row whose boundary is `boundary`: the
/// boundary of `row ++ 00`, the row that immediately follows in row order. In bytes,
/// `… esc(row) 00 01` becomes `… esc(row) 00 FF 00 01`; every key of `row` starts with
/// `esc(row) 00 01` and is below it, and no row lies between.
fn next_row_boundary(boundary: &[u8]) -> Vec<u8> {
    debug_assert!(boundary.ends_with(&[0x00, 0x01]));
    let mut next = boundary[..boundary.len() - 2].to_vec();
    next.extend_from_slice(&[0x00, 0xFF, 0x00, 0x01]);
    next
}

/// Whether the shard may split at `key`: `start < key < end` (both sides non-empty), `key`
/// a tenant, table or row boundary ([`Boundary`]), at most [`BOUNDARY_BYTES_MAX`] bytes.
/// The error says which rule fails.
pub fn is_valid_split_point(desc: &ShardDesc, key: &[u8]) -> Result<(), String> {
    if key.len() > BOUNDARY_BYTES_MAX {
        return Err(format!("the key is {} bytes, limit is {BOUNDARY_BYTES_MAX}", key.len()));
    }
    if key <= desc.start.as_slice() || key >= desc.end.as_slice() {
        return Err(format!("not strictly inside the shard's range [{}, {})", printable_key(&desc.start), printable_key(&desc.end)));
    }
    if Boundary::parse(key).is_none() {
        return Err("not a tenant, table or row boundary (it would cut a row)".to_owned());
    }
    Ok(())
}

/// Where to split a shard whose approximate middle key (from RocksDB's table properties) is
/// `middle_key`: the first valid split point ([`is_valid_split_point`]) among
/// 1. `middle_key` itself, if it is a boundary;
/// 2. the row boundary just after the row of `middle_key` (that row goes left), then that
///    row's own boundary (it goes right);
/// 3. if `middle_key` is no row key, the boundary of the table after its table prefix, then
///    that table prefix.
///
/// None if `middle_key` is outside the range or there is no valid point: the shard holds
/// one row only, or nothing but keys that are no data keys.
pub fn choose_split_point(desc: &ShardDesc, middle_key: &[u8]) -> Option<Vec<u8>> {
    if !desc.contains(middle_key) {
        return None;
    }
    let mut candidates = Vec::with_capacity(3);
    if Boundary::parse(middle_key).is_some() {
        candidates.push(middle_key.to_vec());
    }
    if let Some(boundary) = row_boundary(middle_key) {
        candidates.push(next_row_boundary(&boundary));
        candidates.push(boundary);
    } else if let Some(table) = middle_key.get(..TABLE_PREFIX_BYTES) {
        candidates.extend(prefix_end(table));
        candidates.push(table.to_vec());
    }
    let chosen = candidates.into_iter().find(|key| is_valid_split_point(desc, key).is_ok())?;
    assert!(desc.start < chosen && chosen < desc.end, "split point outside the range");
    Some(chosen)
}

/// The split points `CreateTable` asks for, as row boundaries of the table, sorted and
/// without duplicates. The error names the first row the key format refuses (longer than
/// `ROW_BYTES_MAX`), or a tenant or table id no shard can hold.
pub fn table_split_points(tenant: TenantId, table: TableId, rows: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, String> {
    if tenant == SYSTEM_TENANT || tenant > TENANT_ID_MAX {
        return Err(format!("tenant {tenant} cannot have data shards (1 ..= {TENANT_ID_MAX})"));
    }
    if table > TABLE_ID_MAX {
        return Err(format!("table id {table} is reserved (largest is {TABLE_ID_MAX})"));
    }
    let mut points = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        check_key_parts(table, row, b"").map_err(|err| format!("split row {i}: {err}"))?;
        points.push(row_prefix(tenant, table, row));
    }
    points.sort_unstable();
    points.dedup();
    debug_assert!(points.iter().all(|p| p.len() <= BOUNDARY_BYTES_MAX));
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::desc::{Epoch, Replica};
    use kho_engine::keys::{data_key, table_prefix, ROW_BYTES_MAX};
    use proptest::prelude::*;

    fn shard(start: Vec<u8>, end: Vec<u8>) -> ShardDesc {
        ShardDesc { id: 1, tenant: 5, start, end, replicas: vec![Replica::voter(1)], epoch: Epoch::INITIAL }
    }

    #[test]
    fn row_boundary_examples() {
        assert_eq!(row_boundary(&data_key(5, 3, b"a\0b", 2, b"q")), Some(row_prefix(5, 3, b"a\0b")));
        assert_eq!(row_boundary(&row_prefix(5, 3, b"")), Some(row_prefix(5, 3, b"")));
        assert_eq!(row_boundary(&table_prefix(5, 3)), None);
        assert_eq!(row_boundary(&[0, 0, 0, 5, 0, 0, 0, 3, b'a', 0]), None);
        assert_eq!(row_boundary(&[0, 0, 0, 5]), None);
        assert_eq!(next_row_boundary(&row_prefix(5, 3, b"a")), row_prefix(5, 3, b"a\0"));
    }

    #[test]
    fn split_point_rules() {
        let d = shard(table_prefix(5, 3), table_prefix(5, 5));
        assert_eq!(is_valid_split_point(&d, &row_prefix(5, 3, b"m")), Ok(()));
        assert_eq!(is_valid_split_point(&d, &table_prefix(5, 4)), Ok(()));
        for (key, reason) in [
            (table_prefix(5, 3), "strictly inside"),
            (table_prefix(5, 5), "strictly inside"),
            (vec![0, 0, 0, 6], "strictly inside"),
            (data_key(5, 3, b"m", 1, b""), "cut a row"),
            (vec![0, 0, 0, 5, 0, 0, 0, 4, 0], "cut a row"),
            (row_prefix(5, 3, &[0; ROW_BYTES_MAX + 2]), "limit is"),
        ] {
            let err = is_valid_split_point(&d, &key).expect_err(reason);
            assert!(err.contains(reason), "{err:?} does not say {reason:?}");
        }
    }

    #[test]
    fn choose_split_point_examples() {
        let d = shard(table_prefix(5, 3), vec![0, 0, 0, 6]);
        // A cell of row "m": the row goes left.
        assert_eq!(choose_split_point(&d, &data_key(5, 3, b"m", 1, b"q")), Some(row_prefix(5, 3, b"m\0")));
        // A boundary is itself the point.
        assert_eq!(choose_split_point(&d, &row_prefix(5, 3, b"m")), Some(row_prefix(5, 3, b"m")));
        assert_eq!(choose_split_point(&d, &table_prefix(5, 4)), Some(table_prefix(5, 4)));
        // The shard's first key is no split point: the next table is.
        assert_eq!(choose_split_point(&d, &table_prefix(5, 3)), Some(table_prefix(5, 4)));
        // Outside the range.
        assert_eq!(choose_split_point(&d, &table_prefix(5, 2)), None);
        assert_eq!(choose_split_point(&d, &[0, 0, 0, 6]), None);

        // The last row of a shard ending right after it: split before the row.
        let d = shard(table_prefix(5, 3), row_prefix(5, 3, b"m\0"));
        assert_eq!(choose_split_point(&d, &data_key(5, 3, b"m", 1, b"")), Some(row_prefix(5, 3, b"m")));

        // A shard of exactly one row has no split point.
        let d = shard(row_prefix(5, 3, b"m"), row_prefix(5, 3, b"m\0"));
        assert_eq!(choose_split_point(&d, &data_key(5, 3, b"m", 1, b"q")), None);
        assert_eq!(choose_split_point(&d, &row_prefix(5, 3, b"m")), None);
    }

    #[test]
    fn table_split_points_sort_and_dedup() {
        let rows = vec![b"m".to_vec(), b"c".to_vec(), b"m".to_vec(), b"".to_vec()];
        assert_eq!(table_split_points(5, 3, &rows), Ok(vec![row_prefix(5, 3, b""), row_prefix(5, 3, b"c"), row_prefix(5, 3, b"m")]));
        assert_eq!(table_split_points(5, 3, &[]), Ok(vec![]));
        let err = table_split_points(5, 3, &[b"a".to_vec(), vec![0; ROW_BYTES_MAX + 1]]).expect_err("too long");
        assert!(err.starts_with("split row 1: "), "{err}");
        assert!(table_split_points(5, u32::MAX, &[]).is_err());
        assert!(table_split_points(5, u32::MAX, &rows).is_err());
        assert!(table_split_points(0, 3, &rows).is_err());
        assert!(table_split_points(u32::MAX, 3, &rows).is_err());
    }

    fn row() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(vec![0x00u8, 0x01, 0xFE, 0xFF, b'a']), 0..6)
    }

    proptest! {
        #[test]
        fn row_boundary_is_the_rows_prefix(
            r in row(), family in any::<u16>(), qualifier in row(), other in row(),
        ) {
            let key = data_key(5, 3, &r, family, &qualifier);
            let boundary = row_boundary(&key).expect("a data key has a row boundary");
            prop_assert_eq!(&boundary, &row_prefix(5, 3, &r));
            prop_assert!(boundary <= key);
            // Keys of earlier rows are below it, of later rows at or above its successor.
            let other_key = data_key(5, 3, &other, family, &qualifier);
            if other < r {
                prop_assert!(other_key < boundary);
            } else if other > r {
                prop_assert!(other_key >= next_row_boundary(&boundary));
                prop_assert!(key < next_row_boundary(&boundary));
            }
        }

        #[test]
        fn chosen_split_points_are_valid_and_keep_rows_whole(
            a in row(), b in row(), m in row(), family in any::<u16>(), qualifier in row(),
        ) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            let d = shard(row_prefix(5, 3, &low), row_prefix(5, 3, &high));
            let middle = data_key(5, 3, &m, family, &qualifier);
            match choose_split_point(&d, &middle) {
                Some(at) => {
                    prop_assert_eq!(is_valid_split_point(&d, &at), Ok(()));
                    // Every cell of the middle row is on one side of the point.
                    let first = row_prefix(5, 3, &m);
                    let last = data_key(5, 3, &m, u16::MAX, &[0xFF; 8]);
                    prop_assert_eq!(first < at, last < at);
                }
                // No point: the middle is outside, or the shard holds only the middle's row.
                None => prop_assert!(!d.contains(&middle) || (low == m)),
            }
        }
    }
}
