//! The machines of this rack as an I/O-free core: `handle(now, Input) ->
//! Outcome`. Inputs are installer calls (with the caller as the driver
//! resolved it), PXE boots, operator and mesh commands, the facts the driver
//! observes (LLDP neighbours, tenant VRFs) and the passing of time; outcomes
//! are answers, records to store, the ports to route and log notices. It
//! reads no clock, file or database: [`super::task`] does the I/O, and the
//! conformance tests replay recorded inputs against expected outcomes.
//!
//! One core owns every machine of the leaf, so an allocation is checked and
//! committed in one step; the driver stores the outcome's records before any
//! answer leaves and calls [`MachineCore::restore`] when the store refuses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use metalmesh_installer::api::{Directive, Registration};
use metalmesh_inventory::model::{AllocateRequest, EventKind, ExecutedAllocation};
use metalmesh_provisioning::http::installer_api::InstallerCall;
use serde::{Deserialize, Serialize};

use super::lifecycle::{Action, Thresholds, event_message};
use super::record::{MachineRecord, SUMMARY_EVENTS, installer_allocation};
use crate::dataplane::intent::{PortIntent, Prefix};

/// A freed machine that never asks for its reboot leaves its VRF after this.
const RECLAIM_GRACE_MS: u64 = 60_000;
/// PXE boots of one machine this close together are one boot.
const PXE_SAME_BOOT_MS: u64 = 30_000;
/// How long a PXE boot waits to be matched to the machine that registers.
const PXE_MATCH_MS: u64 = 10 * 60_000;
/// Machines one leaf keeps; registrations beyond are refused.
pub const MAX_MACHINES: usize = 4096;
/// Unmatched PXE boots remembered.
const MAX_PENDING_PXE: usize = 4096;
/// What an allocation may carry into the machine record (which must stay
/// within the mesh's record limit with the hardware and history).
pub const MAX_USER_DATA_BYTES: usize = 8 * 1024;
const MAX_SSH_KEYS: usize = 16;
const MAX_SSH_KEY_BYTES: usize = 1024;
/// Disks or NICs a registration may report, and the length of its strings.
const MAX_DEVICES: usize = 64;
const MAX_HARDWARE_TEXT: usize = 128;
/// Delay between `Booting New Kernel` and moving the port into the tenant
/// VRF: the answer to that report must reach the installer over the
/// provisioning network first.
pub const ROUTE_DELAY_MS: u64 = 1_000;
/// How long a heartbeat with nothing to do is held open: an allocation
/// reaches a waiting machine at once instead of at its next heartbeat.
pub const HEARTBEAT_HOLD_MS: u64 = 5_000;

/// Identifies a call awaiting its answer (the driver keeps the reply channel).
pub type Ticket = u64;

/// Who made an installer call, as the driver resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub addr: IpAddr,
    /// The MAC the caller's address is leased to (none without a lease).
    pub lease_mac: Option<String>,
    /// Of the MACs a registration reports, those holding a lease on this
    /// leaf (empty for other calls).
    #[serde(default)]
    pub leased: Vec<String>,
    /// The provisioning bridge port the caller's lease is bound to (none
    /// before it is, or without a lease).
    #[serde(default)]
    pub port: Option<String>,
}

/// An LLDP neighbour of one of the leaf's ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighborFact {
    pub port: String,
    pub chassis_id: String,
    pub source_mac: String,
}

/// A tenant VRF allocations may put machines into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrfFact {
    pub name: String,
    pub prefixes: Vec<Prefix>,
}

/// An image as the driver found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFact {
    Found {
        url: String,
        sha256: String,
    },
    /// Not servable, and why.
    Missing {
        reason: String,
    },
}

/// Operator commands (admin API; the API node over the mesh).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    List,
    Describe {
        uuid: String,
    },
    Allocate {
        uuid: String,
        request: Box<AllocateRequest>,
        image: ImageFact,
    },
    Free {
        uuid: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// What LLDP hears now (replaces what it heard before).
    Neighbors(Vec<NeighborFact>),
    /// The tenant VRFs now (replaces).
    Vrfs(Vec<VrfFact>),
    Installer {
        ticket: Ticket,
        caller: Caller,
        call: InstallerCall,
    },
    /// DHCP saw a PXE boot from this MAC.
    PxeBooting {
        mac: String,
    },
    Command {
        ticket: Ticket,
        command: Command,
    },
    /// Time passes; the driver ticks at least every 200 ms.
    Tick,
}

/// What a command answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Machines(Vec<MachineRecord>),
    Machine(Box<MachineRecord>),
}

/// Something operators should see in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub uuid: String,
    pub message: String,
}

/// A `(vrf, port)` the machines want routed.
pub type MachinePorts = Vec<(String, PortIntent)>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Records to store before anything below is acted upon.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<MachineRecord>,
    /// Answers to installer calls: this input's and held heartbeats'.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<(Ticket, Result<Directive, MachineError>)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<(Ticket, Result<Reply, MachineError>)>,
    /// The ports to route, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<MachinePorts>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<Notice>,
    /// The machines as they were before this input, for
    /// [`MachineCore::restore`] when the writes fail.
    #[serde(skip)]
    pub undo: Vec<(String, Option<MachineRecord>)>,
}

impl Outcome {
    /// Whether nothing is to be done.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.answers.is_empty()
            && self.reply.is_none()
            && self.ports.is_none()
            && self.notices.is_empty()
    }
}

