//! What the mesh needs from a node's copy of the records. The SQLite
//! [`crate::Store`] implements it for real nodes, [`MemoryReplica`] for the
//! simulation and unit tests.

#[cfg(feature = "node")]
use crate::digest::DigestIndex;
use crate::digest::{OriginDigest, RootDigest};
use crate::record::{Record, RecordKey, RecordKind, Version};
use std::collections::BTreeMap;
#[cfg(feature = "node")]
use std::collections::HashMap;

pub trait Replica {
    type Error: std::fmt::Display;

    fn root_digest(&self) -> RootDigest;
    fn origin_digests(&self) -> BTreeMap<String, OriginDigest>;
    /// Every record id this replica holds from `origin`, with its version.
    fn versions_of(&self, origin: &str) -> Result<Vec<(RecordKey, Version)>, Self::Error>;
    /// The records with these ids that this replica has.
    fn records(&self, ids: &[RecordKey]) -> Result<Vec<Record>, Self::Error>;
    /// Stores the records that supersede what this replica holds and returns
    /// those (the rest were old news). `now` is the wall clock as a version,
    /// for the future-version rule.
    fn apply(&mut self, records: Vec<Record>, now: Version) -> Result<Vec<Record>, Self::Error>;
}

/// Why a record may not be stored over `stored` (what the replica holds of
/// its key), whoever sent it; `None` when it may (if it supersedes). Every
/// replica applies these rules, so the simulation and the fuzzer exercise
/// what real nodes do.
pub fn refusal(stored: Option<&Record>, record: &Record, now: Version) -> Option<&'static str> {
    if record.validate().is_err() {
        // An empty or oversized key, origin or value; the wire decoder
        // drops these too, but a replica never trusts its caller for it.
        Some("the record breaks a size limit")
    } else if record.version > now.saturating_add(crate::clock::MAX_DRIFT_VERSION) {
        // It would pin the key against its writer.
        Some("version too far in the future")
    } else if stored.is_some_and(|stored| stored.origin != record.origin) {
        // One writer per key.
        Some("the key belongs to another origin")
    } else {
        None
    }
}

/// Checks a received record that supersedes what the replica holds
/// (`stored`): the structural rules of [`refusal`], then its signature and
/// writer against `keyring` (which counts what it refuses). On success,
/// what the keyring learns once the record is stored.
#[cfg(feature = "node")]
pub fn admit(
    keyring: &mut crate::trust::Keyring,
    stored: Option<&Record>,
    record: &Record,
    now: Version,
    origin_records: u64,
) -> Result<crate::trust::Learned, Refused> {
    if let Some(reason) = refusal(stored, record, now) {
        return Err(Refused::Rule(reason));
    }
    let learned = keyring
        .check(record, origin_records)
        .map_err(Refused::Trust)?;
    if !record.id.kind.is_known() {
        keyring.count_opaque();
    }
    Ok(learned)
}

/// Why [`admit`] refused a record.
#[cfg(feature = "node")]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Rule(&'static str),
    #[error(transparent)]
    Trust(crate::trust::Refusal),
}

#[cfg(feature = "node")]
impl Refused {
    /// Expected while a node joins (its node record not here yet), or a
    /// peer's copy predates a key change: anti-entropy brings the rest.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Refused::Trust(crate::trust::Refusal::UnknownSigner { .. })
        )
    }
}

/// Orders a batch so the records that teach keys (node records, then
/// revocations) are checked before the records they sign.
pub fn keys_first(records: &mut [Record]) {
    records.sort_by_key(|record| match record.id.kind {
        RecordKind::Node => 0,
        RecordKind::Revocation => 1,
        _ => 2,
    });
}

/// An in-memory replica, checking what it receives like the SQLite store.
#[cfg(feature = "node")]
#[derive(Debug, Clone)]
pub struct MemoryReplica {
    records: HashMap<RecordKey, Record>,
    digest: DigestIndex,
    keyring: crate::trust::Keyring,
}

#[cfg(feature = "node")]
impl MemoryReplica {
    pub fn new(keyring: crate::trust::Keyring) -> MemoryReplica {
        MemoryReplica {
            records: HashMap::new(),
            digest: DigestIndex::default(),
            keyring,
        }
    }

    pub fn keyring(&self) -> &crate::trust::Keyring {
        &self.keyring
    }

    /// Stores a record this node wrote (already signed), bypassing the
    /// checks for received records.
    pub fn put_own(&mut self, record: Record) {
        let old = self.records.get(&record.id);
        self.digest.replace(old, &record);
        self.records.insert(record.id.clone(), record);
    }

    pub fn get(&self, id: &RecordKey) -> Option<&Record> {
        self.records.get(id)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(feature = "node")]
impl Replica for MemoryReplica {
    type Error = std::convert::Infallible;

