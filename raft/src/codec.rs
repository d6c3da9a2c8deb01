//! Byte-level encodings of what the Raft layer stores: log entries, votes, log ids and
//! memberships. Documented byte by byte in docs/FORMATS.md; every number is big-endian
//! unless stated. These encodings are part of the on-disk format: do not change them
//! without a new format version.

use std::collections::{BTreeMap, BTreeSet};

use openraft::vote::{RaftLeaderId, RaftVote};
use openraft::{BasicNode, EntryPayload};

use crate::command::Command;
use crate::{Entry, KeyRange, LogId, Membership, NodeId, StoredMembership, TypeConfig, Vote};

/// Format version of a stored log entry.
pub const LOG_ENTRY_FORMAT_V1: u8 = 1;

/// Payload kinds of a log entry.
const PAYLOAD_BLANK: u8 = 0;
const PAYLOAD_NORMAL: u8 = 1;
const PAYLOAD_MEMBERSHIP: u8 = 2;

/// A decoding failure: the bytes are not what this format says.
#[derive(Debug, thiserror::Error)]
#[error("corrupt {what}: {reason}")]
pub struct DecodeError {
    pub what: &'static str,
    pub reason: String,
}

fn err(what: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError { what, reason: reason.into() }
}

/// Appends fixed-width big-endian numbers and length-prefixed byte strings.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// u32 length, then the bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).expect("byte string longer than 4 GiB"));
        self.buf.extend_from_slice(b);
    }
}

/// Reads what [`Writer`] wrote; every read is bounds-checked.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(err(self.what, format!("truncated: need {n} bytes, have {}", self.buf.len())));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    pub fn finish(&self) -> Result<(), DecodeError> {
        if !self.buf.is_empty() {
            return Err(err(self.what, format!("{} trailing bytes", self.buf.len())));
        }
        Ok(())
    }
}

/// Prepends the format version and a crc32 (over version and body) to `body`.
pub fn frame(version: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(version);
    let mut h = crc32fast::Hasher::new();
    h.update(&[version]);
    h.update(body);
    out.extend_from_slice(&h.finalize().to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks the version and crc32 of a frame and returns its body.
pub fn unframe<'a>(what: &'static str, version: u8, stored: &'a [u8]) -> Result<&'a [u8], DecodeError> {
    if stored.len() < 5 {
        return Err(err(what, format!("{} bytes is shorter than the 5-byte header", stored.len())));
    }
    if stored[0] != version {
        return Err(err(what, format!("unknown format version {}", stored[0])));
    }
    let expected = u32::from_be_bytes(stored[1..5].try_into().expect("4 bytes"));
    let body = &stored[5..];
    let mut h = crc32fast::Hasher::new();
    h.update(&stored[..1]);
    h.update(body);
    let actual = h.finalize();
    if actual != expected {
        return Err(err(what, format!("checksum mismatch (stored {expected:08x}, computed {actual:08x})")));
    }
    Ok(body)
}

pub fn put_log_id(w: &mut Writer, id: &LogId) {
    w.u64(id.leader_id.term);
    w.u64(id.leader_id.node_id);
    w.u64(id.index);
}

pub fn get_log_id(r: &mut Reader<'_>) -> Result<LogId, DecodeError> {
    let term = r.u64()?;
    let node_id = r.u64()?;
    let index = r.u64()?;
    Ok(LogId::new(openraft::impls::leader_id_adv::LeaderId { term, node_id }, index))
}

pub fn put_opt_log_id(w: &mut Writer, id: Option<&LogId>) {
    match id {
        None => w.u8(0),
        Some(id) => {
            w.u8(1);
            put_log_id(w, id);
        }
    }
}

pub fn get_opt_log_id(r: &mut Reader<'_>) -> Result<Option<LogId>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(get_log_id(r)?)),
        t => Err(err("log id", format!("bad option tag {t}"))),
    }
}

/// Encodes a membership: configs (joint consensus), then nodes and their addresses.
pub fn put_membership(w: &mut Writer, m: &Membership) {
    let configs = m.get_joint_config();
    w.u32(configs.len() as u32);
    for c in configs {
        w.u32(c.len() as u32);
        for id in c {
            w.u64(*id);
        }
    }
    let nodes: Vec<_> = m.nodes().collect();
    w.u32(nodes.len() as u32);
    for (id, node) in nodes {
        w.u64(*id);
        w.bytes(node.addr.as_bytes());
    }
}

pub fn get_membership(r: &mut Reader<'_>) -> Result<Membership, DecodeError> {
    let nconfigs = r.u32()?;
    let mut configs = Vec::new();
    for _ in 0..nconfigs {
        let n = r.u32()?;
        let mut c = BTreeSet::new();
        for _ in 0..n {
            c.insert(r.u64()?);
        }
        configs.push(c);
    }
    let nnodes = r.u32()?;
    let mut nodes = BTreeMap::new();
    for _ in 0..nnodes {
        let id: NodeId = r.u64()?;
        let addr = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| err("membership", "address is not UTF-8"))?;
        nodes.insert(id, BasicNode { addr });
    }
    Membership::new(configs, nodes).map_err(|e| err("membership", e.to_string()))
}