/// Why a call or command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineError {
    #[error("machine {0} is not registered")]
    NotRegistered(String),
    #[error("no machine {0} on this leaf")]
    NoSuchMachine(String),
    #[error("`{0}` is not an event an installer reports")]
    NotAnInstallerEvent(String),
    #[error("this leaf manages as many machines as it can")]
    Full,
    #[error("{addr} is not an address of machine {uuid}")]
    NotItsAddress { addr: IpAddr, uuid: String },
    #[error("{addr} ({mac}) is not one of the registered NICs")]
    NotItsNic { addr: IpAddr, mac: String },
    #[error("invalid registration: {0}")]
    BadHardware(String),
    #[error("machine {0} is not allocated")]
    NotAllocated(String),
    #[error("machine {0} is already allocated")]
    AlreadyAllocated(String),
    #[error(
        "machine {uuid} is not Waiting (it is {state}); only waiting machines can be allocated"
    )]
    NotWaiting { uuid: String, state: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("machine {0} has not been seen over LLDP on any port of this leaf")]
    NotSeenOverLldp(String),
    #[error("{0}")]
    NoVrf(String),
    #[error("{ip} is already used in VRF {vrf}")]
    AddressInUse { ip: String, vrf: String },
    #[error("{0}")]
    UnknownImage(String),
    #[error("cannot store machine {uuid}: {reason}")]
    NotStored { uuid: String, reason: String },
    #[error("calls for machine {uuid} come from its port {expected}, not from {found}")]
    NotItsPort {
        uuid: String,
        expected: String,
        found: String,
    },
    #[error("{addr}: its lease is not bound to a switch port yet; retry")]
    PortNotBound { addr: IpAddr },
    #[error("{addr} holds no lease of this leaf: it speaks for no port")]
    NoLease { addr: IpAddr },
    #[error("machine {uuid} is not announced over LLDP on the caller's port {port}")]
    NotOnCallersPort { uuid: String, port: String },
    #[error("machine {0} has not been seen over LLDP yet; retry")]
    NotSeenYet(String),
    #[error("machine {uuid} is announced on several ports ({ports}); it cannot be allocated")]
    DuplicateUuid { uuid: String, ports: String },
}

/// The core's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreSettings {
    /// This leaf's name (machine records are keyed `<switch>/<uuid>`).
    pub switch: String,
    pub thresholds: Thresholds,
    /// Installer calls are authorised by DHCP lease (off only where the leaf
    /// serves no DHCP, as in unit tests).
    pub leases_known: bool,
    /// Callers are identified by the switch port their lease is bound to
    /// (where the leaf's packet filter binds ports; see `policy`).
    #[serde(default)]
    pub ports_known: bool,
    /// How disks are wiped at registration (a fresh or reclaimed machine).
    #[serde(default)]
    pub wipe: metalmesh_installer::disk::WipeMode,
}

/// A heartbeat held open until its machine has something to do.
#[derive(Debug, Clone)]
struct Held {
    uuid: String,
    deadline: u64,
    ticket: Ticket,
}

#[derive(Debug)]
pub struct MachineCore {
    settings: CoreSettings,
    machines: BTreeMap<String, MachineRecord>,
    neighbors: Vec<NeighborFact>,
    vrfs: Vec<VrfFact>,
    /// PXE boots not yet matched to a machine, by MAC.
    pending_pxe: BTreeMap<String, u64>,
    /// Reclaimed machines whose port leaves its tenant VRF at the given
    /// time (a join is derived from the stored record instead, so a restart
    /// in between cannot lose it).
    pending_leaves: Vec<(String, u64)>,
    held: Vec<Held>,
    /// The routed ports last published.
    ports: MachinePorts,
}

impl MachineCore {
    /// A core with the machines the store holds.
    pub fn new(settings: CoreSettings, machines: Vec<MachineRecord>) -> MachineCore {
        let mut core = MachineCore {
            settings,
            machines: machines
                .into_iter()
                .map(|m| (m.machine.uuid.clone(), m))
                .collect(),
            neighbors: Vec::new(),
            vrfs: Vec::new(),
            pending_pxe: BTreeMap::new(),
            pending_leaves: Vec::new(),
            held: Vec::new(),
            ports: Vec::new(),
        };
        core.ports = core.routed_ports();
        core
    }

    /// The ports the stored machines want routed (the dataplane's start).
    pub fn ports(&self) -> &MachinePorts {
        &self.ports
    }

    pub fn machine(&self, uuid: &str) -> Option<&MachineRecord> {
        self.machines.get(uuid)
    }

    pub fn handle(&mut self, now: u64, input: Input) -> Outcome {
        let mut step = Step {
            now,
            outcome: Outcome::default(),
        };
        match input {
            Input::Neighbors(neighbors) => {
                self.neighbors = neighbors;
                self.flag_duplicates(&mut step);
            }
            Input::Vrfs(vrfs) => self.vrfs = vrfs,
            Input::Installer {
                ticket,
                caller,
                call,
            } => {
                let heartbeat = match &call {
                    InstallerCall::Heartbeat { uuid } => Some(uuid.clone()),
                    _ => None,
                };
                let answer = self.installer(&mut step, call, &caller);
                match (heartbeat, answer) {
                    (Some(uuid), Ok(Directive::Wait)) => self.hold(&mut step, uuid, ticket),
                    (_, answer) => step.outcome.answers.push((ticket, answer)),
                }
            }
            Input::PxeBooting { mac } => self.pxe_booting(&mut step, &mac),
            Input::Command { ticket, command } => {
                let reply = self.command(&mut step, command);
                step.outcome.reply = Some((ticket, reply));
            }
            Input::Tick => {
                self.route_due(&mut step);
                self.tick(&mut step);
            }
        }
        self.answer_held(&mut step);
        let ports = self.routed_ports();
        if ports != self.ports {
            self.ports = ports.clone();
            step.outcome.ports = Some(ports);
        }
        step.outcome
    }

    /// Puts back the machines an outcome changed (its writes were refused).
    pub fn restore(&mut self, undo: Vec<(String, Option<MachineRecord>)>) {
        // Oldest first was pushed first: restore in reverse.
        for (uuid, before) in undo.into_iter().rev() {
            match before {
                Some(machine) => self.machines.insert(uuid, machine),
                None => self.machines.remove(&uuid),
            };
        }
        self.ports = self.routed_ports();
    }

    /// The machine, remembered for undo once per input.
    fn touch(&mut self, step: &mut Step, uuid: &str) -> &mut MachineRecord {
        if !step.outcome.undo.iter().any(|(u, _)| u == uuid) {
            step.outcome
                .undo
                .push((uuid.to_string(), self.machines.get(uuid).cloned()));
        }
        let switch = &self.settings.switch;
        self.machines
            .entry(uuid.to_string())
            .or_insert_with(|| MachineRecord::new(uuid, switch))
    }

    /// The port whose LLDP neighbour announces `uuid` as its chassis ID
    /// (the first, when several do: see [`Self::ports_announcing`]).
    fn port_of(&self, uuid: &str) -> Option<String> {
        self.ports_announcing(uuid).into_iter().next()
    }

