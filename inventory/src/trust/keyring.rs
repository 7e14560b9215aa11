//! The keys a replica checks records against, and what it has refused.
//!
//! A node's keys come from its `node` record: the node's certificates, each
//! checked against the mesh CA (chain, key usage, the role it states, the
//! name matching the record's origin). A revocation is a record the CA's own
//! key signed. This node's own records are checked against this node's own
//! key only, so a node that lost its database takes back exactly what it
//! wrote and nothing planted in its name.

use crate::record::{Record, RecordKind, Version};
use crate::trust::certificate::{self, CertificateFacts};
use crate::trust::rules::{self, CA_ORIGIN, Role};
use crate::trust::signing::{PublicKey, signature_key_id};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The most certificates one node record may list (the current one and
/// those it replaced but that still sign records on their way through the
/// mesh).
pub const MAX_NODE_CERTIFICATES: usize = 4;
/// The most records one origin may hold in a replica: bounds what a single
/// stolen key can make every node store.
pub const MAX_RECORDS_PER_ORIGIN: u64 = 250_000;

/// The value of a `node` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertificates {
    /// PEM certificates, the current one first.
    pub certificates: Vec<String>,
}

/// The value of a `revocation` record (key = the revoked node's name,
/// version = when it was revoked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub node: String,
    #[serde(default)]
    pub reason: String,
}

/// Why a record was refused; each has its counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unsigned")]
    Unsigned,
    #[error("signed by a key {origin} is not known to hold")]
    UnknownSigner { origin: String },
    #[error("bad signature")]
    BadSignature,
    #[error("{0}")]
    Writer(#[from] rules::WriterRefusal),
    #[error("node record refused: {0}")]
    NodeRecord(String),
    #[error("{origin} was revoked; records it signs after that are refused")]
    Revoked { origin: String },
    #[error("{origin} holds {MAX_RECORDS_PER_ORIGIN} records already")]
    Quota { origin: String },
}

/// What a replica refused, by reason, and what it keeps without
/// understanding it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustCounters {
    pub unsigned: u64,
    pub unknown_signer: u64,
    pub bad_signature: u64,
    pub wrong_writer: u64,
    pub bad_node_record: u64,
    pub revoked: u64,
    pub over_quota: u64,
    /// Records of kinds this build does not know, stored and relayed as they are.
    pub opaque_stored: u64,
    /// Records that failed their check when the store was opened (deleted).
    pub dropped_on_load: u64,
}

impl TrustCounters {
    fn count(&mut self, refusal: &Refusal) {
        let counter = match refusal {
            Refusal::Unsigned => &mut self.unsigned,
            Refusal::UnknownSigner { .. } => &mut self.unknown_signer,
            Refusal::BadSignature => &mut self.bad_signature,
            Refusal::Writer(_) => &mut self.wrong_writer,
            Refusal::NodeRecord(_) => &mut self.bad_node_record,
            Refusal::Revoked { .. } => &mut self.revoked,
            Refusal::Quota { .. } => &mut self.over_quota,
        };
        *counter += 1;
    }

    pub fn refused(&self) -> u64 {
        self.unsigned
            + self.unknown_signer
            + self.bad_signature
            + self.wrong_writer
            + self.bad_node_record
            + self.revoked
            + self.over_quota
    }
}

/// A node as its node record describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownNode {
    pub role: Role,
    pub keys: Vec<PublicKey>,
    /// Addresses its certificates allow it to advertise (empty: any it
    /// connects from).
    pub addresses: Vec<IpAddr>,
    /// When its oldest listed certificate became valid (Unix seconds): a
    /// node revoked before that was issued anew.
    pub issued: i64,
}

/// What accepting a record teaches the keyring, once the record is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learned {
    Nothing,
    Node { name: String, node: KnownNode },
    Revocation { node: String, at: Version },
}

/// Checks node certificates against the mesh CA.
#[derive(Clone)]
struct CaTrust {
    verifier: Arc<dyn ClientCertVerifier>,
    keys: Vec<PublicKey>,
}

