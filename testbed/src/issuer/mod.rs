//! The development OIDC issuer of the testbed and the tests: a discovery
//! document and a JWKS over HTTP, and ES256 tokens signed with keys kept in
//! one directory. `rotate` adds a key (tokens are then signed with it; the
//! JWKS keeps the older ones), as a real provider rotates.
//!
//! It also answers the device authorization grant ([`device`]) for
//! `metalmesh login --device`.
//!
//! It is for testbeds only: its keys sit in a plain directory and it serves
//! plain HTTP (the API node accepts an `http://` issuer only with
//! `allow_http_issuer = true`).

pub mod device;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The audience of testbed tokens.
pub const AUDIENCE: &str = "metalmesh";

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("issuer key: {0}")]
    Key(String),
    #[error("token: {0}")]
    Token(String),
}

/// `<dir>/issuer.json`: the issuer URL and its keys, newest last.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    url: String,
    keys: Vec<StoredKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// PKCS#8, base64url.
    pkcs8: String,
}

/// What a token says.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRequest {
    pub subject: String,
    pub role: String,
    pub projects: Vec<String>,
    pub audience: String,
    /// Seconds from now (negative: already expired).
    pub lifetime_secs: i64,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IssuerError + '_ {
    move |source| IssuerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn load(dir: &Path) -> Result<State, IssuerError> {
    let path = dir.join("issuer.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| IssuerError::Key(format!("{}: {e}", path.display())))
}

fn save(dir: &Path, state: &State) -> Result<(), IssuerError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join("issuer.json");
    let staged = dir.join("issuer.json.new");
    let text = serde_json::to_string_pretty(state).unwrap_or_default();
    std::fs::write(&staged, text).map_err(io(&staged))?;
    std::fs::rename(&staged, &path).map_err(io(&path))
}

fn new_key(index: usize) -> Result<StoredKey, IssuerError> {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|e| IssuerError::Key(e.to_string()))?;
    Ok(StoredKey {
        kid: format!("testbed-{index}"),
        pkcs8: URL_SAFE_NO_PAD.encode(pkcs8.as_ref()),
    })
}

/// Creates the issuer in `dir` (its URL as clients reach it) with one key;
/// an existing issuer is kept.
pub fn create(dir: &Path, url: &str) -> Result<(), IssuerError> {
    if dir.join("issuer.json").exists() {
        return Ok(());
    }
    save(
        dir,
        &State {
            url: url.trim_end_matches('/').to_string(),
            keys: vec![new_key(1)?],
        },
    )
}

/// Adds a key; tokens are signed with it from now on.
pub fn rotate(dir: &Path) -> Result<String, IssuerError> {
    let mut state = load(dir)?;
    let key = new_key(state.keys.len() + 1)?;
    let kid = key.kid.clone();
    state.keys.push(key);
    save(dir, &state)?;
    Ok(kid)
}

fn pkcs8(key: &StoredKey) -> Result<Vec<u8>, IssuerError> {
    URL_SAFE_NO_PAD
        .decode(&key.pkcs8)
        .map_err(|e| IssuerError::Key(e.to_string()))
}

/// The issuer URL of `dir`.
pub fn url(dir: &Path) -> Result<String, IssuerError> {
    Ok(load(dir)?.url)
}