    /// Every port whose LLDP neighbour announces `uuid`.
    fn ports_announcing(&self, uuid: &str) -> BTreeSet<String> {
        self.neighbors
            .iter()
            .filter(|n| n.chassis_id.eq_ignore_ascii_case(uuid))
            .map(|n| n.port.clone())
            .collect()
    }

    /// Sets or clears `duplicate_uuid` on every machine whose UUID is (or
    /// no longer is) announced on more than one port.
    fn flag_duplicates(&mut self, step: &mut Step) {
        let changes: Vec<(String, bool, BTreeSet<String>)> = self
            .machines
            .keys()
            .map(|uuid| (uuid.clone(), self.ports_announcing(uuid)))
            .filter_map(|(uuid, ports)| {
                let duplicate = ports.len() > 1;
                let flagged = self.machines.get(&uuid)?.machine.duplicate_uuid;
                (duplicate != flagged).then_some((uuid, duplicate, ports))
            })
            .collect();
        for (uuid, duplicate, ports) in changes {
            let ports = ports.into_iter().collect::<Vec<_>>().join(", ");
            step.notice(
                &uuid,
                if duplicate {
                    format!("announced on several ports ({ports}); flagged duplicate_uuid")
                } else {
                    "announced on one port again; duplicate_uuid cleared".to_string()
                },
            );
            self.touch(step, &uuid).machine.duplicate_uuid = duplicate;
            self.save(step, &uuid);
        }
    }

    /// Where ports are known, `caller` must call from `uuid`'s port: the
    /// one the machine was registered on, or else the one LLDP shows it on.
    fn check_port(&self, uuid: &str, caller: &Caller) -> Result<(), MachineError> {
        if !self.settings.ports_known {
            return Ok(());
        }
        if caller.lease_mac.is_none() {
            return Err(MachineError::NoLease { addr: caller.addr });
        }
        let Some(found) = &caller.port else {
            return Err(MachineError::PortNotBound { addr: caller.addr });
        };
        let recorded = self.machines.get(uuid).and_then(|m| m.machine.port.clone());
        match recorded {
            Some(expected) if expected != *found => Err(MachineError::NotItsPort {
                uuid: uuid.to_string(),
                expected,
                found: found.clone(),
            }),
            Some(_) => Ok(()),
            None => {
                let announced = self.ports_announcing(uuid);
                if announced.is_empty() {
                    Err(MachineError::NotSeenYet(uuid.to_string()))
                } else if announced.contains(found) {
                    Ok(())
                } else {
                    Err(MachineError::NotOnCallersPort {
                        uuid: uuid.to_string(),
                        port: found.clone(),
                    })
                }
            }
        }
    }

    /// The machine with its summary fields fresh, and the port as LLDP sees
    /// it now when none is recorded yet.
    fn fresh(&mut self, uuid: &str, now: u64) -> Option<MachineRecord> {
        let port = self.port_of(uuid);
        let thresholds = self.settings.thresholds;
        let machine = self.machines.get_mut(uuid)?;
        machine.refresh(now, &thresholds);
        if machine.machine.port.is_none() {
            machine.machine.port = port;
        }
        Some(machine.clone())
    }

    /// Queues the machine's record for the store, within the mesh's record
    /// limit: the oldest history goes first (the summary's newest events
    /// always stay).
    fn save(&mut self, step: &mut Step, uuid: &str) {
        let thresholds = self.settings.thresholds;
        let Some(mut machine) = self.fresh(uuid, step.now) else {
            return;
        };
        let limit = metalmesh_inventory::record::MAX_VALUE_BYTES;
        while serde_json::to_string(&machine).map_or(0, |json| json.len()) > limit
            && machine.lifecycle.events.len() > SUMMARY_EVENTS
        {
            let keep = (machine.lifecycle.events.len() / 2).max(SUMMARY_EVENTS);
            machine.lifecycle.events.truncate(keep);
            machine.refresh(step.now, &thresholds);
        }
        self.machines.insert(uuid.to_string(), machine.clone());
        step.outcome.writes.retain(|m| m.machine.uuid != uuid);
        step.outcome.writes.push(machine);
    }

    fn routed_ports(&self) -> MachinePorts {
        let mut ports: MachinePorts = self
            .machines
            .values()
            .flat_map(|m| [&m.machine.allocation, &m.machine.reclaiming])
            .flatten()
            .filter(|executed| executed.routed)
            .map(|executed| {
                (
                    executed.vrf.clone(),
                    PortIntent {
                        name: executed.port.clone(),
                        addresses: vec![executed.request.ip],
                    },
                )
            })
            .collect();
        ports.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
        ports
    }

    fn event(&mut self, step: &mut Step, uuid: &str, at: u64, kind: EventKind, message: &str) {
        let thresholds = self.settings.thresholds;
        // An install the lifecycle asks for reaches the installer at its
        // next heartbeat, from the allocation the record holds.
        let _install = self
            .touch(step, uuid)
            .lifecycle
            .event(at, kind, message, &thresholds);
    }

    /// An installer's report: a retried call or a progress report does not
    /// repeat the newest event, it refreshes it.
    fn report(&mut self, step: &mut Step, uuid: &str, kind: EventKind, message: &str) {
        let kept = event_message(message);
        let now = step.now;
        if self
            .machines
            .get(uuid)
            .and_then(|m| m.lifecycle.last())
            .is_some_and(|last| {
                last.kind == kind && (kind == EventKind::Installing || last.message == kept)
            })
        {
            let machine = self.touch(step, uuid);
            if let Some(last) = machine.lifecycle.events.front_mut() {
                last.message = kept;
            }
            machine.lifecycle.progress(now);
            return;
        }
        self.event(step, uuid, now, kind, message);
    }

