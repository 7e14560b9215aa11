//! The mesh certificate authority. `metalmesh ca init` creates a CA key and
//! self-signed certificate (Ed25519); `metalmesh ca issue --node NAME --role
//! ROLE` signs a node certificate whose subject alternative names are the
//! node's mesh name (DNS), its role (URI `urn:metalmesh:role:<role>`) and
//! the addresses it may advertise (IP, optional). Mesh peers accept each
//! other only with certificates from this CA that state a role, and check
//! the name a peer claims against its certificate. `metalmesh ca revoke`
//! signs a revocation record with the CA key, for the mesh to spread.
//!
//! Key files are written with mode 0600 and never overwritten.

use crate::record::{Record, RecordKey, RecordKind};
use crate::trust::certificate::ROLE_URI_PREFIX;
use crate::trust::keyring::Revocation;
use crate::trust::{CA_ORIGIN, Role, Signer};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Validity of a CA created by [`init_ca`].
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Default validity of node certificates: short, since agents pick up a
/// renewed certificate without a restart.
pub const NODE_VALIDITY_DAYS: i64 = 30;
/// How far back a new certificate's validity starts, for clock skew.
const BACKDATE: Duration = Duration::minutes(5);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite it (move it away to rotate)")]
    Exists { path: PathBuf },
    #[error("{path}: no PEM {what} found")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("{path}: {detail}")]
    BadPem { path: PathBuf, detail: String },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("node name {0:?} is not a valid DNS name (letters, digits, '-' and '.')")]
    BadNodeName(String),
    #[error("validity of {0} days: must be 1..={MAX_VALIDITY_DAYS}")]
    BadValidity(i64),
    #[error("the mesh certificate is issued to {found:?}, but this node is {expected:?}")]
    WrongNode { expected: String, found: String },
    #[error("{0:?} is reserved for the mesh CA's own records")]
    ReservedName(String),
    #[error("{path}: {detail}")]
    Certificate { path: PathBuf, detail: String },
    #[error(
        "the CA key in {path} is not Ed25519 ({detail}); revocations need a CA made by this version of `metalmesh ca init`"
    )]
    CaKey { path: PathBuf, detail: String },
}

/// The longest validity `issue_node_files` grants (100 years).
pub const MAX_VALIDITY_DAYS: i64 = 36_525;

/// PEM text of a certificate and its private key.
#[derive(Debug, Clone)]
pub struct IssuedPem {
    pub cert: String,
    pub key: String,
}

/// Creates a CA; returns its PEM certificate and key.
pub fn generate_ca(name: &str) -> Result<IssuedPem, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ED25519)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} mesh CA"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;
    Ok(IssuedPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// What a node certificate states.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub node: String,
    pub role: Role,
    /// Addresses the node may advertise in the mesh; empty: whatever
    /// address it connects from.
    pub addresses: Vec<IpAddr>,
}

impl NodeIdentity {
    pub fn new(node: &str, role: Role) -> NodeIdentity {
        NodeIdentity {
            node: node.to_string(),
            role,
            addresses: Vec::new(),
        }
    }
}