impl std::fmt::Debug for CaTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaTrust").field("keys", &self.keys).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("mesh CA: {0}")]
    Ca(String),
    #[error("this node's certificate: {0}")]
    Own(#[from] certificate::CertificateError),
}

#[derive(Debug, Clone)]
pub struct Keyring {
    own: String,
    own_node: KnownNode,
    ca: Option<CaTrust>,
    /// Learned from node records.
    nodes: HashMap<String, KnownNode>,
    /// Known out of band (see [`Keyring::pinned`]); shared between replicas.
    pinned: Arc<HashMap<String, KnownNode>>,
    revoked: BTreeMap<String, Version>,
    counters: TrustCounters,
}

impl Keyring {
    /// The keyring of a mesh node: the CA certificates to check others
    /// against, and this node's own certificate.
    pub fn new(
        ca: &[CertificateDer<'static>],
        own_certificate: &CertificateDer<'static>,
    ) -> Result<Keyring, KeyringError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut keys = Vec::new();
        for certificate in ca {
            roots
                .add(certificate.clone())
                .map_err(|e| KeyringError::Ca(e.to_string()))?;
            // A CA with another key type still checks certificates; it
            // just cannot sign revocations.
            if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate.as_ref()) {
                let spki = parsed.public_key();
                if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" {
                    keys.push(PublicKey::new(&spki.subject_public_key.data));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| KeyringError::Ca(e.to_string()))?;
        let facts = certificate::read(own_certificate.as_ref())?;
        let own_node = KnownNode {
            role: facts.require_role()?,
            keys: vec![PublicKey::new(facts.require_ed25519()?)],
            addresses: facts.addresses.clone(),
            issued: facts.not_before,
        };
        Ok(Keyring {
            own: facts.name,
            own_node,
            ca: Some(CaTrust { verifier, keys }),
            nodes: HashMap::new(),
            pinned: Arc::default(),
            revoked: BTreeMap::new(),
            counters: TrustCounters::default(),
        })
    }

    /// A keyring whose nodes' keys are known out of band instead of from
    /// node records and a CA: the simulation and recorded test cases, where
    /// thousands of certificates would only cost time. Node records are
    /// refused (there is no CA to check them against).
    pub fn pinned(own: &str, nodes: Arc<HashMap<String, KnownNode>>) -> Keyring {
        let own_node = nodes.get(own).cloned().unwrap_or(KnownNode {
            role: Role::Leaf,
            keys: Vec::new(),
            addresses: Vec::new(),
            issued: 0,
        });
        Keyring {
            own: own.to_string(),
            own_node,
            ca: None,
            nodes: HashMap::new(),
            pinned: nodes,
            revoked: BTreeMap::new(),
            counters: TrustCounters::default(),
        }
    }

    pub fn own_name(&self) -> &str {
        &self.own
    }

    pub fn own_role(&self) -> Role {
        self.own_node.role
    }

    pub fn counters(&self) -> TrustCounters {
        self.counters
    }

    pub fn count_opaque(&mut self) {
        self.counters.opaque_stored += 1;
    }

    pub fn count_dropped_on_load(&mut self) {
        self.counters.dropped_on_load += 1;
    }

    /// Nodes revoked, with when.
    pub fn revoked(&self) -> &BTreeMap<String, Version> {
        &self.revoked
    }

    pub fn is_revoked(&self, node: &str) -> bool {
        self.revoked.contains_key(node)
    }

    /// What the keyring knows of `node`.
    pub fn node(&self, name: &str) -> Option<&KnownNode> {
        if name == self.own {
            Some(&self.own_node)
        } else {
            self.nodes.get(name).or_else(|| self.pinned.get(name))
        }
    }

    /// Checks a record a replica is about to store; `origin_records` is how
    /// many records its origin already holds there (for the quota). Counts
    /// every refusal.
    pub fn check(&mut self, record: &Record, origin_records: u64) -> Result<Learned, Refusal> {
        let result = self.verify(record, origin_records);
        if let Err(refusal) = &result {
            self.counters.count(refusal);
        }
        result
    }

