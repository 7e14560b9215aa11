//! Machines through the API: listing and describing them from the replica,
//! allocating (a candidate picked here, committed by its own agent), freeing,
//! and an admin's reservations and locks.

use crate::node::auth::{Principal, UserRole};
use crate::node::catalog::size_of;
use crate::node::index::Indexed;
use crate::node::service::{Api, ApiError, Held, IpHold, may_change};
use metalmesh_inventory::RecordKind;
use metalmesh_inventory::mesh::service::MeshError;
use metalmesh_inventory::model::{self, AllocateRequest, Machine};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

/// How long an agent has to take an allocation: the first allocation of
/// an image on a leaf waits for the leaf to download it.
const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an agent has to answer a release.
const FREE_TIMEOUT: Duration = Duration::from_secs(15);
/// Candidates tried per allocation before giving up.
const MAX_CANDIDATES: usize = 8;
/// Times a candidate is asked again while its leaf does not know the
/// network yet, is not reachable, or its reply was lost (half a second
/// apart).
const ASK_AGAIN_TRIES: usize = 20;
/// How long an allocation whose every reply was lost waits for the
/// machine's record to show whether its agent committed it.
const INTERRUPTED_WAIT: Duration = Duration::from_secs(10);
/// Tags per allocation, and the longest tag.
const MAX_TAGS: usize = 32;
const MAX_TAG_LEN: usize = 63;

/// `POST /v1/machines/allocate`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocationRequest {
    /// A given machine; default: any Waiting machine that fits the rest.
    #[serde(default)]
    pub machine: Option<String>,
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub rack: Option<String>,
    /// A size the machine's hardware fits.
    #[serde(default)]
    pub size: Option<String>,
    pub project: String,
    /// The network's id or, within the project, its name (or a shared
    /// network's).
    pub network: String,
    /// Default: the network's next free address; an address the project
    /// acquired may be named.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub ip: Option<Ipv4Addr>,
    #[schema(min_length = 1, max_length = 63)]
    pub hostname: String,
    /// An image defined in the API (`GET /v1/images`).
    pub image: String,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    #[serde(default)]
    pub user_data: String,
    /// The machine's labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Spread: prefer the rack with the fewest machines carrying one of
    /// these tags.
    #[serde(default)]
    pub placement_tags: Vec<String>,
}

/// `GET /v1/machines` filters (all optional, all must match).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MachineFilter {
    pub project: Option<String>,
    pub partition: Option<String>,
    pub rack: Option<String>,
    pub size: Option<String>,
    pub state: Option<String>,
    pub tag: Option<String>,
}

/// `PUT /v1/machines/{uuid}/reservation` (admins).
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReservation {
    /// Only this project may allocate the machine.
    #[serde(default)]
    pub project: Option<String>,
    /// Neither allocated nor freed until unlocked.
    #[serde(default)]
    pub locked: bool,
    #[serde(default)]
    pub reason: String,
}

/// A machine as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MachineView {
    pub uuid: String,
    pub partition: String,
    pub rack: String,
    pub switch: String,
    pub port: Option<String>,
    pub state: String,
    pub liveliness: String,
    /// The first size (by name) its hardware fits.
    pub size: Option<String>,
    pub project: Option<String>,
    pub hostname: Option<String>,
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub ip: Option<Ipv4Addr>,
    pub network: Option<String>,
    pub image: Option<String>,
    pub tags: Vec<String>,
    /// CPUs, memory, disks and NICs as the installer found them.
    #[schema(value_type = Option<Object>)]
    pub hardware: Option<model::Hardware>,
    pub flags: Vec<String>,
    /// An admin's reservation or lock.
    #[schema(value_type = Option<Object>)]
    pub reservation: Option<model::Reservation>,
    /// The newest events, newest first.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<model::Event>,
}

/// A machine's view and its JSON, kept while its record and the small
/// kinds it depends on are unchanged: listing 10,000 machines serialises
/// only what changed since the last listing.
#[derive(Debug)]
pub struct Rendered {
    version: u64,
    generation: u64,
    pub view: MachineView,
    pub json: Vec<u8>,
}

