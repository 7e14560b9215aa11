//! The agent's part in the inventory mesh: it opens the node-local store,
//! publishes the records it owns (its switch, ports with their LLDP
//! neighbours, DHCP leases), runs the mesh service, answers commands from
//! other nodes, and follows the API-owned records it will act on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use metalmesh_inventory::mesh::Tuning;
use metalmesh_inventory::mesh::service::{self, Command, MeshSettings, MeshView};
use metalmesh_inventory::model;
use metalmesh_inventory::pki::NodeCredentials;
use metalmesh_inventory::store::blocking;
use metalmesh_inventory::trust::Trust;
use metalmesh_inventory::{RecordKind, Store};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::MeshConfig;
use crate::lldp::LldpSnapshot;
use crate::supervisor::Supervisor;
use crate::switch::SwitchRecord;

/// How often the lease store is read for changes to publish.
const LEASE_POLL: Duration = Duration::from_secs(2);

/// Opens the store in `state_dir` (signed, in a mesh); a corrupt or newer
/// file stops the agent with the reason, it is never reset. The state
/// directory is made owner-only: the store holds what the mesh must not.
pub fn open_store(
    state_dir: &Path,
    name: &str,
    mesh: Option<&NodeCredentials>,
) -> anyhow::Result<Store> {
    restrict_to_owner(state_dir)?;
    let path = state_dir.join("inventory.db");
    Ok(match mesh {
        None => Store::open(&path, name)?,
        Some(credentials) => {
            let trust = Trust::from_credentials(credentials).context("mesh credentials")?;
            Store::open_signed(&path, trust)?
        }
    })
}

/// Mode 0700 on the state directory (created if missing).
pub fn restrict_to_owner(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} owner-only", dir.display()))
}

/// Loads the mesh credentials of node `name`; every error names the file.
pub fn load_credentials(
    config: &MeshConfig,
    state_dir: &Path,
    name: &str,
) -> anyhow::Result<NodeCredentials> {
    let (ca, cert, key) = config.credential_paths(state_dir);
    let credentials = NodeCredentials::load(&ca, &cert, &key).context("mesh credentials")?;
    credentials.check_node_name(name).with_context(|| {
        format!(
            "mesh certificate {} (set switch.name or issue a certificate for this name)",
            cert.display()
        )
    })?;
    Ok(credentials)
}

/// Where the mesh service of this agent listens, whom it asks to join, and
/// the credential files it watches for renewal.
pub fn mesh_settings(
    config: &MeshConfig,
    state_dir: &Path,
    name: &str,
    loopback: std::net::Ipv4Addr,
) -> MeshSettings {
    let (ca, cert, key) = config.credential_paths(state_dir);
    MeshSettings {
        name: name.to_string(),
        listen: config.listen,
        advertise: config.advertise_addr(loopback),
        seeds: config.seed_addrs(),
        tuning: Tuning {
            anti_entropy_interval: Duration::from_secs(u64::from(
                *config.anti_entropy_secs.get_ref(),
            )),
            ..Tuning::default()
        },
        credential_files: Some(service::CredentialFiles { ca, cert, key }),
        peer_byte_budget: service::PEER_BYTE_BUDGET,
    }
}

/// Starts the mesh service and the command handler.
pub fn spawn_mesh(
    supervisor: &mut Supervisor,
    settings: MeshSettings,
    credentials: NodeCredentials,
    store: Store,
    view: MeshView,
) {
    let credentials = Arc::new(credentials);
    let (commands_tx, commands) = mpsc::channel::<Command>(64);
    let commands = Arc::new(tokio::sync::Mutex::new(commands));
    {
        let store = store.clone();
        let view = view.clone();
        supervisor.spawn("mesh", move |cancel| {
            let (settings, credentials, store, view, commands_tx) = (
                settings.clone(),
                Arc::clone(&credentials),
                store.clone(),
                view.clone(),
                commands_tx.clone(),
            );
            async move {
                Ok(service::run(settings, credentials, store, view, commands_tx, cancel).await?)
            }
        });
    }
    supervisor.spawn("mesh-commands", move |cancel| {
        let (commands, store) = (Arc::clone(&commands), store.clone());
        async move {
            let mut commands = commands.lock().await;
            loop {
                let command = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    command = commands.recv() => match command { Some(c) => c, None => return Ok(()) },
                };
                let answer = answer_command(&store, &command);
                tracing::info!(from = %command.from, op = %command.op, ok = answer.is_ok(), "mesh command");
                let _ = command.reply.send(answer);
            }
        }
    });
}

