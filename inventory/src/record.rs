//! The replicated unit. Every fact in the data center is one record with one
//! writer (its `origin`); the highest version wins, which with one writer per
//! key only has to settle restarts of that writer.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A timestamp as a 64-bit NTP-style value that never repeats per node; see
/// [`crate::clock`]. Larger is newer.
pub type Version = u64;

/// Largest value a record may carry, encoded; bigger writes are refused so one
/// record cannot monopolise gossip.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest key or origin name.
pub const MAX_NAME_BYTES: usize = 256;

/// What a record describes, and therefore who may write it (the table is
/// [`crate::trust::rules`]).
///
/// On the wire and on disk a kind is its name, so a node stores and relays
/// kinds a newer build added ([`RecordKind::Other`]) without understanding
/// them: a mesh is upgraded one node at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKind {
    // Written by the leaf agents.
    Switch,
    Port,
    Machine,
    Lease,
    // Written by the API tier.
    Project,
    Network,
    Ip,
    Image,
    Size,
    Partition,
    AllocationIntent,
    /// An admin's hold on a machine: locked, or kept for one project.
    Reservation,
    // Mesh trust: a node's certificates (written by that node), and a
    // revocation (signed by the mesh CA).
    Node,
    Revocation,
    /// A kind this build does not know.
    Other(KindName),
}

/// The name of a kind this build does not know: lowercase letters, digits
/// and '-', at most [`KindName::MAX`] bytes (kept inline so kinds stay `Copy`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KindName {
    len: u8,
    bytes: [u8; KindName::MAX],
}

impl KindName {
    pub const MAX: usize = 32;

    pub fn new(name: &str) -> Option<KindName> {
        let valid = !name.is_empty()
            && name.len() <= KindName::MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return None;
        }
        let mut bytes = [0; KindName::MAX];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Some(KindName {
            len: name.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from a checked ASCII `&str`.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Debug for KindName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl RecordKind {
    /// The kinds this build knows.
    pub const ALL: [RecordKind; 14] = [
        RecordKind::Switch,
        RecordKind::Port,
        RecordKind::Machine,
        RecordKind::Lease,
        RecordKind::Project,
        RecordKind::Network,
        RecordKind::Ip,
        RecordKind::Image,
        RecordKind::Size,
        RecordKind::Partition,
        RecordKind::AllocationIntent,
        RecordKind::Reservation,
        RecordKind::Node,
        RecordKind::Revocation,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            RecordKind::Switch => "switch",
            RecordKind::Port => "port",
            RecordKind::Machine => "machine",
            RecordKind::Lease => "lease",
            RecordKind::Project => "project",
            RecordKind::Network => "network",
            RecordKind::Ip => "ip",
            RecordKind::Image => "image",
            RecordKind::Size => "size",
            RecordKind::Partition => "partition",
            RecordKind::AllocationIntent => "allocation-intent",
            RecordKind::Reservation => "reservation",
            RecordKind::Node => "node",
            RecordKind::Revocation => "revocation",
            RecordKind::Other(name) => name.as_str(),
        }
    }

    /// A kind this build knows, by name (what a user may ask for).
    pub fn parse(text: &str) -> Option<RecordKind> {
        RecordKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }

    /// Any well-formed kind name as it arrives from the wire or the disk:
    /// names this build does not know become [`RecordKind::Other`].
    pub fn from_name(text: &str) -> Option<RecordKind> {
        RecordKind::parse(text).or_else(|| KindName::new(text).map(RecordKind::Other))
    }

    pub fn is_known(&self) -> bool {
        !matches!(self, RecordKind::Other(_))
    }

    /// Records the API tier writes and agents act on.
    pub fn is_api_owned(&self) -> bool {
        crate::trust::rules::writers(*self)
            .is_some_and(|rule| rule.roles == crate::trust::rules::API_ONLY)
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RecordKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RecordKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        RecordKind::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "record kind {name:?}: not lowercase letters, digits and '-' of at most {} bytes",
                KindName::MAX
            ))
        })
    }
}

/// `(kind, key)` names a record across the whole mesh.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordKey {
    pub kind: RecordKind,
    pub key: String,
}

impl RecordKey {
    pub fn new(kind: RecordKind, key: impl Into<String>) -> RecordKey {
        RecordKey {
            kind,
            key: key.into(),
        }
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.key)
    }
}

/// One replicated fact. `value` is JSON text so every node can store and
/// forward kinds it does not understand yet; `None` is a deletion (kept as a
/// tombstone so the deletion replicates too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: RecordKey,
    pub origin: String,
    pub version: Version,
    pub value: Option<String>,
    /// The origin's signature over all of the above (see
    /// [`crate::trust::signing`]); empty on a store that is not in a mesh.
    #[serde(default, with = "signature_hex")]
    pub signature: Vec<u8>,
}

