//! What the API does, without HTTP: reads come from the node's mesh replica
//! (never a fan-out), API-owned records are written to it (signed with the
//! node's `api` certificate, spread by the mesh), and each allocation or
//! release is asked of the machine's own agent, which commits it.

use crate::node::auth::{Principal, UserRole};
use crate::node::config::{TenantConfig, mask};
use crate::node::index::{Indexed, MachineIndex};
use crate::node::journal::Journal;
use metalmesh_inventory::mesh::service::MeshView;
use metalmesh_inventory::model::{self, AllocateRequest, Machine};
use metalmesh_inventory::{RecordKind, Store};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

/// How long an agent has to answer an allocation or release.
const AGENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Candidates tried per allocation before giving up.
const MAX_CANDIDATES: usize = 8;
/// Times a candidate is asked again while its leaf does not know the
/// network yet (half a second apart).
const NETWORK_ARRIVAL_TRIES: usize = 10;

/// An error with the HTTP status it maps to and, for bad input, the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            field: None,
        }
    }

    pub fn field(field: &str, error: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            error: error.into(),
            field: Some(field.to_string()),
        }
    }

    fn forbidden(what: &str) -> ApiError {
        ApiError::new(403, format!("not allowed to {what}"))
    }

    fn not_found(what: &str) -> ApiError {
        ApiError::new(404, format!("{what} not found"))
    }

    fn internal(error: impl std::fmt::Display) -> ApiError {
        ApiError::new(500, error.to_string())
    }
}

/// The API's state: the mesh replica, the mesh, and the local journal.
#[derive(Debug)]
pub struct Api {
    pub store: Store,
    /// The replica's machines, parsed once.
    pub index: std::sync::Arc<MachineIndex>,
    pub mesh: MeshView,
    pub journal: Journal,
    pub tenant: TenantConfig,
    /// One allocation decides at a time: no IP or machine is chosen twice.
    decisions: tokio::sync::Mutex<()>,
    /// What this node handed out lately, held until the machines' records
    /// show it: the replica lags behind the agents' answers.
    holds: std::sync::Mutex<Holds>,
}

#[derive(Debug, Default)]
struct Holds {
    ips: std::collections::HashMap<Ipv4Addr, std::time::Instant>,
    machines: std::collections::HashMap<String, std::time::Instant>,
}

/// How long an address handed out stays held regardless of the records.
const RECENT_HOLD: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    #[schema(pattern = "^[a-z0-9-]{1,32}$", min_length = 1, max_length = 32)]
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNetwork {
    #[schema(pattern = "^[a-z0-9-]{1,32}$", min_length = 1, max_length = 32)]
    pub project: String,
    #[schema(pattern = "^[a-z0-9-]{1,32}$", min_length = 1, max_length = 32)]
    pub name: String,
}

/// `POST /v1/machines/allocate`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocationRequest {
    /// A given machine; default: any Waiting machine (in `rack`, if given).
    #[serde(default)]
    pub machine: Option<String>,
    #[serde(default)]
    pub rack: Option<String>,
    pub project: String,
    /// The network's id or, within the project, its name.
    pub network: String,
    /// Default: the network's next free address.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub ip: Option<Ipv4Addr>,
    #[schema(min_length = 1, max_length = 63)]
    pub hostname: String,
    pub image: String,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    #[serde(default)]
    pub user_data: String,
}

/// A machine as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MachineView {
    pub uuid: String,
    pub rack: String,
    pub switch: String,
    pub port: Option<String>,
    pub state: String,
    pub liveliness: String,
    pub project: Option<String>,
    pub hostname: Option<String>,
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub ip: Option<Ipv4Addr>,
    pub network: Option<String>,
    /// CPUs, memory, disks and NICs as the installer found them.
    #[schema(value_type = Option<Object>)]
    pub hardware: Option<model::Hardware>,
    pub flags: Vec<String>,
    /// The newest events, newest first.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<model::Event>,
}

/// A project.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProjectView {
    pub id: String,
    pub name: String,
    pub description: String,
}

