//! `scripts/bench api`: the API node with 10,000 machines in its replica.
//!
//! In one process on loopback: the testbed's development OIDC issuer, the
//! API node (HTTPS, OIDC, its mesh replica), and a simulated rack: a real
//! mesh node with a `leaf` certificate that publishes the machines' records
//! and commits `machine.allocate` commands in its own store the way an
//! agent's machine core does (one owner, refuses a machine allocated
//! already). Measures `GET /v1/machines` latency (p50/p99 of sequential
//! requests) and end-to-end allocations per second with concurrent clients,
//! then checks that no machine or address was handed out twice.
//!
//!   BENCH_MACHINES (default 10000), BENCH_ALLOCATIONS (default 1000),
//!   BENCH_CLIENTS (default 16)

use metalmesh_api::cli::client::ApiClient;
use metalmesh_api::node::config::ApiConfig;
use metalmesh_inventory::mesh::Tuning;
use metalmesh_inventory::mesh::service::{self, Command, MeshSettings, MeshView};
use metalmesh_inventory::model::{AllocateRequest, ExecutedAllocation, Machine, Switch};
use metalmesh_inventory::pki::{self, IssuedPem, NodeCredentials, NodeIdentity};
use metalmesh_inventory::trust::{Role, Trust};
use metalmesh_inventory::{RecordKey, RecordKind, Store};
use metalmesh_testbed::issuer::{self, AUDIENCE, TokenRequest};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const API: [u8; 4] = [127, 0, 0, 161];
const RACK: [u8; 4] = [127, 0, 0, 162];
const ISSUER: &str = "127.0.0.163:18080";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fail(message: &str) -> ! {
    eprintln!("bench api: {message}");
    std::process::exit(1)
}

fn issue(ca: &IssuedPem, name: &str, role: Role, ip: [u8; 4]) -> IssuedPem {
    let now = time::OffsetDateTime::now_utc();
    let mut identity = NodeIdentity::new(name, role);
    identity.addresses.push(ip.into());
    pki::issue_node(
        ca,
        &identity,
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    )
    .unwrap_or_else(|e| fail(&e.to_string()))
}

fn uuid(i: usize) -> String {
    format!("6d6d0000-0000-4000-8000-{i:012x}")
}

