//! [`ShardDesc`]: what the shard map records of one shard (id, tenant, key range, replicas,
//! epoch), its validity rules and its binary record (docs/FORMATS.md, "Shard map records").

use std::fmt;

use kho_engine::keys::{TenantId, ROW_BYTES_MAX, SYSTEM_TENANT};
use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, Reader, Writer};
use crate::shard::boundary::printable_key;
use crate::NodeId;

/// Identifies a shard: one Raft group serving one key range. Never reused.
pub type ShardId = u64;

/// The meta group's shard id. The meta group holds the catalog and the shard map; it is not
/// a range shard of the data key space and never appears in a [`crate::shard::ShardMap`].
/// Data shards have ids ≥ 1.
pub const META_SHARD: ShardId = 0;

/// The largest tenant id a shard may belong to. `u32::MAX` has no finite tenant range (the
/// range would end at 2^32); the catalog never allocates it (`TABLE_ID_MAX` bounds its id
/// counter, `raft/src/state_machine.rs`).
pub const TENANT_ID_MAX: TenantId = TenantId::MAX - 1;

/// The most replicas a shard may have: 5 voters and, while a replica moves, a learner, plus
/// one to spare. Part of the record format (decoding refuses more).
pub const REPLICAS_MAX: usize = 7;

/// The longest range boundary, in bytes: the row boundary (table prefix, 8 bytes, then the
/// escaped row and its 2-byte terminator) of a row of `ROW_BYTES_MAX + 1` zero bytes, each
/// escaped to 2 bytes. `+ 1` because the split point after a row `r` is the boundary of
/// `r ++ 00` ([`crate::shard::choose_split_point`]). Part of the record format.
pub const BOUNDARY_BYTES_MAX: usize = 8 + 2 * (ROW_BYTES_MAX + 1) + 2;

/// Format version of the [`ShardDesc`] record (first byte of [`ShardDesc::encode`]).
pub const SHARD_DESC_FORMAT_V1: u8 = 1;

/// Role codes of the record.
const ROLE_VOTER: u8 = 1;
const ROLE_LEARNER: u8 = 2;

/// The version of a shard's descriptor, as TiKV's region epoch: `conf_ver` grows by one on
/// every replica change, `version` on every split and merge.
///
/// For any key, the descriptors that owned it over time have non-decreasing `conf_ver` and
/// `version`, and each change raises one of them: a split gives both sides the parent's
/// `version + 1`, a merge `max(left, right) + 1` and the larger `conf_ver`, a replica change
/// `conf_ver + 1`. So of two overlapping descriptors, the stale one is behind in either
/// counter ([`Epoch::is_stale_against`]), and requests carrying an epoch detect routes made
/// stale by splits, merges and replica moves. Deliberately not `Ord`: epochs of shards that
/// do not overlap are not comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Epoch {
    /// Grows by one on every change of the replica set (add, remove, promote).
    pub conf_ver: u64,
    /// Grows on every change of the range (split, merge).
    pub version: u64,
}

impl Epoch {
    /// The epoch of a tenant's first shard.
    pub const INITIAL: Epoch = Epoch { conf_ver: 1, version: 1 };

    /// Whether `self` is older than `other`, assuming both belong to descriptors that share a
    /// key: behind in either counter (TiKV's `is_epoch_stale`). Equal epochs are not stale.
    pub fn is_stale_against(&self, other: &Epoch) -> bool {
        self.version < other.version || self.conf_ver < other.conf_ver
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conf_ver {} version {}", self.conf_ver, self.version)
    }
}

/// Whether a replica votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReplicaRole {
    /// Votes and may lead.
    Voter,
    /// Receives the log but does not vote (a replica being added, before promotion).
    Learner,
}

/// One replica of a shard: the node holding it and its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Replica {
    /// The node holding the replica.
    pub node: NodeId,
    /// Whether it votes.
    pub role: ReplicaRole,
}

