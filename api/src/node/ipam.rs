//! IP address management: which addresses of a network are taken, and IPs
//! acquired on their own (kept across allocations until released).
//!
//! An address is taken when a machine record holds it (an allocation made
//! through the API or rack-locally while the API was down, or one being
//! reclaimed), when an IP record names it, or when this node handed it out
//! a moment ago and the records do not show it yet (a hold). An IP record
//! that came with an allocation stops counting once its machine's record
//! changed after it and no longer holds the address (freed rack-locally).

use crate::node::auth::Principal;
use crate::node::index::Indexed;
use crate::node::service::{Api, ApiError, IpHold, may_change, parse_prefix};
use metalmesh_inventory::RecordKind;
use metalmesh_inventory::model;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

/// `POST /v1/ips`: an address of a network, kept for the project until
/// released (an allocation may then name it).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewIp {
    #[schema(pattern = "^[a-z0-9-]{1,32}$", min_length = 1, max_length = 32)]
    pub project: String,
    /// The network's id or, within the project, its name.
    pub network: String,
    /// Default: the network's next free address.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    #[schema(max_length = 63)]
    pub name: String,
}

/// An IP address the API handed out.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IpView {
    #[schema(value_type = String, format = Ipv4)]
    pub address: String,
    pub network: String,
    pub project: String,
    pub name: String,
    /// The machine it is attached to, if any.
    pub machine: Option<String>,
    /// Acquired on its own: kept when its machine is freed.
    pub acquired: bool,
}

impl From<model::Ip> for IpView {
    fn from(ip: model::Ip) -> IpView {
        IpView {
            address: ip.address,
            network: ip.network,
            project: ip.project,
            name: ip.name,
            machine: ip.machine,
            acquired: ip.acquired,
        }
    }
}

/// The taken addresses, by why they are taken.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// Held by a machine record.
    pub by_machines: BTreeSet<Ipv4Addr>,
    /// Named by an IP record that still counts.
    pub by_records: HashMap<Ipv4Addr, model::Ip>,
    /// Handed out by this node a moment ago, not shown by the records yet.
    pub held: HashMap<Ipv4Addr, IpHold>,
}

impl Taken {
    fn contains(&self, ip: &Ipv4Addr) -> bool {
        self.by_machines.contains(ip)
            || self.by_records.contains_key(ip)
            || self.held.contains_key(ip)
    }
}

/// An address chosen for an allocation, and the acquired IP it came from.
#[derive(Debug)]
pub(crate) struct Chosen {
    pub ip: Ipv4Addr,
    pub acquired: Option<model::Ip>,
}

impl Api {
    /// The IPs the caller may see (all for an admin).
    pub fn ips(&self, who: &Principal) -> Vec<IpView> {
        let mut ips: Vec<IpView> = self
            .index
            .ips()
            .into_iter()
            .map(|(_, ip)| ip)
            .filter(|ip| who.sees(&ip.project))
            .map(IpView::from)
            .collect();
        ips.sort_by_key(|ip| ip.address.parse::<Ipv4Addr>().ok());
        ips
    }

    /// Acquires an address of a network for a project.
    pub async fn acquire_ip(&self, who: &Principal, new: NewIp) -> Result<IpView, ApiError> {
        may_change(who, &new.project)?;
        if new.name.len() > 63 {
            return Err(ApiError::field("name", "at most 63 characters"));
        }
        let network = self.network_for(&new.project, &new.network)?;
        let _decision = self.decisions.lock().await;
        let snapshot = self.index.snapshot();
        let taken = self.taken(&snapshot);
        let ip = pick(&taken, &network, new.ip)?;
        if taken.contains(&ip) {
            return Err(ApiError::new(409, format!("{ip} is in use")));
        }
        self.hold_ip(ip, IpHold::Acquired);
        let record = model::Ip {
            address: ip.to_string(),
            network: network.id.clone(),
            project: new.project,
            machine: None,
            acquired: true,
            name: new.name,
        };
        self.put(RecordKind::Ip, &record.address, &record)?;
        self.journal
            .record(who, "ip.acquire", &record.address, "ok");
        Ok(record.into())
    }

    /// Releases an acquired address no machine holds.
    pub fn release_ip(&self, who: &Principal, address: &str) -> Result<IpView, ApiError> {
        let not_found = || ApiError::new(404, format!("ip {address} not found"));
        let parsed: Ipv4Addr = address.parse().map_err(|_| not_found())?;
        let ip = self
            .record::<model::Ip>(RecordKind::Ip, &parsed.to_string())?
            .filter(|ip| who.sees(&ip.project))
            .ok_or_else(not_found)?;
        may_change(who, &ip.project)?;
        // Attached to a machine: in use unless that machine's record is
        // newer than the attachment and no longer holds the address (freed
        // rack-locally). A free through this API detaches it at once.
        let version = self
            .index
            .ips()
            .into_iter()
            .find(|(_, indexed)| indexed.address == ip.address)
            .map_or(u64::MAX, |(version, _)| version);
        let held_by = ip.machine.as_ref().filter(|uuid| {
            let newest = self
                .index
                .snapshot()
                .into_iter()
                .filter(|m| &m.machine.uuid == *uuid)
                .max_by_key(|m| m.version);
            newest.is_none_or(|m| {
                m.version <= version || m.machine.held_ips().any(|held| held == parsed)
            })
        });
        if let Some(machine) = held_by {
            return Err(ApiError::new(
                409,
                format!("{address} is in use by machine {machine}: free the machine first"),
            ));
        }
        self.delete(RecordKind::Ip, &ip.address)?;
        self.release_hold(parsed);
        self.journal.record(who, "ip.release", &ip.address, "ok");
        Ok(ip.into())
    }