    /// A PXE boot of `mac`: an event of the machine with that NIC, or held
    /// until a machine registers from it.
    fn pxe_booting(&mut self, step: &mut Step, mac: &str) {
        let now = step.now;
        let owner = self
            .machines
            .values()
            .find(|m| {
                m.machine
                    .hardware
                    .as_ref()
                    .is_some_and(|hw| hw.nics.iter().any(|nic| nic.mac == mac))
            })
            .map(|m| m.machine.uuid.clone());
        match owner {
            // One boot can ask twice (the firmware, then the iPXE it loaded,
            // more than DHCP's 10 s apart): one event, one cycle.
            Some(uuid)
                if self.machines[&uuid].lifecycle.last().is_some_and(|e| {
                    e.kind == EventKind::PxeBooting && now.saturating_sub(e.time) < PXE_SAME_BOOT_MS
                }) => {}
            Some(uuid) => {
                self.event(
                    step,
                    &uuid,
                    now,
                    EventKind::PxeBooting,
                    &format!("PXE boot of {mac}"),
                );
                self.save(step, &uuid);
            }
            None => {
                self.pending_pxe
                    .retain(|_, at| now.saturating_sub(*at) < PXE_MATCH_MS);
                if self.pending_pxe.len() >= MAX_PENDING_PXE
                    && let Some(oldest) = self
                        .pending_pxe
                        .iter()
                        .min_by_key(|(_, at)| **at)
                        .map(|(mac, _)| mac.clone())
                {
                    self.pending_pxe.remove(&oldest);
                }
                self.pending_pxe.insert(mac.to_string(), now);
            }
        }
    }

    /// A machine not known yet: its first event is the PXE boot DHCP saw
    /// from the MAC its installer's address was leased to.
    fn adopt_pxe(&mut self, step: &mut Step, uuid: &str, caller: &Caller) {
        if self.machines.contains_key(uuid) {
            return;
        }
        if let Some(mac) = &caller.lease_mac
            && let Some(at) = self.pending_pxe.remove(mac)
        {
            self.event(
                step,
                uuid,
                at,
                EventKind::PxeBooting,
                &format!("PXE boot of {mac}"),
            );
        }
    }

    /// Whether `caller` may speak for machine `uuid` on the provisioning
    /// network: its DHCP lease must belong to one of the machine's NICs.
    /// Where the leaf serves no DHCP, or for a machine not registered yet,
    /// anyone may.
    fn authorize(&self, uuid: &str, caller: &Caller) -> Result<(), MachineError> {
        if self.settings.leases_known {
            self.check_port(uuid, caller)?;
        }
        let Some(hardware) = self
            .machines
            .get(uuid)
            .and_then(|m| m.machine.hardware.as_ref())
        else {
            return Ok(());
        };
        if !self.settings.leases_known {
            return Ok(());
        }
        match &caller.lease_mac {
            Some(mac) if hardware.nics.iter().any(|nic| nic.mac == *mac) => Ok(()),
            _ => Err(MachineError::NotItsAddress {
                addr: caller.addr,
                uuid: uuid.to_string(),
            }),
        }
    }

    /// What a waiting installer is told at a heartbeat (the caller is
    /// authorised already).
    fn heartbeat_directive(
        &mut self,
        step: &mut Step,
        uuid: &str,
    ) -> Result<Directive, MachineError> {
        if !self.machines.contains_key(uuid) {
            return Err(MachineError::NotRegistered(uuid.to_string()));
        }
        let now = step.now;
        let due = self.machines[uuid].machine.reclaiming.is_some()
            || self.machines[uuid].machine.reboot_due;
        if due {
            let machine = self.touch(step, uuid);
            machine.machine.reboot_due = false;
            machine.lifecycle.last_heartbeat = Some(now);
            return Ok(Directive::Reboot);
        }
        // Heartbeats are not stored one by one: liveliness is rebuilt from
        // the next event after a restart.
        let machine = self
            .machines
            .get_mut(uuid)
            .ok_or_else(|| MachineError::NotRegistered(uuid.to_string()))?;
        machine.lifecycle.last_heartbeat = Some(now);
        Ok(
            match (&machine.machine.allocation, machine.lifecycle.state()) {
                (Some(executed), Some(EventKind::Waiting)) => Directive::Install {
                    allocation: installer_allocation(executed),
                },
                _ => Directive::Wait,
            },
        )
    }

    fn hold(&mut self, step: &mut Step, uuid: String, ticket: Ticket) {
        // One held heartbeat per machine: an older one is answered now.
        if let Some(index) = self.held.iter().position(|h| h.uuid == uuid) {
            let older = self.held.swap_remove(index);
            step.outcome
                .answers
                .push((older.ticket, Ok(Directive::Wait)));
        }
        self.held.push(Held {
            uuid,
            deadline: step.now + HEARTBEAT_HOLD_MS,
            ticket,
        });
    }

    /// Answers held heartbeats whose machine now has something to do, and
    /// those held long enough.
    fn answer_held(&mut self, step: &mut Step) {
        let held = std::mem::take(&mut self.held);
        for h in held {
            // Authorised when it was held.
            match self.heartbeat_directive(step, &h.uuid) {
                Ok(Directive::Wait) if step.now < h.deadline => self.held.push(h),
                answer => step.outcome.answers.push((h.ticket, answer)),
            }
        }
    }