impl Replica {
    /// A voting replica on `node`.
    pub fn voter(node: NodeId) -> Replica {
        Replica { node, role: ReplicaRole::Voter }
    }

    /// A learner replica on `node`.
    pub fn learner(node: NodeId) -> Replica {
        Replica { node, role: ReplicaRole::Learner }
    }
}

/// The key range `[start, end)` of tenant `tenant`: `[tenant u32 BE, (tenant + 1) u32 BE)`,
/// which holds exactly the data keys of the tenant. None for `u32::MAX` (no finite end).
pub fn tenant_range(tenant: TenantId) -> Option<(Vec<u8>, Vec<u8>)> {
    let next = tenant.checked_add(1)?;
    Some((tenant.to_be_bytes().to_vec(), next.to_be_bytes().to_vec()))
}

/// What the shard map records of one shard.
///
/// The range `[start, end)` is a half-open range of the `data` column family's key space,
/// inside one tenant's range ([`tenant_range`]); its ends are tenant, table or row boundaries
/// ([`crate::shard::Boundary`]) so that no row is cut. [`ShardDesc::validate`] lists the
/// rules every stored descriptor obeys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShardDesc {
    /// The shard's id (≥ 1; [`META_SHARD`] is not a range shard).
    pub id: ShardId,
    /// The tenant whose keys the shard holds (1 ..= [`TENANT_ID_MAX`]).
    pub tenant: TenantId,
    /// First key of the range (inclusive).
    #[serde(with = "serde_bytes")]
    pub start: Vec<u8>,
    /// End of the range (exclusive).
    #[serde(with = "serde_bytes")]
    pub end: Vec<u8>,
    /// The replicas, each on a distinct node, at least one a voter.
    pub replicas: Vec<Replica>,
    /// The version of this descriptor.
    pub epoch: Epoch,
}