/// Commands other nodes may send. The API node's allocation requests join
/// these with the machine lifecycle.
fn answer_command(store: &Store, command: &Command) -> Result<serde_json::Value, String> {
    match command.op.as_str() {
        "describe" => {
            let switch = store
                .get(&metalmesh_inventory::RecordKey::new(
                    RecordKind::Switch,
                    store.origin(),
                ))
                .map_err(|e| e.to_string())?
                .and_then(|record| record.value)
                .and_then(|value| serde_json::from_str::<serde_json::Value>(&value).ok());
            Ok(serde_json::json!({ "node": store.origin(), "switch": switch }))
        }
        other => Err(format!("unknown command `{other}`")),
    }
}

/// Publishes this switch's records whenever its state changes.
pub fn spawn_publisher(
    supervisor: &mut Supervisor,
    store: Store,
    switch: watch::Receiver<Option<SwitchRecord>>,
    lldp: watch::Receiver<LldpSnapshot>,
    lease_db: Option<PathBuf>,
    mesh_address: Option<String>,
) {
    supervisor.spawn("mesh-publisher", move |cancel| {
        let (store, mut switch, mut lldp, lease_db, mesh_address) = (
            store.clone(),
            switch.clone(),
            lldp.clone(),
            lease_db.clone(),
            mesh_address.clone(),
        );
        async move {
            switch.mark_changed();
            let mut leases = tokio::time::interval(LEASE_POLL);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    changed = switch.changed() => changed?,
                    changed = lldp.changed() => changed?,
                    _ = leases.tick() => {
                        if let Some(path) = &lease_db {
                            blocking(|| publish_leases(&store, path))?;
                        }
                        continue;
                    }
                }
                let record = switch.borrow_and_update().clone();
                let snapshot = lldp.borrow_and_update().clone();
                if let Some(record) = record {
                    blocking(|| publish_switch(&store, &record, &snapshot, mesh_address.clone()))?;
                }
            }
        }
    });
}

fn publish_switch(
    store: &Store,
    record: &SwitchRecord,
    lldp: &LldpSnapshot,
    mesh_address: Option<String>,
) -> anyhow::Result<()> {
    store.put_local_json(
        RecordKind::Switch,
        &record.name,
        &model::Switch {
            name: record.name.clone(),
            partition: record.partition.clone(),
            rack: record.rack.clone(),
            loopback: record.loopback.to_string(),
            asn: record.asn,
            chassis_mac: Some(record.chassis_mac.clone()),
            mesh_address,
        },
    )?;
    let mut current = BTreeSet::new();
    for port in &record.ports {
        let key = format!("{}/{}", record.name, port.name);
        let neighbors = lldp
            .neighbors
            .iter()
            .filter(|n| n.local_port == port.name)
            .map(|n| model::Neighbor {
                chassis_id: n.chassis_id.clone(),
                port_id: n.port_id.clone(),
                system_name: n.system_name.clone(),
            })
            .collect();
        store.put_local_json(
            RecordKind::Port,
            &key,
            &model::Port {
                switch: record.name.clone(),
                name: port.name.clone(),
                mac: port.mac.clone(),
                up: port.oper_up,
                mtu: port.mtu.unwrap_or(0),
                neighbors,
            },
        )?;
        current.insert(key);
    }
    retire_missing(store, RecordKind::Port, &current)
}

fn publish_leases(store: &Store, path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        // The DHCP server has not started yet: nothing to publish, and the
        // leases published before a restart stay until it has.
        return Ok(());
    }
    let leases = metalmesh_provisioning::dhcp::service::read_leases(path)?;
    let switch = store.origin().to_string();
    let mut current = BTreeSet::new();
    for lease in leases {
        let key = format!("{switch}/{}", lease.mac);
        store.put_local_json(
            RecordKind::Lease,
            &key,
            &model::Lease {
                switch: switch.clone(),
                mac: lease.mac.clone(),
                ip: lease.ip.to_string(),
                state: lease.state.as_str().to_string(),
                expires: lease.expires,
                hostname: lease.hostname.clone(),
            },
        )?;
        current.insert(key);
    }
    retire_missing(store, RecordKind::Lease, &current)
}

/// This switch's records of `kind` that are no longer `current` (ports that
/// went away, leases that ended) become tombstones.
fn retire_missing(
    store: &Store,
    kind: RecordKind,
    current: &BTreeSet<String>,
) -> anyhow::Result<()> {
    for key in store.own_live_keys(kind)? {
        if !current.contains(&key) {
            store.put_local(kind, &key, None)?;
        }
    }
    Ok(())
}

/// Follows the API-owned records (networks, images, allocation intents…):
/// the subsystems that act on them subscribe here.
pub fn spawn_follower(supervisor: &mut Supervisor, store: Store) {
    supervisor.spawn("mesh-follower", move |cancel: CancellationToken| {
        let mut changes = store.subscribe();
        async move {
            loop {
                let change = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    change = changes.recv() => change,
                };
                match change {
                    Ok(record) if record.id.kind.is_api_owned() => {
                        tracing::info!(record = %record.id, origin = %record.origin, deleted = record.value.is_none(), "API record changed");
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "record follower lagged; rereading on next change");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    });
}