#[derive(Debug, Default)]
pub(crate) struct RenderCache(std::sync::Mutex<HashMap<Arc<str>, Arc<Rendered>>>);

/// `GET /v1/machines`'s answer: rendered machines, sorted by rack and UUID.
#[derive(Debug)]
pub struct MachineList(pub Vec<Arc<Rendered>>);

impl MachineList {
    /// The JSON array, joined from the machines' kept JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let length: usize = self.0.iter().map(|r| r.json.len() + 1).sum();
        let mut out = Vec::with_capacity(length + 2);
        out.push(b'[');
        for (i, rendered) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&rendered.json);
        }
        out.push(b']');
        out
    }
}

/// What a view needs besides the machine record.
#[derive(Debug, Default)]
pub(crate) struct Context {
    /// Switch → (rack, partition).
    switches: HashMap<String, (String, String)>,
    pub(crate) sizes: Vec<model::Size>,
    reservations: HashMap<String, model::Reservation>,
}

impl Context {
    fn rack(&self, switch: &str) -> (String, String) {
        self.switches
            .get(switch)
            .cloned()
            .unwrap_or_else(|| (switch.to_string(), String::new()))
    }
}

impl Api {
    /// What views need, from the index (no store query per request).
    pub(crate) fn context(&self) -> Context {
        let mut sizes: Vec<model::Size> = self.index.small(RecordKind::Size);
        sizes.sort_by(|a, b| a.id.cmp(&b.id));
        Context {
            switches: self
                .index
                .small::<model::Switch>(RecordKind::Switch)
                .into_iter()
                .map(|s| (s.name, (s.rack, s.partition)))
                .collect(),
            sizes,
            reservations: self
                .index
                .small::<model::Reservation>(RecordKind::Reservation)
                .into_iter()
                .map(|r| (r.machine.clone(), r))
                .collect(),
        }
    }

    /// Machines the caller may see (unallocated ones, and allocated ones of
    /// its projects; all for an admin) that match the filter.
    pub fn machines(&self, who: &Principal, filter: &MachineFilter) -> MachineList {
        let snapshot = self.index.snapshot();
        let generation = self.index.generation();
        let mut context = None;
        let mut cache = self
            .rendered
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut rows: Vec<Arc<Rendered>> = Vec::new();
        for indexed in &snapshot {
            if !visible(who, &indexed.machine) {
                continue;
            }
            let fresh = cache
                .get(&indexed.key)
                .filter(|r| r.version == indexed.version && r.generation == generation)
                .cloned();
            let rendered = match fresh {
                Some(rendered) => rendered,
                None => {
                    let context = context.get_or_insert_with(|| self.context());
                    let view = view(&indexed.machine, context);
                    let rendered = Arc::new(Rendered {
                        version: indexed.version,
                        generation,
                        json: serde_json::to_vec(&view).unwrap_or_default(),
                        view,
                    });
                    cache.insert(Arc::clone(&indexed.key), Arc::clone(&rendered));
                    rendered
                }
            };
            if matches(&rendered.view, filter) {
                rows.push(rendered);
            }
        }
        if cache.len() > snapshot.len() {
            // Machines whose records went away.
            let current: BTreeSet<&str> = snapshot.iter().map(|m| &*m.key).collect();
            cache.retain(|key, _| current.contains(&**key));
        }
        drop(cache);
        rows.sort_by(|a, b| (&a.view.rack, &a.view.uuid).cmp(&(&b.view.rack, &b.view.uuid)));
        MachineList(rows)
    }

    /// One machine (of several records of one UUID, the first by rack, as
    /// in the list).
    pub fn machine(&self, who: &Principal, uuid: &str) -> Result<MachineView, ApiError> {
        let wanted = uuid.to_lowercase();
        let context = self.context();
        self.index
            .snapshot()
            .into_iter()
            .filter(|indexed| indexed.machine.uuid == wanted && visible(who, &indexed.machine))
            .map(|indexed| view(&indexed.machine, &context))
            .min_by(|a, b| a.rack.cmp(&b.rack))
            .ok_or_else(|| ApiError::new(404, format!("machine {uuid} not found")))
    }