impl ShardDesc {
    /// Whether `key` lies in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && key < self.end.as_slice()
    }

    /// Whether the range intersects `[start, end)` (false if that range is empty).
    pub fn intersects(&self, start: &[u8], end: &[u8]) -> bool {
        start < end && self.start.as_slice() < end && start < self.end.as_slice()
    }

    /// The nodes of the voting replicas, in the order of `replicas`.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.iter().filter(|r| r.role == ReplicaRole::Voter).map(|r| r.node)
    }

    /// The nodes of the learner replicas, in the order of `replicas`.
    pub fn learners(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.iter().filter(|r| r.role == ReplicaRole::Learner).map(|r| r.node)
    }

    /// Whether both shards have the same replicas: the same nodes with the same roles, in any
    /// order (the condition for a merge, which needs no data copy).
    pub fn same_replica_set(&self, other: &ShardDesc) -> bool {
        let sorted = |replicas: &[Replica]| {
            let mut replicas = replicas.to_vec();
            replicas.sort_unstable();
            replicas
        };
        sorted(&self.replicas) == sorted(&other.replicas)
    }

    /// Checks the rules of a stored descriptor; the error says which one fails:
    /// - the id is not [`META_SHARD`];
    /// - the tenant is neither the catalog's (`SYSTEM_TENANT`, which lives in the meta
    ///   group) nor above [`TENANT_ID_MAX`];
    /// - `start < end`, both inside the tenant's range, at most [`BOUNDARY_BYTES_MAX`] bytes;
    /// - 1 to [`REPLICAS_MAX`] replicas, no node twice, node ids ≥ 1, at least one voter.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == META_SHARD {
            return Err(format!("shard id {META_SHARD} is the meta group's"));
        }
        check_replicas(&self.replicas)?;
        let Some((tenant_start, tenant_end)) =
            tenant_range(self.tenant).filter(|_| self.tenant != SYSTEM_TENANT && self.tenant <= TENANT_ID_MAX)
        else {
            return Err(format!("tenant {} cannot have data shards (1 ..= {TENANT_ID_MAX})", self.tenant));
        };
        for (name, key) in [("start", &self.start), ("end", &self.end)] {
            if key.len() > BOUNDARY_BYTES_MAX {
                return Err(format!("{name} is {} bytes, limit is {BOUNDARY_BYTES_MAX}", key.len()));
            }
        }
        if self.start >= self.end {
            return Err(format!("empty range: start {} is not below end {}", printable_key(&self.start), printable_key(&self.end)));
        }
        if self.start < tenant_start || self.end > tenant_end {
            return Err(format!(
                "range [{}, {}) is not inside tenant {}'s range [{}, {})",
                printable_key(&self.start),
                printable_key(&self.end),
                self.tenant,
                printable_key(&tenant_start),
                printable_key(&tenant_end)
            ));
        }
        Ok(())
    }

    /// The record the meta group stores for the shard (docs/FORMATS.md, "Shard map
    /// records"): the format version byte, then the fields, big-endian.
    ///
    /// ```text
    /// 1 version | 8 id | 4 tenant | 8 conf_ver | 8 version | 4 start_len | start
    /// | 4 end_len | end | 1 replica count | per replica: 8 node, 1 role (1 voter, 2 learner)
    /// ```
    ///
    /// 38 bytes plus the two keys and 9 per replica: 105 bytes for a 3-replica shard with
    /// 20-byte keys. There is no checksum of its own: the record is stored as a value (whose
    /// header carries a crc32) or inside a checksummed Raft entry.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(self.validate().is_ok(), "encoding an invalid descriptor");
        let mut w = Writer::default();
        w.buf.reserve(38 + self.start.len() + self.end.len() + 9 * self.replicas.len());
        w.u8(SHARD_DESC_FORMAT_V1);
        w.u64(self.id);
        w.u32(self.tenant);
        w.u64(self.epoch.conf_ver);
        w.u64(self.epoch.version);
        w.bytes(&self.start);
        w.bytes(&self.end);
        // A valid descriptor has at most REPLICAS_MAX (< 256) replicas.
        w.u8(u8::try_from(self.replicas.len()).unwrap_or(u8::MAX));
        for replica in &self.replicas {
            w.u64(replica.node);
            w.u8(match replica.role {
                ReplicaRole::Voter => ROLE_VOTER,
                ReplicaRole::Learner => ROLE_LEARNER,
            });
        }
        w.buf
    }

    /// Decodes a record written by [`ShardDesc::encode`]. Strict: an unknown version, a
    /// truncated field, trailing bytes or a descriptor that does not validate are errors
    /// naming the field. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<ShardDesc, DecodeError> {
        let mut r = Reader::new(bytes, WHAT);
        let version = field(r.u8(), "format version")?;
        if version != SHARD_DESC_FORMAT_V1 {
            return Err(corrupt(format!("unknown format version {version}")));
        }
        let id = field(r.u64(), "id")?;
        let tenant = field(r.u32(), "tenant")?;
        let conf_ver = field(r.u64(), "epoch.conf_ver")?;
        let version = field(r.u64(), "epoch.version")?;
        let start = field(r.bytes(), "start")?.to_vec();
        let end = field(r.bytes(), "end")?.to_vec();
        let count = usize::from(field(r.u8(), "replica count")?);
        if count > REPLICAS_MAX {
            return Err(corrupt(format!("replica count: {count} exceeds the limit of {REPLICAS_MAX}")));
        }
        let mut replicas = Vec::with_capacity(count);
        for i in 0..count {
            let node = field(r.u64(), "replica node")?;
            let role = match field(r.u8(), "replica role")? {
                ROLE_VOTER => ReplicaRole::Voter,
                ROLE_LEARNER => ReplicaRole::Learner,
                other => return Err(corrupt(format!("replica {i} role: unknown code {other}"))),
            };
            replicas.push(Replica { node, role });
        }
        r.finish()?;
        let desc = ShardDesc { id, tenant, start, end, replicas, epoch: Epoch { conf_ver, version } };
        desc.validate().map_err(|reason| corrupt(format!("invalid descriptor: {reason}")))?;
        Ok(desc)
    }
}