    fn installer(
        &mut self,
        step: &mut Step,
        call: InstallerCall,
        caller: &Caller,
    ) -> Result<Directive, MachineError> {
        match call {
            InstallerCall::Event { uuid, report } => {
                let kind = EventKind::parse(&report.event)
                    .filter(|k| {
                        matches!(
                            k,
                            EventKind::Preparing
                                | EventKind::Waiting
                                | EventKind::Installing
                                | EventKind::BootingNewKernel
                                | EventKind::Crashed
                        )
                    })
                    .ok_or_else(|| MachineError::NotAnInstallerEvent(report.event.clone()))?;
                if !self.machines.contains_key(&uuid) {
                    // Only a starting installer introduces a new machine.
                    if kind != EventKind::Preparing {
                        return Err(MachineError::NotRegistered(uuid));
                    }
                    if self.machines.len() >= MAX_MACHINES {
                        return Err(MachineError::Full);
                    }
                }
                self.authorize(&uuid, caller)?;
                self.adopt_pxe(step, &uuid, caller);
                self.report(step, &uuid, kind, &report.message);
                if kind == EventKind::Preparing {
                    // The machine has just (re)started: a reboot asked of
                    // its previous run is done.
                    self.touch(step, &uuid).machine.reboot_due = false;
                }
                if kind == EventKind::Crashed {
                    step.notice(
                        &uuid,
                        format!("machine crashed: {}", event_message(&report.message)),
                    );
                }
                self.save(step, &uuid);
                // A watchdog reboot reaches a machine that still reports.
                Ok(self.reboot_if_due(step, &uuid))
            }
            InstallerCall::Register(registration) => self.register(step, *registration, caller),
            InstallerCall::Heartbeat { uuid } => {
                self.authorize(&uuid, caller)?;
                self.heartbeat_directive(step, &uuid)
            }
            InstallerCall::PhoneHome { uuid } => {
                let machine = self
                    .machines
                    .get(&uuid)
                    .ok_or_else(|| MachineError::NotRegistered(uuid.clone()))?;
                // The installed system calls from its allocated address.
                let own = [&machine.machine.allocation, &machine.machine.reclaiming]
                    .into_iter()
                    .flatten()
                    .any(|e| IpAddr::V4(e.request.ip) == caller.addr);
                if !own {
                    return Err(MachineError::NotItsAddress {
                        addr: caller.addr,
                        uuid,
                    });
                }
                let reclaiming = machine.machine.reclaiming.is_some();
                let allocated = machine.machine.allocation.is_some();
                let phoned = machine.lifecycle.state() == Some(EventKind::PhonedHome);
                let now = step.now;
                if reclaiming {
                    self.touch(step, &uuid).lifecycle.last_heartbeat = Some(now);
                    // Once the answer is out, the port goes back to the
                    // provisioning network the machine will boot from.
                    self.pending_leaves.retain(|(u, _)| *u != uuid);
                    self.pending_leaves
                        .push((uuid.clone(), now + ROUTE_DELAY_MS));
                    return Ok(Directive::Reboot);
                }
                if !allocated {
                    return Err(MachineError::NotAllocated(uuid));
                }
                self.touch(step, &uuid).lifecycle.last_heartbeat = Some(now);
                if !phoned {
                    self.event(
                        step,
                        &uuid,
                        now,
                        EventKind::PhonedHome,
                        "installed system is up",
                    );
                    self.save(step, &uuid);
                }
                Ok(Directive::None)
            }
        }
    }

    /// `Directive::Reboot` once when a planned reboot is due, else `None`.
    fn reboot_if_due(&mut self, step: &mut Step, uuid: &str) -> Directive {
        if self
            .machines
            .get(uuid)
            .is_some_and(|m| m.machine.reboot_due)
        {
            self.touch(step, uuid).machine.reboot_due = false;
            self.save(step, uuid);
            Directive::Reboot
        } else {
            Directive::None
        }
    }

    fn register(
        &mut self,
        step: &mut Step,
        registration: Registration,
        caller: &Caller,
    ) -> Result<Directive, MachineError> {
        let hardware = registration.hardware;
        // The installer API hands over UUIDs checked and in lower case.
        let uuid = hardware.uuid.clone();
        if hardware.disks.len() > MAX_DEVICES || hardware.nics.len() > MAX_DEVICES {
            return Err(MachineError::BadHardware(format!(
                "more than {MAX_DEVICES} disks or NICs"
            )));
        }
        let texts = [&hardware.vendor, &hardware.product, &hardware.serial]
            .into_iter()
            .chain(
                hardware
                    .disks
                    .iter()
                    .flat_map(|d| [&d.name, &d.model, &d.serial]),
            )
            .chain(hardware.nics.iter().flat_map(|n| [&n.name, &n.mac]));
        // Control characters would also grow sixfold in the stored JSON.
        if texts
            .into_iter()
            .any(|t| t.len() > MAX_HARDWARE_TEXT || t.chars().any(char::is_control))
        {
            return Err(MachineError::BadHardware(format!(
                "a hardware field exceeds {MAX_HARDWARE_TEXT} bytes or holds control characters"
            )));
        }
        if !self.machines.contains_key(&uuid) && self.machines.len() >= MAX_MACHINES {
            return Err(MachineError::Full);
        }
        // A known machine re-registers only from one of its own NICs, and
        // any registration comes from a NIC it reports (when the caller has
        // a lease at all; strangers without one are flagged below).
        self.authorize(&uuid, caller)?;
        if let Some(mac) = &caller.lease_mac
            && !hardware.nics.iter().any(|nic| nic.mac == *mac)
        {
            return Err(MachineError::NotItsNic {
                addr: caller.addr,
                mac: mac.clone(),
            });
        }
        self.adopt_pxe(step, &uuid, caller);
        let seen = |mac: &str| {
            caller.leased.iter().any(|m| m.eq_ignore_ascii_case(mac))
                || self
                    .neighbors
                    .iter()
                    .any(|n| n.source_mac.eq_ignore_ascii_case(mac))
        };
        let unknown_mac = !hardware.nics.iter().any(|nic| seen(&nic.mac));
        if unknown_mac {
            step.notice(
                &uuid,
                format!(
                    "registration from {} with MACs not seen on any port of this leaf; flagged",
                    caller.addr
                ),
            );
        }
        let message = format!(
            "{} CPUs, {} MiB, {} disk(s), {} NIC(s), installer {}",
            hardware.cpus,
            hardware.memory_bytes >> 20,
            hardware.disks.len(),
            hardware.nics.len(),
            registration.installer
        );
        self.report(step, &uuid, EventKind::Registering, &message);
        let ports_known = self.settings.ports_known;
        let machine = &mut self.touch(step, &uuid).machine;
        machine.hardware = Some(hardware);
        // The port is fixed at registration: the one it called from.
        if ports_known && machine.port.is_none() {
            machine.port = caller.port.clone();
        }
        machine.unknown_mac = unknown_mac;
        machine.reboot_due = false;
        // The reclaimed machine has rebooted: its old network goes.
        machine.reclaiming = None;
        let directive = match &mut machine.allocation {
            // Rebooted while allocated (power loss, crash, watchdog): install again.
            Some(executed) => {
                executed.routed = false;
                Directive::Install {
                    allocation: installer_allocation(executed),
                }
            }
            None => Directive::Wipe {
                mode: self.settings.wipe,
            },
        };
        self.save(step, &uuid);
        Ok(directive)
    }

