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
use crate::machines::core::Reply;
use crate::machines::task::{CommandRequest, OperatorCommand};
use crate::supervisor::Supervisor;
use crate::switch::SwitchRecord;
use metalmesh_inventory::trust::Role;

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
    machines: Option<mpsc::Sender<CommandRequest>>,
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
        let (commands, store, machines) = (Arc::clone(&commands), store.clone(), machines.clone());
        async move {
            let mut commands = commands.lock().await;
            loop {
                let command = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    command = commands.recv() => match command { Some(c) => c, None => return Ok(()) },
                };
                // Each command answers on its own task: an allocation
                // waiting for the machine core holds up no other command.
                let (store, machines) = (store.clone(), machines.clone());
                tokio::spawn(async move {
                    let answer = answer_command(&store, machines.as_ref(), &command).await;
                    match &answer {
                        Ok(_) => tracing::info!(from = %command.from, op = %command.op, "mesh command"),
                        Err(error) => tracing::warn!(from = %command.from, op = %command.op, %error, "mesh command refused"),
                    }
                    let _ = command.reply.send(answer);
                });
            }
        }
    });
}

/// `machine.allocate`'s body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocateBody {
    uuid: String,
    allocation: model::AllocateRequest,
}

/// `machine.free`'s body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FreeBody {
    uuid: String,
}

/// Commands other nodes may send: `describe` from any member;
/// `machine.allocate` and `machine.free` only from a node whose certificate
/// states the `api` role (the agent's machine core checks and commits them
/// as it does the admin socket's).
async fn answer_command(
    store: &Store,
    machines: Option<&mpsc::Sender<CommandRequest>>,
    command: &Command,
) -> Result<serde_json::Value, String> {
    match command.op.as_str() {
        "machine.allocate" | "machine.free" => {
            if command.role != Some(Role::Api) {
                return Err(format!(
                    "{} is accepted from the API node only (certificate role api), not from {} ({})",
                    command.op,
                    command.from,
                    command.role.map_or("no role", Role::as_str)
                ));
            }
            let machines = machines.ok_or("this leaf manages no machines (no [boot] section)")?;
            let operator = if command.op == "machine.allocate" {
                let body: AllocateBody = serde_json::from_value(command.body.clone())
                    .map_err(|e| format!("machine.allocate: {e}"))?;
                OperatorCommand::Allocate {
                    uuid: body.uuid.to_lowercase(),
                    request: body.allocation,
                }
            } else {
                let body: FreeBody = serde_json::from_value(command.body.clone())
                    .map_err(|e| format!("machine.free: {e}"))?;
                OperatorCommand::Free {
                    uuid: body.uuid.to_lowercase(),
                }
            };
            let (reply, answer) = tokio::sync::oneshot::channel();
            machines
                .send(CommandRequest {
                    command: operator,
                    reply,
                })
                .await
                .map_err(|_| "the machine lifecycle is restarting".to_string())?;
            match answer.await {
                Ok(Ok(Reply::Machine(record))) => {
                    // The caller gets what the mesh shows, secrets as digests.
                    let (public, _) = record.split_secrets();
                    serde_json::to_value(&public.machine).map_err(|e| e.to_string())
                }
                Ok(Ok(Reply::Machines(_))) => Err("unexpected answer of the machine core".into()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("the machine lifecycle is restarting".into()),
            }
        }
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
    bgp: Option<crate::bgp::Sessions>,
) {
    supervisor.spawn("mesh-publisher", move |cancel| {
        let (store, mut switch, mut lldp, lease_db, mesh_address, bgp) = (
            store.clone(),
            switch.clone(),
            lldp.clone(),
            lease_db.clone(),
            mesh_address.clone(),
            bgp.clone(),
        );
        async move {
            switch.mark_changed();
            let mut leases = tokio::time::interval(LEASE_POLL);
            let mut sessions = Vec::new();
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    changed = switch.changed() => changed?,
                    changed = lldp.changed() => changed?,
                    _ = leases.tick() => {
                        if let Some(path) = &lease_db {
                            blocking(|| publish_leases(&store, path))?;
                        }
                        // Sessions are published when they change, not
                        // every poll: each write is gossiped.
                        let now = bgp_sessions(bgp.as_ref()).await;
                        if now == sessions {
                            continue;
                        }
                        sessions = now;
                    }
                }
                let record = switch.borrow().clone();
                let snapshot = lldp.borrow_and_update().clone();
                if let Some(record) = record {
                    let published = model::Switch {
                        name: record.name.clone(),
                        partition: record.partition.clone(),
                        rack: record.rack.clone(),
                        loopback: record.loopback.to_string(),
                        asn: record.asn,
                        chassis_mac: Some(record.chassis_mac.clone()),
                        mesh_address: mesh_address.clone(),
                        bgp_sessions: sessions.clone(),
                    };
                    blocking(|| publish_switch(&store, &record, &published, &snapshot))?;
                }
            }
        }
    });
}