impl fmt::Display for ShardDesc {
    /// `shard 7 (tenant 5) [t5/tb3/ruser1, t6) conf_ver 1 version 2 replicas 1,2,3L`, where
    /// `L` marks a learner.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shard {} (tenant {}) [{}, {}) {} replicas ",
            self.id,
            self.tenant,
            printable_key(&self.start),
            printable_key(&self.end),
            self.epoch
        )?;
        for (i, replica) in self.replicas.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let role = match replica.role {
                ReplicaRole::Voter => "",
                ReplicaRole::Learner => "L",
            };
            write!(f, "{sep}{}{role}", replica.node)?;
        }
        Ok(())
    }
}

/// Checks a replica list: 1 to [`REPLICAS_MAX`], no node twice, node ids ≥ 1, a voter.
pub(crate) fn check_replicas(replicas: &[Replica]) -> Result<(), String> {
    if replicas.is_empty() {
        return Err("no replicas".to_owned());
    }
    if replicas.len() > REPLICAS_MAX {
        return Err(format!("{} replicas exceed the limit of {REPLICAS_MAX}", replicas.len()));
    }
    for (i, replica) in replicas.iter().enumerate() {
        if replica.node == 0 {
            return Err("node id 0 is not a node".to_owned());
        }
        if replicas[..i].iter().any(|r| r.node == replica.node) {
            return Err(format!("node {} holds two replicas", replica.node));
        }
    }
    if !replicas.iter().any(|r| r.role == ReplicaRole::Voter) {
        return Err("no voter".to_owned());
    }
    Ok(())
}

/// The `what` of every decoding error of the record.
const WHAT: &str = "shard descriptor";

fn corrupt(reason: String) -> DecodeError {
    DecodeError { what: WHAT, reason }
}

