//! Who is calling: OIDC bearer tokens checked against the configured issuer
//! (discovery document, then its JWKS, cached and fetched again when a
//! token names a key the cache does not hold — a key rotation), with the
//! signature, issuer, audience and expiry checked. Only asymmetric
//! algorithms are accepted (a token signed with a shared secret or none at
//! all is refused whatever its header says). The role (`admin`, `edit`,
//! `view`) and project membership come from configurable claims.

use crate::node::config::OidcConfig;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the JWKS may be fetched again for an unknown key id.
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_secs(10);
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;
const ACCEPTED: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What a user may do; ordered, each includes the ones before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    View,
    Edit,
    Admin,
}

impl UserRole {
    fn parse(text: &str) -> Option<UserRole> {
        match text {
            "view" => Some(UserRole::View),
            "edit" => Some(UserRole::Edit),
            "admin" => Some(UserRole::Admin),
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Principal {
    pub subject: String,
    pub role: UserRole,
    pub projects: BTreeSet<String>,
}

impl Principal {
    /// Whether objects of `project` are visible to this caller.
    pub fn sees(&self, project: &str) -> bool {
        self.role == UserRole::Admin || self.projects.contains(project)
    }

    /// Whether this caller may change objects of `project`.
    pub fn may_change(&self, project: &str) -> bool {
        self.role >= UserRole::Edit && self.sees(project)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the identity provider cannot be reached: {0}")]
    Provider(String),
    #[error("the token carries no metalmesh role (claim {0})")]
    NoRole(String),
}

#[derive(Default)]
struct Keys {
    by_id: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
}

/// Checks bearer tokens.
pub struct Verifier {
    config: OidcConfig,
    keys: Mutex<Keys>,
    http: ureq::Agent,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.config.issuer)
            .finish()
    }
}

/// `GET /v1/auth`: where the CLI logs in (public: it names, it grants
/// nothing).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoginInfo {
    pub issuer: String,
    pub client_id: String,
    pub audience: String,
}

impl Verifier {
    pub fn login_info(&self) -> LoginInfo {
        LoginInfo {
            issuer: self.config.issuer.clone(),
            client_id: self.config.cli_client_id.clone(),
            audience: self.config.audience.clone(),
        }
    }

    pub fn new(config: OidcConfig) -> Verifier {
        Verifier {
            config,
            keys: Mutex::new(Keys::default()),
            http: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(5))
                .build(),
        }
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks `token` and says who it is.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Invalid("the token names no key (kid)".into()))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[
            self.config.issuer.as_str(),
            &format!("{}/", self.config.issuer),
        ]);
        validation.set_audience(&[self.config.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        self.principal(&data.claims)
    }

    fn principal(&self, claims: &serde_json::Value) -> Result<Principal, AuthError> {
        let strings = |name: &str| -> Vec<String> {
            match &claims[name] {
                serde_json::Value::String(one) => vec![one.clone()],
                serde_json::Value::Array(many) => many
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let role = strings(&self.config.roles_claim)
            .iter()
            .filter_map(|r| UserRole::parse(r))
            .max()
            .ok_or_else(|| AuthError::NoRole(self.config.roles_claim.clone()))?;
        Ok(Principal {
            subject: claims["sub"].as_str().unwrap_or_default().to_string(),
            role,
            projects: strings(&self.config.projects_claim).into_iter().collect(),
        })
    }

    /// The key `kid`, fetching the JWKS again when it is not cached (at
    /// most every [`REFRESH_AT_MOST_EVERY`]).
    async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        {
            let keys = self.keys();
            if let Some(key) = keys.by_id.get(kid) {
                return Ok(key.clone());
            }
            if keys
                .fetched
                .is_some_and(|at| at.elapsed() < REFRESH_AT_MOST_EVERY)
            {
                return Err(AuthError::Invalid(format!("unknown signing key {kid:?}")));
            }
        }
        let (issuer, http) = (self.config.issuer.clone(), self.http.clone());
        let fetched = tokio::task::spawn_blocking(move || fetch_keys(&http, &issuer))
            .await
            .map_err(|e| AuthError::Provider(e.to_string()))?;
        let mut keys = self.keys();
        keys.fetched = Some(Instant::now());
        keys.by_id = fetched?;
        keys.by_id
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError::Invalid(format!("unknown signing key {kid:?}")))
    }
}

/// Discovery, then the JWKS it names.
fn fetch_keys(http: &ureq::Agent, issuer: &str) -> Result<HashMap<String, DecodingKey>, AuthError> {
    let provider = |e: String| AuthError::Provider(e);
    let discovery: serde_json::Value = http
        .get(&format!("{issuer}/.well-known/openid-configuration"))
        .call()
        .map_err(|e| provider(e.to_string()))?
        .into_json()
        .map_err(|e| provider(format!("discovery document: {e}")))?;
    let announced = discovery["issuer"].as_str().unwrap_or_default();
    if announced.trim_end_matches('/') != issuer {
        return Err(provider(format!(
            "the discovery document names issuer {announced:?}, not {issuer:?}"
        )));
    }
    let jwks_uri = discovery["jwks_uri"]
        .as_str()
        .ok_or_else(|| provider("the discovery document has no jwks_uri".into()))?;
    let set: JwkSet = http
        .get(jwks_uri)
        .call()
        .map_err(|e| provider(e.to_string()))?
        .into_json()
        .map_err(|e| provider(format!("JWKS: {e}")))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, key);
            }
            Err(error) => tracing::warn!(%kid, %error, "JWKS key left out"),
        }
    }
    Ok(keys)
}
