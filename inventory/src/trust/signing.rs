//! Record signatures: Ed25519 over a canonical encoding of the record's
//! kind, key, origin, version and value, prefixed by a domain tag so the
//! bytes can never be mistaken for anything else a node key signs (TLS
//! handshakes). A signature is the signer's 8-byte key id followed by the 64
//! signature bytes; the key id picks the key among those the origin's node
//! record lists.

use crate::record::Record;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

const DOMAIN: &[u8] = b"metalmesh record signature v1\0";
pub const KEY_ID_BYTES: usize = 8;
pub const SIGNATURE_BYTES: usize = KEY_ID_BYTES + 64;

/// The first bytes of SHA-256 of a public key.
pub type KeyId = [u8; KEY_ID_BYTES];

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error(
        "the node key is not an Ed25519 PKCS#8 key ({0}); issue a new one with `metalmesh ca issue`"
    )]
    Key(String),
}

/// The bytes a record's signature covers.
pub fn signed_bytes(record: &Record) -> Vec<u8> {
    let value = record.value.as_deref().map(str::as_bytes);
    let mut bytes = Vec::with_capacity(
        DOMAIN.len()
            + 32
            + record.id.key.len()
            + record.origin.len()
            + value.map_or(0, <[u8]>::len),
    );
    bytes.extend_from_slice(DOMAIN);
    for field in [
        record.id.kind.as_str().as_bytes(),
        record.id.key.as_bytes(),
        record.origin.as_bytes(),
    ] {
        bytes.extend_from_slice(&(field.len() as u32).to_be_bytes());
        bytes.extend_from_slice(field);
    }
    bytes.extend_from_slice(&record.version.to_be_bytes());
    match value {
        None => bytes.push(0),
        Some(value) => {
            bytes.push(1);
            bytes.extend_from_slice(&(value.len() as u32).to_be_bytes());
            bytes.extend_from_slice(value);
        }
    }
    bytes
}

pub fn key_id(public_key: &[u8]) -> KeyId {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    let mut id = [0; KEY_ID_BYTES];
    id.copy_from_slice(&digest.as_ref()[..KEY_ID_BYTES]);
    id
}

/// A node's (or the CA's) private key, ready to sign records.
pub struct Signer {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public", &self.public)
            .finish()
    }
}

impl Signer {
    /// From a PKCS#8 document (what `metalmesh ca` writes, as DER).
    pub fn from_pkcs8(der: &[u8]) -> Result<Signer, SigningError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|error| SigningError::Key(error.to_string()))?;
        Ok(Signer::from_pair(pair))
    }

    /// A key derived from a 32-byte seed: for simulations and recorded test
    /// cases, which must replay bit for bit.
    pub fn from_seed(seed: &[u8; 32]) -> Signer {
        // A 32-byte seed is always a valid Ed25519 private key.
        match Ed25519KeyPair::from_seed_unchecked(seed) {
            Ok(pair) => Signer::from_pair(pair),
            Err(_) => unreachable!("every 32-byte seed is an Ed25519 key"),
        }
    }

    fn from_pair(pair: Ed25519KeyPair) -> Signer {
        let public = PublicKey::new(pair.public_key().as_ref());
        Signer { pair, public }
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        let mut signature = Vec::with_capacity(SIGNATURE_BYTES);
        signature.extend_from_slice(&self.public.id);
        signature.extend_from_slice(self.pair.sign(message).as_ref());
        signature
    }

    /// Sets `record.signature`.
    pub fn sign(&self, record: &mut Record) {
        record.signature = self.sign_bytes(&signed_bytes(record));
    }
}

/// An Ed25519 public key and its id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub id: KeyId,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id: String = self.id.iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "PublicKey({id})")
    }
}

impl PublicKey {
    pub fn new(bytes: &[u8]) -> PublicKey {
        PublicKey {
            id: key_id(bytes),
            bytes: bytes.to_vec(),
        }
    }