impl From<model::Project> for ProjectView {
    fn from(p: model::Project) -> ProjectView {
        ProjectView {
            id: p.id,
            name: p.name,
            description: p.description,
        }
    }
}

/// A tenant network.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NetworkView {
    pub id: String,
    pub name: String,
    pub project: Option<String>,
    pub prefixes: Vec<String>,
    pub vni: u32,
    /// The routing table id on the leaves.
    pub table: u32,
}

impl From<model::Network> for NetworkView {
    fn from(n: model::Network) -> NetworkView {
        NetworkView {
            id: n.id,
            name: n.name,
            project: n.project,
            prefixes: n.prefixes,
            vni: n.vni,
            table: n.vrf,
        }
    }
}

/// A leaf switch.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SwitchView {
    pub name: String,
    pub rack: String,
    pub partition: String,
    pub loopback: String,
    pub asn: u32,
}

impl From<model::Switch> for SwitchView {
    fn from(s: model::Switch) -> SwitchView {
        SwitchView {
            name: s.name,
            rack: s.rack,
            partition: s.partition,
            loopback: s.loopback,
            asn: s.asn,
        }
    }
}

impl Api {
    pub fn new(store: Store, mesh: MeshView, journal: Journal, tenant: TenantConfig) -> Api {
        let index = std::sync::Arc::new(MachineIndex::default());
        Api {
            index,
            store,
            mesh,
            journal,
            tenant,
            decisions: tokio::sync::Mutex::new(()),
            holds: std::sync::Mutex::default(),
        }
    }

    fn records<T: for<'de> Deserialize<'de>>(&self, kind: RecordKind) -> Result<Vec<T>, ApiError> {
        let records = self.store.list(Some(kind)).map_err(ApiError::internal)?;
        Ok(records
            .into_iter()
            .filter_map(|record| record.value)
            .filter_map(|value| serde_json::from_str(&value).ok())
            .collect())
    }

    /// Machines the caller may see: unallocated ones, and allocated ones of
    /// its projects (all for an admin).
    pub fn machines(&self, who: &Principal) -> Result<Vec<MachineView>, ApiError> {
        let racks = self.index.racks();
        let mut machines: Vec<MachineView> = self
            .index
            .snapshot()
            .into_iter()
            .map(|indexed| view(Machine::clone(&indexed.machine), &racks))
            .filter(|machine| machine.project.as_deref().is_none_or(|p| who.sees(p)))
            .collect();
        machines.sort_by(|a, b| (&a.rack, &a.uuid).cmp(&(&b.rack, &b.uuid)));
        Ok(machines)
    }

    /// One machine, viewed from the index without building the whole list
    /// (of several records of one UUID, the first by rack, as in the list).
    pub fn machine(&self, who: &Principal, uuid: &str) -> Result<MachineView, ApiError> {
        let wanted = uuid.to_lowercase();
        let racks = self.index.racks();
        self.index
            .snapshot()
            .into_iter()
            .filter(|indexed| indexed.machine.uuid == wanted)
            .map(|indexed| view(Machine::clone(&indexed.machine), &racks))
            .filter(|machine| machine.project.as_deref().is_none_or(|p| who.sees(p)))
            .min_by(|a, b| a.rack.cmp(&b.rack))
            .ok_or_else(|| ApiError::not_found(&format!("machine {uuid}")))
    }

    pub fn switches(&self) -> Result<Vec<SwitchView>, ApiError> {
        Ok(self
            .records::<model::Switch>(RecordKind::Switch)?
            .into_iter()
            .map(SwitchView::from)
            .collect())
    }

    pub fn projects(&self, who: &Principal) -> Result<Vec<ProjectView>, ApiError> {
        Ok(self
            .records::<model::Project>(RecordKind::Project)?
            .into_iter()
            .filter(|p| who.sees(&p.id))
            .map(ProjectView::from)
            .collect())
    }