    /// The address an allocation of `project` gets in `network`: `wanted`
    /// (free, or acquired by the project and attached to no machine), or
    /// the lowest free one.
    pub(crate) fn choose_address(
        &self,
        snapshot: &[Indexed],
        network: &model::Network,
        project: &str,
        wanted: Option<Ipv4Addr>,
    ) -> Result<Chosen, ApiError> {
        let taken = self.taken(snapshot);
        let ip = pick(&taken, network, wanted)?;
        let in_use = || ApiError::new(409, format!("{ip} is in use"));
        if wanted.is_none() {
            return Ok(Chosen { ip, acquired: None });
        }
        if taken.by_machines.contains(&ip) || taken.held.get(&ip) == Some(&IpHold::Allocation) {
            return Err(in_use());
        }
        // The store, not the index: this node's own writes of a moment ago
        // count (an address acquired just now is not free).
        let record = self.record::<model::Ip>(RecordKind::Ip, &ip.to_string())?;
        let stale = record
            .as_ref()
            .is_some_and(|r| !taken.by_records.contains_key(&ip) && r.machine.is_some());
        match record {
            None if taken.held.contains_key(&ip) => Err(in_use()),
            None => Ok(Chosen { ip, acquired: None }),
            Some(record)
                if record.acquired
                    && record.project == project
                    && record.network == network.id
                    && (record.machine.is_none() || stale) =>
            {
                Ok(Chosen {
                    ip,
                    acquired: Some(record),
                })
            }
            // Came with an allocation whose machine let it go.
            Some(record) if !record.acquired && stale => Ok(Chosen { ip, acquired: None }),
            Some(_) => Err(in_use()),
        }
    }

    pub(crate) fn taken(&self, snapshot: &[Indexed]) -> Taken {
        let mut taken = Taken::default();
        let ips = self.index.ips();
        // The machines IP records name: their newest record tells whether
        // they still hold the address. Only those are looked at closely.
        let named: std::collections::HashSet<&str> = ips
            .iter()
            .filter_map(|(_, ip)| ip.machine.as_deref())
            .collect();
        let mut machines: HashMap<&str, (u64, BTreeSet<Ipv4Addr>)> = HashMap::new();
        for indexed in snapshot {
            let machine = &indexed.machine;
            let holds = machine.allocation.is_some() || machine.reclaiming.is_some();
            if !holds && !named.contains(machine.uuid.as_str()) {
                continue;
            }
            let held: BTreeSet<Ipv4Addr> = machine.held_ips().collect();
            taken.by_machines.extend(held.iter().copied());
            if named.contains(machine.uuid.as_str()) {
                let entry = machines.entry(machine.uuid.as_str()).or_default();
                if indexed.version > entry.0 {
                    *entry = (indexed.version, held);
                }
            }
        }
        for (version, ip) in ips {
            let Ok(address) = ip.address.parse::<Ipv4Addr>() else {
                continue;
            };
            // An IP that came with an allocation whose machine has since
            // let it go (freed while the API was down).
            let stale = !ip.acquired
                && ip.machine.as_deref().is_some_and(|uuid| {
                    machines.get(uuid).is_some_and(|(machine_version, held)| {
                        *machine_version > version && !held.contains(&address)
                    })
                });
            if !stale {
                taken.by_records.insert(address, ip);
            }
        }
        // Hand-outs the records show now need no hold any more.
        taken.held = self
            .held_ips(
                |ip| taken.by_machines.contains(ip),
                |ip| taken.by_records.contains_key(ip),
            )
            .into_iter()
            .collect();
        taken
    }
}

/// `wanted` if it is a host address of the network, or the lowest host
/// address not taken.
fn pick(
    taken: &Taken,
    network: &model::Network,
    wanted: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, ApiError> {
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
            // A conflict with the network's prefix rather than a malformed
            // value: the address itself is well formed.
            return Err(ApiError {
                status: 409,
                ..ApiError::field(
                    "ip",
                    format!("{ip} is not a host address of {}", network.id),
                )
            });
        }
        return Ok(ip);
    }
    ranges
        .iter()
        .flat_map(|(s, e)| (s + 1)..*e)
        .map(Ipv4Addr::from)
        .find(|ip| !taken.contains(ip))
        .ok_or_else(|| ApiError::new(409, format!("network {} has no free address", network.id)))
}
