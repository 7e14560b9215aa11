//! What metalmesh reads from a node certificate: the mesh name (first DNS
//! subject alternative name), the role (a URI subject alternative name
//! `urn:metalmesh:role:<role>`), the addresses the node may advertise (IP
//! subject alternative names) and its Ed25519 public key.

use crate::trust::rules::Role;
use std::net::IpAddr;
use x509_parser::extensions::GeneralName;

/// The URI prefix that carries a certificate's role.
pub const ROLE_URI_PREFIX: &str = "urn:metalmesh:role:";
/// OID of Ed25519 public keys (RFC 8410).
const ED25519_OID: &str = "1.3.101.112";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    pub name: String,
    pub role: Option<Role>,
    pub addresses: Vec<IpAddr>,
    /// The Ed25519 public key; `None` for another key type.
    pub public_key: Option<Vec<u8>>,
    /// Validity, in seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("not an X.509 certificate: {0}")]
    Parse(String),
    #[error("the certificate names no mesh node (no DNS subject alternative name)")]
    NoName,
    #[error(
        "the certificate of {0} carries no metalmesh role (issue it with `metalmesh ca issue --role`)"
    )]
    NoRole(String),
    #[error("the certificate of {name} carries an unknown role {role:?}")]
    UnknownRole { name: String, role: String },
    #[error("the certificate of {0} has no Ed25519 key")]
    NotEd25519(String),
}

/// Reads a certificate's facts; a missing role is reported by
/// [`CertificateFacts::require_role`], not here, so tools can show such
/// certificates.
pub fn read(der: &[u8]) -> Result<CertificateFacts, CertificateError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| CertificateError::Parse(error.to_string()))?;
    let mut name = None;
    let mut role_text = None;
    let mut addresses = Vec::new();
    if let Ok(Some(names)) = certificate.subject_alternative_name() {
        for general in &names.value.general_names {
            match general {
                GeneralName::DNSName(dns) if name.is_none() => name = Some((*dns).to_string()),
                GeneralName::URI(uri) => {
                    if let Some(role) = uri.strip_prefix(ROLE_URI_PREFIX) {
                        role_text = Some(role.to_string());
                    }
                }
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => {
                        let octets: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
                        addresses.push(IpAddr::from(octets));
                    }
                    16 => {
                        let mut octets = [0u8; 16];
                        octets.copy_from_slice(bytes);
                        addresses.push(IpAddr::from(octets));
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let name = name.ok_or(CertificateError::NoName)?;
    let role = match role_text {
        None => None,
        Some(text) => Some(
            Role::parse(&text).ok_or_else(|| CertificateError::UnknownRole {
                name: name.clone(),
                role: text,
            })?,
        ),
    };
    let spki = certificate.public_key();
    let public_key = (spki.algorithm.algorithm.to_id_string() == ED25519_OID)
        .then(|| spki.subject_public_key.data.to_vec());
    Ok(CertificateFacts {
        name,
        role,
        addresses,
        public_key,
        not_before: certificate.validity().not_before.timestamp(),
        not_after: certificate.validity().not_after.timestamp(),
    })
}

impl CertificateFacts {
    pub fn require_role(&self) -> Result<Role, CertificateError> {
        self.role
            .ok_or_else(|| CertificateError::NoRole(self.name.clone()))
    }

    pub fn require_ed25519(&self) -> Result<&[u8], CertificateError> {
        self.public_key
            .as_deref()
            .ok_or_else(|| CertificateError::NotEd25519(self.name.clone()))
    }
}