    pub fn create_project(
        &self,
        who: &Principal,
        new: NewProject,
    ) -> Result<ProjectView, ApiError> {
        if who.role != UserRole::Admin {
            return Err(ApiError::forbidden("create projects (admins only)"));
        }
        if !valid_name(&new.name) {
            return Err(ApiError::field(
                "name",
                "1-32 lowercase letters, digits and '-'",
            ));
        }
        if self.exists(RecordKind::Project, &new.name)? {
            return Err(ApiError::new(409, format!("project {} exists", new.name)));
        }
        let project = model::Project {
            id: new.name.clone(),
            name: new.name,
            description: new.description,
        };
        self.put(RecordKind::Project, &project.id, &project)?;
        self.journal
            .record(who, "project.create", &project.id, "ok");
        Ok(project.into())
    }

    pub fn networks(&self, who: &Principal) -> Result<Vec<NetworkView>, ApiError> {
        Ok(self
            .records::<model::Network>(RecordKind::Network)?
            .into_iter()
            .filter(|n| n.project.as_deref().is_none_or(|p| who.sees(p)))
            .map(NetworkView::from)
            .collect())
    }

    /// A private network: the next free prefix of the tenant super-network,
    /// the next free VNI and table id.
    pub async fn create_network(
        &self,
        who: &Principal,
        new: NewNetwork,
    ) -> Result<NetworkView, ApiError> {
        may_change(who, &new.project)?;
        if !self.exists(RecordKind::Project, &new.project)? {
            return Err(ApiError {
                status: 404,
                ..ApiError::field("project", format!("no project {}", new.project))
            });
        }
        if !valid_name(&new.name) {
            return Err(ApiError::field(
                "name",
                "1-32 lowercase letters, digits and '-'",
            ));
        }
        let _decision = self.decisions.lock().await;
        let networks: Vec<model::Network> = self.records(RecordKind::Network)?;
        if networks
            .iter()
            .any(|n| n.project.as_deref() == Some(&new.project) && n.name == new.name)
        {
            return Err(ApiError::new(
                409,
                format!("network {} exists in {}", new.name, new.project),
            ));
        }
        let taken: Vec<(u32, u32)> = networks
            .iter()
            .flat_map(|n| n.prefixes.iter())
            .filter_map(|p| parse_prefix(p))
            .collect();
        let (base, length) = self.tenant.super_network;
        let size = 1u64 << (32 - self.tenant.prefix_length);
        let count = 1u64 << (self.tenant.prefix_length - length);
        let prefix = (0..count)
            .map(|i| (u32::from(base) as u64 + i * size) as u32)
            .find(|start| {
                let end = start + (size as u32 - 1);
                !taken.iter().any(|(s, e)| start <= e && end >= *s)
            })
            .ok_or_else(|| ApiError::new(409, "the tenant super-network is exhausted"))?;
        let next = |used: BTreeSet<u32>, (low, high): (u32, u32), what: &str| {
            (low..=high)
                .find(|v| !used.contains(v))
                .ok_or_else(|| ApiError::new(409, format!("no {what} left")))
        };
        let vni = next(
            networks.iter().map(|n| n.vni).collect(),
            self.tenant.vnis,
            "VNI",
        )?;
        let table = next(
            networks.iter().map(|n| n.vrf).collect(),
            self.tenant.tables,
            "table id",
        )?;
        let network = model::Network {
            // A VRF device name too: at most 15 characters.
            id: format!("net{vni}"),
            name: new.name,
            project: Some(new.project),
            prefixes: vec![format!(
                "{}/{}",
                Ipv4Addr::from(prefix),
                self.tenant.prefix_length
            )],
            vni,
            vrf: table,
        };
        self.put(RecordKind::Network, &network.id, &network)?;
        self.journal
            .record(who, "network.create", &network.id, "ok");
        Ok(network.into())
    }

