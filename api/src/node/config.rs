//! `/etc/metalmesh/api.toml`: read as its wire shape (every key known,
//! every value typed), then checked into [`ApiConfig`], whose values the
//! node can use without further checks. Errors name the file and, for a
//! TOML error, the line and key.

use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    name: String,
    state_dir: PathBuf,
    #[serde(default)]
    http: WireHttp,
    oidc: WireOidc,
    mesh: WireMesh,
    #[serde(default)]
    tenant: WireTenant,
    #[serde(default)]
    metrics: WireMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireMetrics {
    listen: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHttp {
    listen: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireOidc {
    issuer: String,
    audience: String,
    roles_claim: Option<String>,
    projects_claim: Option<String>,
    cli_client_id: Option<String>,
    #[serde(default)]
    allow_http_issuer: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireMesh {
    listen: Option<SocketAddr>,
    advertise: SocketAddr,
    seeds: Vec<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireTenant {
    super_network: Option<String>,
    prefix_length: Option<u8>,
    vni_range: Option<[u32; 2]>,
    table_range: Option<[u32; 2]>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The node's mesh name (its certificate's).
    pub name: String,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub oidc: OidcConfig,
    pub mesh: MeshConfig,
    pub tenant: TenantConfig,
    /// Where `/metrics` is served (plain HTTP); default 127.0.0.1:9470.
    pub metrics_listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Without a trailing slash.
    pub issuer: String,
    pub audience: String,
    pub roles_claim: String,
    pub projects_claim: String,
    /// The client id `metalmesh login --device` asks the issuer for;
    /// default: the audience.
    pub cli_client_id: String,
}

#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where private networks are carved from.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub super_network: (Ipv4Addr, u8),
    pub prefix_length: u8,
    pub vnis: (u32, u32),
    pub tables: (u32, u32),
}

pub const DEFAULT_PORT: u16 = 8443;
pub const MESH_PORT: u16 = 7946;

impl ApiConfig {
    pub fn load(path: &Path) -> Result<ApiConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ApiConfig::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<ApiConfig, ConfigError> {
        let wire: Wire = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        if !metalmesh_inventory::pki::valid_node_name(&wire.name) {
            return Err(invalid(
                "name",
                format!("{:?} is not a mesh node name", wire.name),
            ));
        }
        let issuer = wire.oidc.issuer.trim_end_matches('/').to_string();
        if !(issuer.starts_with("https://")
            || (wire.oidc.allow_http_issuer && issuer.starts_with("http://")))
        {
            return Err(invalid(
                "oidc.issuer",
                format!(
                    "{issuer:?} must be an https URL (allow_http_issuer = true only for a development issuer)"
                ),
            ));
        }
        if wire.oidc.audience.is_empty() {
            return Err(invalid("oidc.audience", "must not be empty".into()));
        }
        let mesh_dir = wire.state_dir.join("mesh");
        let seeds = wire
            .mesh
            .seeds
            .iter()
            .map(|seed| {
                seed.parse::<SocketAddr>()
                    .or_else(|_| {
                        seed.parse::<Ipv4Addr>()
                            .map(|ip| SocketAddr::from((ip, MESH_PORT)))
                    })
                    .map_err(|_| invalid("mesh.seeds", format!("{seed:?} is not an address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tenant = tenant(&wire.tenant).map_err(|(key, message)| invalid(key, message))?;
        let mesh = MeshConfig {
            listen: wire
                .mesh
                .listen
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], MESH_PORT))),
            advertise: wire.mesh.advertise,
            seeds,
            ca: wire.mesh.ca.unwrap_or_else(|| mesh_dir.join("ca.pem")),
            cert: wire.mesh.cert.unwrap_or_else(|| mesh_dir.join("node.pem")),
            key: wire.mesh.key.unwrap_or_else(|| mesh_dir.join("node.key")),
        };
        Ok(ApiConfig {
            name: wire.name,
            listen: wire
                .http
                .listen
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))),
            // The mesh certificate serves HTTPS unless told otherwise.
            tls_cert: wire.http.cert.unwrap_or_else(|| mesh.cert.clone()),
            tls_key: wire.http.key.unwrap_or_else(|| mesh.key.clone()),
            state_dir: wire.state_dir,
            oidc: OidcConfig {
                issuer,
                cli_client_id: wire
                    .oidc
                    .cli_client_id
                    .unwrap_or_else(|| wire.oidc.audience.clone()),
                audience: wire.oidc.audience,
                roles_claim: wire
                    .oidc
                    .roles_claim
                    .unwrap_or_else(|| "metalmesh_roles".into()),
                projects_claim: wire
                    .oidc
                    .projects_claim
                    .unwrap_or_else(|| "metalmesh_projects".into()),
            },
            mesh,
            tenant,
            metrics_listen: wire
                .metrics
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9470))),
        })
    }
}