    /// Picks a Waiting machine and asks its agent to take the allocation;
    /// on a refusal tries the next one. With an idempotency key, a retry
    /// (by the same subject) returns the machine the first attempt got.
    pub async fn allocate(
        &self,
        who: &Principal,
        request: AllocationRequest,
        idempotency_key: Option<&str>,
    ) -> Result<MachineView, ApiError> {
        may_change(who, &request.project)?;
        let Some(key) = idempotency_key else {
            return self.allocate_once(who, request).await;
        };
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::field(
                "Idempotency-Key",
                "1-255 printable characters",
            ));
        }
        // Retries of one key wait for each other.
        let lock = {
            let mut keys = self
                .idempotency
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            keys.retain(|_, lock| std::sync::Arc::strong_count(lock) > 1);
            std::sync::Arc::clone(keys.entry(format!("{}\n{key}", who.subject)).or_default())
        };
        let _one_at_a_time = lock.lock().await;
        let earlier = self
            .journal
            .idempotent(&who.subject, key)
            .map_err(|e| ApiError::new(500, e.to_string()))?;
        if let Some(uuid) = earlier {
            return self.machine(who, &uuid);
        }
        let machine = self.allocate_once(who, request).await?;
        self.journal
            .remember(&who.subject, key, &machine.uuid)
            .map_err(|e| ApiError::new(500, e.to_string()))?;
        Ok(machine)
    }

    async fn allocate_once(
        &self,
        who: &Principal,
        request: AllocationRequest,
    ) -> Result<MachineView, ApiError> {
        let network = self.network_for(&request.project, &request.network)?;
        if request.hostname.is_empty() || request.hostname.len() > 63 {
            return Err(ApiError::field("hostname", "1-63 characters"));
        }
        if self.image(&request.image)?.is_none() {
            return Err(ApiError {
                status: 404,
                ..ApiError::field("image", format!("no image {}", request.image))
            });
        }
        if request.tags.len() > MAX_TAGS
            || request
                .tags
                .iter()
                .chain(&request.placement_tags)
                .any(|t| t.is_empty() || t.len() > MAX_TAG_LEN)
        {
            return Err(ApiError::field(
                "tags",
                format!("at most {MAX_TAGS} tags of 1-{MAX_TAG_LEN} characters"),
            ));
        }
        let mut context = self.context();
        // Reservations from the store: one set a moment ago holds at once.
        context.reservations = self
            .records::<model::Reservation>(RecordKind::Reservation)?
            .into_iter()
            .map(|r| (r.machine.clone(), r))
            .collect();
        let size = match &request.size {
            None => None,
            Some(name) => Some(
                context
                    .sizes
                    .iter()
                    .find(|s| &s.id == name)
                    .cloned()
                    .ok_or_else(|| ApiError {
                        status: 404,
                        ..ApiError::field("size", format!("no size {name}"))
                    })?,
            ),
        };
        if let Some(partition) = &request.partition
            && !context.switches.values().any(|(_, p)| p == partition)
        {
            return Err(ApiError {
                status: 404,
                ..ApiError::field("partition", format!("no partition {partition}"))
            });
        }
        // Decided under the lock, on one snapshot of the replica: the
        // address (held at once) and the candidates. The agents are asked
        // outside it; each candidate is claimed first, so concurrent
        // allocations never ask for the same machine.
        let (chosen, candidates) = {
            let _decision = self.decisions.lock().await;
            let snapshot = self.index.snapshot();
            let chosen = self.choose_address(&snapshot, &network, &request.project, request.ip)?;
            let candidates = self.candidates(&snapshot, &context, &request, size.as_ref());
            if candidates.is_empty() {
                return Err(ApiError::new(409, "no machine available"));
            }
            self.hold_ip(chosen.ip, IpHold::Allocation);
            (chosen, candidates)
        };
        let ip = chosen.ip;
        let allocation = AllocateRequest {
            project: Some(request.project.clone()),
            image: request.image.clone(),
            ip,
            hostname: request.hostname.clone(),
            ssh_keys: request.ssh_keys.clone(),
            user_data: request.user_data.clone(),
            vrf: Some(network.id.clone()),
            tags: request.tags.clone(),
        };
        let (mut refusals, mut unreachable) = (Vec::new(), Vec::new());
        for (uuid, switch, rack) in &candidates {
            if refusals.len() + unreachable.len() >= MAX_CANDIDATES {
                break;
            }
            {
                // Claimed by a concurrent allocation since the decision.
                let mut holds = self.holds();
                if holds.machines.contains_key(uuid) {
                    continue;
                }
                holds.machines.insert(
                    uuid.clone(),
                    Held {
                        at: std::time::Instant::now(),
                        rack: rack.clone(),
                        tags: request.tags.clone(),
                        taken: None,
                    },
                );
            }
            let body = serde_json::json!({ "uuid": uuid, "allocation": allocation });
            let mut answer = Err(MeshError::Stopped);
            // A network created a moment ago may not have reached the
            // machine's leaf yet: its agent then knows no such VRF. A leaf
            // whose records are here may be briefly out of this node's
            // membership (just restarted, or suspected under load): the
            // command did not reach it. And a reply lost with its
            // connection (a member declared down closes it) is asked again
            // with the same request: the agent answers a repeated request
            // with the machine it committed, so asking again is safe.
            for _ in 0..ASK_AGAIN_TRIES {
                answer = self
                    .mesh
                    .request(switch, "machine.allocate", body.clone(), ALLOCATE_TIMEOUT)
                    .await;
                match &answer {
                    Err(
                        MeshError::UnknownMember(_)
                        | MeshError::Peer { .. }
                        | MeshError::Interrupted { .. },
                    ) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(error) if error.to_string().contains("no VRF") => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    _ => break,
                }
            }
            let answer = match answer {
                Ok(answer) => answer,
                // The agent may have committed it: its machine record,
                // gossiped here, says so (the address is held by this
                // request alone, so a record with it is this allocation).
                Err(error @ MeshError::Interrupted { .. }) => {
                    tracing::warn!(machine = %uuid, %error, "allocation interrupted; waiting for the machine's record");
                    match self.committed_with(uuid, ip, INTERRUPTED_WAIT).await {
                        Some(machine) => serde_json::to_value(&*machine).unwrap_or_default(),
                        None => {
                            self.journal
                                .record(who, "machine.allocate", uuid, "no answer");
                            return Err(ApiError::new(
                                504,
                                format!(
                                    "{error}; machine {uuid} may still be allocated with {ip}: see `machine describe {uuid}`"
                                ),
                            ));
                        }
                    }
                }
                Err(MeshError::TimedOut { peer, after }) => {
                    // The agent may still commit (a first download of a
                    // large image): the machine and the address stay held,
                    // and no other machine is asked with this address.
                    self.journal
                        .record(who, "machine.allocate", uuid, "no answer");
                    return Err(ApiError::new(
                        504,
                        format!(
                            "{peer} did not answer within {after:?}; machine {uuid} may still be allocated with {ip}: see `machine describe {uuid}`"
                        ),
                    ));
                }
                Err(error @ MeshError::Refused { .. }) => {
                    // Refused: free for others again, unless its agent says
                    // it is taken (the replica has not caught up yet).
                    if !error.to_string().contains("already allocated") {
                        self.holds().machines.remove(uuid);
                    }
                    tracing::info!(machine = %uuid, %error, "allocation refused; next candidate");
                    refusals.push(format!("{uuid}: {error}"));
                    continue;
                }
                Err(error) => {
                    // Not delivered (no connection, unknown member): the
                    // agent never saw it.
                    self.holds().machines.remove(uuid);
                    tracing::warn!(machine = %uuid, %error, "agent not reached; next candidate");
                    unreachable.push(format!("{uuid}: {error}"));
                    continue;
                }
            };
            // Committed by the agent: what follows must not lose it.
            let machine = match serde_json::from_value::<Machine>(answer) {
                Ok(machine) => machine,
                Err(error) => {
                    tracing::error!(machine = %uuid, %error, "unreadable answer of a committed allocation");
                    return Err(ApiError::new(
                        502,
                        format!(
                            "machine {uuid} was allocated with {ip}, but its agent's answer is unreadable: {error}"
                        ),
                    ));
                }
            };
            if let Some(held) = self.holds().machines.get_mut(uuid) {
                held.taken = Some((request.project.clone(), ip));
            }
            let record = match chosen.acquired {
                Some(acquired) => model::Ip {
                    machine: Some(machine.uuid.clone()),
                    ..acquired
                },
                None => model::Ip {
                    address: ip.to_string(),
                    network: network.id.clone(),
                    project: request.project.clone(),
                    machine: Some(machine.uuid.clone()),
                    acquired: false,
                    name: String::new(),
                },
            };
            // The machine record holds the address anyway; an IP record
            // that could not be written costs only its name.
            if let Err(error) = self.put(RecordKind::Ip, &record.address, &record) {
                tracing::error!(ip = %record.address, error = %error.error, "IP record not written");
            }
            self.journal
                .record(who, "machine.allocate", &machine.uuid, "ok");
            return Ok(view(&machine, &context));
        }
        self.release_hold(ip);
        self.journal.record(
            who,
            "machine.allocate",
            request.machine.as_deref().unwrap_or("-"),
            "refused",
        );
        if refusals.is_empty() && !unreachable.is_empty() {
            return Err(ApiError::new(
                502,
                format!("no agent could be reached ({})", unreachable.join("; ")),
            ));
        }
        if refusals.is_empty() {
            return Err(ApiError::new(409, "no machine available"));
        }
        refusals.extend(unreachable);
        Err(ApiError::new(
            409,
            format!("no machine took the allocation ({})", refusals.join("; ")),
        ))
    }

    /// The record of machine `uuid` once it shows an allocation with `ip`,
    /// waiting up to `limit` for it to arrive by gossip.
    async fn committed_with(
        &self,
        uuid: &str,
        ip: std::net::Ipv4Addr,
        limit: Duration,
    ) -> Option<std::sync::Arc<Machine>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let found = self.index.snapshot().into_iter().find(|indexed| {
                indexed.machine.uuid == uuid
                    && indexed
                        .machine
                        .allocation
                        .as_ref()
                        .is_some_and(|a| a.request.ip == ip)
            });
            if let Some(indexed) = found {
                return Some(indexed.machine);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The machines that may take `request`, best first: `(uuid, switch,
    /// rack)`. With placement tags, racks with fewer machines carrying one
    /// of them (allocated or being handed out) come first.
    fn candidates(
        &self,
        snapshot: &[Indexed],
        context: &Context,
        request: &AllocationRequest,
        size: Option<&model::Size>,
    ) -> Vec<(String, String, String)> {
        let shown: BTreeSet<&str> = snapshot
            .iter()
            .filter(|m| m.machine.allocation.is_some())
            .map(|m| m.machine.uuid.as_str())
            .collect();
        let mut holds = self.holds();
        // A machine handed out is held until its record shows the
        // allocation.
        holds.machines.retain(|uuid, held| {
            held.at.elapsed() < crate::node::service::RECENT_HOLD && !shown.contains(uuid.as_str())
        });
        let placement: BTreeSet<&String> = request.placement_tags.iter().collect();
        let mut spread: HashMap<String, usize> = HashMap::new();
        if !placement.is_empty() {
            for indexed in snapshot {
                let tagged = indexed
                    .machine
                    .allocation
                    .as_ref()
                    .is_some_and(|a| a.request.tags.iter().any(|t| placement.contains(t)));
                if tagged {
                    *spread
                        .entry(context.rack(&indexed.machine.switch).0)
                        .or_default() += 1;
                }
            }
            for held in holds.machines.values() {
                if held.tags.iter().any(|t| placement.contains(t)) {
                    *spread.entry(held.rack.clone()).or_default() += 1;
                }
            }
        }
        let mut candidates: Vec<(usize, String, &str, &str)> = snapshot
            .iter()
            .map(|indexed| &indexed.machine)
            .filter(|m| m.allocation.is_none() && m.reclaiming.is_none())
            .filter(|m| m.state == "Waiting" && m.flags().is_empty())
            .filter(|m| !holds.machines.contains_key(&m.uuid))
            .filter(|m| {
                request
                    .machine
                    .as_ref()
                    .is_none_or(|u| m.uuid == u.to_lowercase())
            })
            .filter(|m| {
                context.reservations.get(&m.uuid).is_none_or(|r| {
                    !r.locked && r.project.as_ref().is_none_or(|p| p == &request.project)
                })
            })
            .filter(|m| size.is_none_or(|s| m.hardware.as_ref().is_some_and(|h| s.fits(h))))
            .filter_map(|m| {
                let (rack, partition) = context.rack(&m.switch);
                let fits = request.rack.as_ref().is_none_or(|r| r == &rack)
                    && request.partition.as_ref().is_none_or(|p| p == &partition);
                fits.then(|| {
                    let load = spread.get(&rack).copied().unwrap_or(0);
                    (load, rack, m.uuid.as_str(), m.switch.as_str())
                })
            })
            .collect();
        // Only the best few are ever asked: no need to sort them all.
        let wanted = MAX_CANDIDATES * 4;
        if candidates.len() > wanted {
            candidates.select_nth_unstable(wanted);
            candidates.truncate(wanted);
        }
        candidates.sort_unstable();
        candidates
            .into_iter()
            .map(|(_, rack, uuid, switch)| (uuid.to_string(), switch.to_string(), rack))
            .collect()
    }

    pub async fn free(&self, who: &Principal, uuid: &str) -> Result<MachineView, ApiError> {
        let mut machine = self.machine(who, uuid)?;
        if machine.project.is_none() {
            // Allocated by this node a moment ago: the replica may not
            // show it yet.
            let taken = self
                .holds()
                .machines
                .get(&machine.uuid)
                .and_then(|held| held.taken.clone());
            if let Some((project, ip)) = taken {
                machine.project = Some(project);
                machine.ip = Some(ip);
            }
        }
        let project = machine
            .project
            .clone()
            .ok_or_else(|| ApiError::new(409, format!("machine {uuid} is not allocated")))?;
        may_change(who, &project)?;
        // The store, not the index: a lock set a moment ago holds at once.
        let reservation =
            self.record::<model::Reservation>(RecordKind::Reservation, &machine.uuid)?;
        if let Some(reservation) = reservation.as_ref().filter(|r| r.locked) {
            return Err(ApiError::new(
                409,
                format!(
                    "machine {uuid} is locked by an admin ({}): unlock it first",
                    reservation.reason
                ),
            ));
        }
        let answer = self
            .mesh
            .request(
                &machine.switch,
                "machine.free",
                serde_json::json!({ "uuid": machine.uuid }),
                FREE_TIMEOUT,
            )
            .await
            .map_err(|e| ApiError::new(502, e.to_string()))?;
        self.holds().machines.remove(&machine.uuid);
        if let Some(ip) = machine.ip {
            // The address returns to the pool (or, acquired, to the
            // project) once the agent let it go.
            self.release_hold(ip);
            let key = ip.to_string();
            match self.record::<model::Ip>(RecordKind::Ip, &key)? {
                Some(record) if record.acquired => self.put(
                    RecordKind::Ip,
                    &key,
                    &model::Ip {
                        machine: None,
                        ..record
                    },
                )?,
                Some(_) => self.delete(RecordKind::Ip, &key)?,
                None => {}
            }
        }
        self.journal
            .record(who, "machine.free", &machine.uuid, "ok");
        let machine: Machine =
            serde_json::from_value(answer).map_err(|e| ApiError::new(500, e.to_string()))?;
        Ok(view(&machine, &self.context()))
    }

    /// Reserves or locks a machine (admins): the record travels in the
    /// mesh, so another API node honours it too.
    pub fn reserve(
        &self,
        who: &Principal,
        uuid: &str,
        new: NewReservation,
    ) -> Result<MachineView, ApiError> {
        if who.role != UserRole::Admin {
            return Err(ApiError::new(
                403,
                "not allowed to reserve machines (admins only)",
            ));
        }
        let machine = self.machine(who, uuid)?;
        if let Some(project) = &new.project
            && self
                .record::<model::Project>(RecordKind::Project, project)?
                .is_none()
        {
            return Err(ApiError {
                status: 404,
                ..ApiError::field("project", format!("no project {project}"))
            });
        }
        if new.reason.len() > 256 {
            return Err(ApiError::field("reason", "at most 256 characters"));
        }
        let reservation = model::Reservation {
            machine: machine.uuid.clone(),
            project: new.project,
            locked: new.locked,
            reason: new.reason,
        };
        self.put(RecordKind::Reservation, &machine.uuid, &reservation)?;
        self.journal
            .record(who, "machine.reserve", &machine.uuid, "ok");
        Ok(MachineView {
            reservation: Some(reservation),
            ..machine
        })
    }

    pub fn unreserve(&self, who: &Principal, uuid: &str) -> Result<MachineView, ApiError> {
        if who.role != UserRole::Admin {
            return Err(ApiError::new(
                403,
                "not allowed to reserve machines (admins only)",
            ));
        }
        let machine = self.machine(who, uuid)?;
        if machine.reservation.is_none() {
            return Err(ApiError::new(
                404,
                format!("machine {uuid} has no reservation"),
            ));
        }
        self.delete(RecordKind::Reservation, &machine.uuid)?;
        self.journal
            .record(who, "machine.unreserve", &machine.uuid, "ok");
        Ok(MachineView {
            reservation: None,
            ..machine
        })
    }
}