    /// Picks a Waiting machine and asks its agent to take the allocation;
    /// on a refusal tries the next one.
    pub async fn allocate(
        &self,
        who: &Principal,
        request: AllocationRequest,
    ) -> Result<MachineView, ApiError> {
        may_change(who, &request.project)?;
        let network = self
            .records::<model::Network>(RecordKind::Network)?
            .into_iter()
            .find(|n| {
                n.id == request.network
                    || n.name == request.network && n.project.as_deref() == Some(&request.project)
            })
            .ok_or_else(|| ApiError {
                status: 404,
                ..ApiError::field("network", format!("no network {}", request.network))
            })?;
        if network
            .project
            .as_deref()
            .is_some_and(|p| p != request.project)
        {
            return Err(ApiError::field(
                "network",
                "the network belongs to another project",
            ));
        }
        if request.hostname.is_empty() || request.hostname.len() > 63 {
            return Err(ApiError::field("hostname", "1-63 characters"));
        }
        let racks = self.index.racks();
        // Decided under the lock, on one snapshot of the replica: the
        // address (held at once) and the candidates. The agents are asked
        // outside it; each candidate is claimed first, so concurrent
        // allocations never ask for the same machine.
        let (ip, candidates) = {
            let _decision = self.decisions.lock().await;
            let snapshot = self.index.snapshot();
            let ip = self.address(&snapshot, &network, request.ip)?;
            let shown: BTreeSet<&str> = snapshot
                .iter()
                .filter(|m| m.machine.allocation.is_some())
                .map(|m| m.machine.uuid.as_str())
                .collect();
            let mut candidates: Vec<(String, String)> = snapshot
                .iter()
                .map(|indexed| &indexed.machine)
                .filter(|m| m.allocation.is_none() && m.reclaiming.is_none())
                .filter(|m| m.state == "Waiting" && flags(m).is_empty())
                .filter(|m| {
                    request
                        .machine
                        .as_ref()
                        .is_none_or(|u| m.uuid == u.to_lowercase())
                })
                .filter(|m| {
                    request
                        .rack
                        .as_ref()
                        .is_none_or(|r| racks.get(&m.switch).unwrap_or(&m.switch) == r)
                })
                .map(|m| (m.uuid.clone(), m.switch.clone()))
                .collect();
            let mut holds = self.holds();
            // A machine handed out is held until its record shows the
            // allocation.
            holds
                .machines
                .retain(|uuid, at| at.elapsed() < RECENT_HOLD && !shown.contains(uuid.as_str()));
            candidates.retain(|(uuid, _)| !holds.machines.contains_key(uuid));
            if candidates.is_empty() {
                return Err(ApiError::new(409, "no machine available"));
            }
            holds.ips.insert(ip, std::time::Instant::now());
            candidates.sort();
            (ip, candidates)
        };
        let allocation = AllocateRequest {
            project: Some(request.project.clone()),
            image: request.image.clone(),
            ip,
            hostname: request.hostname.clone(),
            ssh_keys: request.ssh_keys.clone(),
            user_data: request.user_data.clone(),
            vrf: Some(network.id.clone()),
        };
        let mut refusals = Vec::new();
        for (uuid, switch) in &candidates {
            if refusals.len() >= MAX_CANDIDATES {
                break;
            }
            {
                // Claimed by a concurrent allocation since the decision.
                let mut holds = self.holds();
                if holds.machines.contains_key(uuid) {
                    continue;
                }
                holds
                    .machines
                    .insert(uuid.clone(), std::time::Instant::now());
            }
            let body = serde_json::json!({ "uuid": uuid, "allocation": allocation });
            let mut answer = Err(metalmesh_inventory::mesh::service::MeshError::Stopped);
            // A network created a moment ago may not have reached the
            // machine's leaf yet: its agent then knows no such VRF.
            for _ in 0..NETWORK_ARRIVAL_TRIES {
                answer = self
                    .mesh
                    .request(switch, "machine.allocate", body.clone(), AGENT_TIMEOUT)
                    .await;
                match &answer {
                    Err(error) if error.to_string().contains("no VRF") => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    _ => break,
                }
            }
            match answer {
                Ok(answer) => {
                    let machine: Machine =
                        serde_json::from_value(answer).map_err(ApiError::internal)?;
                    self.put(
                        RecordKind::Ip,
                        &ip.to_string(),
                        &model::Ip {
                            address: ip.to_string(),
                            network: network.id.clone(),
                            project: request.project.clone(),
                            machine: Some(machine.uuid.clone()),
                        },
                    )?;
                    self.journal
                        .record(who, "machine.allocate", &machine.uuid, "ok");
                    return Ok(view(machine, &racks));
                }
                Err(error) => {
                    // Refused: free for others again, unless its agent says
                    // it is taken (the replica has not caught up yet).
                    if !error.to_string().contains("already allocated") {
                        self.holds().machines.remove(uuid);
                    }
                    tracing::info!(machine = %uuid, %error, "allocation refused; next candidate");
                    refusals.push(format!("{uuid}: {error}"));
                }
            }
        }
        self.holds().ips.remove(&ip);
        self.journal.record(
            who,
            "machine.allocate",
            request.machine.as_deref().unwrap_or("-"),
            "refused",
        );
        if refusals.is_empty() {
            return Err(ApiError::new(409, "no machine available"));
        }
        Err(ApiError::new(
            409,
            format!("no machine took the allocation ({})", refusals.join("; ")),
        ))
    }