    /// [`Keyring::check`] without counting.
    pub fn verify(&self, record: &Record, origin_records: u64) -> Result<Learned, Refusal> {
        if record.signature.is_empty() {
            return Err(Refusal::Unsigned);
        }
        if record.origin == CA_ORIGIN || record.id.kind == RecordKind::Revocation {
            return self.judge_revocation(record);
        }
        if origin_records >= MAX_RECORDS_PER_ORIGIN {
            return Err(Refusal::Quota {
                origin: record.origin.clone(),
            });
        }
        // Records a revoked node signs after its revocation are refused,
        // unless the node was issued a certificate after it (all the keys
        // it now signs with are new). What it wrote before stays.
        let revoked_before = |issued: i64| {
            self.revoked
                .get(&record.origin)
                .is_some_and(|at| record.version > *at && issued <= (*at >> 32) as i64)
        };
        let revoked = || Refusal::Revoked {
            origin: record.origin.clone(),
        };
        if record.id.kind == RecordKind::Node {
            let learned = self.judge_node_record(record)?;
            let issued = match &learned {
                Learned::Node { node, .. } => node.issued,
                _ => self.own_node.issued,
            };
            if revoked_before(issued) {
                return Err(revoked());
            }
            return Ok(learned);
        }
        let node = self
            .node(&record.origin)
            .ok_or_else(|| Refusal::UnknownSigner {
                origin: record.origin.clone(),
            })?;
        if revoked_before(node.issued) {
            return Err(revoked());
        }
        verify_with(&node.keys, record)?;
        rules::check(record.id.kind, &record.id.key, &record.origin, node.role)?;
        Ok(Learned::Nothing)
    }

    fn judge_revocation(&self, record: &Record) -> Result<Learned, Refusal> {
        if record.id.kind != RecordKind::Revocation {
            return Err(rules::WriterRefusal::NotByCa {
                kind: record.id.kind,
            }
            .into());
        }
        if record.origin != CA_ORIGIN {
            return Err(rules::WriterRefusal::CaOnly {
                kind: record.id.kind,
            }
            .into());
        }
        let keys = self.ca.as_ref().map(|ca| ca.keys.as_slice()).unwrap_or(&[]);
        verify_with(keys, record).map_err(|refusal| match refusal {
            Refusal::UnknownSigner { .. } => Refusal::UnknownSigner {
                origin: CA_ORIGIN.to_string(),
            },
            other => other,
        })?;
        let value = record
            .value
            .as_deref()
            .ok_or_else(|| Refusal::NodeRecord("a revocation cannot be withdrawn".into()))?;
        let revocation: Revocation = serde_json::from_str(value)
            .map_err(|e| Refusal::NodeRecord(format!("unreadable revocation: {e}")))?;
        if revocation.node != record.id.key {
            return Err(Refusal::NodeRecord(format!(
                "revocation keyed {} names {}",
                record.id.key, revocation.node
            )));
        }
        Ok(Learned::Revocation {
            node: revocation.node,
            at: record.version,
        })
    }

