//! The audit log: records of who did or tried what, appended by the meta group's apply
//! and hash-chained, so that a deleted, changed or reordered record is found by anyone
//! who recomputes the chain (docs/SECURITY.md, "Audit log"; docs/FORMATS.md).
//!
//! System table 10 `audit` (tenant 0): row = sequence number u64 BE (from 1) → an
//! [`Entry`]. The head (last sequence number and its hash) is in table 3 `counters`, row
//! `audit_head`: seq u64 BE ++ hash (32 bytes). Nothing here reads a clock: a record's time
//! is the proposer's.

use kho_engine::keys::{self, TableId, SYSTEM_TENANT};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const SYS_AUDIT: TableId = 10;
/// The `counters` row holding the chain's head.
pub const AUDIT_HEAD: &[u8] = b"audit_head";
/// Format byte of a record and of an entry.
pub const AUDIT_FORMAT_V1: u8 = 1;
/// Most records one `Audit` command appends, count.
pub const AUDIT_RECORDS_PER_COMMAND_MAX: usize = 1_024;
/// Longest encoded record, bytes.
pub const AUDIT_RECORD_BYTES_MAX: usize = 16 * 1024;
/// The hash before the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// What happened, as the node that saw it records it. Never a value: names, counts,
/// hashed row keys and key ranges only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unix milliseconds, the recording node's clock.
    pub time_ms: u64,
    /// The node that recorded it.
    pub node: u64,
    pub principal: String,
    /// `certificate <sha-256 fingerprint>`, `token <id>`, `node`, `none`.
    pub auth: String,
    /// The gRPC method (`ReadRow`, `CreateGrant`, …).
    pub action: String,
    pub tenant: String,
    pub table: String,
    pub families: Vec<String>,
    /// Qualifiers (field names) named by the request.
    pub fields: Vec<String>,
    /// Row keys as SHA-256 prefixes (hex), or a key range; never a value.
    pub keys: String,
    pub rows: u64,
    pub bytes: u64,
    pub session: String,
    pub purpose: String,
    /// `allowed`, `denied`, `rejected` (refused by the catalog), `failed`.
    pub decision: String,
    pub reason: String,
    /// The request's id (`x-request-id` metadata), when the client sent one.
    pub request_id: String,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![AUDIT_FORMAT_V1];
        out.extend(postcard::to_allocvec(self).expect("a record encodes"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        match bytes.split_first() {
            Some((&AUDIT_FORMAT_V1, rest)) => postcard::from_bytes(rest).map_err(|e| format!("audit record: {e}")),
            Some((v, _)) => Err(format!("audit record: unknown format {v}")),
            None => Err("audit record: empty".into()),
        }
    }
}

/// One stored record: the log index of the entry that appended it, the record's bytes as
/// the proposer encoded them, the outcome the apply added (for a wrapped catalog command:
/// `done` or `rejected: <why>`; empty otherwise) and the chain hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub index: u64,
    #[serde(with = "serde_bytes")]
    pub record: Vec<u8>,
    pub outcome: String,
    pub hash: [u8; 32],
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![AUDIT_FORMAT_V1];
        out.extend(postcard::to_allocvec(self).expect("an entry encodes"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, String> {
        match bytes.split_first() {
            Some((&AUDIT_FORMAT_V1, rest)) => postcard::from_bytes(rest).map_err(|e| format!("audit entry: {e}")),
            Some((v, _)) => Err(format!("audit entry: unknown format {v}")),
            None => Err("audit entry: empty".into()),
        }
    }
}

/// SHA-256(prev ‖ seq u64 BE ‖ index u64 BE ‖ record length u64 BE ‖ record ‖ outcome).
pub fn chain_hash(prev: &[u8; 32], seq: u64, index: u64, record: &[u8], outcome: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(index.to_be_bytes());
    h.update((record.len() as u64).to_be_bytes());
    h.update(record);
    h.update(outcome.as_bytes());
    h.finalize().into()
}

/// The chain's last record: its sequence number (0: none) and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl Default for Head {
    fn default() -> Self {
        Head { seq: 0, hash: GENESIS }
    }
}