/// The simulated rack's answer to `machine.allocate`: commit in its own
/// store unless the machine is allocated already.
fn commit(store: &Store, command: &Command) -> Result<serde_json::Value, String> {
    if command.op != "machine.allocate" {
        return Err(format!("unknown command {}", command.op));
    }
    let uuid = command.body["uuid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let request: AllocateRequest =
        serde_json::from_value(command.body["allocation"].clone()).map_err(|e| e.to_string())?;
    let key = format!("rack1/{uuid}");
    let record = store
        .get(&RecordKey::new(RecordKind::Machine, &key))
        .map_err(|e| e.to_string())?
        .and_then(|r| r.value)
        .ok_or_else(|| format!("no machine {uuid}"))?;
    let mut machine: Machine = serde_json::from_str(&record).map_err(|e| e.to_string())?;
    if machine.allocation.is_some() {
        return Err(format!("machine {uuid} is already allocated"));
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
    store
        .put_local_json(RecordKind::Machine, &key, &machine)
        .map_err(|e| e.to_string())?;
    serde_json::to_value(&machine).map_err(|e| e.to_string())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let machines = env("BENCH_MACHINES", 10_000);
    let allocations = env("BENCH_ALLOCATIONS", 1_000).min(machines);
    let clients = env("BENCH_CLIENTS", 16).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&e.to_string()));
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&e.to_string()));
    let root = dir.path().to_path_buf();
    let cancel = CancellationToken::new();
    let (client, token) = runtime.block_on(setup(&root, machines, cancel.clone()));
    println!("api bench: {machines} machines in the replica, HTTPS, OIDC (ES256), release build");

    // machine ls: sequential requests.
    let mut latencies = Vec::new();
    for _ in 0..100 {
        // Time to the answer's last byte; the answer is checked after.
        let started = Instant::now();
        let body = client
            .get_bytes("/v1/machines")
            .unwrap_or_else(|e| fail(&e.to_string()));
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        let list: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|e| fail(&e.to_string()));
        if list.as_array().map_or(0, Vec::len) != machines {
            fail("machine ls did not return every machine");
        }
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    println!(
        "machine ls ({machines} machines):  p50 {p50:.1} ms  p99 {p99:.1} ms  (100 requests; target p99 <= 50 ms -> {})",
        if p99 <= 50.0 { "met" } else { "NOT met" }
    );

    // Allocations from concurrent clients.
    let started = Instant::now();
    let results: Vec<serde_json::Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let client = client.clone();
                scope.spawn(move || {
                    let mut won = Vec::new();
                    let mut i = c;
                    while i < allocations {
                        let body = serde_json::json!({
                            "project": "bench", "network": "bench", "hostname": format!("h{i}"),
                            "image": "debian",
                        });
                        match client.post("/v1/machines/allocate", &body) {
                            Ok(machine) => won.push(machine),
                            Err(error) => fail(&format!("allocation {i}: {error}")),
                        }
                        i += clients;
                    }
                    won
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let rate = results.len() as f64 / elapsed;
    let uuids: BTreeSet<&str> = results.iter().filter_map(|m| m["uuid"].as_str()).collect();
    let ips: BTreeSet<&str> = results.iter().filter_map(|m| m["ip"].as_str()).collect();
    if uuids.len() != allocations || ips.len() != allocations {
        fail(&format!(
            "{} allocations gave {} machines and {} addresses: something was handed out twice",
            allocations,
            uuids.len(),
            ips.len()
        ));
    }
    println!(
        "allocations: {allocations} by {clients} clients in {elapsed:.1} s = {rate:.0}/s (target >= 200/s -> {}); {} distinct machines, {} distinct addresses",
        if rate >= 200.0 { "met" } else { "NOT met" },
        uuids.len(),
        ips.len()
    );
    drop(token);
    cancel.cancel();
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
}

/// Issuer, CA, rack node with its machines, API node; returns a client.
async fn setup(root: &Path, machines: usize, cancel: CancellationToken) -> (ApiClient, String) {
    let issuer_dir = root.join("issuer");
    issuer::create(&issuer_dir, &format!("http://{ISSUER}"))
        .unwrap_or_else(|e| fail(&e.to_string()));
    tokio::spawn(issuer::serve(
        issuer_dir.clone(),
        ISSUER.parse().unwrap_or_else(|_| fail("issuer address")),
    ));
    let ca = pki::generate_ca("bench").unwrap_or_else(|e| fail(&e.to_string()));

    // The simulated rack.
    let rack = issue(&ca, "rack1", Role::Leaf, RACK);
    let credentials = Arc::new(
        NodeCredentials::from_pem(&ca.cert, &rack).unwrap_or_else(|e| fail(&e.to_string())),
    );
    let trust = Trust::from_credentials(&credentials).unwrap_or_else(|e| fail(&e.to_string()));
    let store =
        Store::open_signed(&root.join("rack1.db"), trust).unwrap_or_else(|e| fail(&e.to_string()));
    let switch = Switch {
        name: "rack1".into(),
        partition: "bench".into(),
        rack: "rack1".into(),
        loopback: "10.255.0.1".into(),
        asn: 4_200_000_001,
        chassis_mac: None,
        mesh_address: None,
    };
    store
        .put_local_json(RecordKind::Switch, "rack1", &switch)
        .unwrap_or_else(|e| fail(&e.to_string()));
    for i in 0..machines {
        let mut machine = Machine::new(&uuid(i), "rack1");
        machine.port = Some(format!("p{i}"));
        machine.state = "Waiting".into();
        machine.liveliness = "Alive".into();
        store
            .put_local_json(RecordKind::Machine, &format!("rack1/{}", uuid(i)), &machine)
            .unwrap_or_else(|e| fail(&e.to_string()));
    }
    let (commands_tx, mut commands) = tokio::sync::mpsc::channel::<Command>(256);
    {
        let store = store.clone();
        tokio::spawn(async move {
            // One owner commits, as an agent's machine core does.
            while let Some(command) = commands.recv().await {
                let answer = commit(&store, &command);
                let _ = command.reply.send(answer);
            }
        });
    }
    let rack_addr = SocketAddr::from((RACK, 17946));
    let settings = MeshSettings {
        name: "rack1".into(),
        listen: rack_addr,
        advertise: rack_addr,
        seeds: vec![SocketAddr::from((API, 17946))],
        tuning: Tuning::default(),
        credential_files: None,
        peer_byte_budget: service::PEER_BYTE_BUDGET,
    };
    {
        let (store, cancel) = (store.clone(), cancel.clone());
        tokio::spawn(async move {
            if let Err(error) = service::run(
                settings,
                credentials,
                store,
                MeshView::default(),
                commands_tx,
                cancel,
            )
            .await
            {
                fail(&format!("rack mesh node: {error}"));
            }
        });
    }

    // The API node.
    let api_dir = root.join("api");
    let mesh_dir = api_dir.join("mesh");
    std::fs::create_dir_all(&mesh_dir).unwrap_or_else(|e| fail(&e.to_string()));
    let api_identity = issue(&ca, "api", Role::Api, API);
    for (file, text) in [
        ("ca.pem", &ca.cert),
        ("node.pem", &api_identity.cert),
        ("node.key", &api_identity.key),
    ] {
        std::fs::write(mesh_dir.join(file), text).unwrap_or_else(|e| fail(&e.to_string()));
    }
    let config = ApiConfig::parse(
        &format!(
            "name = \"api\"\nstate_dir = {:?}\n[http]\nlisten = \"127.0.0.161:18443\"\n[oidc]\nissuer = \"http://{ISSUER}\"\naudience = \"{AUDIENCE}\"\nallow_http_issuer = true\n[mesh]\nlisten = \"127.0.0.161:17946\"\nadvertise = \"127.0.0.161:17946\"\nseeds = [\"127.0.0.162:17946\"]\n[tenant]\nprefix_length = 20\n",
            api_dir.display().to_string()
        ),
        Path::new("bench-api.toml"),
    )
    .unwrap_or_else(|e| fail(&e.to_string()));
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if let Err(error) = metalmesh_api::node::run(config, cancel).await {
                fail(&format!("API node: {error:#}"));
            }
        });
    }
    let token = issuer::token(
        &issuer_dir,
        &TokenRequest {
            subject: "bench".into(),
            role: "admin".into(),
            projects: vec![],
            audience: AUDIENCE.into(),
            lifetime_secs: 3600,
        },
    )
    .unwrap_or_else(|e| fail(&e.to_string()));
    let client = ApiClient::new(
        "https://127.0.0.161:18443",
        &token,
        Some(&mesh_dir.join("ca.pem")),
    )
    .unwrap_or_else(|e| fail(&e.to_string()));
    // Wait for the API and for the whole rack in its replica.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let c = client.clone();
        let count = tokio::task::spawn_blocking(move || c.get("/v1/machines").ok())
            .await
            .ok()
            .flatten()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        if count == machines {
            break;
        }
        if Instant::now() > deadline {
            fail(&format!(
                "the API's replica holds {count} of {machines} machines after 180 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (path, body) in [
        ("/v1/projects", serde_json::json!({"name": "bench"})),
        (
            "/v1/networks",
            serde_json::json!({"project": "bench", "name": "bench"}),
        ),
    ] {
        let c = client.clone();
        tokio::task::spawn_blocking(move || c.post(path, &body))
            .await
            .unwrap_or_else(|e| fail(&e.to_string()))
            .unwrap_or_else(|e| fail(&e.to_string()));
    }
    (client, token)
}