    pub async fn free(&self, who: &Principal, uuid: &str) -> Result<MachineView, ApiError> {
        let machine = self.machine(who, uuid)?;
        let project = machine
            .project
            .clone()
            .ok_or_else(|| ApiError::new(409, format!("machine {uuid} is not allocated")))?;
        may_change(who, &project)?;
        let answer = self
            .mesh
            .request(
                &machine.switch,
                "machine.free",
                serde_json::json!({ "uuid": machine.uuid }),
                AGENT_TIMEOUT,
            )
            .await
            .map_err(|e| ApiError::new(502, e.to_string()))?;
        if let Some(ip) = machine.ip {
            // The address returns to the pool once the agent let it go.
            self.holds().ips.remove(&ip);
            let key = ip.to_string();
            self.store
                .put_local(RecordKind::Ip, &key, None)
                .map_err(ApiError::internal)?;
        }
        self.journal
            .record(who, "machine.free", &machine.uuid, "ok");
        let racks = self.index.racks();
        let machine: Machine = serde_json::from_value(answer).map_err(ApiError::internal)?;
        Ok(view(machine, &racks))
    }

    /// `wanted`, or the network's lowest address no machine and no IP
    /// record holds (allocations made rack-locally while the API was down
    /// count: they are in the machine records).
    fn address(
        &self,
        snapshot: &[Indexed],
        network: &model::Network,
        wanted: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, ApiError> {
        let mut used = self.addresses_in_use(snapshot)?;
        {
            let mut holds = self.holds();
            // Shown by a machine record now (so in `used`), or too old.
            let shown = used.clone();
            holds
                .ips
                .retain(|ip, at| at.elapsed() < RECENT_HOLD && !shown.contains(ip));
            used.extend(holds.ips.keys().copied());
        }
        let ranges: Vec<(u32, u32)> = network
            .prefixes
            .iter()
            .filter_map(|p| parse_prefix(p))
            .collect();
        if let Some(ip) = wanted {
            let inside = ranges
                .iter()
                .any(|(s, e)| (*s + 1..*e).contains(&u32::from(ip)));
            if !inside {
                // A conflict with the network's prefix rather than a
                // malformed value: the address itself is well formed.
                return Err(ApiError {
                    status: 409,
                    ..ApiError::field(
                        "ip",
                        format!("{ip} is not a host address of {}", network.id),
                    )
                });
            }
            if used.contains(&ip) {
                return Err(ApiError::new(409, format!("{ip} is in use")));
            }
            return Ok(ip);
        }
        ranges
            .iter()
            .flat_map(|(s, e)| (s + 1)..*e)
            .map(Ipv4Addr::from)
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| {
                ApiError::new(409, format!("network {} has no free address", network.id))
            })
    }

