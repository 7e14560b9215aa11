//! An API deployment on loopback for tests and `scripts/bench api`: the
//! testbed's development OIDC issuer, the mesh CA, the API node, and
//! simulated racks — real mesh nodes with `leaf` certificates that publish
//! machine records and commit `machine.allocate` / `machine.free` in their
//! own store the way an agent's machine core does (one owner task; a
//! machine allocated already or not Waiting is refused).

#![allow(dead_code, unreachable_pub)]

use metalmesh_api::cli::client::ApiClient;
use metalmesh_api::node::config::ApiConfig;
use metalmesh_inventory::mesh::service::{self, Command, MeshSettings, MeshView};
use metalmesh_inventory::model::{AllocateRequest, ExecutedAllocation, Hardware, Machine, Switch};
use metalmesh_inventory::pki::{self, IssuedPem, NodeCredentials, NodeIdentity};
use metalmesh_inventory::trust::{Role, Trust};
use metalmesh_inventory::{RecordKey, RecordKind, Store};
use metalmesh_testbed::issuer::{self, AUDIENCE, TokenRequest};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Where a deployment listens: the API on `<base>.1`, the issuer on
/// `<base>.3`, rack `i` on `<base>.(10 + i)` (distinct bases keep tests of
/// one binary apart).
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub base: [u8; 3],
}

impl Addresses {
    fn ip(&self, last: u8) -> [u8; 4] {
        [self.base[0], self.base[1], self.base[2], last]
    }
    fn api(&self) -> [u8; 4] {
        self.ip(1)
    }
    fn issuer(&self) -> String {
        let [a, b, c, d] = self.ip(3);
        format!("{a}.{b}.{c}.{d}:18080")
    }
    fn rack(&self, index: usize) -> [u8; 4] {
        self.ip(10 + index as u8)
    }
}

/// A simulated rack: its name and machines (with hardware, if given).
#[derive(Debug, Clone)]
pub struct RackSpec {
    pub name: String,
    pub partition: String,
    pub machines: Vec<(String, Option<Hardware>)>,
}

#[derive(Debug)]
pub struct Deployment {
    pub issuer_dir: PathBuf,
    pub ca_file: PathBuf,
    pub api_url: String,
    /// `http://<api>:19470/metrics`.
    pub metrics_url: String,
    pub racks: Vec<Store>,
    pub cancel: CancellationToken,
}

pub fn issue(ca: &IssuedPem, name: &str, role: Role, ip: [u8; 4]) -> Result<IssuedPem, Failure> {
    let now = time::OffsetDateTime::now_utc();
    let mut identity = NodeIdentity::new(name, role);
    identity.addresses.push(ip.into());
    Ok(pki::issue_node(
        ca,
        &identity,
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    )?)
}

pub fn token(dir: &Path, subject: &str, role: &str, projects: &[&str]) -> Result<String, Failure> {
    Ok(issuer::token(
        dir,
        &TokenRequest {
            subject: subject.into(),
            role: role.into(),
            projects: projects.iter().map(|p| p.to_string()).collect(),
            audience: AUDIENCE.into(),
            lifetime_secs: 3600,
        },
    )?)
}