/// The switch's BGP sessions, from its speaker or its FRR (none while the
/// speaker restarts or FRR does not answer).
async fn bgp_sessions(source: Option<&crate::bgp::Sessions>) -> Vec<model::BgpSession> {
    let Some(source) = source else {
        return Vec::new();
    };
    let mut sessions: Vec<model::BgpSession> = source
        .peers()
        .await
        .into_iter()
        .map(|peer| model::BgpSession {
            peer: peer.remote.to_string(),
            state: format!("{:?}", peer.state),
            remote_as: peer.remote_as,
            received: peer.received.iter().map(|(_, n)| *n as u64).sum(),
        })
        .collect();
    sessions.sort_by(|a, b| a.peer.cmp(&b.peer));
    sessions
}

fn publish_switch(
    store: &Store,
    record: &SwitchRecord,
    published: &model::Switch,
    lldp: &LldpSnapshot,
) -> anyhow::Result<()> {
    store.put_local_json(RecordKind::Switch, &record.name, published)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::record::MachineRecord;

    fn command(role: Option<Role>, op: &str, body: serde_json::Value) -> Command {
        let (reply, _) = tokio::sync::oneshot::channel();
        Command {
            from: "peer".into(),
            role,
            op: op.into(),
            body,
            reply,
        }
    }

    fn allocation() -> serde_json::Value {
        serde_json::json!({
            "uuid": "U-1",
            "allocation": {
                "image": "debian", "ip": "10.0.1.5", "hostname": "web",
                "ssh_keys": ["ssh-ed25519 AAAA key@x"], "user_data": "#cloud-config"
            }
        })
    }

    #[tokio::test]
    async fn allocation_commands_come_from_the_api_role_only_and_answer_without_secrets() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store =
            Store::open(&dir.path().join("s.db"), "leaf1").unwrap_or_else(|e| panic!("{e}"));
        let (machines, mut core) = mpsc::channel::<CommandRequest>(4);
        // Stands in for the machine core: records what it was asked.
        let asked = tokio::spawn(async move {
            let request = core.recv().await?;
            let OperatorCommand::Allocate {
                uuid,
                request: allocation,
            } = request.command.clone()
            else {
                return None;
            };
            let mut record = MachineRecord::new(&uuid, "leaf1");
            record.machine.allocation = Some(metalmesh_inventory::model::ExecutedAllocation {
                request: allocation,
                vrf: "n-1".into(),
                port: "swp1".into(),
                image_url: String::new(),
                image_sha256: String::new(),
                routed: false,
                secrets_sha256: None,
            });
            let _ = request.reply.send(Ok(Reply::Machine(Box::new(record))));
            Some(uuid)
        });
        for role in [None, Some(Role::Leaf), Some(Role::Operator)] {
            let error = answer_command(
                &store,
                Some(&machines),
                &command(role, "machine.allocate", allocation()),
            )
            .await
            .unwrap_err();
            assert!(error.contains("API node only"), "{error}");
        }
        let error = answer_command(
            &store,
            Some(&machines),
            &command(
                Some(Role::Api),
                "machine.allocate",
                serde_json::json!({"uuid": "u", "extra": 1}),
            ),
        )
        .await
        .unwrap_err();
        assert!(error.starts_with("machine.allocate:"), "{error}");
        let answer = answer_command(
            &store,
            Some(&machines),
            &command(Some(Role::Api), "machine.allocate", allocation()),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(asked.await.ok().flatten().as_deref(), Some("u-1"));
        let text = answer.to_string();
        assert!(
            !text.contains("key@x") && text.contains("secrets_sha256"),
            "{text}"
        );
        let error = answer_command(
            &store,
            None,
            &command(
                Some(Role::Api),
                "machine.free",
                serde_json::json!({"uuid": "u-1"}),
            ),
        )
        .await
        .unwrap_err();
        assert!(error.contains("no machines"), "{error}");
    }
}
