//! What the API does, without HTTP: reads come from the node's mesh replica
//! (never a fan-out), API-owned records are written to it (signed with the
//! node's `api` certificate, spread by the mesh), and each allocation or
//! release is asked of the machine's own agent, which commits it.

use crate::node::auth::{Principal, UserRole};
use crate::node::config::{TenantConfig, mask};
use crate::node::index::MachineIndex;
use crate::node::journal::Journal;
use metalmesh_inventory::mesh::service::MeshView;
use metalmesh_inventory::model;
use metalmesh_inventory::{RecordKey, RecordKind, Store};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    pub(crate) decisions: tokio::sync::Mutex<()>,
    /// What this node handed out lately, held until the records show it:
    /// the replica lags behind the agents' answers.
    holds: std::sync::Mutex<Holds>,
    /// Machine views kept for listing.
    pub(crate) rendered: crate::node::machines::RenderCache,
    /// Allocations in flight by `<subject>\n<idempotency key>`.
    pub(crate) idempotency: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, Default)]
pub(crate) struct Holds {
    /// Addresses handed out: when, and whether to an allocation (shown
    /// once a machine record holds it) or acquired (shown once its IP
    /// record is in the index).
    pub ips: HashMap<Ipv4Addr, (Instant, IpHold)>,
    pub machines: HashMap<String, Held>,
}

/// A machine handed out: when, in which rack, with which tags (placement
/// counts it before its record shows the allocation), and what its agent
/// took (a free right after the allocation knows it before the replica).
#[derive(Debug)]
pub(crate) struct Held {
    pub at: Instant,
    pub rack: String,
    pub tags: Vec<String>,
    /// Once its agent took it: the project and address.
    pub taken: Option<(String, Ipv4Addr)>,
}

/// What an address was handed out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IpHold {
    Allocation,
    Acquired,
}