    fn judge_node_record(&self, record: &Record) -> Result<Learned, Refusal> {
        rules::check(
            RecordKind::Node,
            &record.id.key,
            &record.origin,
            Role::Operator,
        )?;
        let Some(value) = record.value.as_deref() else {
            // A retired node may withdraw its record with the key it had.
            let node = self
                .node(&record.origin)
                .ok_or_else(|| Refusal::UnknownSigner {
                    origin: record.origin.clone(),
                })?;
            verify_with(&node.keys, record)?;
            return Ok(Learned::Nothing);
        };
        let certificates: NodeCertificates = serde_json::from_str(value)
            .map_err(|e| Refusal::NodeRecord(format!("unreadable: {e}")))?;
        if certificates.certificates.is_empty()
            || certificates.certificates.len() > MAX_NODE_CERTIFICATES
        {
            return Err(Refusal::NodeRecord(format!(
                "{} certificates (1..={MAX_NODE_CERTIFICATES})",
                certificates.certificates.len()
            )));
        }
        let ca = self
            .ca
            .as_ref()
            .ok_or_else(|| Refusal::NodeRecord("no mesh CA to check it against".into()))?;
        let mut node: Option<KnownNode> = None;
        for pem in &certificates.certificates {
            let der = CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| Refusal::NodeRecord(format!("certificate: {e}")))?;
            let facts =
                certificate::read(der.as_ref()).map_err(|e| Refusal::NodeRecord(e.to_string()))?;
            check_certificate(ca, &der, &facts, &record.origin)?;
            let role = facts
                .require_role()
                .map_err(|e| Refusal::NodeRecord(e.to_string()))?;
            let key = PublicKey::new(
                facts
                    .require_ed25519()
                    .map_err(|e| Refusal::NodeRecord(e.to_string()))?,
            );
            match &mut node {
                None => {
                    node = Some(KnownNode {
                        role,
                        keys: vec![key],
                        addresses: facts.addresses.clone(),
                        issued: facts.not_before,
                    });
                }
                Some(known) if known.role == role => {
                    known.keys.push(key);
                    known.issued = known.issued.min(facts.not_before);
                }
                Some(_) => {
                    return Err(Refusal::NodeRecord(
                        "its certificates state different roles".into(),
                    ));
                }
            }
        }
        let Some(node) = node else {
            return Err(Refusal::NodeRecord("no certificate".into()));
        };
        // Signed by one of the keys it lists; this node's own record only by
        // this node's own key.
        let signers = if record.origin == self.own {
            &self.own_node.keys
        } else {
            &node.keys
        };
        verify_with(signers, record)?;
        if record.origin == self.own {
            return Ok(Learned::Nothing);
        }
        Ok(Learned::Node {
            name: record.origin.clone(),
            node,
        })
    }

    /// Keeps what `previous` (this node's keyring before its certificate
    /// was renewed) had learned of other nodes, revocations and refusals.
    pub fn adopt_learned(&mut self, previous: &Keyring) {
        self.pinned = Arc::clone(&previous.pinned);
        for (name, node) in &previous.nodes {
            self.nodes
                .entry(name.clone())
                .or_insert_with(|| node.clone());
        }
        for (name, at) in &previous.revoked {
            self.revoked.entry(name.clone()).or_insert(*at);
        }
        self.counters = previous.counters;
    }

    /// Takes in what a stored record taught.
    pub fn learn(&mut self, learned: Learned) {
        match learned {
            Learned::Nothing => {}
            Learned::Node { name, node } => {
                self.nodes.insert(name, node);
            }
            Learned::Revocation { node, at } => {
                let entry = self.revoked.entry(node).or_insert(at);
                *entry = (*entry).min(at);
            }
        }
    }
}

/// The certificate chains to the CA, was valid when issued (record
/// signatures outlive the certificate: the connection checks, which do not,
/// use the current time), and names `origin`.
fn check_certificate(
    ca: &CaTrust,
    der: &CertificateDer<'static>,
    facts: &CertificateFacts,
    origin: &str,
) -> Result<(), Refusal> {
    if facts.name != origin {
        return Err(Refusal::NodeRecord(format!(
            "certificate of {} in the record of {origin}",
            facts.name
        )));
    }
    let issued = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(facts.not_before.saturating_add(1)).unwrap_or(0),
    ));
    ca.verifier
        .verify_client_cert(der, &[], issued)
        .map_err(|e| Refusal::NodeRecord(format!("certificate of {origin}: {e}")))?;
    Ok(())
}

fn verify_with(keys: &[PublicKey], record: &Record) -> Result<(), Refusal> {
    let id = signature_key_id(&record.signature).ok_or(Refusal::BadSignature)?;
    let key = keys
        .iter()
        .find(|key| key.id == id)
        .ok_or_else(|| Refusal::UnknownSigner {
            origin: record.origin.clone(),
        })?;
    if key.verify(record) {
        Ok(())
    } else {
        Err(Refusal::BadSignature)
    }
}