pub fn put_stored_membership(w: &mut Writer, m: &StoredMembership) {
    put_opt_log_id(w, m.log_id().as_ref());
    put_membership(w, m.membership());
}

pub fn get_stored_membership(r: &mut Reader<'_>) -> Result<StoredMembership, DecodeError> {
    let log_id = get_opt_log_id(r)?;
    let m = get_membership(r)?;
    Ok(StoredMembership::new(log_id, m))
}

/// A stored log entry: frame(v1, log id ++ payload kind ++ payload).
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut w = Writer::default();
    put_log_id(&mut w, &entry.log_id);
    match &entry.payload {
        EntryPayload::Blank => w.u8(PAYLOAD_BLANK),
        EntryPayload::Normal(cmd) => {
            w.u8(PAYLOAD_NORMAL);
            w.buf.extend_from_slice(&cmd.encode());
        }
        EntryPayload::Membership(m) => {
            w.u8(PAYLOAD_MEMBERSHIP);
            put_membership(&mut w, m);
        }
    }
    frame(LOG_ENTRY_FORMAT_V1, &w.buf)
}

pub fn decode_entry(stored: &[u8]) -> Result<Entry, DecodeError> {
    let body = unframe("log entry", LOG_ENTRY_FORMAT_V1, stored)?;
    let mut r = Reader::new(body, "log entry");
    let log_id = get_log_id(&mut r)?;
    let payload = match r.u8()? {
        PAYLOAD_BLANK => EntryPayload::Blank,
        PAYLOAD_NORMAL => EntryPayload::Normal(Command::decode(r.rest())?),
        PAYLOAD_MEMBERSHIP => EntryPayload::Membership(get_membership(&mut r)?),
        t => return Err(err("log entry", format!("unknown payload kind {t}"))),
    };
    r.finish()?;
    Ok(Entry { log_id, payload })
}

/// Format version of the stored vote.
pub const VOTE_FORMAT_V1: u8 = 1;

/// A stored vote: frame(v1, term ++ node id ++ committed flag).
pub fn encode_vote(v: &Vote) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(v.leader_id().term);
    w.u64(v.leader_id().node_id);
    w.u8(v.is_committed() as u8);
    frame(VOTE_FORMAT_V1, &w.buf)
}

pub fn decode_vote(stored: &[u8]) -> Result<Vote, DecodeError> {
    let body = unframe("vote", VOTE_FORMAT_V1, stored)?;
    let mut r = Reader::new(body, "vote");
    let term = r.u64()?;
    let node_id = r.u64()?;
    let committed = match r.u8()? {
        0 => false,
        1 => true,
        t => return Err(err("vote", format!("bad committed flag {t}"))),
    };
    r.finish()?;
    let leader_id = <openraft::impls::leader_id_adv::LeaderId<u64, u64> as RaftLeaderId>::new(term, node_id);
    Ok(<Vote as RaftVote>::from_leader_id(leader_id, committed))
}

/// Format version of stored log ids and memberships in the meta column family.
pub const META_FORMAT_V1: u8 = 1;

pub fn encode_opt_log_id(id: Option<&LogId>) -> Vec<u8> {
    let mut w = Writer::default();
    put_opt_log_id(&mut w, id);
    frame(META_FORMAT_V1, &w.buf)
}

pub fn decode_opt_log_id(stored: &[u8]) -> Result<Option<LogId>, DecodeError> {
    let body = unframe("log id", META_FORMAT_V1, stored)?;
    let mut r = Reader::new(body, "log id");
    let id = get_opt_log_id(&mut r)?;
    r.finish()?;
    Ok(id)
}

pub fn encode_stored_membership(m: &StoredMembership) -> Vec<u8> {
    let mut w = Writer::default();
    put_stored_membership(&mut w, m);
    frame(META_FORMAT_V1, &w.buf)
}

pub fn decode_stored_membership(stored: &[u8]) -> Result<StoredMembership, DecodeError> {
    let body = unframe("membership", META_FORMAT_V1, stored)?;
    let mut r = Reader::new(body, "membership");
    let m = get_stored_membership(&mut r)?;
    r.finish()?;
    Ok(m)
}

/// A key range: `start` (byte string) ++ optional end (`0`, or `1` ++ byte string).
pub fn put_key_range(w: &mut Writer, range: &KeyRange) {
    w.bytes(&range.start);
    match &range.end {
        None => w.u8(0),
        Some(end) => {
            w.u8(1);
            w.bytes(end);
        }
    }
}

