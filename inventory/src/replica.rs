//! What the mesh needs from a node's copy of the records. The SQLite
//! [`crate::Store`] implements it for real nodes, [`MemoryReplica`] for the
//! simulation and unit tests.

use crate::digest::{DigestIndex, OriginDigest, RootDigest};
use crate::record::{Record, RecordKey, Version};
use std::collections::{BTreeMap, HashMap};

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

/// An in-memory replica.
#[derive(Debug, Clone, Default)]
pub struct MemoryReplica {
    records: HashMap<RecordKey, Record>,
    digest: DigestIndex,
}

impl MemoryReplica {
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

    fn apply(&mut self, records: Vec<Record>, now: Version) -> Result<Vec<Record>, Self::Error> {
        let mut applied = Vec::new();
        for record in records {
            let old = self.records.get(&record.id);
            if refusal(old, &record, now).is_some()
                || old.is_some_and(|old| !record.supersedes(old))
            {
                continue;
            }
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

    #[test]
    fn memory_replicas_apply_the_mesh_rules() {
        let record = |origin: &str, version| Record {
            id: RecordKey::new(RecordKind::Port, "leaf1/swp1"),
            origin: origin.into(),
            version,
            value: Some("{}".into()),
        };
        let now = 1_000 << 32;
        let mut replica = MemoryReplica::default();
        assert_eq!(
            replica.apply(vec![record("leaf1", 5)], now).unwrap().len(),
            1
        );
        let future = now + (3600 << 32);
        assert!(
            replica
                .apply(vec![record("leaf2", 6), record("leaf1", future)], now)
                .unwrap()
                .is_empty()
        );
        // The same version is accepted once the (passed-in) clock reaches it.
        assert_eq!(
            replica
                .apply(vec![record("leaf1", future)], future)
                .unwrap()
                .len(),
            1
        );
    }
}
