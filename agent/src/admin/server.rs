//! Serves the admin API on a unix socket from the agent's published state.

use crate::machines::core::Reply;
use crate::machines::task::{CommandRequest, OperatorCommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::protocol::{AgentStatus, MAX_REQUEST_BYTES, Request, Response};
use crate::lldp::LldpSnapshot;
use crate::supervisor::Health;
use crate::switch::{Port, SwitchRecord};

/// A client idle this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most admin connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// What the admin API reads from.
#[derive(Debug, Clone)]
pub struct AgentView {
    /// The BGP speaker, when `[bgp]` is configured (empty while it restarts).
    pub bgp: Option<crate::bgp::task::SpeakerSlot>,
    pub bgp_identity: Option<(u32, std::net::Ipv4Addr)>,
    /// The FRR backend, when `[bgp] backend = "frr"`.
    pub frr: Option<crate::bgp::frr::FrrHandle>,
    /// The machine lifecycle, where boot services run.
    pub machines: Option<tokio::sync::mpsc::Sender<crate::machines::task::CommandRequest>>,
    /// The node-local inventory replica.
    pub store: metalmesh_inventory::Store,
    /// The mesh, when configured.
    pub mesh: Option<metalmesh_inventory::mesh::service::MeshView>,
    /// The dataplane: its reconciler (for diffs), intents and where they persist.
    pub dataplane: crate::dataplane::reconcile::Reconciler,
    pub intents: Arc<watch::Sender<crate::dataplane::Intents>>,
    pub intents_file: PathBuf,
    /// How tenant VRFs are rendered in this kernel.
    pub kernel_mode: crate::dataplane::KernelMode,
    /// The DHCP lease store, when boot services run.
    pub lease_db: Option<PathBuf>,
    /// Addresses in the DHCP pool, when boot services run.
    pub dhcp_pool_size: Option<u64>,
    pub dhcp_counters: Arc<std::sync::Mutex<Option<metalmesh_provisioning::dhcp::DhcpCounters>>>,
    /// TFTP and HTTP boot counters, where boot services run.
    pub boot_counters: Option<crate::boot::BootCounters>,
    /// Provisioning durations, where machines are provisioned.
    pub provisioning_durations: Option<crate::machines::durations::ProvisioningHistograms>,
    pub started: std::time::Instant,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub lldp_patterns: Vec<String>,
    pub switch: watch::Receiver<Option<SwitchRecord>>,
    pub ports: watch::Receiver<Option<Vec<Port>>>,
    pub lldp: watch::Receiver<LldpSnapshot>,
    pub health: Health,
    /// Serialises `dataplane apply`.
    pub apply_lock: Arc<tokio::sync::Mutex<()>>,
    /// Which machine each provisioning port is bound to.
    pub port_bindings: Option<crate::policy::bindings::PortBindings>,
    /// Where an unbound port's DHCP leases are untied from it.
    pub released_ports: metalmesh_provisioning::dhcp::service::PortReleases,
}

impl AgentView {
    pub async fn answer(&self, request: &Request) -> Response {
        match request {
            Request::DataplaneApply { intents } => self.apply_intents(intents).await,
            Request::DataplaneDiff => match self
                .with_handle(|handle, reconciler| async move { reconciler.plan(&handle).await })
                .await
            {
                Ok((plan, rejected)) => Response::DataplaneDiff { plan, rejected },
                Err(message) => Response::Error { message },
            },
            Request::Routes { vrf } => self.routes(vrf.as_deref()).await,
            Request::Status => {
                let lldp = self.lldp.borrow().clone();
                Response::Status(Box::new(AgentStatus {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    kernel_mode: self.kernel_mode,
                    pid: std::process::id(),
                    uptime_secs: self.started.elapsed().as_secs(),
                    config: self.config_path.display().to_string(),
                    state_dir: self.state_dir.display().to_string(),
                    switch: self.switch.borrow().clone(),
                    lldp_port_patterns: self.lldp_patterns.clone(),
                    lldp_ports: lldp.ports,
                    lldp_neighbors: lldp.neighbors.len(),
                    lldp_counters: lldp.counters,
                    dataplane: self
                        .dataplane
                        .report
                        .lock()
                        .map(|r| r.clone())
                        .unwrap_or_default(),
                    dhcp_counters: self.dhcp_counters.lock().ok().and_then(|c| c.clone()),
                    subsystems: self.health.snapshot(),
                    frr: self
                        .frr
                        .as_ref()
                        .and_then(|f| f.status.lock().ok().map(|s| s.clone())),
                }))
            }
            Request::Machines => self.machine_command(OperatorCommand::List).await,
            Request::MachineDescribe { uuid } => {
                let uuid = uuid.to_lowercase();
                self.machine_command(OperatorCommand::Describe { uuid })
                    .await
            }
            Request::MachineAllocate { uuid, allocation } => {
                let (uuid, request) = (uuid.to_lowercase(), allocation.clone());
                self.machine_command(OperatorCommand::Allocate { uuid, request })
                    .await
            }
            Request::MachineFree { uuid } => {
                let uuid = uuid.to_lowercase();
                self.machine_command(OperatorCommand::Free { uuid }).await
            }
            Request::MeshMembers => match &self.mesh {
                None => Response::Error {
                    message: "the mesh is not configured on this switch ([mesh])".into(),
                },
                Some(mesh) => Response::MeshMembers {
                    node: self.store.origin().to_string(),
                    members: mesh.members(),
                    health: mesh.health(),
                },
            },
            Request::MeshRevoke { record } => {
                if record.id.kind != metalmesh_inventory::RecordKind::Revocation {
                    return Response::Error {
                        message: format!("{} is not a revocation", record.id),
                    };
                }
                let node = record.id.key.clone();
                let already = self.store.revoked().contains_key(&node);
                match metalmesh_inventory::store::blocking(|| self.store.import(vec![record.clone()])) {
                    Ok(stored) if stored.is_empty() && !already => Response::Error {
                        message: "the revocation was refused: not signed by this mesh's CA, or not a mesh node (see the agent log)".into(),
                    },
                    Ok(stored) => Response::MeshRevoked {
                        node,
                        new: !stored.is_empty(),
                    },
                    Err(error) => Response::Error {
                        message: error.to_string(),
                    },
                }
            }
            Request::MeshRecords { kind } => {
                let kind = match kind
                    .as_deref()
                    .map(|k| (k, metalmesh_inventory::RecordKind::parse(k)))
                {
                    None => None,
                    Some((_, Some(kind))) => Some(kind),
                    Some((text, None)) => {
                        let known: Vec<&str> = metalmesh_inventory::RecordKind::ALL
                            .iter()
                            .map(|k| k.as_str())
                            .collect();
                        return Response::Error {
                            message: format!(
                                "unknown record kind `{text}` (one of: {})",
                                known.join(", ")
                            ),
                        };
                    }
                };
                match self.store.list(kind) {
                    Ok(records) => Response::MeshRecords {
                        records,
                        revoked: self.store.revoked().into_keys().collect(),
                    },
                    Err(error) => Response::Error {
                        message: error.to_string(),
                    },
                }
            }
            Request::BgpNeighbors if self.frr.is_some() => {
                let (Some(frr), Some((asn, router_id))) = (&self.frr, self.bgp_identity) else {
                    return Response::Error {
                        message: "BGP is not configured on this switch ([bgp])".into(),
                    };
                };
                bgp_neighbors(asn, router_id, frr.vtysh.sessions().await)
            }
            Request::BgpNeighbors => match (self.speaker(), self.bgp_identity) {
                (Ok(speaker), Some((asn, router_id))) => {
                    bgp_neighbors(asn, router_id, speaker.peers().await)
                }
                (Err(response), _) => *response,
                (Ok(_), None) => Response::Error {
                    message: "BGP is not configured on this switch ([bgp])".into(),
                },
            },
            Request::BgpRoutes { family, vrf } => {
                self.bgp_routes(family.as_deref(), vrf.as_deref()).await
            }
            Request::LldpNeighbors => Response::LldpNeighbors(self.lldp.borrow().clone()),
            Request::Ports => Response::Ports(self.ports.borrow().clone().unwrap_or_default()),
            Request::PortBindings => match &self.port_bindings {
                Some(bindings) => Response::PortBindings(bindings.all()),
                None => Response::Error {
                    message: "ports are not bound on this switch (no [boot], or [policy] off)"
                        .into(),
                },
            },
            Request::PortUnbind { port } => match &self.port_bindings {
                Some(bindings) => match bindings.unbind(port) {
                    Ok(was_bound) => {
                        if was_bound {
                            tracing::warn!(%port, "port binding removed by the operator");
                        }
                        // The port's leases too: the machine that moved
                        // away renews its address on its new port.
                        self.released_ports.release(port);
                        Response::PortUnbound { was_bound }
                    }
                    Err(error) => Response::Error {
                        message: error.to_string(),
                    },
                },
                None => Response::Error {
                    message: "ports are not bound on this switch (no [boot], or [policy] off)"
                        .into(),
                },
            },
            Request::Leases => match &self.lease_db {
                None => Response::Error {
                    message: "boot services are not configured on this switch ([boot])".into(),
                },
                // A second connection reads the store; WAL lets it run beside the server.
                Some(path) => match metalmesh_provisioning::dhcp::service::read_leases(path) {
                    Ok(leases) => Response::Leases(leases),
                    Err(error) => Response::Error {
                        message: error.to_string(),
                    },
                },
            },
        }
    }
}

impl AgentView {
    /// The running speaker, or the error answer to give.
    fn speaker(&self) -> Result<metalmesh_bgp::driver::SpeakerHandle, Box<Response>> {
        let error = |message: &str| {
            Box::new(Response::Error {
                message: message.to_string(),
            })
        };
        let Some(slot) = &self.bgp else {
            return Err(error("BGP is not configured on this switch ([bgp])"));
        };
        slot.lock()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| error("the BGP speaker is starting or restarting; try again"))
    }

    async fn bgp_routes(&self, family: Option<&str>, vrf: Option<&str>) -> Response {
        let speaker = match self.speaker() {
            Ok(speaker) => speaker,
            Err(response) => return *response,
        };
        let family = match family.map(|f| (f, metalmesh_bgp::Family::parse(f))) {
            None => None,
            Some((_, Some(family))) => Some(family),
            Some((text, None)) => {
                return Response::Error {
                    message: format!("unknown family `{text}` (ipv4, ipv6 or evpn)"),
                };
            }
        };
        let vni = match vrf {
            None => None,
            Some(name) => match self.intents.borrow().vrfs.iter().find(|v| v.name == name) {
                Some(v) => Some(v.vni),
                None => {
                    return Response::Error {
                        message: format!("no VRF `{name}` on this switch"),
                    };
                }
            },
        };
        match speaker.routes(family).await {
            Ok(routes) => Response::BgpRoutes(
                routes
                    .into_iter()
                    .filter(|r| vni.is_none() || r.vni == vni)
                    .collect(),
            ),
            Err(error) => Response::Error {
                message: error.to_string(),
            },
        }
    }

    /// Sends a command to the machine lifecycle and turns its answer into a response.
    async fn machine_command(&self, command: OperatorCommand) -> Response {
        let Some(machines) = &self.machines else {
            return Response::Error {
                message: "this leaf manages no machines (no [boot] section)".into(),
            };
        };
        let (reply, receive) = tokio::sync::oneshot::channel();
        let request = CommandRequest { command, reply };
        if machines.send(request).await.is_err() {
            return Response::Error {
                message: "the machine lifecycle is restarting".into(),
            };
        }
        match receive.await {
            Ok(Ok(Reply::Machines(list))) => Response::Machines(list),
            Ok(Ok(Reply::Machine(machine))) => Response::Machine(machine),
            Ok(Err(error)) => Response::Error {
                message: error.to_string(),
            },
            Err(_) => Response::Error {
                message: "the machine lifecycle is restarting".into(),
            },
        }
    }

    async fn with_handle<F, Fut, T>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce(rtnetlink::Handle, crate::dataplane::reconcile::Reconciler) -> Fut,
        Fut: std::future::Future<Output = Result<T, rtnetlink::Error>>,
    {
        let (handle, _driver) = crate::netlink::connect().map_err(|e| e.to_string())?;
        f(handle, self.dataplane.clone())
            .await
            .map_err(|e| e.to_string())
    }

    async fn apply_intents(&self, intents: &crate::dataplane::Intents) -> Response {
        // One apply at a time: each writes the intents file and its
        // temporary file, and the last one told must be the one kept.
        let _serialised = self.apply_lock.lock().await;
        let text = match toml::to_string(intents) {
            Ok(text) => text,
            Err(error) => {
                return Response::Error {
                    message: error.to_string(),
                };
            }
        };
        // Rejections as the reconciler will see them: against every
        // interface the kernel has.
        let interfaces = match self
            .with_handle(|handle, _| async move { crate::dataplane::kernel::read(&handle).await })
            .await
        {
            Ok(state) => state.facts(),
            Err(message) => return Response::Error { message },
        };
        // Persist first (atomically and durably): after a restart or power
        // loss the agent reconciles to exactly what it was last told.
        let tmp = self.intents_file.with_extension("toml.tmp");
        let persisted = tokio::task::spawn_blocking({
            let (tmp, file) = (tmp.clone(), self.intents_file.clone());
            move || write_durably(&tmp, &file, text.as_bytes())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(error) = persisted {
            return Response::Error {
                message: format!(
                    "cannot store intents in {}: {error}",
                    self.intents_file.display()
                ),
            };
        }
        let (_, rejected) =
            crate::dataplane::validate(intents, &interfaces, &self.dataplane.guardrails);
        self.intents.send_replace(intents.clone());
        Response::DataplaneApplied { rejected }
    }

    async fn routes(&self, vrf: Option<&str>) -> Response {
        let intents = self.intents.borrow().clone();
        let table_of = |name: &str| {
            intents
                .vrfs
                .iter()
                .find(|v| v.name == name)
                .map(|v| v.table)
        };
        let wanted_table = match vrf {
            Some(name) => match table_of(name) {
                Some(table) => Some(table),
                None => {
                    return Response::Error {
                        message: format!("no VRF named `{name}`"),
                    };
                }
            },
            None => None,
        };
        let state = match self
            .with_handle(|handle, _| async move { crate::dataplane::kernel::read(&handle).await })
            .await
        {
            Ok(state) => state,
            Err(message) => return Response::Error { message },
        };
        let routes = state
            .objects
            .into_iter()
            .filter_map(|o| match o {
                crate::dataplane::Object::Route {
                    table,
                    dst,
                    next_hop,
                } => Some((table, dst, next_hop)),
                _ => None,
            })
            .filter(|(table, _, _)| wanted_table.is_none_or(|t| t == *table))
            .map(|(table, dst, next_hop)| super::protocol::RouteView {
                vrf: intents
                    .vrfs
                    .iter()
                    .find(|v| v.table == table)
                    .map(|v| v.name.clone()),
                table,
                destination: dst.to_string(),
                next_hop,
            })
            .collect();
        Response::Routes(routes)
    }
}

/// Who may use the admin API: root, the agent's own user, and members of
/// `[admin] group`. Checked with `SO_PEERCRED` on every connection, beside
/// the socket's and its directory's permissions.
#[derive(Debug, Clone)]
pub struct AdminPeers {
    own_uid: u32,
    group: Option<u32>,
}

impl AdminPeers {
    /// Resolves `[admin] group` (a name that does not exist is an error).
    pub fn new(group: Option<&str>) -> anyhow::Result<AdminPeers> {
        Ok(AdminPeers {
            own_uid: nix::unistd::geteuid().as_raw(),
            group: group.map(group_id).transpose()?.map(|gid| gid.as_raw()),
        })
    }

    /// Whether the peer of `stream` may use the API.
    fn allows(&self, stream: &UnixStream) -> Result<(), String> {
        let credentials = stream
            .peer_cred()
            .map_err(|e| format!("peer credentials unknown: {e}"))?;
        let uid = credentials.uid();
        if uid == 0 || uid == self.own_uid {
            return Ok(());
        }
        if let Some(group) = self.group {
            let member = credentials.gid() == group
                || credentials
                    .pid()
                    .is_some_and(|pid| supplementary_groups(pid).contains(&group));
            if member {
                return Ok(());
            }
        }
        Err(format!(
            "uid {uid} may not use the admin API (root, the agent's user and admin.group only)"
        ))
    }
}

/// The id of `[admin] group` (a name that does not exist is an error).
fn group_id(name: &str) -> anyhow::Result<nix::unistd::Gid> {
    Ok(nix::unistd::Group::from_name(name)
        .map_err(|e| anyhow::anyhow!("admin.group `{name}`: {e}"))?
        .ok_or_else(|| anyhow::anyhow!("admin.group `{name}` does not exist"))?
        .gid)
}

/// A process's supplementary groups (`Groups:` of `/proc/<pid>/status`).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Groups:").map(str::to_string))
        })
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Binds the socket, replacing a stale one left by a crashed agent but
/// refusing to steal one a live agent still answers on. A directory it
/// creates is 0750, and with a group both belong to it.
pub async fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    let gid = group.map(group_id).transpose()?;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
        if let Some(gid) = gid {
            nix::unistd::chown(dir, None, Some(gid)).map_err(|e| {
                anyhow::anyhow!("cannot give {} to admin.group: {e}", dir.display())
            })?;
        }
    }
    if path.exists() {
        // A predecessor that was just killed may still be closing its
        // socket: give it a moment before calling the socket taken.
        let mut live = true;
        for _ in 0..20 {
            if UnixStream::connect(path).await.is_err() {
                live = false;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if live {
            anyhow::bail!(
                "another agent is already serving the admin socket {}",
                path.display()
            );
        }
        tokio::fs::remove_file(path)
            .await
            .map_err(|e| anyhow::anyhow!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind admin socket {}: {e}", path.display()))?;
    // Owner and group only: the admin API is not for every local user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(gid))
            .map_err(|e| anyhow::anyhow!("cannot give {} to admin.group: {e}", path.display()))?;
    }
    Ok(listener)
}

pub async fn serve(
    listener: Arc<UnixListener>,
    view: AgentView,
    peers: AdminPeers,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!("admin API: too many connections; refusing one");
            continue;
        };
        if let Err(reason) = peers.allows(&stream) {
            tracing::warn!(%reason, "admin API: connection refused");
            // The refusal answers the first request (a client that is
            // still writing would otherwise only see a broken pipe).
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut first = Vec::new();
                let mut read = AsyncReadExt::take(BufReader::new(read), MAX_REQUEST_BYTES as u64);
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    read.read_until(b'\n', &mut first),
                )
                .await;
                if let Ok(mut bytes) = serde_json::to_vec(&Response::Error { message: reason }) {
                    bytes.push(b'\n');
                    let _ = tokio::time::timeout(IDLE_TIMEOUT, write.write_all(&bytes)).await;
                }
                drop(permit);
            });
            continue;
        }
        let view = view.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if let Err(error) = connection(stream, &view, cancel).await {
                tracing::debug!(%error, "admin connection ended");
            }
            drop(permit);
        });
    }
}