/// A signed token.
pub fn token(dir: &Path, request: &TokenRequest) -> Result<String, IssuerError> {
    let state = load(dir)?;
    let key = state
        .keys
        .last()
        .ok_or_else(|| IssuerError::Key("the issuer has no key".into()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims = serde_json::json!({
        "iss": state.url,
        "sub": request.subject,
        "aud": request.audience,
        "iat": now,
        "exp": now + request.lifetime_secs,
        "metalmesh_roles": [request.role],
        "metalmesh_projects": request.projects,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    let encoding = jsonwebtoken::EncodingKey::from_ec_der(&pkcs8(key)?);
    jsonwebtoken::encode(&header, &claims, &encoding).map_err(|e| IssuerError::Token(e.to_string()))
}

/// The JWKS of `dir`.
pub fn jwks(dir: &Path) -> Result<serde_json::Value, IssuerError> {
    let state = load(dir)?;
    let mut keys = Vec::new();
    for key in &state.keys {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8(key)?,
            &SystemRandom::new(),
        )
        .map_err(|e| IssuerError::Key(e.to_string()))?;
        // An uncompressed point: 0x04, then x and y.
        let point = pair.public_key().as_ref();
        if point.len() != 65 {
            return Err(IssuerError::Key("unexpected public key size".into()));
        }
        keys.push(serde_json::json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": key.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }));
    }
    Ok(serde_json::json!({ "keys": keys }))
}

/// Serves discovery and the JWKS of `dir` on `listen` until the process ends
/// (keys are read per request, so a rotation shows at once).
pub async fn serve(dir: PathBuf, listen: SocketAddr) -> Result<(), IssuerError> {
    use axum::routing::get;
    let discovery_dir = dir.clone();
    let router = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let dir = discovery_dir.clone();
                async move {
                    match url(&dir) {
                        Ok(url) => axum::Json(serde_json::json!({
                            "issuer": url,
                            "jwks_uri": format!("{url}/jwks.json"),
                            "device_authorization_endpoint": format!("{url}/device/authorize"),
                            "token_endpoint": format!("{url}/token"),
                            "grant_types_supported": ["urn:ietf:params:oauth:grant-type:device_code"],
                            "id_token_signing_alg_values_supported": ["ES256"],
                            "response_types_supported": ["id_token"],
                            "subject_types_supported": ["public"],
                        }))
                        .into_response(),
                        Err(error) => error_response(&error),
                    }
                }
            }),
        )
        .route(
            "/device/authorize",
            axum::routing::post({
                let dir = dir.clone();
                move |form: axum::Form<std::collections::HashMap<String, String>>| {
                    let dir = dir.clone();
                    async move { device_authorize(&dir, &form) }
                }
            }),
        )
        .route(
            "/token",
            axum::routing::post({
                let dir = dir.clone();
                move |form: axum::Form<std::collections::HashMap<String, String>>| {
                    let dir = dir.clone();
                    async move { device_token(&dir, &form) }
                }
            }),
        )
        .route(
            "/jwks.json",
            get(move || {
                let dir = dir.clone();
                async move {
                    match jwks(&dir) {
                        Ok(set) => axum::Json(set).into_response(),
                        Err(error) => error_response(&error),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| IssuerError::Io {
            path: PathBuf::from(listen.to_string()),
            source,
        })?;
    axum::serve(listener, router)
        .await
        .map_err(|source| IssuerError::Io {
            path: PathBuf::from(listen.to_string()),
            source,
        })
}

use axum::response::IntoResponse as _;

/// An OAuth error answer (RFC 6749 §5.2).
fn oauth_error(code: &str) -> axum::response::Response {
    (
        axum::http::StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "error": code })),
    )
        .into_response()
}

fn device_authorize(
    dir: &Path,
    form: &std::collections::HashMap<String, String>,
) -> axum::response::Response {
    let client_id = form
        .get("client_id")
        .map(String::as_str)
        .unwrap_or_default();
    if client_id != AUDIENCE {
        return oauth_error("invalid_client");
    }
    match url(dir).and_then(|url| device::authorize(dir, &url, client_id)) {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(error) => error_response(&error),
    }
}

fn device_token(
    dir: &Path,
    form: &std::collections::HashMap<String, String>,
) -> axum::response::Response {
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:device_code")
    {
        return oauth_error("unsupported_grant_type");
    }
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    match device::poll(dir, field("device_code"), field("client_id"), AUDIENCE) {
        Ok(device::Poll::Token(token)) => axum::Json(serde_json::json!({
            "access_token": token,
            "id_token": token,
            "token_type": "Bearer",
            "expires_in": 3600,
        }))
        .into_response(),
        Ok(device::Poll::Refused(code)) => oauth_error(code),
        Err(error) => error_response(&error),
    }
}

fn error_response(error: &IssuerError) -> axum::response::Response {
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        error.to_string(),
    )
        .into_response()
}