impl Head {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.seq.to_be_bytes().to_vec();
        v.extend_from_slice(&self.hash);
        v
    }

    pub fn decode(b: &[u8]) -> Result<Head, String> {
        if b.len() != 40 {
            return Err(format!("audit head is {} bytes, expected 40", b.len()));
        }
        Ok(Head { seq: u64::from_be_bytes(b[..8].try_into().expect("8 bytes")), hash: b[8..].try_into().expect("32 bytes") })
    }

    /// The entry that appends `record` after this head, and the new head.
    pub fn append(&self, index: u64, record: Vec<u8>, outcome: String) -> (u64, Entry, Head) {
        let seq = self.seq + 1;
        let hash = chain_hash(&self.hash, seq, index, &record, &outcome);
        (seq, Entry { index, record, outcome, hash }, Head { seq, hash })
    }
}

pub fn entry_key(seq: u64) -> Vec<u8> {
    keys::data_key(SYSTEM_TENANT, SYS_AUDIT, &seq.to_be_bytes(), 0, b"")
}

/// What a verifier found: the head it reached, or the first bad record.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Intact(Head),
    /// The first sequence number whose record is missing, out of order, or whose hash does
    /// not follow from the records before it; and why.
    Broken {
        seq: u64,
        why: String,
    },
}

/// Checks a run of entries, by sequence number, starting after `from` (the head before
/// the first one: [`Head::default`] for the whole log).
pub fn verify<'a>(from: Head, entries: impl IntoIterator<Item = (u64, &'a Entry)>) -> Verdict {
    let mut head = from;
    for (seq, e) in entries {
        let want = head.seq + 1;
        if seq != want {
            return Verdict::Broken { seq: want, why: format!("record {want} is missing (the next one stored is {seq})") };
        }
        let hash = chain_hash(&head.hash, seq, e.index, &e.record, &e.outcome);
        if hash != e.hash {
            return Verdict::Broken {
                seq,
                why: format!("record {seq}'s hash does not follow from the records before it (changed, or moved from elsewhere)"),
            };
        }
        if let Err(why) = Record::decode(&e.record) {
            return Verdict::Broken { seq, why };
        }
        head = Head { seq, hash };
    }
    Verdict::Intact(head)
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<(u64, Entry)> {
        let mut head = Head::default();
        let mut out = Vec::new();
        for i in 0..n {
            let r = Record { time_ms: i, principal: format!("p{i}"), action: "ReadRow".into(), ..Record::default() };
            let (seq, e, next) = head.append(100 + i, r.encode(), String::new());
            out.push((seq, e));
            head = next;
        }
        out
    }

    fn run(entries: &[(u64, Entry)]) -> Verdict {
        verify(Head::default(), entries.iter().map(|(s, e)| (*s, e)))
    }

    #[test]
    fn an_untouched_chain_verifies_and_each_kind_of_tampering_names_the_first_bad_record() {
        let good = chain(5);
        let Verdict::Intact(head) = run(&good) else { panic!("intact") };
        assert_eq!(head.seq, 5);
        // Edited: a record's bytes changed, its hash left.
        let mut edited = good.clone();
        edited[2].1.record = Record { principal: "someone else".into(), ..Record::decode(&edited[2].1.record).unwrap() }.encode();
        assert!(matches!(run(&edited), Verdict::Broken { seq: 3, .. }), "{:?}", run(&edited));
        // Edited with its own hash recomputed: the next record no longer follows.
        let mut rehashed = edited.clone();
        rehashed[2].1.hash = chain_hash(&good[1].1.hash, 3, rehashed[2].1.index, &rehashed[2].1.record, "");
        assert!(matches!(run(&rehashed), Verdict::Broken { seq: 4, .. }));
        // Deleted.
        let mut deleted = good.clone();
        deleted.remove(1);
        assert_eq!(run(&deleted), Verdict::Broken { seq: 2, why: "record 2 is missing (the next one stored is 3)".into() });
        // Reordered: two records' contents swapped under their sequence numbers.
        let mut swapped = good.clone();
        let (a, b) = (swapped[1].1.clone(), swapped[2].1.clone());
        swapped[1].1 = b;
        swapped[2].1 = a;
        assert!(matches!(run(&swapped), Verdict::Broken { seq: 2, .. }));
        // Truncated at the end: intact, but the head is older than a digest kept outside.
        let Verdict::Intact(short) = run(&good[..3]) else { panic!() };
        assert_ne!(short, head);
    }

    #[test]
    fn records_entries_and_the_head_round_trip() {
        let r = Record { time_ms: 7, node: 2, principal: "bhxh_app".into(), families: vec!["identity".into()], ..Record::default() };
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        let (_, e, head) = Head::default().append(9, r.encode(), "done".into());
        assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
        assert_eq!(Head::decode(&head.encode()).unwrap(), head);
        assert!(Head::decode(&[0; 39]).is_err() && Entry::decode(&[2]).is_err());
    }
}