    /// Addresses held: every address of a machine's allocation (or of one
    /// being reclaimed), and every IP record — except one naming a machine
    /// whose record changed after it and no longer holds the address (it
    /// was freed, possibly rack-locally while the API was down).
    fn addresses_in_use(&self, snapshot: &[Indexed]) -> Result<BTreeSet<Ipv4Addr>, ApiError> {
        let mut used = BTreeSet::new();
        let mut machines: std::collections::HashMap<&str, (u64, BTreeSet<Ipv4Addr>)> =
            std::collections::HashMap::new();
        for indexed in snapshot {
            let machine = &indexed.machine;
            let held: BTreeSet<Ipv4Addr> = [&machine.allocation, &machine.reclaiming]
                .into_iter()
                .flatten()
                .map(|executed| executed.request.ip)
                .collect();
            used.extend(held.iter().copied());
            let entry = machines.entry(machine.uuid.as_str()).or_default();
            if indexed.version > entry.0 {
                *entry = (indexed.version, held);
            }
        }
        for record in self
            .store
            .list(Some(RecordKind::Ip))
            .map_err(ApiError::internal)?
        {
            let Some(ip) = record
                .value
                .as_deref()
                .and_then(|v| serde_json::from_str::<model::Ip>(v).ok())
            else {
                continue;
            };
            let Ok(address) = ip.address.parse::<Ipv4Addr>() else {
                continue;
            };
            let stale = ip.machine.as_deref().is_some_and(|uuid| {
                machines.get(uuid).is_some_and(|(version, held)| {
                    *version > record.version && !held.contains(&address)
                })
            });
            if !stale {
                used.insert(address);
            }
        }
        Ok(used)
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, Holds> {
        self.holds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn exists(&self, kind: RecordKind, key: &str) -> Result<bool, ApiError> {
        Ok(self
            .store
            .get(&metalmesh_inventory::RecordKey::new(kind, key))
            .map_err(ApiError::internal)?
            .is_some_and(|r| r.value.is_some()))
    }

    fn put<T: Serialize>(&self, kind: RecordKind, key: &str, value: &T) -> Result<(), ApiError> {
        self.store
            .put_local_json(kind, key, value)
            .map(|_| ())
            .map_err(ApiError::internal)
    }
}

/// 403 unless `who` may change objects of `project`.
fn may_change(who: &Principal, project: &str) -> Result<(), ApiError> {
    if who.may_change(project) {
        Ok(())
    } else {
        Err(ApiError::forbidden(&format!("change project {project}")))
    }
}

/// The flags that keep a machine from being allocated.
fn flags(machine: &Machine) -> Vec<String> {
    [
        (machine.crash_loop, "crash_loop"),
        (machine.failed_machine_reclaim, "failed_reclaim"),
        (machine.install_stalled, "install_stalled"),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, name)| name.to_string())
    .collect()
}

fn view(machine: Machine, racks: &std::collections::HashMap<String, String>) -> MachineView {
    let allocation = machine.allocation.as_ref();
    let flags = flags(&machine);
    MachineView {
        rack: racks
            .get(&machine.switch)
            .cloned()
            .unwrap_or_else(|| machine.switch.clone()),
        uuid: machine.uuid.clone(),
        switch: machine.switch.clone(),
        port: machine.port.clone(),
        state: machine.state.clone(),
        liveliness: machine.liveliness.clone(),
        project: allocation.and_then(|a| a.request.project.clone()),
        hostname: allocation.map(|a| a.request.hostname.clone()),
        ip: allocation.map(|a| a.request.ip),
        network: allocation.map(|a| a.vrf.clone()),
        hardware: machine.hardware.clone(),
        flags,
        events: machine.events,
    }
}

/// `a.b.c.d/len` as its first and last address.
fn parse_prefix(text: &str) -> Option<(u32, u32)> {
    let (address, length) = text.split_once('/')?;
    let start = u32::from(address.parse::<Ipv4Addr>().ok()?);
    let length: u8 = length.parse().ok().filter(|l| *l <= 32)?;
    Some((start & mask(length), (start & mask(length)) | !mask(length)))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