/// Unallocated machines are visible to all; allocated ones to their
/// project's members and admins.
fn visible(who: &Principal, machine: &Machine) -> bool {
    machine
        .allocation
        .as_ref()
        .and_then(|a| a.request.project.as_deref())
        .is_none_or(|p| who.sees(p))
}

fn matches(machine: &MachineView, filter: &MachineFilter) -> bool {
    let is = |wanted: &Option<String>, value: Option<&str>| {
        wanted.as_deref().is_none_or(|w| value == Some(w))
    };
    is(&filter.project, machine.project.as_deref())
        && is(&filter.partition, Some(&machine.partition))
        && is(&filter.rack, Some(&machine.rack))
        && is(&filter.size, machine.size.as_deref())
        && is(&filter.state, Some(&machine.state))
        && filter.tag.as_ref().is_none_or(|t| machine.tags.contains(t))
}

fn view(machine: &Machine, context: &Context) -> MachineView {
    let allocation = machine.allocation.as_ref();
    let (rack, partition) = context.rack(&machine.switch);
    MachineView {
        rack,
        partition,
        uuid: machine.uuid.clone(),
        switch: machine.switch.clone(),
        port: machine.port.clone(),
        state: machine.state.clone(),
        liveliness: machine.liveliness.clone(),
        size: size_of(&context.sizes, machine.hardware.as_ref()),
        project: allocation.and_then(|a| a.request.project.clone()),
        hostname: allocation.map(|a| a.request.hostname.clone()),
        ip: allocation.map(|a| a.request.ip),
        network: allocation.map(|a| a.vrf.clone()),
        image: allocation.map(|a| a.request.image.clone()),
        tags: allocation
            .map(|a| a.request.tags.clone())
            .unwrap_or_default(),
        hardware: machine.hardware.clone(),
        flags: machine.flags().into_iter().map(str::to_string).collect(),
        reservation: context.reservations.get(&machine.uuid).cloned(),
        events: machine.events.clone(),
    }
}