/// Signs a certificate for a mesh node, valid from `not_before` to
/// `not_after`, usable both to serve and to connect.
pub fn issue_node(
    ca: &IssuedPem,
    identity: &NodeIdentity,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<IssuedPem, PkiError> {
    let node = identity.node.as_str();
    if !valid_node_name(node) {
        return Err(PkiError::BadNodeName(node.to_string()));
    }
    if node == CA_ORIGIN {
        return Err(PkiError::ReservedName(node.to_string()));
    }
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate_for(&PKCS_ED25519)?;
    let mut params = CertificateParams::new(vec![node.to_string()])?;
    params.subject_alt_names.push(SanType::URI(
        format!("{ROLE_URI_PREFIX}{}", identity.role).try_into()?,
    ));
    for address in &identity.addresses {
        params.subject_alt_names.push(SanType::IpAddress(*address));
    }
    params.distinguished_name.push(DnType::CommonName, node);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(IssuedPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Mesh names double as certificate DNS names.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `metalmesh ca init`: writes `ca.pem` and `ca.key` into `dir`.
pub fn init_ca_files(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    refuse_existing(&[&cert_path, &key_path])?;
    let ca = generate_ca(name)?;
    write_pair(dir, &ca, &cert_path, &key_path)?;
    Ok((cert_path, key_path))
}

/// `metalmesh ca issue`: signs a node certificate with the CA in `ca_dir` and
/// writes `<node>.pem` and `<node>.key` into `out_dir`. A node revoked
/// before gets a certificate valid only from after its revocation (the mesh
/// refuses certificates of a revoked name issued before it).
pub fn issue_node_files(
    ca_dir: &Path,
    identity: &NodeIdentity,
    out_dir: &Path,
    days: i64,
) -> Result<(PathBuf, PathBuf), PkiError> {
    if !(1..=MAX_VALIDITY_DAYS).contains(&days) {
        return Err(PkiError::BadValidity(days));
    }
    let ca = read_ca(ca_dir)?;
    let node = &identity.node;
    let cert_path = out_dir.join(format!("{node}.pem"));
    let key_path = out_dir.join(format!("{node}.key"));
    refuse_existing(&[&cert_path, &key_path])?;
    let now = OffsetDateTime::now_utc();
    let mut not_before = now - BACKDATE;
    if let Some(revoked) = revoked_at(ca_dir, node)?
        && revoked >= not_before
    {
        not_before = revoked + Duration::seconds(1);
    }
    let issued = issue_node(&ca, identity, not_before, now + Duration::days(days))?;
    write_pair(out_dir, &issued, &cert_path, &key_path)?;
    Ok((cert_path, key_path))
}

/// `metalmesh ca issue-https`: an HTTPS server certificate for the API
/// node, signed by the CA in `ca_dir`, written as `<name>-https.pem` and
/// `<name>-https.key`. Its key is ECDSA P-256, which browsers speak (they
/// do not accept Ed25519 keys in TLS, so the mesh certificate serves the
/// CLI but not the web view). It names no role: the mesh refuses it.
pub fn issue_https_files(
    ca_dir: &Path,
    name: &str,
    addresses: &[IpAddr],
    out_dir: &Path,
    days: i64,
) -> Result<(PathBuf, PathBuf), PkiError> {
    if !(1..=MAX_VALIDITY_DAYS).contains(&days) {
        return Err(PkiError::BadValidity(days));
    }
    if !valid_node_name(name) {
        return Err(PkiError::BadNodeName(name.to_string()));
    }
    let ca = read_ca(ca_dir)?;
    let cert_path = out_dir.join(format!("{name}-https.pem"));
    let key_path = out_dir.join(format!("{name}-https.key"));
    refuse_existing(&[&cert_path, &key_path])?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, KeyPair::from_pem(&ca.key)?)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    for address in addresses {
        params.subject_alt_names.push(SanType::IpAddress(*address));
    }
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(days);
    let cert = params.signed_by(&key, &issuer)?;
    let issued = IssuedPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    };
    write_pair(out_dir, &issued, &cert_path, &key_path)?;
    Ok((cert_path, key_path))
}

fn read_ca(ca_dir: &Path) -> Result<IssuedPem, PkiError> {
    Ok(IssuedPem {
        cert: read_text(&ca_dir.join("ca.pem"))?,
        key: read_text(&ca_dir.join("ca.key"))?,
    })
}

/// Where `ca revoke` keeps the revocations it signed.
fn revocation_path(ca_dir: &Path, node: &str) -> PathBuf {
    ca_dir.join("revoked").join(format!("{node}.json"))
}

fn revoked_at(ca_dir: &Path, node: &str) -> Result<Option<OffsetDateTime>, PkiError> {
    let path = revocation_path(ca_dir, node);
    if !path.exists() {
        return Ok(None);
    }
    let record: Record =
        serde_json::from_str(&read_text(&path)?).map_err(|e| PkiError::BadPem {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    let seconds = i64::try_from(record.version >> 32).unwrap_or(i64::MAX);
    Ok(OffsetDateTime::from_unix_timestamp(seconds).ok())
}

/// `metalmesh ca revoke`: signs, with the CA key, the record that revokes
/// `node` from now on; writes it to `<ca_dir>/revoked/<node>.json` (kept, so
/// a later `issue` for the name starts after it) and returns it. An agent
/// takes it into the mesh with `metalmesh-agent mesh revoke FILE`.
pub fn revoke_node(ca_dir: &Path, node: &str, reason: &str) -> Result<(PathBuf, Record), PkiError> {
    if !valid_node_name(node) {
        return Err(PkiError::BadNodeName(node.to_string()));
    }
    let key_path = ca_dir.join("ca.key");
    let key_pem = read_text(&key_path)?;
    let der =
        rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            PkiError::BadPem {
                path: key_path.clone(),
                detail: e.to_string(),
            }
        })?;
    let signer = Signer::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| PkiError::CaKey {
        path: key_path.clone(),
        detail: e.to_string(),
    })?;
    let value = serde_json::to_string(&Revocation {
        node: node.to_string(),
        reason: reason.to_string(),
    })
    .map_err(|e| PkiError::BadPem {
        path: key_path.clone(),
        detail: e.to_string(),
    })?;
    let mut record = Record {
        id: RecordKey::new(RecordKind::Revocation, node),
        origin: CA_ORIGIN.to_string(),
        version: crate::clock::now_version(),
        value: Some(value),
        signature: Vec::new(),
    };
    signer.sign(&mut record);
    let path = revocation_path(ca_dir, node);
    let dir = ca_dir.join("revoked");
    std::fs::create_dir_all(&dir).map_err(|source| PkiError::Io {
        path: dir.clone(),
        source,
    })?;
    let text = serde_json::to_string_pretty(&record).unwrap_or_default();
    if path.exists() {
        // Revoking again moves the time forward; the file is the latest.
        std::fs::remove_file(&path).map_err(|source| PkiError::Io {
            path: path.clone(),
            source,
        })?;
    }
    write_new(&path, &text, 0o644)?;
    Ok((path, record))
}

