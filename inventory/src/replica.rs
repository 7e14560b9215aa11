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
    /// those (the rest were old news).
    fn apply(&mut self, records: Vec<Record>) -> Result<Vec<Record>, Self::Error>;
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

    fn apply(&mut self, records: Vec<Record>) -> Result<Vec<Record>, Self::Error> {
        let mut applied = Vec::new();
        for record in records {
            let old = self.records.get(&record.id);
            if old.is_some_and(|old| !record.supersedes(old)) {
                continue;
            }
            self.digest.replace(old, &record);
            self.records.insert(record.id.clone(), record.clone());
            applied.push(record);
        }
        Ok(applied)
    }
}