/// How long a hand-out stays held regardless of the records.
pub(crate) const RECENT_HOLD: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    #[schema(pattern = "^[a-z0-9-]{1,32}$", min_length = 1, max_length = 32)]
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// `POST /v1/networks`: a project's private network (prefix carved from
/// the tenant super-network), or, by an admin, a shared or external
/// network with no project and usually a given prefix.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNetwork {
    /// Required for a private network; none for a shared or external one.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9-]{1,32}$", min_length = 1, max_length = 32)]
    pub project: Option<String>,
    #[schema(pattern = "^[a-z0-9-]{1,32}$", min_length = 1, max_length = 32)]
    pub name: String,
    /// Open to every project (admins).
    #[serde(default)]
    pub shared: bool,
    /// Leads out of the data center (admins).
    #[serde(default)]
    pub external: bool,
    /// `a.b.c.d/len` (admins); default: carved from the super-network.
    #[serde(default)]
    #[schema(
        pattern = "^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])/([89]|[12][0-9]|30)$"
    )]
    pub prefix: Option<String>,
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
    pub shared: bool,
    pub external: bool,
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
            shared: n.shared,
            external: n.external,
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
            idempotency: std::sync::Mutex::default(),
            rendered: crate::node::machines::RenderCache::default(),
        }
    }

    pub(crate) fn records<T: for<'de> Deserialize<'de>>(
        &self,
        kind: RecordKind,
    ) -> Result<Vec<T>, ApiError> {
        let records = self.store.list(Some(kind)).map_err(ApiError::internal)?;
        Ok(records
            .into_iter()
            .filter_map(|record| record.value)
            .filter_map(|value| serde_json::from_str(&value).ok())
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

    /// A network: for a project, the next free prefix of the tenant
    /// super-network; shared or external ones (admins) with the given
    /// prefix. Never overlapping another network; the next free VNI and
    /// table id.
    pub async fn create_network(
        &self,
        who: &Principal,
        new: NewNetwork,
    ) -> Result<NetworkView, ApiError> {
        let by_admin = new.shared || new.external || new.prefix.is_some();
        if by_admin && who.role != UserRole::Admin {
            return Err(ApiError::forbidden(
                "define shared or external networks or choose a prefix (admins only)",
            ));
        }
        // Fields that are each well formed but contradict: a conflict.
        let conflict = |error: &str| ApiError {
            status: 409,
            ..ApiError::field("project", error)
        };
        match (&new.project, new.shared || new.external) {
            (Some(_), true) => {
                return Err(conflict(
                    "a shared or external network belongs to no project",
                ));
            }
            (None, false) => return Err(conflict("a private network needs a project")),
            (Some(project), false) => {
                may_change(who, project)?;
                if !self.exists(RecordKind::Project, project)? {
                    return Err(ApiError {
                        status: 404,
                        ..ApiError::field("project", format!("no project {project}"))
                    });
                }
            }
            (None, true) => {}
        }
        if !valid_name(&new.name) {
            return Err(ApiError::field(
                "name",
                "1-32 lowercase letters, digits and '-'",
            ));
        }
        let given = match &new.prefix {
            None => None,
            Some(text) => Some(
                parse_prefix(text)
                    .filter(|(s, e)| e - s >= 3 && e - s < (1 << 24))
                    .ok_or_else(|| {
                        ApiError::field("prefix", "a.b.c.d/len with len between 8 and 30")
                    })?,
            ),
        };
        let _decision = self.decisions.lock().await;
        let networks: Vec<model::Network> = self.records(RecordKind::Network)?;
        if networks
            .iter()
            .any(|n| n.project == new.project && n.name == new.name)
        {
            return Err(ApiError::new(
                409,
                format!(
                    "network {} exists in {}",
                    new.name,
                    new.project.as_deref().unwrap_or("the shared networks")
                ),
            ));
        }
        let taken: Vec<(u32, u32, &str)> = networks
            .iter()
            .flat_map(|n| n.prefixes.iter().map(move |p| (p, n.id.as_str())))
            .filter_map(|(p, id)| parse_prefix(p).map(|(s, e)| (s, e, id)))
            .collect();
        let prefix = match given {
            Some((start, end)) => {
                if let Some((_, _, id)) = taken.iter().find(|(s, e, _)| start <= *e && end >= *s) {
                    return Err(ApiError {
                        status: 409,
                        ..ApiError::field("prefix", format!("overlaps network {id}"))
                    });
                }
                format!(
                    "{}/{}",
                    Ipv4Addr::from(start),
                    32 - (end - start + 1).trailing_zeros()
                )
            }
            None => {
                let (base, length) = self.tenant.super_network;
                let size = 1u64 << (32 - self.tenant.prefix_length);
                let count = 1u64 << (self.tenant.prefix_length - length);
                let start = (0..count)
                    .map(|i| (u32::from(base) as u64 + i * size) as u32)
                    .find(|start| {
                        let end = start + (size as u32 - 1);
                        !taken.iter().any(|(s, e, _)| start <= e && end >= *s)
                    })
                    .ok_or_else(|| ApiError::new(409, "the tenant super-network is exhausted"))?;
                format!("{}/{}", Ipv4Addr::from(start), self.tenant.prefix_length)
            }
        };
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
            project: new.project,
            prefixes: vec![prefix],
            vni,
            vrf: table,
            shared: new.shared,
            external: new.external,
        };
        self.put(RecordKind::Network, &network.id, &network)?;
        self.journal
            .record(who, "network.create", &network.id, "ok");
        Ok(network.into())
    }

    /// The network an object of `project` may use: the project's own (by
    /// id or name) or a shared or external one.
    pub(crate) fn network_for(
        &self,
        project: &str,
        wanted: &str,
    ) -> Result<model::Network, ApiError> {
        // An id first, then the project's own name, then a shared or
        // external network's name: a name never picks at random.
        let find = |networks: Vec<model::Network>| {
            let usable: Vec<model::Network> = networks
                .into_iter()
                .filter(|n| n.project.as_deref().is_none_or(|p| p == project))
                .collect();
            let rank = |n: &model::Network| {
                if n.id == wanted {
                    Some(0)
                } else if n.name == wanted && n.project.is_some() {
                    Some(1)
                } else if n.name == wanted {
                    Some(2)
                } else {
                    None
                }
            };
            usable
                .into_iter()
                .filter_map(|n| rank(&n).map(|r| (r, n)))
                .min_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)))
                .map(|(_, n)| n)
        };
        // The index, or the store for a network created a moment ago.
        let network = match find(self.index.small(RecordKind::Network)) {
            Some(network) => Some(network),
            None => find(self.records(RecordKind::Network)?),
        };
        let network = network.ok_or_else(|| ApiError {
            status: 404,
            ..ApiError::field(
                "network",
                format!("no network {wanted} in project {project}"),
            )
        })?;
        Ok(network)
    }

    /// Addresses handed out lately and not shown by the records yet, and
    /// not older than [`RECENT_HOLD`]: an allocation's until a machine
    /// record holds it (`by_machine`), an acquired one until its IP record
    /// is indexed (`by_record`).
    pub(crate) fn held_ips(
        &self,
        by_machine: impl Fn(&Ipv4Addr) -> bool,
        by_record: impl Fn(&Ipv4Addr) -> bool,
    ) -> Vec<(Ipv4Addr, IpHold)> {
        let mut holds = self.holds();
        holds.ips.retain(|ip, (at, hold)| {
            at.elapsed() < RECENT_HOLD
                && match hold {
                    IpHold::Allocation => !by_machine(ip),
                    IpHold::Acquired => !by_record(ip),
                }
        });
        holds
            .ips
            .iter()
            .map(|(ip, (_, hold))| (*ip, *hold))
            .collect()
    }

    pub(crate) fn hold_ip(&self, ip: Ipv4Addr, hold: IpHold) {
        self.holds().ips.insert(ip, (Instant::now(), hold));
    }

    pub(crate) fn release_hold(&self, ip: Ipv4Addr) {
        self.holds().ips.remove(&ip);
    }

    pub(crate) fn record<T: for<'de> Deserialize<'de>>(
        &self,
        kind: RecordKind,
        key: &str,
    ) -> Result<Option<T>, ApiError> {
        let record = self
            .store
            .get(&RecordKey::new(kind, key))
            .map_err(ApiError::internal)?;
        match record.and_then(|r| r.value) {
            None => Ok(None),
            Some(value) => serde_json::from_str(&value)
                .map(Some)
                .map_err(ApiError::internal),
        }
    }

    pub(crate) fn delete(&self, kind: RecordKind, key: &str) -> Result<(), ApiError> {
        self.store
            .put_local(kind, key, None)
            .map(|_| ())
            .map_err(ApiError::internal)
    }

    pub(crate) fn holds(&self) -> std::sync::MutexGuard<'_, Holds> {
        self.holds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn exists(&self, kind: RecordKind, key: &str) -> Result<bool, ApiError> {
        Ok(self
            .store
            .get(&RecordKey::new(kind, key))
            .map_err(ApiError::internal)?
            .is_some_and(|r| r.value.is_some()))
    }

    pub(crate) fn put<T: Serialize>(
        &self,
        kind: RecordKind,
        key: &str,
        value: &T,
    ) -> Result<(), ApiError> {
        self.store
            .put_local_json(kind, key, value)
            .map(|_| ())
            .map_err(ApiError::internal)
    }
}

/// 403 unless `who` may change objects of `project`.
pub(crate) fn may_change(who: &Principal, project: &str) -> Result<(), ApiError> {
    if who.may_change(project) {
        Ok(())
    } else {
        Err(ApiError::forbidden(&format!("change project {project}")))
    }
}

/// `a.b.c.d/len` as its first and last address.
pub(crate) fn parse_prefix(text: &str) -> Option<(u32, u32)> {
    let (address, length) = text.split_once('/')?;
    let start = u32::from(address.parse::<Ipv4Addr>().ok()?);
    let length: u8 = length.parse().ok().filter(|l| *l <= 32)?;
    Some((start & mask(length), (start & mask(length)) | !mask(length)))
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
