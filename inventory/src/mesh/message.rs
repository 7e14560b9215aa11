//! What mesh nodes say to each other, and its wire encoding (postcard, one
//! message per QUIC stream). Every decode is bounded: a message larger than
//! [`MAX_MESSAGE_BYTES`] is not read, one that does not decode or breaks a
//! record limit is dropped whole.

use crate::digest::{OriginDigest, RootDigest};
use crate::mesh::peer::Peer;
use crate::record::{Record, RecordKey, Version};
use serde::{Deserialize, Serialize};

/// Largest encoded message a node reads.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Encoded record bytes a node packs into one message before starting the next.
pub const RECORDS_PER_MESSAGE_BYTES: usize = 256 * 1024;
/// Wire format version; a node drops messages of other versions. Version 2
/// carries record signatures and kinds as names.
pub const WIRE_VERSION: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u8,
    pub from: Peer,
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A SWIM packet (membership and failure detection).
    Swim(Vec<u8>),
    /// Records being disseminated: new to the sender, forwarded on.
    Records(Vec<Record>),
    /// Anti-entropy step 1: "this is what my whole replica looks like".
    SyncRoot(RootDigest),
    /// Step 2 (replica differs): the responder's digest per origin.
    SyncOrigins(Vec<(String, OriginDigest)>),
    /// Step 3: for each differing origin, every record id and version the
    /// initiator holds.
    SyncVersions(Vec<(String, Vec<(RecordKey, Version)>)>),
    /// Step 4: records the responder needs from the initiator.
    SyncWant(Vec<RecordKey>),
    /// Steps 4 and 5: records that fill the other side's gaps.
    SyncRecords(Vec<Record>),
}

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Message::Swim(_) => "swim",
            Message::Records(_) => "records",
            Message::SyncRoot(_) => "sync-root",
            Message::SyncOrigins(_) => "sync-origins",
            Message::SyncVersions(_) => "sync-versions",
            Message::SyncWant(_) => "sync-want",
            Message::SyncRecords(_) => "sync-records",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("undecodable message: {0}")]
    Malformed(String),
    #[error("wire version {0}, expected {WIRE_VERSION}")]
    Version(u8),
    #[error("invalid record: {0}")]
    InvalidRecord(String),
}

pub fn encode(envelope: &Envelope) -> Vec<u8> {
    // Serialising owned plain data into a Vec cannot fail.
    postcard::to_stdvec(envelope).unwrap_or_default()
}

pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let envelope: Envelope =
        postcard::from_bytes(bytes).map_err(|error| DecodeError::Malformed(error.to_string()))?;
    if envelope.version != WIRE_VERSION {
        return Err(DecodeError::Version(envelope.version));
    }
    if let Message::Records(records) | Message::SyncRecords(records) = &envelope.message {
        for record in records {
            record.validate().map_err(DecodeError::InvalidRecord)?;
        }
    }
    Ok(envelope)
}