    /// Whether `signature` (key id and signature) is this key's over `message`.
    pub fn verify_bytes(&self, message: &[u8], signature: &[u8]) -> bool {
        signature.len() == SIGNATURE_BYTES
            && signature[..KEY_ID_BYTES] == self.id
            && UnparsedPublicKey::new(&ED25519, &self.bytes)
                .verify(message, &signature[KEY_ID_BYTES..])
                .is_ok()
    }

    pub fn verify(&self, record: &Record) -> bool {
        self.verify_bytes(&signed_bytes(record), &record.signature)
    }
}

/// The key id a signature names, if it is long enough to name one.
pub fn signature_key_id(signature: &[u8]) -> Option<KeyId> {
    signature.get(..KEY_ID_BYTES)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RecordKey, RecordKind};

    #[test]
    fn any_change_to_a_signed_field_breaks_the_signature() {
        let signer = Signer::from_seed(&[7; 32]);
        let mut record = Record {
            id: RecordKey::new(RecordKind::Port, "leaf1/swp1"),
            origin: "leaf1".into(),
            version: 42,
            value: Some("{}".into()),
            signature: Vec::new(),
        };
        signer.sign(&mut record);
        let key = signer.public_key();
        assert!(key.verify(&record));
        let changed = [
            Record {
                id: RecordKey::new(RecordKind::Lease, "leaf1/swp1"),
                ..record.clone()
            },
            Record {
                id: RecordKey::new(RecordKind::Port, "leaf1/swp2"),
                ..record.clone()
            },
            Record {
                origin: "leaf2".into(),
                ..record.clone()
            },
            Record {
                version: 43,
                ..record.clone()
            },
            Record {
                value: None,
                ..record.clone()
            },
            Record {
                value: Some("{ }".into()),
                ..record.clone()
            },
        ];
        for other in changed {
            assert!(!key.verify(&other), "{other:?}");
        }
        let stranger = Signer::from_seed(&[8; 32]);
        assert!(!stranger.public_key().verify(&record));
        let mut truncated = record.clone();
        truncated.signature.pop();
        assert!(!key.verify(&truncated));
    }

    /// `METALMESH_FUZZ_RECORD_SEEDS=<dir> cargo test -p metalmesh-inventory
    /// record_seeds` writes signed records (postcard) as seeds for the
    /// `signed_record` fuzz target, whose keyring pins these keys.
    #[test]
    fn record_seeds() {
        let leaf1 = Signer::from_seed(&[1; 32]);
        let api = Signer::from_seed(&[2; 32]);
        let record = |kind, key: &str, origin: &str, signer: &Signer| {
            let mut record = Record {
                id: RecordKey::new(kind, key),
                origin: origin.into(),
                version: 1 << 32,
                value: Some("{\"up\":true}".into()),
                signature: Vec::new(),
            };
            signer.sign(&mut record);
            record
        };
        let seeds = [
            (
                "leaf-port",
                record(RecordKind::Port, "leaf1/swp1", "leaf1", &leaf1),
            ),
            (
                "api-network",
                record(RecordKind::Network, "n1", "api", &api),
            ),
            (
                "wrong-writer",
                record(RecordKind::Network, "n1", "leaf1", &leaf1),
            ),
            (
                "other-kind",
                record(
                    RecordKind::from_name("flavor").unwrap(),
                    "leaf1/x",
                    "leaf1",
                    &leaf1,
                ),
            ),
        ];
        for (name, record) in seeds {
            let bytes = postcard::to_stdvec(&record).unwrap();
            let back: Record = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, record);
            if let Some(dir) = std::env::var_os("METALMESH_FUZZ_RECORD_SEEDS") {
                std::fs::write(std::path::Path::new(&dir).join(name), bytes).unwrap();
            }
        }
    }

    #[test]
    fn field_boundaries_are_part_of_what_is_signed() {
        // "ab"+"c" and "a"+"bc" must not sign alike.
        let record = |key: &str, origin: &str| Record {
            id: RecordKey::new(RecordKind::Port, key),
            origin: origin.into(),
            version: 1,
            value: None,
            signature: Vec::new(),
        };
        assert_ne!(
            signed_bytes(&record("ab", "c")),
            signed_bytes(&record("a", "bc"))
        );
    }
}