/// Names the field in an error of a [`Reader`] call.
fn field<T>(read: Result<T, DecodeError>, name: &str) -> Result<T, DecodeError> {
    read.map_err(|err| corrupt(format!("{name}: {}", err.reason)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kho_engine::keys::{row_prefix, table_prefix};
    use proptest::prelude::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn desc(id: ShardId, tenant: TenantId, start: &[u8], end: &[u8]) -> ShardDesc {
        ShardDesc {
            id,
            tenant,
            start: start.to_vec(),
            end: end.to_vec(),
            replicas: vec![Replica::voter(1), Replica::voter(2), Replica::learner(3)],
            epoch: Epoch { conf_ver: 2, version: 3 },
        }
    }

    /// The worked example of docs/FORMATS.md, "Shard map records".
    #[test]
    fn worked_example_matches_the_format_document() {
        let d = desc(7, 5, &row_prefix(5, 3, b"ab"), &table_prefix(5, 4));
        let bytes = d.encode();
        let expected = [
            "01",                   // format version
            "0000000000000007",     // id 7
            "00000005",             // tenant 5
            "0000000000000002",     // conf_ver 2
            "0000000000000003",     // version 3
            "0000000c",             // start_len 12
            "00000005000000036162", // start: tenant 5, table 3, row "ab"
            "0001",                 //        row terminator
            "00000008",             // end_len 8
            "0000000500000004",     // end: tenant 5, table 4
            "03",                   // 3 replicas
            "000000000000000101",   // node 1 voter
            "000000000000000201",   // node 2 voter
            "000000000000000302",   // node 3 learner
        ]
        .concat();
        assert_eq!(hex(&bytes), expected);
        assert_eq!(bytes.len(), 38 + 12 + 8 + 27);
        assert_eq!(ShardDesc::decode(&bytes).expect("decodes"), d);
        assert_eq!(d.to_string(), "shard 7 (tenant 5) [t5/tb3/rab, t5/tb4) conf_ver 2 version 3 replicas 1,2,3L");
    }

    #[test]
    fn typical_record_size() {
        // 3 replicas, 20-byte keys: the size docs/FORMATS.md gives per shard.
        let start = row_prefix(5, 3, b"0123456789");
        let end = row_prefix(5, 3, b"9876543210");
        assert_eq!((start.len(), end.len()), (20, 20));
        let mut d = desc(7, 5, &start, &end);
        d.replicas = vec![Replica::voter(1), Replica::voter(2), Replica::voter(3)];
        assert_eq!(d.encode().len(), 105);
    }

    #[test]
    fn tenant_ranges() {
        assert_eq!(tenant_range(5), Some((vec![0, 0, 0, 5], vec![0, 0, 0, 6])));
        assert_eq!(tenant_range(0x00ff_ffff), Some((vec![0, 0xff, 0xff, 0xff], vec![1, 0, 0, 0])));
        assert_eq!(tenant_range(u32::MAX), None);
        assert!(tenant_range(TENANT_ID_MAX).is_some());
    }

    #[test]
    fn epoch_staleness() {
        let e = |conf_ver, version| Epoch { conf_ver, version };
        assert!(e(1, 1).is_stale_against(&e(1, 2)));
        assert!(e(1, 1).is_stale_against(&e(2, 1)));
        assert!(!e(1, 1).is_stale_against(&e(1, 1)));
        assert!(!e(2, 2).is_stale_against(&e(1, 2)));
        // Incomparable epochs (never both seen for one key) are stale both ways.
        assert!(e(2, 1).is_stale_against(&e(1, 2)) && e(1, 2).is_stale_against(&e(2, 1)));
    }

    #[test]
    fn contains_and_roles() {
        let d = desc(7, 5, &table_prefix(5, 3), &table_prefix(5, 4));
        assert!(d.contains(&table_prefix(5, 3)));
        assert!(d.contains(&row_prefix(5, 3, b"")));
        assert!(!d.contains(&table_prefix(5, 4)));
        assert!(!d.contains(&[0, 0, 0, 5]));
        assert!(d.intersects(&[0, 0, 0, 5], &row_prefix(5, 3, b"")));
        assert!(!d.intersects(&[0, 0, 0, 5], &table_prefix(5, 3)));
        assert!(!d.intersects(&table_prefix(5, 4), &table_prefix(5, 3)));
        assert_eq!(d.voters().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(d.learners().collect::<Vec<_>>(), vec![3]);
        let mut other = d.clone();
        other.replicas.reverse();
        assert!(d.same_replica_set(&other));
        other.replicas[0].role = ReplicaRole::Voter;
        assert!(!d.same_replica_set(&other));
    }

    #[test]
    fn validate_names_each_rule() {
        let good = desc(7, 5, &table_prefix(5, 3), &[0, 0, 0, 6]);
        assert_eq!(good.validate(), Ok(()));
        // Each case: a change that breaks one rule, and what the error must say.
        type Change = Box<dyn Fn(&mut ShardDesc)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|d| d.id = 0), "meta group"),
            (Box::new(|d| d.tenant = 0), "tenant 0 cannot"),
            (Box::new(|d| d.tenant = u32::MAX), "cannot have data shards"),
            (Box::new(|d| d.tenant = 4), "not inside tenant 4"),
            (Box::new(|d| d.end = d.start.clone()), "empty range"),
            (Box::new(|d| d.end = vec![0, 0, 0, 6, 0]), "not inside"),
            (Box::new(|d| d.start = vec![0, 0, 0, 4, 0xff]), "not inside"),
            (Box::new(|d| d.start = vec![0; BOUNDARY_BYTES_MAX + 1]), "start is"),
            (Box::new(|d| d.replicas.clear()), "no replicas"),
            (Box::new(|d| d.replicas[1].node = 1), "node 1 holds two replicas"),
            (Box::new(|d| d.replicas[1].node = 0), "node id 0"),
            (Box::new(|d| d.replicas = vec![Replica::learner(1)]), "no voter"),
            (Box::new(|d| d.replicas = (1..=8).map(Replica::voter).collect()), "exceed the limit"),
        ];
        for (change, reason) in cases {
            let mut bad = good.clone();
            change(&mut bad);
            let err = bad.validate().expect_err(reason);
            assert!(err.contains(reason), "{err:?} does not say {reason:?}");
        }
    }

    #[test]
    fn decode_names_the_field() {
        let d = desc(7, 5, &row_prefix(5, 3, b"ab"), &table_prefix(5, 4));
        let bytes = d.encode();
        let err = |bytes: &[u8]| ShardDesc::decode(bytes).expect_err("refused").to_string();
        assert_eq!(err(&[]), "corrupt shard descriptor: format version: truncated: need 1 bytes, have 0");
        assert_eq!(err(&[2]), "corrupt shard descriptor: unknown format version 2");
        assert!(err(&bytes[..30]).contains("start: truncated"));
        assert!(err(&bytes[..bytes.len() - 1]).contains("replica role: truncated"));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(err(&trailing).contains("1 trailing bytes"));
        let mut bad_role = bytes.clone();
        *bad_role.last_mut().expect("non-empty") = 9;
        assert!(err(&bad_role).contains("replica 2 role: unknown code 9"));
        let mut many = bytes.clone();
        many[bytes.len() - 28] = 8;
        assert!(err(&many).contains("replica count: 8 exceeds"));
        let mut meta = bytes.clone();
        meta[8] = 0;
        assert!(err(&meta).contains("invalid descriptor: shard id 0"));
    }

    /// Keys inside tenant 5: the tenant boundary, table boundaries and row boundaries.
    fn boundary_in_tenant_5() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(vec![0, 0, 0, 5]),
            (0u32..4).prop_map(|table| table_prefix(5, table)),
            (0u32..4, prop::collection::vec(any::<u8>(), 0..24)).prop_map(|(table, row)| row_prefix(5, table, &row)),
        ]
    }

    fn valid_desc() -> impl Strategy<Value = ShardDesc> {
        (
            1u64..u64::MAX,
            boundary_in_tenant_5(),
            prop::option::of(boundary_in_tenant_5()),
            prop::sample::subsequence((1u64..=7).collect::<Vec<_>>(), 1..=REPLICAS_MAX),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_filter_map("empty range", |(id, a, b, nodes, conf_ver, version)| {
                let end = b.unwrap_or_else(|| vec![0, 0, 0, 6]);
                (a < end).then(|| ShardDesc {
                    id,
                    tenant: 5,
                    start: a,
                    end,
                    replicas: nodes
                        .iter()
                        .enumerate()
                        .map(|(i, &node)| Replica {
                            node,
                            role: if i == 0 || node % 2 == 0 { ReplicaRole::Voter } else { ReplicaRole::Learner },
                        })
                        .collect(),
                    epoch: Epoch { conf_ver, version },
                })
            })
    }

    proptest! {
        #[test]
        fn record_round_trips(d in valid_desc()) {
            prop_assert_eq!(d.validate(), Ok(()));
            let bytes = d.encode();
            prop_assert_eq!(bytes.len(), 38 + d.start.len() + d.end.len() + 9 * d.replicas.len());
            prop_assert_eq!(ShardDesc::decode(&bytes).expect("decodes"), d);
        }

        #[test]
        fn decode_of_any_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..160)) {
            if let Ok(d) = ShardDesc::decode(&bytes) {
                // Strict: whatever decodes is valid and re-encodes to the same bytes.
                prop_assert_eq!(d.validate(), Ok(()));
                prop_assert_eq!(d.encode(), bytes);
            }
        }

        #[test]
        fn decode_of_a_mutated_record_never_panics(
            d in valid_desc(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = d.encode();
            for (at, byte) in flips {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            if let Ok(d) = ShardDesc::decode(&bytes) {
                prop_assert_eq!(d.encode(), bytes);
            }
        }
    }
}