/// Splits records into batches of at most [`RECORDS_PER_MESSAGE_BYTES`]
/// (by value size), never splitting a record.
pub fn batches(records: Vec<Record>) -> Vec<Vec<Record>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for record in records {
        let record_size = record.value.as_ref().map_or(0, String::len) + record.id.key.len() + 64;
        if !current.is_empty() && size + record_size > RECORDS_PER_MESSAGE_BYTES {
            batches.push(std::mem::take(&mut current));
            size = 0;
        }
        size += record_size;
        current.push(record);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Splits record ids into lists of at most [`RECORDS_PER_MESSAGE_BYTES`] of
/// keys, so a request for many long keys stays under the message limit.
pub fn id_batches(ids: Vec<RecordKey>) -> Vec<Vec<RecordKey>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for id in ids {
        let id_size = id.key.len() + 16;
        if !current.is_empty() && size + id_size > RECORDS_PER_MESSAGE_BYTES {
            batches.push(std::mem::take(&mut current));
            size = 0;
        }
        size += id_size;
        current.push(id);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;

    fn envelope(message: Message) -> Envelope {
        Envelope {
            version: WIRE_VERSION,
            from: Peer {
                name: "leaf1".into(),
                addr: "10.255.0.1:7946".parse().unwrap(),
                bump: 7,
            },
            message,
        }
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let message = envelope(Message::Records(vec![Record {
            id: RecordKey::new(RecordKind::Switch, "leaf1"),
            origin: "leaf1".into(),
            version: 42,
            value: Some("{\"x\":1}".into()),
            signature: vec![7; 72],
        }]));
        let bytes = encode(&message);
        assert_eq!(decode(&bytes).unwrap(), message);
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        assert!(matches!(
            decode(&vec![0; MAX_MESSAGE_BYTES + 1]),
            Err(DecodeError::TooLarge(_))
        ));
        let mut other = envelope(Message::SyncWant(vec![]));
        other.version = 9;
        assert_eq!(decode(&encode(&other)), Err(DecodeError::Version(9)));
    }

    /// `METALMESH_FUZZ_SEEDS=<dir> cargo test -p metalmesh-inventory seeds`
    /// writes one encoded message of each kind as fuzzing seeds.
    #[test]
    fn seeds() {
        let record = Record {
            id: RecordKey::new(RecordKind::Port, "leaf1/swp1"),
            origin: "leaf1".into(),
            version: 7,
            value: Some("{}".into()),
            signature: vec![7; 72],
        };
        let messages = [
            Message::Swim(vec![1, 2, 3]),
            Message::Records(vec![record.clone()]),
            Message::SyncRoot(RootDigest { count: 3, hash: 9 }),
            Message::SyncOrigins(vec![("leaf1".into(), OriginDigest { count: 1, hash: 2 })]),
            Message::SyncVersions(vec![("leaf1".into(), vec![(record.id.clone(), 7)])]),
            Message::SyncWant(vec![record.id.clone()]),
            Message::SyncRecords(vec![record]),
        ];
        for message in messages {
            let name = message.name();
            let bytes = encode(&envelope(message));
            assert!(decode(&bytes).is_ok());
            if let Some(dir) = std::env::var_os("METALMESH_FUZZ_SEEDS") {
                std::fs::write(std::path::Path::new(&dir).join(name), bytes).unwrap();
            }
        }
    }

    #[test]
    fn records_breaking_limits_are_refused() {
        let message = envelope(Message::SyncRecords(vec![Record {
            id: RecordKey::new(RecordKind::Switch, ""),
            origin: "leaf1".into(),
            version: 1,
            value: None,
            signature: vec![7; 72],
        }]));
        assert!(matches!(
            decode(&encode(&message)),
            Err(DecodeError::InvalidRecord(_))
        ));
    }

    #[test]
    fn the_longest_want_list_fits_in_messages() {
        let ids: Vec<RecordKey> = (0..crate::mesh::node::MAX_IDS_PER_EXCHANGE)
            .map(|i| RecordKey::new(RecordKind::Port, format!("{i:0>256}")))
            .collect();
        let batches = id_batches(ids);
        assert!(batches.len() > 1);
        assert_eq!(
            batches.iter().map(Vec::len).sum::<usize>(),
            crate::mesh::node::MAX_IDS_PER_EXCHANGE
        );
        for batch in batches {
            let bytes = encode(&envelope(Message::SyncWant(batch)));
            assert!(bytes.len() <= MAX_MESSAGE_BYTES, "{}", bytes.len());
            assert!(decode(&bytes).is_ok());
        }
    }

    #[test]
    fn batches_split_by_size() {
        let records: Vec<Record> = (0..10)
            .map(|i| Record {
                id: RecordKey::new(RecordKind::Port, format!("p{i}")),
                origin: "leaf1".into(),
                version: 1,
                value: Some("x".repeat(60_000)),
                signature: vec![7; 72],
            })
            .collect();
        let batches = batches(records);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 10);
        assert!(batches.len() >= 3);
    }
}