/// The simulated rack's answer to a command: commit in its own store.
fn commit(store: &Store, rack: &str, command: &Command) -> Result<serde_json::Value, String> {
    let uuid = command.body["uuid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = format!("{rack}/{uuid}");
    let record = store
        .get(&RecordKey::new(RecordKind::Machine, &key))
        .map_err(|e| e.to_string())?
        .and_then(|r| r.value)
        .ok_or_else(|| format!("no machine {uuid}"))?;
    let mut machine: Machine = serde_json::from_str(&record).map_err(|e| e.to_string())?;
    match command.op.as_str() {
        "machine.allocate" => {
            let request: AllocateRequest =
                serde_json::from_value(command.body["allocation"].clone())
                    .map_err(|e| e.to_string())?;
            if machine.allocation.is_some() {
                return Err(format!("machine {uuid} is already allocated"));
            }
            if machine.state != "Waiting" {
                return Err(format!("machine {uuid} is not Waiting"));
            }
            machine.allocation = Some(ExecutedAllocation {
                vrf: request.vrf.clone().unwrap_or_default(),
                request,
                port: machine.port.clone().unwrap_or_default(),
                image_url: String::new(),
                image_sha256: String::new(),
                routed: false,
                secrets_sha256: None,
            });
            machine.state = "Installing".into();
        }
        "machine.free" => {
            if machine.allocation.take().is_none() {
                return Err(format!("machine {uuid} is not allocated"));
            }
            // Simulated machines wipe at once.
            machine.state = "Waiting".into();
        }
        other => return Err(format!("unknown command {other}")),
    }
    store
        .put_local_json(RecordKind::Machine, &key, &machine)
        .map_err(|e| e.to_string())?;
    serde_json::to_value(&machine).map_err(|e| e.to_string())
}

fn rack(
    root: &Path,
    ca: &IssuedPem,
    addresses: Addresses,
    index: usize,
    spec: &RackSpec,
    cancel: &CancellationToken,
) -> Result<Store, Failure> {
    let ip = addresses.rack(index);
    let identity = issue(ca, &spec.name, Role::Leaf, ip)?;
    let credentials = Arc::new(NodeCredentials::from_pem(&ca.cert, &identity)?);
    let trust = Trust::from_credentials(&credentials)?;
    let store = Store::open_signed(&root.join(format!("{}.db", spec.name)), trust)?;
    let switch = Switch {
        name: spec.name.clone(),
        partition: spec.partition.clone(),
        rack: spec.name.clone(),
        loopback: format!("10.255.0.{}", index + 1),
        asn: 4_200_000_001 + index as u32,
        chassis_mac: None,
        mesh_address: None,
        bgp_sessions: Vec::new(),
    };
    store.put_local_json(RecordKind::Switch, &spec.name, &switch)?;
    for (i, (uuid, hardware)) in spec.machines.iter().enumerate() {
        let mut machine = Machine::new(uuid, &spec.name);
        machine.port = Some(format!("p{i}"));
        machine.state = "Waiting".into();
        machine.liveliness = "Alive".into();
        machine.hardware = hardware.clone();
        store.put_local_json(
            RecordKind::Machine,
            &format!("{}/{uuid}", spec.name),
            &machine,
        )?;
    }
    let (commands_tx, mut commands) = tokio::sync::mpsc::channel::<Command>(256);
    {
        let (store, name) = (store.clone(), spec.name.clone());
        tokio::spawn(async move {
            // One owner commits, as an agent's machine core does.
            while let Some(command) = commands.recv().await {
                let answer = if command.role == Some(Role::Api) {
                    commit(&store, &name, &command)
                } else {
                    Err("accepted from the API node only".into())
                };
                let _ = command.reply.send(answer);
            }
        });
    }
    spawn_mesh_node(
        &spec.name,
        SocketAddr::from((ip, 17946)),
        SocketAddr::from((addresses.api(), 17946)),
        credentials,
        store.clone(),
        commands_tx,
        cancel,
    );
    Ok(store)
}

/// Runs a mesh node `name` on `addr` (joining through `seed`) over `store`
/// until `cancel`; its commands go to `commands`.
pub fn spawn_mesh_node(
    name: &str,
    addr: SocketAddr,
    seed: SocketAddr,
    credentials: Arc<NodeCredentials>,
    store: Store,
    commands: tokio::sync::mpsc::Sender<Command>,
    cancel: &CancellationToken,
) {
    let settings = MeshSettings {
        name: name.to_string(),
        listen: addr,
        advertise: addr,
        seeds: vec![seed],
        tuning: metalmesh_inventory::mesh::Tuning {
            anti_entropy_interval: Duration::from_millis(300),
            ..metalmesh_inventory::mesh::Tuning::default()
        },
        credential_files: None,
        peer_byte_budget: service::PEER_BYTE_BUDGET,
    };
    let cancel = cancel.clone();
    tokio::spawn(async move {
        if let Err(error) = service::run(
            settings,
            credentials,
            store,
            MeshView::default(),
            commands,
            cancel,
        )
        .await
        {
            eprintln!("mesh node: {error}");
        }
    });
}

/// Starts the issuer, the racks and the API node; returns once the API
/// answers and its replica holds every machine. `tenant` is extra
/// `[tenant]` configuration.
pub async fn start(
    root: &Path,
    addresses: Addresses,
    racks: &[RackSpec],
    tenant: &str,
) -> Result<Deployment, Failure> {
    let cancel = CancellationToken::new();
    let issuer_dir = root.join("issuer");
    issuer::create(&issuer_dir, &format!("http://{}", addresses.issuer()))?;
    tokio::spawn(issuer::serve(
        issuer_dir.clone(),
        addresses.issuer().parse()?,
    ));
    let ca = pki::generate_ca("test")?;
    let stores = racks
        .iter()
        .enumerate()
        .map(|(i, spec)| rack(root, &ca, addresses, i, spec, &cancel))
        .collect::<Result<Vec<_>, _>>()?;

    let api_dir = root.join("api");
    let mesh_dir = api_dir.join("mesh");
    std::fs::create_dir_all(&mesh_dir)?;
    let api_identity = issue(&ca, "api", Role::Api, addresses.api())?;
    for (file, text) in [
        ("ca.pem", &ca.cert),
        ("node.pem", &api_identity.cert),
        ("node.key", &api_identity.key),
    ] {
        std::fs::write(mesh_dir.join(file), text)?;
    }
    let [a, b, c, d] = addresses.api();
    let api_ip = format!("{a}.{b}.{c}.{d}");
    let seeds: Vec<String> = (0..racks.len())
        .map(|i| {
            let [a, b, c, d] = addresses.rack(i);
            format!("\"{a}.{b}.{c}.{d}:17946\"")
        })
        .collect();
    let config = ApiConfig::parse(
        &format!(
            "name = \"api\"\nstate_dir = {:?}\n[http]\nlisten = \"{api_ip}:18443\"\n[oidc]\nissuer = \"http://{}\"\naudience = \"{AUDIENCE}\"\nallow_http_issuer = true\n[mesh]\nlisten = \"{api_ip}:17946\"\nadvertise = \"{api_ip}:17946\"\nseeds = [{}]\n[metrics]\nlisten = \"{api_ip}:19470\"\n[tenant]\n{tenant}\n",
            api_dir.display().to_string(),
            addresses.issuer(),
            seeds.join(", "),
        ),
        Path::new("api.toml"),
    )?;
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if let Err(error) = metalmesh_api::node::run(config, cancel).await {
                eprintln!("API node: {error:#}");
            }
        });
    }
    let deployment = Deployment {
        issuer_dir,
        ca_file: mesh_dir.join("ca.pem"),
        api_url: format!("https://{api_ip}:18443"),
        metrics_url: format!("http://{api_ip}:19470/metrics"),
        racks: stores,
        cancel,
    };
    let admin = deployment.client(&token(&deployment.issuer_dir, "ada", "admin", &[])?)?;
    let total: usize = racks.iter().map(|r| r.machines.len()).sum();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let c = admin.clone();
        let count = tokio::task::spawn_blocking(move || c.get("/v1/machines").ok())
            .await?
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        if count == total {
            return Ok(deployment);
        }
        if Instant::now() > deadline {
            return Err(
                format!("the API's replica holds {count} of {total} machines after 180 s").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Deployment {
    pub fn client(&self, token: &str) -> Result<ApiClient, Failure> {
        Ok(ApiClient::new(&self.api_url, token, Some(&self.ca_file))?)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