fn tenant(wire: &WireTenant) -> Result<TenantConfig, (&'static str, String)> {
    let text = wire.super_network.as_deref().unwrap_or("10.64.0.0/12");
    let (address, length) = text
        .split_once('/')
        .and_then(|(a, l)| Some((a.parse::<Ipv4Addr>().ok()?, l.parse::<u8>().ok()?)))
        .filter(|(a, l)| *l <= 32 && u32::from(*a) & !mask(*l) == 0)
        .ok_or((
            "tenant.super_network",
            format!("{text:?} is not an IPv4 network"),
        ))?;
    let prefix_length = wire.prefix_length.unwrap_or(24);
    if !(length..=30).contains(&prefix_length) {
        return Err((
            "tenant.prefix_length",
            format!("{prefix_length} must be between {length} and 30"),
        ));
    }
    let range = |value: Option<[u32; 2]>, key, default: (u32, u32)| {
        let (low, high) = value.map_or(default, |[l, h]| (l, h));
        if low == 0 || low > high {
            Err((
                key,
                format!("[{low}, {high}] is not a range of positive numbers"),
            ))
        } else {
            Ok((low, high))
        }
    };
    Ok(TenantConfig {
        super_network: (address, length),
        prefix_length,
        vnis: range(wire.vni_range, "tenant.vni_range", (10_000, 19_999))?,
        tables: range(wire.table_range, "tenant.table_range", (10_000, 19_999))?,
    })
}

pub fn mask(length: u8) -> u32 {
    if length == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "api"
state_dir = "/var/lib/metalmesh-api"
[oidc]
issuer = "https://login.example.com/"
audience = "metalmesh"
[mesh]
advertise = "10.254.0.2:7946"
seeds = ["10.255.0.1", "10.255.0.2:7946"]
"#;

    #[test]
    fn a_good_file_gets_its_defaults() {
        let config =
            ApiConfig::parse(GOOD, Path::new("api.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.oidc.issuer, "https://login.example.com");
        assert_eq!(config.listen.port(), DEFAULT_PORT);
        assert_eq!(config.mesh.seeds.len(), 2);
        assert_eq!(config.tls_cert, config.mesh.cert);
        assert_eq!(config.tenant.prefix_length, 24);
    }

    #[test]
    fn mistakes_name_the_key() {
        let cases = [
            (GOOD.replace("https://login", "http://login"), "oidc.issuer"),
            (GOOD.replace("\"10.255.0.1\"", "\"leaf1\""), "mesh.seeds"),
            (
                format!("{GOOD}[tenant]\nsuper_network = \"10.64.0.1/12\"\n"),
                "tenant.super_network",
            ),
            (
                format!("{GOOD}[tenant]\nprefix_length = 8\n"),
                "tenant.prefix_length",
            ),
            (GOOD.replace("audience", "audiences"), "unknown field"),
        ];
        for (text, key) in cases {
            let error = ApiConfig::parse(&text, Path::new("api.toml"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(key) && error.contains("api.toml"), "{error}");
        }
    }
}
