//! Trust inside the mesh: which node may write which record, and the proof
//! that it did.
//!
//! - [`rules`]: the writer table (kind → roles and key shape).
//! - [`certificate`]: the name, role, addresses and key a certificate states.
//! - [`signing`]: record signatures (Ed25519).
//! - [`keyring`]: the keys and revocations a replica checks records against.
//!
//! The threat model is in `docs/design/inventory.md`.

#[cfg(feature = "node")]
pub mod certificate;
#[cfg(feature = "node")]
pub mod keyring;
pub mod rules;
#[cfg(feature = "node")]
pub mod signing;

#[cfg(feature = "node")]
pub use keyring::{Keyring, KnownNode, Learned, Refusal, TrustCounters};
pub use rules::{CA_ORIGIN, Role};
#[cfg(feature = "node")]
pub use signing::{PublicKey, Signer};

#[cfg(feature = "node")]
mod node {
    use super::{Keyring, Signer};
    use crate::pki::NodeCredentials;
    use crate::trust::keyring::{KeyringError, NodeCertificates};
    use crate::trust::signing::SigningError;

    #[derive(Debug, thiserror::Error)]
    pub enum TrustError {
        #[error(transparent)]
        Keyring(#[from] KeyringError),
        #[error(transparent)]
        Signing(#[from] SigningError),
        #[error("this node's certificate chain is empty")]
        NoCertificate,
    }

    /// What a mesh node signs with and checks against.
    #[derive(Debug)]
    pub struct Trust {
        pub signer: Signer,
        pub keyring: Keyring,
        /// This node's `node` record value (its current certificate).
        pub node_record: NodeCertificates,
    }

    impl Trust {
        pub fn from_credentials(credentials: &NodeCredentials) -> Result<Trust, TrustError> {
            let own = credentials.chain.first().ok_or(TrustError::NoCertificate)?;
            let keyring = Keyring::new(&credentials.ca, own)?;
            let signer = Signer::from_pkcs8(credentials.key.secret_der())?;
            let node_record = NodeCertificates {
                certificates: vec![to_pem(own.as_ref())],
            };
            Ok(Trust {
                signer,
                keyring,
                node_record,
            })
        }
    }

    /// PEM text of a DER certificate.
    pub fn to_pem(der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut text = String::with_capacity(der.len() * 4 / 3 + 64);
        text.push_str("-----BEGIN CERTIFICATE-----\n");
        let mut line = 0;
        for chunk in der.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    text.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    text.push('=');
                }
            }
            line += 4;
            if line == 64 {
                text.push('\n');
                line = 0;
            }
        }
        if line != 0 {
            text.push('\n');
        }
        text.push_str("-----END CERTIFICATE-----\n");
        text
    }
}

#[cfg(feature = "node")]
pub use node::{Trust, TrustError, to_pem};

/// A throwaway mesh CA for tests: real certificates, real signatures.
#[cfg(all(test, feature = "node"))]
#[allow(clippy::unwrap_used)]
pub(crate) mod test_support {
    use super::{Role, Trust};
    use crate::pki::{self, IssuedPem, NodeCredentials, NodeIdentity};
    use crate::record::{Record, RecordKey, RecordKind};

    pub(crate) struct TestCa {
        pub(crate) ca: IssuedPem,
    }

    impl TestCa {
        pub(crate) fn new() -> TestCa {
            TestCa {
                ca: pki::generate_ca("test").unwrap(),
            }
        }

        pub(crate) fn credentials(&self, name: &str, role: Role) -> NodeCredentials {
            let now = time::OffsetDateTime::now_utc();
            let issued = pki::issue_node(
                &self.ca,
                &NodeIdentity::new(name, role),
                now - time::Duration::hours(1),
                now + time::Duration::days(1),
            )
            .unwrap();
            NodeCredentials::from_pem(&self.ca.cert, &issued).unwrap()
        }

        pub(crate) fn trust(&self, name: &str, role: Role) -> Trust {
            Trust::from_credentials(&self.credentials(name, role)).unwrap()
        }
    }

    /// A record of `origin`, signed by `trust`'s key.
    pub(crate) fn signed(
        trust: &Trust,
        kind: RecordKind,
        key: &str,
        origin: &str,
        version: u64,
        value: Option<&str>,
    ) -> Record {
        let mut record = Record {
            id: RecordKey::new(kind, key),
            origin: origin.into(),
            version,
            value: value.map(str::to_string),
            signature: Vec::new(),
        };
        trust.signer.sign(&mut record);
        record
    }

    /// `trust`'s node record, as its node would publish it.
    pub(crate) fn node_record(trust: &Trust, version: u64) -> Record {
        let name = trust.keyring.own_name().to_string();
        let value = serde_json::to_string(&trust.node_record).unwrap();
        signed(trust, RecordKind::Node, &name, &name, version, Some(&value))
    }
}
