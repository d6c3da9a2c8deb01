//! A group's key range in the `data` column family: `[start, end)`, `end` None = to the end
//! of the key space. It is state of the group (stored in `raft_meta`, tag
//! [`crate::log_store::meta_key::RANGE`], and carried by every snapshot), not a constant:
//! splits and merges will change it.

use std::fmt;

use kho_engine::keys;

/// A half-open range of data keys: `[start, end)`, `end` None = unbounded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyRange {
    /// First key of the range (inclusive).
    pub start: Vec<u8>,
    /// End of the range (exclusive); None: every key from `start` on.
    pub end: Option<Vec<u8>>,
}

/// Every data key sorts below this key: a data key starts with a tenant (u32) and a table
/// (u32 at most [`keys::TABLE_ID_MAX`] = `u32::MAX - 1`), so its first 8 bytes are at most
/// `FF FF FF FF FF FF FF FE`. Used as the end of a range delete of an unbounded range.
pub const PAST_EVERY_DATA_KEY: [u8; 8] = [0xff; 8];
const _: () = assert!(keys::TABLE_ID_MAX < u32::MAX);

impl KeyRange {
    /// The whole data key space: the range of a group that has none stored (the single data
    /// group of a node before sharding).
    pub fn whole() -> KeyRange {
        KeyRange { start: Vec::new(), end: None }
    }

    /// `[start, end)`.
    ///
    /// # Panics
    ///
    /// If `start > end` (an inverted range is a bug of the caller).
    pub fn new(start: Vec<u8>, end: Option<Vec<u8>>) -> KeyRange {
        let r = KeyRange { start, end };
        r.check().unwrap_or_else(|e| panic!("{e}"));
        r
    }

    /// Refuses an inverted range.
    pub fn check(&self) -> Result<(), String> {
        match &self.end {
            Some(end) if end < &self.start => Err(format!("inverted key range {self}")),
            _ => Ok(()),
        }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// The end as a slice, for the engine's range reads.
    pub fn end(&self) -> Option<&[u8]> {
        self.end.as_deref()
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        match &self.end {
            Some(end) => write!(f, "[{}, {})", hex(&self.start), hex(end)),
            None => write!(f, "[{}, ∞)", hex(&self.start)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_is_half_open() {
        let r = KeyRange::new(b"b".to_vec(), Some(b"d".to_vec()));
        assert!(!r.contains(b"a"));
        assert!(r.contains(b"b"));
        assert!(r.contains(b"c\xff"));
        assert!(!r.contains(b"d"));
        assert!(KeyRange::whole().contains(b""));
        assert!(KeyRange::whole().contains(&[0xff; 40]));
        assert!(KeyRange::new(b"b".to_vec(), Some(b"b".to_vec())).check().is_ok(), "an empty range is allowed");
        assert!(KeyRange { start: b"c".to_vec(), end: Some(b"b".to_vec()) }.check().is_err());
    }

    #[test]
    fn every_data_key_sorts_below_past_every_data_key() {
        let last = keys::data_key(u32::MAX, keys::TABLE_ID_MAX, &[0xff; 64], u16::MAX, &[0xff; 64]);
        assert!(last.as_slice() < PAST_EVERY_DATA_KEY.as_slice());
    }
}