pub fn get_key_range(r: &mut Reader<'_>) -> Result<KeyRange, DecodeError> {
    let what = r.what;
    let start = r.bytes()?.to_vec();
    let end = match r.u8()? {
        0 => None,
        1 => Some(r.bytes()?.to_vec()),
        t => return Err(err(what, format!("key range end tag {t}"))),
    };
    let range = KeyRange { start, end };
    range.check().map_err(|e| err(what, e))?;
    Ok(range)
}

/// A group's stored key range (`raft_meta` tag `RANGE`): frame(v1, key range).
pub fn encode_key_range(range: &KeyRange) -> Vec<u8> {
    let mut w = Writer::default();
    put_key_range(&mut w, range);
    frame(META_FORMAT_V1, &w.buf)
}

pub fn decode_key_range(stored: &[u8]) -> Result<KeyRange, DecodeError> {
    let body = unframe("key range", META_FORMAT_V1, stored)?;
    let mut r = Reader::new(body, "key range");
    let range = get_key_range(&mut r)?;
    r.finish()?;
    Ok(range)
}

#[allow(dead_code)]
fn _assert_type_config(_: TypeConfig) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(openraft::impls::leader_id_adv::LeaderId { term, node_id: node }, index)
    }

    /// The worked example of docs/FORMATS.md, "Raft metadata": tenant 5's range.
    #[test]
    fn key_range_worked_example_and_corruption() {
        let r = KeyRange::new(vec![0, 0, 0, 5], Some(vec![0, 0, 0, 6]));
        let stored = encode_key_range(&r);
        let hex: String = stored[5..].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "0000000400000005010000000400000006");
        assert_eq!(stored[0], META_FORMAT_V1);
        assert_eq!(decode_key_range(&stored).unwrap(), r);
        assert_eq!(decode_key_range(&encode_key_range(&KeyRange::whole())).unwrap(), KeyRange::whole());
        for i in 0..stored.len() {
            let mut bad = stored.clone();
            bad[i] ^= 0x01;
            assert!(decode_key_range(&bad).is_err(), "flipped byte {i} was not detected");
        }
        // An inverted range is corruption, even with a valid checksum.
        let mut w = Writer::default();
        put_key_range(&mut w, &KeyRange { start: vec![9], end: Some(vec![1]) });
        assert!(decode_key_range(&frame(META_FORMAT_V1, &w.buf)).is_err());
    }

    #[test]
    fn entries_round_trip_and_detect_corruption() {
        let members = BTreeMap::from([(1u64, BasicNode { addr: "127.0.0.1:1".into() }), (2, BasicNode { addr: "h:2".into() })]);
        let m = Membership::new(vec![BTreeSet::from([1, 2])], members).unwrap();
        let entries = vec![
            Entry { log_id: log_id(1, 1, 1), payload: EntryPayload::Blank },
            Entry { log_id: log_id(2, 1, 2), payload: EntryPayload::Membership(m) },
            Entry {
                log_id: log_id(3, 2, 3),
                payload: EntryPayload::Normal(Command::Write(crate::CellWrite {
                    shard: 1,
                    epoch: 1,
                    tenant: 1,
                    table: 2,
                    ops: vec![crate::CellOp::Put { key: b"r\0".to_vec(), stored: vec![0xff; 10] }],
                    condition: None,
                })),
            },
        ];
        for e in entries {
            let bytes = encode_entry(&e);
            assert_eq!(decode_entry(&bytes).unwrap(), e);
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x40;
                assert!(decode_entry(&bad).is_err(), "flipped byte {i} was not detected");
            }
            assert!(decode_entry(&bytes[..bytes.len() - 1]).is_err());
        }
    }

    /// The worked example of docs/FORMATS.md, "Raft log entries".
    #[test]
    fn worked_example_matches_the_format_document() {
        let e = Entry { log_id: log_id(2, 1, 5), payload: EntryPayload::Blank };
        let stored = encode_entry(&e);
        let body = "000000000000000200000000000000010000000000000005".to_string() + "00";
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(stored.len(), 30);
        assert_eq!(stored[0], 1);
        assert_eq!(hex(&stored[5..]), body);
        let mut h = crc32fast::Hasher::new();
        h.update(&stored[..1]);
        h.update(&stored[5..]);
        assert_eq!(stored[1..5], h.finalize().to_be_bytes());
        assert_eq!(hex(&crate::log_store::log_key(1, 5)), "00000000000000010000000000000005");
    }

    #[test]
    fn vote_round_trip() {
        let leader_id = openraft::impls::leader_id_adv::LeaderId { term: 7, node_id: 3 };
        for committed in [false, true] {
            let v = <Vote as RaftVote>::from_leader_id(leader_id, committed);
            assert_eq!(decode_vote(&encode_vote(&v)).unwrap(), v);
        }
    }
}