    fn root_digest(&self) -> RootDigest {
        self.digest.root()
    }

    fn origin_digests(&self) -> BTreeMap<String, OriginDigest> {
        self.digest.origins().clone()
    }

    fn versions_of(&self, origin: &str) -> Result<Vec<(RecordKey, Version)>, Self::Error> {
        Ok(self
            .records
            .values()
            .filter(|record| record.origin == origin)
            .map(|record| (record.id.clone(), record.version))
            .collect())
    }

    fn records(&self, ids: &[RecordKey]) -> Result<Vec<Record>, Self::Error> {
        Ok(ids
            .iter()
            .filter_map(|id| self.records.get(id).cloned())
            .collect())
    }

    fn apply(
        &mut self,
        mut records: Vec<Record>,
        now: Version,
    ) -> Result<Vec<Record>, Self::Error> {
        keys_first(&mut records);
        let mut applied = Vec::new();
        for record in records {
            let old = self.records.get(&record.id);
            if old.is_some_and(|old| !record.supersedes(old)) {
                continue;
            }
            let origin_records = self
                .digest
                .origins()
                .get(&record.origin)
                .map_or(0, |digest| digest.count);
            let Ok(learned) = admit(&mut self.keyring, old, &record, now, origin_records) else {
                continue;
            };
            self.keyring.learn(learned);
            let old = self.records.get(&record.id);
            self.digest.replace(old, &record);
            self.records.insert(record.id.clone(), record.clone());
            applied.push(record);
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;
    use crate::trust::Role;
    use crate::trust::test_support::{TestCa, node_record, signed};

    #[test]
    fn memory_replicas_apply_the_mesh_rules() {
        let ca = TestCa::new();
        let (leaf1, leaf2) = (ca.trust("leaf1", Role::Leaf), ca.trust("leaf2", Role::Leaf));
        let api = ca.trust("api", Role::Api);
        let mut replica = MemoryReplica::new(api.keyring.clone());
        let now = crate::clock::now_version();
        let port = |trust, origin: &str, key: &str, version| {
            signed(trust, RecordKind::Port, key, origin, version, Some("{}"))
        };
        // Unknown signer until its node record arrives; in one batch the
        // node record is taken first.
        let first = port(&leaf1, "leaf1", "leaf1/swp1", 5);
        assert!(replica.apply(vec![first.clone()], now).unwrap().is_empty());
        let applied = replica
            .apply(vec![first.clone(), node_record(&leaf1, 1)], now)
            .unwrap();
        assert_eq!(applied.len(), 2);
        replica.apply(vec![node_record(&leaf2, 1)], now).unwrap();
        let before = replica.keyring().counters();
        assert_eq!(before.unknown_signer, 1);

        let mut tampered = port(&leaf1, "leaf1", "leaf1/swp2", 6);
        tampered.value = Some("{\"up\":true}".into());
        let mut unsigned = port(&leaf1, "leaf1", "leaf1/swp3", 6);
        unsigned.signature.clear();
        let refused = vec![
            // Another leaf's keys, its role's kinds, its name.
            port(&leaf2, "leaf2", "leaf1/swp9", 6),
            signed(&leaf2, RecordKind::Network, "n1", "leaf2", 6, Some("{}")),
            port(&leaf2, "leaf1", "leaf1/swp4", 6),
            tampered,
            unsigned,
            // Too far in the future.
            port(&leaf1, "leaf1", "leaf1/swp5", now + (3600 << 32)),
            // A revocation only the CA signs.
            signed(
                &leaf2,
                RecordKind::Revocation,
                "leaf1",
                crate::trust::CA_ORIGIN,
                7,
                Some("{\"node\":\"leaf1\"}"),
            ),
        ];
        assert!(replica.apply(refused, now).unwrap().is_empty());
        let counters = replica.keyring().counters();
        assert_eq!(counters.wrong_writer, 2, "{counters:?}");
        assert_eq!(
            counters.unknown_signer,
            before.unknown_signer + 2,
            "{counters:?}"
        );
        assert_eq!(counters.bad_signature, 1, "{counters:?}");
        assert_eq!(counters.unsigned, 1, "{counters:?}");

        // A kind this build does not know is kept as it is.
        let flavor = RecordKind::from_name("flavor").unwrap();
        let future_kind = signed(&leaf1, flavor, "leaf1/x", "leaf1", 8, Some("{}"));
        assert_eq!(replica.apply(vec![future_kind], now).unwrap().len(), 1);
        assert_eq!(replica.keyring().counters().opaque_stored, 1);
        // The same version is accepted once the (passed-in) clock reaches it.
        let ahead = port(&leaf1, "leaf1", "leaf1/swp5", now + (3600 << 32));
        assert_eq!(
            replica
                .apply(vec![ahead], now + (3600 << 32))
                .unwrap()
                .len(),
            1
        );
    }
}