    fn command(&mut self, step: &mut Step, command: Command) -> Result<Reply, MachineError> {
        let now = step.now;
        match command {
            Command::List => {
                let uuids: Vec<String> = self.machines.keys().cloned().collect();
                Ok(Reply::Machines(
                    uuids
                        .iter()
                        .filter_map(|uuid| self.fresh(uuid, now))
                        .collect(),
                ))
            }
            Command::Describe { uuid } => self
                .fresh(&uuid, now)
                .map(|m| Reply::Machine(Box::new(m)))
                .ok_or(MachineError::NoSuchMachine(uuid)),
            Command::Allocate {
                uuid,
                request,
                image,
            } => self.allocate(step, &uuid, *request, image),
            Command::Free { uuid } => {
                let thresholds = self.settings.thresholds;
                let machine = self
                    .machines
                    .get(&uuid)
                    .ok_or_else(|| MachineError::NoSuchMachine(uuid.clone()))?;
                if !machine.lifecycle.allocated {
                    return Err(MachineError::NotAllocated(uuid));
                }
                let machine = self.touch(step, &uuid);
                machine
                    .lifecycle
                    .free(now, &thresholds)
                    .map_err(|_| MachineError::NotAllocated(uuid.clone()))?;
                machine.machine.reclaiming = machine.machine.allocation.take();
                self.save(step, &uuid);
                self.described(&uuid, now)
            }
        }
    }

    fn described(&mut self, uuid: &str, now: u64) -> Result<Reply, MachineError> {
        self.fresh(uuid, now)
            .map(|m| Reply::Machine(Box::new(m)))
            .ok_or_else(|| MachineError::NoSuchMachine(uuid.to_string()))
    }

    fn allocate(
        &mut self,
        step: &mut Step,
        uuid: &str,
        request: AllocateRequest,
        image: ImageFact,
    ) -> Result<Reply, MachineError> {
        let machine = self
            .machines
            .get(uuid)
            .ok_or_else(|| MachineError::NoSuchMachine(uuid.to_string()))?;
        if let Some(existing) = &machine.machine.allocation {
            // The same request again is a retry of a caller whose answer was
            // lost (the connection dropped after the commit): it gets the
            // committed machine, not a refusal it would take for "not mine".
            if existing.request == request {
                return self.described(uuid, step.now);
            }
            return Err(MachineError::AlreadyAllocated(uuid.to_string()));
        }
        if machine.lifecycle.state() != Some(EventKind::Waiting) {
            return Err(MachineError::NotWaiting {
                uuid: uuid.to_string(),
                state: machine
                    .lifecycle
                    .state()
                    .map(|k| k.name().to_string())
                    .unwrap_or_else(|| "unknown".into()),
            });
        }
        check_request(&request)?;
        // The port it registered on, and only if no other port claims it.
        let announced = self.ports_announcing(uuid);
        if announced.len() > 1 {
            return Err(MachineError::DuplicateUuid {
                uuid: uuid.to_string(),
                ports: announced.into_iter().collect::<Vec<_>>().join(", "),
            });
        }
        let recorded = self.machines.get(uuid).and_then(|m| m.machine.port.clone());
        let port = match (recorded, announced.into_iter().next()) {
            (_, None) => return Err(MachineError::NotSeenOverLldp(uuid.to_string())),
            (Some(recorded), Some(seen)) if recorded != seen => {
                return Err(MachineError::NotItsPort {
                    uuid: uuid.to_string(),
                    expected: recorded,
                    found: seen,
                });
            }
            (_, Some(seen)) => seen,
        };
        let vrf = self.vrf_for(&request)?;
        if self
            .machines
            .values()
            .flat_map(|m| [&m.machine.allocation, &m.machine.reclaiming])
            .flatten()
            .any(|e| e.vrf == vrf && e.request.ip == request.ip)
        {
            return Err(MachineError::AddressInUse {
                ip: request.ip.to_string(),
                vrf,
            });
        }
        let (image_url, image_sha256) = match image {
            ImageFact::Found { url, sha256 } => (url, sha256),
            ImageFact::Missing { reason } => return Err(MachineError::UnknownImage(reason)),
        };
        let machine = self.touch(step, uuid);
        machine
            .lifecycle
            .allocate()
            .map_err(|e| MachineError::BadRequest(e.to_string()))?;
        machine.machine.port = Some(port.clone());
        machine.machine.allocation = Some(ExecutedAllocation {
            request,
            vrf,
            port,
            image_url,
            image_sha256,
            routed: false,
            secrets_sha256: None,
        });
        self.save(step, uuid);
        self.described(uuid, step.now)
    }

    fn vrf_for(&self, request: &AllocateRequest) -> Result<String, MachineError> {
        let contains = |vrf: &VrfFact| vrf.prefixes.iter().any(|p| p.contains(request.ip));
        match &request.vrf {
            Some(name) => {
                let vrf =
                    self.vrfs.iter().find(|v| &v.name == name).ok_or_else(|| {
                        MachineError::NoVrf(format!("no VRF `{name}` on this leaf"))
                    })?;
                if !contains(vrf) {
                    return Err(MachineError::NoVrf(format!(
                        "{} is not in VRF {name}'s prefixes",
                        request.ip
                    )));
                }
                Ok(name.clone())
            }
            None => self
                .vrfs
                .iter()
                .find(|v| contains(v))
                .map(|v| v.name.clone())
                .ok_or_else(|| {
                    MachineError::NoVrf(format!(
                        "no tenant VRF on this leaf has a prefix containing {}",
                        request.ip
                    ))
                }),
        }
    }

    /// Moves the ports whose time has come into (or out of) their tenant
    /// VRF. The installed system answers on the tenant network: its port
    /// joins [`ROUTE_DELAY_MS`] after `Booting New Kernel`, decided from the
    /// stored record alone.
    fn route_due(&mut self, step: &mut Step) {
        let now = step.now;
        let joins: Vec<String> = self
            .machines
            .values()
            .filter(|m| {
                m.machine.allocation.as_ref().is_some_and(|e| !e.routed)
                    && matches!(
                        m.lifecycle.state(),
                        Some(EventKind::BootingNewKernel | EventKind::PhonedHome)
                    )
                    && m.lifecycle
                        .events
                        .iter()
                        .find(|e| e.kind == EventKind::BootingNewKernel)
                        .is_some_and(|e| e.time.saturating_add(ROUTE_DELAY_MS) <= now)
            })
            .map(|m| m.machine.uuid.clone())
            .collect();
        for uuid in joins {
            if let Some(executed) = self.touch(step, &uuid).machine.allocation.as_mut() {
                executed.routed = true;
            }
            self.save(step, &uuid);
        }
        let (due, later): (Vec<_>, Vec<_>) = self
            .pending_leaves
            .drain(..)
            .partition(|(_, at)| *at <= now);
        self.pending_leaves = later;
        for (uuid, _) in due {
            if self
                .machines
                .get(&uuid)
                .is_some_and(|m| m.machine.reclaiming.is_some())
            {
                self.touch(step, &uuid).machine.reclaiming = None;
                self.save(step, &uuid);
            }
        }
    }