fn refuse_existing(paths: &[&PathBuf]) -> Result<(), PkiError> {
    match paths.iter().find(|path| path.exists()) {
        Some(path) => Err(PkiError::Exists {
            path: path.to_path_buf(),
        }),
        None => Ok(()),
    }
}

/// Writes the key (owner-only) before the certificate, into `dir`.
fn write_pair(
    dir: &Path,
    pem: &IssuedPem,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_new(key_path, &pem.key, 0o600)?;
    write_new(cert_path, &pem.cert, 0o644)
}

/// What a node needs to take part in the mesh: the CA to trust, and its own
/// certificate and key.
#[derive(Debug)]
pub struct NodeCredentials {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl NodeCredentials {
    /// Loads the files; every error names the file.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<NodeCredentials, PkiError> {
        Ok(NodeCredentials {
            ca: parse_certificates(&read_text(ca)?, ca)?,
            chain: parse_certificates(&read_text(cert)?, cert)?,
            key: parse_key(&read_text(key)?, key)?,
        })
    }

    pub fn from_pem(ca: &str, node: &IssuedPem) -> Result<NodeCredentials, PkiError> {
        let memory = Path::new("<memory>");
        Ok(NodeCredentials {
            ca: parse_certificates(ca, memory)?,
            chain: parse_certificates(&node.cert, memory)?,
            key: parse_key(&node.key, memory)?,
        })
    }

    /// Checks that the node certificate was issued to `name`: peers check
    /// every message's sender against it, so a node under another name
    /// would be refused by all of them.
    pub fn check_node_name(&self, name: &str) -> Result<(), PkiError> {
        let found = self
            .chain
            .first()
            .and_then(crate::mesh::tls::certificate_name)
            .unwrap_or_default();
        if found == name {
            Ok(())
        } else {
            Err(PkiError::WrongNode {
                expected: name.to_string(),
                found,
            })
        }
    }
}

/// Every certificate in `text` (at least one); `path` names the source.
fn parse_certificates(text: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| PkiError::BadPem {
            path: path.to_path_buf(),
            detail: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::NoPem {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn parse_key(text: &str, path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|error| match error {
        rustls_pki_types::pem::Error::NoItemsFound => PkiError::NoPem {
            path: path.to_path_buf(),
            what: "private key",
        },
        other => PkiError::BadPem {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    })
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_and_issue_write_private_keys_0600_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, ca_key) = init_ca_files(dir.path(), "test").unwrap();
        assert_eq!(
            std::fs::metadata(&ca_key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            init_ca_files(dir.path(), "test"),
            Err(PkiError::Exists { .. })
        ));
        let leaf = |name: &str| NodeIdentity::new(name, Role::Leaf);
        let (cert, key) = issue_node_files(dir.path(), &leaf("leaf1"), dir.path(), 30).unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = NodeCredentials::load(&ca_cert, &cert, &key).unwrap();
        assert_eq!(loaded.ca.len(), 1);
        assert_eq!(loaded.chain.len(), 1);
        loaded.check_node_name("leaf1").unwrap();
        let error = loaded.check_node_name("leaf2").unwrap_err();
        assert!(error.to_string().contains("\"leaf1\""), "{error}");
        for days in [0, MAX_VALIDITY_DAYS + 1, i64::MAX] {
            assert!(matches!(
                issue_node_files(dir.path(), &leaf("leaf3"), dir.path(), days),
                Err(PkiError::BadValidity(_))
            ));
        }
        assert!(matches!(
            issue_node_files(dir.path(), &leaf("bad name"), dir.path(), 30),
            Err(PkiError::BadNodeName(_))
        ));
        assert!(matches!(
            issue_node_files(dir.path(), &leaf(CA_ORIGIN), dir.path(), 30),
            Err(PkiError::ReservedName(_))
        ));
    }

    #[test]
    fn missing_key_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, _) = init_ca_files(dir.path(), "test").unwrap();
        let missing = dir.path().join("leaf9.key");
        let error = NodeCredentials::load(&ca_cert, &ca_cert, &missing).unwrap_err();
        assert!(error.to_string().contains("leaf9.key"), "{error}");
        let error = NodeCredentials::load(&ca_cert, &ca_cert, &ca_cert).unwrap_err();
        assert!(error.to_string().contains("no PEM private key"), "{error}");
    }
}
