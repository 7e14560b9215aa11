//! The CLI's HTTPS client of the API: a bearer token, the CA that signed the
//! API's certificate (the mesh CA by default), and the API's error message
//! passed on as it is.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error (status and its message).
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    #[error("cannot reach the API at {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("CA file {path}: {detail}")]
    Ca { path: String, detail: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: ureq::Agent,
}

impl ApiClient {
    /// `ca`: the PEM file of the CA to trust for the API's certificate
    /// (without: the system's roots).
    pub fn new(base: &str, token: &str, ca: Option<&Path>) -> Result<ApiClient, ClientError> {
        // Longer than the API waits for an agent (120 s, a first image
        // download): the answer of a slow allocation is not lost.
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(15))
            .timeout(Duration::from_secs(180));
        if let Some(path) = ca {
            let ca_error = |detail: String| ClientError::Ca {
                path: path.display().to_string(),
                detail,
            };
            let text = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(&text) {
                roots
                    .add(certificate.map_err(|e| ca_error(e.to_string()))?)
                    .map_err(|e| ca_error(e.to_string()))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| ca_error(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            builder = builder.tls_config(Arc::new(config));
        }
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: builder.build(),
        })
    }

    pub fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call(self.http.get(&self.url(path)), None)
    }

    /// The answer's bytes as they came (for measuring the API without this
    /// client's JSON parsing).
    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let url = self.url(path);
        let response = self
            .http
            .get(&url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(|error| ClientError::Transport {
                url: url.clone(),
                detail: error.to_string(),
            })?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(response.into_reader(), 256 * 1024 * 1024),
            &mut bytes,
        )
        .map_err(|error| ClientError::Transport {
            url,
            detail: error.to_string(),
        })?;
        Ok(bytes)
    }

    pub fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.call(self.http.post(&self.url(path)), Some(body))
    }

    /// A POST carrying an `Idempotency-Key`: a retry with the same key
    /// gets the first attempt's answer.
    pub fn post_idempotent(
        &self,
        path: &str,
        body: &serde_json::Value,
        key: Option<&str>,
    ) -> Result<serde_json::Value, ClientError> {
        let mut request = self.http.post(&self.url(path));
        if let Some(key) = key {
            request = request.set("Idempotency-Key", key);
        }
        self.call(request, Some(body))
    }

    pub fn put(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.call(self.http.put(&self.url(path)), Some(body))
    }

    pub fn delete(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call(self.http.delete(&self.url(path)), None)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn call(
        &self,
        request: ureq::Request,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let url = request.url().to_string();
        let request = request.set("Authorization", &format!("Bearer {}", self.token));
        let response = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match response {
            Ok(response) => response.into_json().map_err(|e| ClientError::Transport {
                url,
                detail: format!("unreadable answer: {e}"),
            }),
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| {
                        let error = v["error"].as_str()?.to_string();
                        Some(match v["field"].as_str() {
                            Some(field) => format!("{field}: {error}"),
                            None => error,
                        })
                    })
                    .unwrap_or(text);
                Err(ClientError::Api { status, message })
            }
            Err(error) => Err(ClientError::Transport {
                url,
                detail: error.to_string(),
            }),
        }
    }
}
