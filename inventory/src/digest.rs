//! Order-independent summaries of a replica, kept up to date on every write,
//! so anti-entropy can tell in one comparison whether two replicas agree and,
//! when not, which writers' records differ.

use crate::record::{Record, RecordKey, Version, fingerprint};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a replica holds from one origin: how many records and the wrapping
/// sum of their fingerprints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginDigest {
    pub count: u64,
    pub hash: u64,
}

/// The digest of a whole replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootDigest {
    pub count: u64,
    pub hash: u64,
}

#[derive(Debug, Clone, Default)]
pub struct DigestIndex {
    origins: BTreeMap<String, OriginDigest>,
    root: RootDigest,
}

impl DigestIndex {
    pub fn add(&mut self, origin: &str, id: &RecordKey, version: Version) {
        let print = fingerprint(id, version);
        let entry = self.origins.entry(origin.to_string()).or_default();
        entry.count += 1;
        entry.hash = entry.hash.wrapping_add(print);
        self.root.count += 1;
        self.root.hash = self.root.hash.wrapping_add(print);
    }

    pub fn remove(&mut self, origin: &str, id: &RecordKey, version: Version) {
        let print = fingerprint(id, version);
        if let Some(entry) = self.origins.get_mut(origin) {
            entry.count = entry.count.saturating_sub(1);
            entry.hash = entry.hash.wrapping_sub(print);
            if entry.count == 0 {
                self.origins.remove(origin);
            }
        }
        self.root.count = self.root.count.saturating_sub(1);
        self.root.hash = self.root.hash.wrapping_sub(print);
    }

    /// Accounts for `new` replacing `old` (if any).
    pub fn replace(&mut self, old: Option<&Record>, new: &Record) {
        if let Some(old) = old {
            self.remove(&old.origin, &old.id, old.version);
        }
        self.add(&new.origin, &new.id, new.version);
    }

    pub fn root(&self) -> RootDigest {
        self.root
    }

    pub fn origins(&self) -> &BTreeMap<String, OriginDigest> {
        &self.origins
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;

    #[test]
    fn digest_depends_on_content_not_order() {
        let a = RecordKey::new(RecordKind::Port, "a");
        let b = RecordKey::new(RecordKind::Port, "b");
        let mut one = DigestIndex::default();
        one.add("x", &a, 1);
        one.add("y", &b, 2);
        let mut two = DigestIndex::default();
        two.add("y", &b, 2);
        two.add("x", &a, 1);
        assert_eq!(one.root(), two.root());
        two.remove("x", &a, 1);
        two.add("x", &a, 3);
        assert_ne!(one.root(), two.root());
        assert_eq!(one.origins()["y"], two.origins()["y"]);
        assert_ne!(one.origins()["x"], two.origins()["x"]);
    }
}