async fn connection(
    stream: UnixStream,
    view: &AgentView,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    // The limit is reset per request, so one line can never exceed it.
    let mut lines = AsyncReadExt::take(BufReader::new(read), MAX_REQUEST_BYTES as u64 + 1);
    let mut line = Vec::new();
    loop {
        line.clear();
        lines.set_limit(MAX_REQUEST_BYTES as u64 + 1);
        let read = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            read = tokio::time::timeout(
                IDLE_TIMEOUT,
                lines.read_until(b'\n', &mut line),
            ) => read,
        };
        let n = match read {
            Ok(result) => result?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let response = if line.len() > MAX_REQUEST_BYTES {
            Response::Error {
                message: format!("request longer than {MAX_REQUEST_BYTES} bytes"),
            }
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(request) => view.answer(&request).await,
                Err(error) => Response::Error {
                    message: format!("bad request: {error}"),
                },
            }
        };
        let mut bytes = serde_json::to_vec(&response).unwrap_or_else(|e| {
            format!("{{\"response\":\"error\",\"body\":{{\"message\":\"{e}\"}}}}").into_bytes()
        });
        bytes.push(b'\n');
        // A client that does not read its answers loses its connection.
        match tokio::time::timeout(IDLE_TIMEOUT, write.write_all(&bytes)).await {
            Ok(result) => result?,
            Err(_) => return Ok(()),
        }
        if line.len() > MAX_REQUEST_BYTES {
            return Ok(());
        }
    }
}

/// Writes `bytes` to `tmp`, syncs it, and renames it over `file`, then syncs
/// the directory: `file` holds either the old or the new text, durably.
pub(crate) fn write_durably(
    tmp: &std::path::Path,
    file: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::fs::File::create(tmp)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    std::fs::rename(tmp, file)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The answer to `bgp summary`, from either backend's sessions.
fn bgp_neighbors<E: std::fmt::Display>(
    asn: u32,
    router_id: std::net::Ipv4Addr,
    peers: Result<Vec<metalmesh_bgp::speaker::PeerView>, E>,
) -> Response {
    match peers {
        Ok(peers) => Response::BgpNeighbors {
            asn,
            router_id,
            peers,
        },
        Err(error) => Response::Error {
            message: error.to_string(),
        },
    }
}