/// Signatures as hex in JSON (readable in conformance cases and admin
/// output), as bytes in the binary wire format.
mod signature_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            serializer.serialize_str(&text)
        } else {
            serializer.serialize_bytes(bytes)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            if text.len() % 2 != 0 {
                return Err(serde::de::Error::custom("odd-length hex signature"));
            }
            (0..text.len())
                .step_by(2)
                .map(|i| {
                    u8::from_str_radix(text.get(i..i + 2).unwrap_or("zz"), 16)
                        .map_err(|_| serde::de::Error::custom("signature is not hex"))
                })
                .collect()
        } else {
            serde_bytes_vec(deserializer)
        }
    }

    fn serde_bytes_vec<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(byte) = seq.next_element::<u8>()? {
                    if out.len() >= super::MAX_SIGNATURE_BYTES {
                        return Err(serde::de::Error::custom("signature too long"));
                    }
                    out.push(byte);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
}

/// Longest signature a record may carry.
pub const MAX_SIGNATURE_BYTES: usize = 128;

impl Record {
    /// Whether `self` should replace `other` (same id): higher version wins;
    /// equal versions from different origins are ordered by origin so every
    /// replica picks the same one.
    pub fn supersedes(&self, other: &Record) -> bool {
        (self.version, &self.origin) > (other.version, &other.origin)
    }

    /// Checks the limits every received record must meet.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.key.is_empty() || self.id.key.len() > MAX_NAME_BYTES {
            return Err(format!("record key of {} bytes", self.id.key.len()));
        }
        if self.origin.is_empty() || self.origin.len() > MAX_NAME_BYTES {
            return Err(format!("record origin of {} bytes", self.origin.len()));
        }
        if self.signature.len() > MAX_SIGNATURE_BYTES {
            return Err(format!("signature of {} bytes", self.signature.len()));
        }
        if let Some(value) = &self.value
            && value.len() > MAX_VALUE_BYTES
        {
            return Err(format!(
                "{}: value of {} bytes exceeds {MAX_VALUE_BYTES}",
                self.id,
                value.len()
            ));
        }
        Ok(())
    }

    /// The contribution of this record's identity and version to digests.
    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.id, self.version)
    }
}

/// A stable 64-bit hash of `(kind, key, version)` (FNV-1a, then a final mix):
/// stable across builds and platforms, which `std`'s hasher is not.
pub fn fingerprint(id: &RecordKey, version: Version) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(id.kind.as_str().as_bytes());
    eat(&[0]);
    eat(id.key.as_bytes());
    eat(&[0]);
    eat(&version.to_be_bytes());
    // splitmix64 finaliser: spreads FNV's weak low bits before digests add.
    let mut z = hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: Version, origin: &str) -> Record {
        Record {
            id: RecordKey::new(RecordKind::Switch, "leaf1"),
            origin: origin.into(),
            version,
            value: Some("{}".into()),
            signature: vec![7; 72],
        }
    }

    #[test]
    fn newer_version_wins_and_ties_are_ordered_by_origin() {
        assert!(record(2, "a").supersedes(&record(1, "b")));
        assert!(!record(1, "b").supersedes(&record(2, "a")));
        assert!(record(1, "b").supersedes(&record(1, "a")));
        assert!(!record(1, "a").supersedes(&record(1, "a")));
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in RecordKind::ALL {
            assert_eq!(RecordKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(RecordKind::parse("machines"), None);
    }

    #[test]
    fn fingerprints_are_stable_and_distinct() {
        const PINNED: u64 = 13_128_713_144_839_224_742;
        let id = RecordKey::new(RecordKind::Port, "leaf1/m1-1");
        assert_eq!(fingerprint(&id, 7), fingerprint(&id, 7));
        assert_ne!(fingerprint(&id, 7), fingerprint(&id, 8));
        assert_ne!(
            fingerprint(&id, 7),
            fingerprint(&RecordKey::new(RecordKind::Port, "leaf1/m1-2"), 7)
        );
        // Pinned: digests are compared between builds.
        assert_eq!(
            fingerprint(&RecordKey::new(RecordKind::Switch, "a"), 1),
            PINNED
        );
    }

    #[test]
    fn oversized_values_are_refused() {
        let mut big = record(1, "a");
        big.value = Some("x".repeat(MAX_VALUE_BYTES + 1));
        assert!(big.validate().is_err());
        assert!(record(1, "a").validate().is_ok());
    }
}
