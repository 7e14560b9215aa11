//! Mutual TLS for the mesh. Both ends present a certificate issued by the
//! mesh CA and verify the other's against it (chain, validity period, key
//! usage), and refuse a certificate that states no role or whose node was
//! revoked before it was issued ([`Admission`]). A node may be dialled by
//! address alone (seeds): the client then checks the server's certificate
//! against the DNS name the certificate itself carries, and that name
//! becomes the peer's authenticated mesh name.

use crate::pki::NodeCredentials;
use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Which certificates the mesh admits beyond a valid chain: those stating
/// a role, of nodes not revoked since the certificate was issued. Shared
/// with the service, which updates the revocations as the mesh learns them.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// Revoked node name → revocation time (a record version).
    revoked: Arc<RwLock<BTreeMap<String, u64>>>,
}

impl Admission {
    pub fn set_revoked(&self, revoked: BTreeMap<String, u64>) {
        *self
            .revoked
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = revoked;
    }

    /// Why `certificate` is not admitted, if it is not.
    pub fn refusal(&self, certificate: &CertificateDer<'_>) -> Option<String> {
        let facts = match crate::trust::certificate::read(certificate.as_ref()) {
            Ok(facts) => facts,
            Err(error) => return Some(error.to_string()),
        };
        if let Err(error) = facts.require_role() {
            return Some(error.to_string());
        }
        let revoked = self
            .revoked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match revoked.get(&facts.name) {
            Some(at) if facts.not_before <= (at >> 32) as i64 => {
                Some(format!("{} was revoked", facts.name))
            }
            _ => None,
        }
    }

    fn check(&self, certificate: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match self.refusal(certificate) {
            Some(reason) => Err(rustls::Error::General(reason)),
            None => Ok(()),
        }
    }
}

/// ALPN protocol of the mesh.
pub const ALPN: &[u8] = b"metalmesh-mesh/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("mesh CA certificate: {0}")]
    Roots(String),
    #[error("client verifier: {0}")]
    Verifier(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(credentials: &NodeCredentials) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in &credentials.ca {
        roots
            .add(ca.clone())
            .map_err(|error| TlsError::Roots(error.to_string()))?;
    }
    Ok(Arc::new(roots))
}

/// The server side: a certificate from the mesh CA is mandatory.
pub fn server_config(
    credentials: &NodeCredentials,
    admission: &Admission,
) -> Result<rustls::ServerConfig, TlsError> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots(credentials)?, provider())
        .build()
        .map_err(|error| TlsError::Verifier(error.to_string()))?;
    let verifier = Arc::new(MeshClientVerifier {
        inner,
        admission: admission.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(credentials.chain.clone(), credentials.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The client side. Without `present_certificate` the client shows no
/// certificate (only useful to prove that servers refuse it).
pub fn client_config(
    credentials: &NodeCredentials,
    present_certificate: bool,
    admission: &Admission,
) -> Result<rustls::ClientConfig, TlsError> {
    let inner = WebPkiServerVerifier::builder_with_provider(roots(credentials)?, provider())
        .build()
        .map_err(|error| TlsError::Verifier(error.to_string()))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier {
            inner,
            admission: admission.clone(),
        }));
    let mut config = if present_certificate {
        builder.with_client_auth_cert(credentials.chain.clone(), credentials.key.clone_key())?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The mesh name in a certificate: its first DNS subject alternative name.
pub fn certificate_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let names = parsed.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_string()),
            _ => None,
        })
}

/// Verifies like a normal TLS client, but against the name the server's own
/// certificate carries, since a mesh node may be reached by address only.
#[derive(Debug)]
struct MeshServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    admission: Admission,
}

/// The CA's verdict on a client, then [`Admission`]'s.
#[derive(Debug)]
struct MeshClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    admission: Admission,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.admission.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = certificate_name(end_entity)
            .ok_or_else(|| rustls::Error::General("mesh certificate without a DNS name".into()))?;
        let name = ServerName::try_from(name).map_err(|_| {
            rustls::Error::General("mesh certificate name is not a DNS name".into())
        })?;
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)?;
        self.admission.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