    /// Time passes: planned and watchdog reboots, reclaim time-outs,
    /// liveliness.
    fn tick(&mut self, step: &mut Step) {
        let now = step.now;
        let thresholds = self.settings.thresholds;
        let uuids: Vec<String> = self.machines.keys().cloned().collect();
        for uuid in uuids {
            let mut probe = self.machines[&uuid].clone();
            let actions = probe.lifecycle.tick(now, &thresholds);
            let reclaim_expired = probe.machine.reclaiming.as_ref().is_some_and(|r| r.routed)
                && probe
                    .lifecycle
                    .events
                    .iter()
                    .find(|e| e.kind == EventKind::MachineReclaim)
                    .is_some_and(|e| now.saturating_sub(e.time) > RECLAIM_GRACE_MS);
            let liveliness = format!("{:?}", probe.lifecycle.liveliness(now, &thresholds));
            let stalled =
                probe.lifecycle.install_stalled && !self.machines[&uuid].lifecycle.install_stalled;
            if probe.lifecycle == self.machines[&uuid].lifecycle
                && !reclaim_expired
                && liveliness == probe.machine.liveliness
            {
                continue;
            }
            if actions.contains(&Action::Reboot) {
                probe.machine.reboot_due = true;
                let message = probe
                    .lifecycle
                    .last()
                    .map(|e| e.message.clone())
                    .unwrap_or_default();
                step.notice(&uuid, format!("planned reboot: {message}"));
            }
            if stalled {
                step.notice(
                    &uuid,
                    "installation made no progress through every retry; flagged for an operator"
                        .into(),
                );
            }
            if reclaim_expired {
                step.notice(
                    &uuid,
                    "reclaimed machine did not reboot; removing its network".into(),
                );
                probe.machine.reclaiming = None;
            }
            *self.touch(step, &uuid) = probe;
            self.save(step, &uuid);
        }
    }
}

/// One input's work in progress.
struct Step {
    now: u64,
    outcome: Outcome,
}

impl Step {
    fn notice(&mut self, uuid: &str, message: String) {
        self.outcome.notices.push(Notice {
            uuid: uuid.to_string(),
            message,
        });
    }
}

/// What an allocation may ask for, checked before anything changes.
fn check_request(request: &AllocateRequest) -> Result<(), MachineError> {
    if request.hostname.is_empty()
        || request.hostname.len() > 63
        || !request
            .hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(MachineError::BadRequest(format!(
            "`{}` is not a host name",
            request.hostname
        )));
    }
    if request.user_data.len() > MAX_USER_DATA_BYTES {
        return Err(MachineError::BadRequest(format!(
            "user data of {} bytes exceeds {MAX_USER_DATA_BYTES}",
            request.user_data.len()
        )));
    }
    if request.ssh_keys.len() > MAX_SSH_KEYS
        || request.ssh_keys.iter().any(|k| k.len() > MAX_SSH_KEY_BYTES)
    {
        return Err(MachineError::BadRequest(format!(
            "at most {MAX_SSH_KEYS} SSH keys of at most {MAX_SSH_KEY_BYTES} bytes each"
        )));
    }
    if !valid_image_name(&request.image) {
        return Err(MachineError::BadRequest(format!(
            "`{}` is not an image name",
            request.image
        )));
    }
    Ok(())
}

/// Image names are file names in the images directory: no paths.
pub use metalmesh_inventory::model::valid_image_name;

#[cfg(test)]
mod tests {
    use super::*;
    use metalmesh_installer::api::EventReport;

    const UUID: &str = "6d6d0000-0000-4000-8000-000001000001";

    fn caller() -> Caller {
        Caller {
            addr: "10.100.1.100".parse().unwrap(),
            lease_mac: Some("52:54:00:6d:01:01".into()),
            leased: vec![],
            port: None,
        }
    }

    fn event(core: &mut MachineCore, now: u64, name: &str, message: String) -> Outcome {
        core.handle(
            now,
            Input::Installer {
                ticket: now,
                caller: caller(),
                call: InstallerCall::Event {
                    uuid: UUID.into(),
                    report: EventReport {
                        event: name.into(),
                        message,
                    },
                },
            },
        )
    }

    #[test]
    fn records_stay_within_the_mesh_limit() {
        let thresholds = Thresholds {
            history: 10_000,
            ..Thresholds::default()
        };
        let mut core = MachineCore::new(
            CoreSettings {
                switch: "leaf1".into(),
                thresholds,
                leases_known: false,
                ports_known: false,
                wipe: Default::default(),
            },
            Vec::new(),
        );
        let t = 1_800_000_000_000;
        let mut last = Outcome::default();
        for i in 0..=600u64 {
            let name = if i % 2 == 0 { "Waiting" } else { "Preparing" };
            last = event(&mut core, t + i, name, format!("{i:x<300}"));
        }
        let written = serde_json::to_string(&last.writes[0]).unwrap();
        assert!(written.len() <= metalmesh_inventory::record::MAX_VALUE_BYTES);
        let events = &core.machine(UUID).unwrap().lifecycle.events;
        assert!(events.len() >= SUMMARY_EVENTS && events.len() < 600);
        assert!(events[0].message.len() <= 200, "messages are bounded");
    }

    #[test]
    fn refused_writes_restore_the_machine() {
        let mut core = MachineCore::new(
            CoreSettings {
                switch: "leaf1".into(),
                thresholds: Thresholds::default(),
                leases_known: false,
                ports_known: false,
                wipe: Default::default(),
            },
            Vec::new(),
        );
        let t = 1_800_000_000_000;
        event(&mut core, t, "Preparing", String::new());
        let before = core.machine(UUID).cloned();
        let outcome = event(&mut core, t + 1, "Waiting", String::new());
        assert_eq!(core.machine(UUID).unwrap().machine.state, "Waiting");
        core.restore(outcome.undo);
        assert_eq!(core.machine(UUID).cloned(), before);
        // A machine the refused input created is gone again.
        let mut fresh = MachineCore::new(
            CoreSettings {
                switch: "leaf1".into(),
                thresholds: Thresholds::default(),
                leases_known: false,
                ports_known: false,
                wipe: Default::default(),
            },
            Vec::new(),
        );
        let outcome = event(&mut fresh, t, "Preparing", String::new());
        fresh.restore(outcome.undo);
        assert!(fresh.machine(UUID).is_none());
    }

    /// A core where callers are identified by lease and port, with its
    /// LLDP neighbours: `(port, announced UUID)`.
    fn port_bound_core(neighbors: &[(&str, &str)]) -> MachineCore {
        let mut core = MachineCore::new(
            CoreSettings {
                switch: "leaf1".into(),
                thresholds: Thresholds::default(),
                leases_known: true,
                ports_known: true,
                wipe: Default::default(),
            },
            Vec::new(),
        );
        let facts = neighbors
            .iter()
            .map(|(port, uuid)| NeighborFact {
                port: port.to_string(),
                chassis_id: uuid.to_string(),
                source_mac: "52:54:00:6d:01:01".into(),
            })
            .collect();
        core.handle(1, Input::Neighbors(facts));
        core
    }

    fn register(
        core: &mut MachineCore,
        now: u64,
        port: Option<&str>,
    ) -> Result<Directive, MachineError> {
        let registration: metalmesh_installer::api::Registration =
            serde_json::from_value(serde_json::json!({
                "hardware": {
                    "uuid": UUID, "cpus": 2, "memory_bytes": 1_073_741_824u64,
                    "disks": [{"name": "vda", "size_bytes": 10_737_418_240u64}],
                    "nics": [{"name": "eth0", "mac": "52:54:00:6d:01:01", "up": true}]
                },
                "installer": "test"
            }))
            .unwrap();
        let outcome = core.handle(
            now,
            Input::Installer {
                ticket: now,
                caller: Caller {
                    port: port.map(str::to_string),
                    ..caller()
                },
                call: InstallerCall::Register(Box::new(registration)),
            },
        );
        outcome.answers.into_iter().next().unwrap().1
    }

    #[test]
    fn a_registered_machine_is_told_the_leafs_wipe_mode() {
        use metalmesh_installer::disk::WipeMode;
        for mode in [WipeMode::Signatures, WipeMode::Discard, WipeMode::Zero] {
            let mut core = port_bound_core(&[("m1-1", UUID)]);
            core.settings.wipe = mode;
            assert_eq!(
                register(&mut core, 10, Some("m1-1")).unwrap(),
                Directive::Wipe { mode }
            );
        }
    }

    #[test]
    fn callers_are_identified_by_their_port() {
        // No binding yet, or no LLDP yet: retry later.
        let mut core = port_bound_core(&[]);
        assert!(matches!(
            register(&mut core, 10, None),
            Err(MachineError::PortNotBound { .. })
        ));
        let outcome = core.handle(
            11,
            Input::Installer {
                ticket: 11,
                caller: Caller {
                    lease_mac: None,
                    ..caller()
                },
                call: InstallerCall::Heartbeat { uuid: UUID.into() },
            },
        );
        assert!(matches!(
            outcome.answers[0].1,
            Err(MachineError::NoLease { .. })
        ));
        assert!(matches!(
            register(&mut core, 11, Some("m1-1")),
            Err(MachineError::NotSeenYet(_))
        ));
        // Announced on m1-1: a caller on m1-2 is refused, on m1-1 accepted,
        // and the port is fixed.
        let mut core = port_bound_core(&[("m1-1", UUID)]);
        assert!(matches!(
            register(&mut core, 12, Some("m1-2")),
            Err(MachineError::NotOnCallersPort { .. })
        ));
        assert!(register(&mut core, 13, Some("m1-1")).is_ok());
        assert_eq!(
            core.machine(UUID).unwrap().machine.port.as_deref(),
            Some("m1-1")
        );
        // The victim's lease used from another port speaks for nobody.
        let outcome = core.handle(
            14,
            Input::Installer {
                ticket: 14,
                caller: Caller {
                    port: Some("m1-2".into()),
                    ..caller()
                },
                call: InstallerCall::Heartbeat { uuid: UUID.into() },
            },
        );
        assert!(matches!(
            outcome.answers[0].1,
            Err(MachineError::NotItsPort { .. })
        ));
    }

    #[test]
    fn a_uuid_on_two_ports_is_flagged_and_not_allocated() {
        let mut core = port_bound_core(&[("m1-1", UUID)]);
        assert!(register(&mut core, 10, Some("m1-1")).is_ok());
        let neighbors = |ports: &[&str]| {
            Input::Neighbors(
                ports
                    .iter()
                    .map(|port| NeighborFact {
                        port: port.to_string(),
                        chassis_id: UUID.into(),
                        source_mac: "52:54:00:6d:01:01".into(),
                    })
                    .collect(),
            )
        };
        let outcome = core.handle(20, neighbors(&["m1-1", "m1-2"]));
        assert!(core.machine(UUID).unwrap().machine.duplicate_uuid);
        assert!(!outcome.writes.is_empty(), "the flag is stored");
        let allocate = Command::Allocate {
            uuid: UUID.into(),
            request: Box::new(
                serde_json::from_value(serde_json::json!({
                    "image": "img", "ip": "10.0.1.11", "hostname": "web-1"
                }))
                .unwrap(),
            ),
            image: ImageFact::Found {
                url: "http://leaf/images/img".into(),
                sha256: "0".repeat(64),
            },
        };
        core.machines
            .get_mut(UUID)
            .unwrap()
            .lifecycle
            .events
            .push_front(metalmesh_inventory::model::Event {
                kind: EventKind::Waiting,
                time: 21,
                message: String::new(),
            });
        let mut step = Step {
            now: 22,
            outcome: Outcome::default(),
        };
        assert!(matches!(
            core.command(&mut step, allocate),
            Err(MachineError::DuplicateUuid { .. })
        ));
        core.handle(23, neighbors(&["m1-1"]));
        assert!(!core.machine(UUID).unwrap().machine.duplicate_uuid);
    }
}
