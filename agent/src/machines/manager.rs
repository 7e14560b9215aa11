//! The machines of this rack: one task owns every machine's lifecycle,
//! handles installer calls, DHCP's PXE events and the operator's commands
//! one at a time (so an allocation is checked and committed atomically), and
//! stores each change in the inventory store before answering.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metalmesh_inventory::record::MAX_VALUE_BYTES;
use metalmesh_inventory::store::blocking;
use metalmesh_inventory::{RecordKind, Store};
use metalmesh_provisioning::dhcp::leases::Lease;
use metalmesh_provisioning::http::installer_api::{ApiError, InstallerCall, InstallerRequest};
use metalmesh_provisioning::installer::api::{Directive, Registration};
use metalmesh_provisioning::lifecycle::{EventKind, Thresholds, event_message};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::record::{
    AllocateRequest, Executed, MachineRecord, SUMMARY_EVENTS, event_name, parse_event,
};
use crate::dataplane::Intents;
use crate::dataplane::intent::PortIntent;
use crate::lldp::LldpSnapshot;

/// A freed machine that never asks for its reboot leaves its VRF after this.
const RECLAIM_GRACE_MS: u64 = 60_000;
/// PXE boots of one machine this close together are one boot.
const PXE_SAME_BOOT_MS: u64 = 30_000;
/// How long a PXE boot waits to be matched to the machine that registers.
const PXE_MATCH_MS: u64 = 10 * 60_000;
/// Machines one leaf keeps; registrations beyond are refused.
const MAX_MACHINES: usize = 4096;
/// Unmatched PXE boots remembered.
const MAX_PENDING_PXE: usize = 4096;
/// What an allocation may carry into the machine record (which must stay
/// within the mesh's record limit with the hardware and history).
const MAX_USER_DATA_BYTES: usize = 8 * 1024;
const MAX_SSH_KEYS: usize = 16;
const MAX_SSH_KEY_BYTES: usize = 1024;
/// Disks or NICs a registration may report, and the length of its strings.
const MAX_DEVICES: usize = 64;
const MAX_HARDWARE_TEXT: usize = 128;

/// Delay between `Booting New Kernel` and moving the port into the tenant
/// VRF: the answer to that report must reach the installer over the
/// provisioning network first.
const ROUTE_DELAY_MS: u64 = 1_000;

/// Who made an installer call: its address and the MAC that address is
/// leased to (none without a lease).
#[derive(Debug)]
struct Caller {
    addr: IpAddr,
    mac: Option<String>,
}

/// Operator commands (admin API; later the API node over the mesh).
#[derive(Debug)]
pub enum Command {
    List {
        reply: oneshot::Sender<Vec<MachineRecord>>,
    },
    Describe {
        uuid: String,
        reply: oneshot::Sender<Result<MachineRecord, String>>,
    },
    Allocate {
        uuid: String,
        request: AllocateRequest,
        reply: oneshot::Sender<Result<MachineRecord, String>>,
    },
    Free {
        uuid: String,
        reply: oneshot::Sender<Result<MachineRecord, String>>,
    },
}

/// Where images live and how machines fetch them.
#[derive(Debug, Clone)]
pub struct ImageSource {
    /// `<http_root>/images`: `<name>.img` and `<name>.img.sha256`.
    pub dir: PathBuf,
    /// `http://<server_ip>:<port>/boot/images`.
    pub base_url: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub switch: String,
    pub thresholds: Thresholds,
    pub images: Option<ImageSource>,
    pub lease_db: Option<PathBuf>,
}

/// A `(vrf, port)` the machines want routed.
pub type MachinePorts = Vec<(String, PortIntent)>;

pub struct Manager {
    settings: Settings,
    store: Store,
    machines: BTreeMap<String, MachineRecord>,
    /// PXE boots not yet matched to a machine, by MAC.
    pending_pxe: HashMap<String, u64>,
    /// Machines whose port joins (`true`) or leaves (`false`) their tenant
    /// VRF at the given time.
    pending_routes: Vec<(String, u64, bool)>,
    lldp: watch::Receiver<LldpSnapshot>,
    intents: watch::Receiver<Intents>,
    ports_tx: watch::Sender<MachinePorts>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("machines", &self.machines.len())
            .finish()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn api(status: u16, message: impl Into<String>) -> ApiError {
    ApiError::new(status, message)
}

impl Manager {
    /// Loads this leaf's machines from the store.
    pub fn load(
        settings: Settings,
        store: Store,
        lldp: watch::Receiver<LldpSnapshot>,
        intents: watch::Receiver<Intents>,
        ports_tx: watch::Sender<MachinePorts>,
    ) -> anyhow::Result<Manager> {
        let mut machines = BTreeMap::new();
        for record in store.list(Some(RecordKind::Machine))? {
            if record.origin != store.origin() {
                continue;
            }
            let Some(value) = record.value else { continue };
            let machine: MachineRecord = serde_json::from_str(&value).map_err(|error| {
                anyhow::anyhow!(
                    "stored machine {} in {} is unreadable: {error}",
                    record.id.key,
                    store.path().display()
                )
            })?;
            machines.insert(machine.uuid.clone(), machine);
        }
        let manager = Manager {
            settings,
            store,
            machines,
            pending_pxe: HashMap::new(),
            pending_routes: Vec::new(),
            lldp,
            intents,
            ports_tx,
        };
        manager.publish_ports();
        Ok(manager)
    }

    /// The machine with its summary fields fresh, and the port as LLDP sees
    /// it now when none is recorded yet.
    fn fresh(&mut self, uuid: &str, now: u64) -> Option<&mut MachineRecord> {
        let port = port_of(&self.lldp.borrow(), uuid);
        let machine = self.machines.get_mut(uuid)?;
        machine.refresh(now, &self.settings.thresholds);
        if machine.port.is_none() {
            machine.port = port;
        }
        Some(machine)
    }

    fn save(&mut self, uuid: &str, now: u64) -> Result<MachineRecord, String> {
        let thresholds = self.settings.thresholds;
        let machine = self
            .fresh(uuid, now)
            .ok_or_else(|| format!("no machine {uuid}"))?;
        // The record must fit the mesh's record limit: the oldest history
        // goes first (the summary's newest events always stay).
        let mut json = serde_json::to_string(&*machine).map_err(|e| e.to_string())?;
        while json.len() > MAX_VALUE_BYTES && machine.lifecycle.events.len() > SUMMARY_EVENTS {
            let keep = (machine.lifecycle.events.len() / 2).max(SUMMARY_EVENTS);
            machine.lifecycle.events.truncate(keep);
            machine.refresh(now, &thresholds);
            json = serde_json::to_string(&*machine).map_err(|e| e.to_string())?;
        }
        let machine = machine.clone();
        self.store
            .put_local(
                RecordKind::Machine,
                &record_key(&self.settings.switch, uuid),
                Some(json),
            )
            .map_err(|error| format!("cannot store machine {uuid}: {error}"))?;
        self.publish_ports();
        Ok(machine)
    }

    fn publish_ports(&self) {
        let mut ports: MachinePorts = Vec::new();
        for machine in self.machines.values() {
            for executed in [&machine.allocation, &machine.reclaiming]
                .into_iter()
                .flatten()
            {
                if executed.routed {
                    ports.push((
                        executed.vrf.clone(),
                        PortIntent {
                            name: executed.port.clone(),
                            addresses: vec![executed.request.ip],
                        },
                    ));
                }
            }
        }
        ports.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
        self.ports_tx.send_if_modified(|current| {
            if *current == ports {
                false
            } else {
                *current = ports;
                true
            }
        });
    }

    fn event(&mut self, uuid: &str, now: u64, kind: EventKind, message: &str) {
        let thresholds = self.settings.thresholds;
        self.machines
            .entry(uuid.to_string())
            .or_insert_with(|| MachineRecord::new(uuid, &self.settings.switch))
            .lifecycle
            .event(now, kind, message, &thresholds);
    }

    /// An installer's report: a retried call or a progress report does not
    /// repeat the newest event, it refreshes it.
    fn report(&mut self, uuid: &str, now: u64, kind: EventKind, message: &str) {
        let kept = event_message(message);
        if let Some(machine) = self.machines.get_mut(uuid)
            && let Some(last) = machine.lifecycle.events.front_mut()
            && last.kind == kind
            && (kind == EventKind::Installing || last.message == kept)
        {
            last.message = kept;
            machine.lifecycle.last_heartbeat = Some(now);
            return;
        }
        self.event(uuid, now, kind, message);
    }

    /// The rack's DHCP leases (none without a lease store).
    fn leases(&self) -> Vec<Lease> {
        self.settings
            .lease_db
            .as_ref()
            .and_then(|path| metalmesh_provisioning::dhcp::service::read_leases(path).ok())
            .unwrap_or_default()
    }

    /// A PXE boot of `mac`: an event of the machine with that NIC, or held
    /// until a machine registers from it.
    pub fn pxe_booting(&mut self, mac: &str, now: u64) {
        let owner = self
            .machines
            .values()
            .find(|m| {
                m.hardware
                    .as_ref()
                    .is_some_and(|hw| hw.nics.iter().any(|nic| nic.mac == mac))
            })
            .map(|m| m.uuid.clone());
        match owner {
            // One boot can ask twice (the firmware, then the iPXE it loaded,
            // more than DHCP's 10 s apart): one event, one cycle.
            Some(uuid)
                if self.machines[&uuid].lifecycle.last().is_some_and(|e| {
                    e.kind == EventKind::PxeBooting && now.saturating_sub(e.time) < PXE_SAME_BOOT_MS
                }) => {}
            Some(uuid) => {
                self.event(
                    &uuid,
                    now,
                    EventKind::PxeBooting,
                    &format!("PXE boot of {mac}"),
                );
                if let Err(error) = self.save(&uuid, now) {
                    tracing::error!(%error, "PXE Booting not stored");
                }
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
    fn adopt_pxe(&mut self, uuid: &str, caller: &Caller) {
        if self.machines.contains_key(uuid) {
            return;
        }
        if let Some(mac) = &caller.mac
            && let Some(at) = self.pending_pxe.remove(mac)
        {
            self.event(
                uuid,
                at,
                EventKind::PxeBooting,
                &format!("PXE boot of {mac}"),
            );
        }
    }

    /// Whether `peer` may speak for machine `uuid` on the provisioning
    /// network: its DHCP lease must belong to one of the machine's NICs.
    /// Without a lease store (tests) or for a machine not registered yet,
    /// anyone may.
    fn authorize(&self, uuid: &str, caller: &Caller) -> Result<(), ApiError> {
        let Some(hardware) = self.machines.get(uuid).and_then(|m| m.hardware.as_ref()) else {
            return Ok(());
        };
        if self.settings.lease_db.is_none() {
            return Ok(());
        }
        match &caller.mac {
            Some(mac) if hardware.nics.iter().any(|nic| nic.mac == *mac) => Ok(()),
            _ => Err(api(
                403,
                format!("{} is not an address of machine {uuid}", caller.addr),
            )),
        }
    }

    /// What a waiting installer is told at a heartbeat (the caller is
    /// authorised already).
    fn heartbeat_directive(&mut self, uuid: &str, now: u64) -> Result<Directive, ApiError> {
        let machine = self
            .machines
            .get_mut(uuid)
            .ok_or_else(|| api(404, format!("machine {uuid} is not registered")))?;
        machine.lifecycle.last_heartbeat = Some(now);
        if machine.reclaiming.is_some() || machine.reboot_due {
            machine.reboot_due = false;
            return Ok(Directive::Reboot);
        }
        // Heartbeats are not stored one by one: liveliness is rebuilt from
        // the next event after a restart.
        Ok(match (&machine.allocation, machine.lifecycle.state()) {
            (Some(executed), Some(EventKind::Waiting)) => Directive::Install {
                allocation: executed.installer(),
            },
            _ => Directive::Wait,
        })
    }

    pub fn installer(
        &mut self,
        call: InstallerCall,
        peer: IpAddr,
        now: u64,
    ) -> Result<Directive, ApiError> {
        // The leases are read once per call: every check sees one snapshot.
        let leases = match &call {
            InstallerCall::PhoneHome { .. } => Vec::new(),
            _ => self.leases(),
        };
        let caller = Caller {
            addr: peer,
            mac: leases
                .iter()
                .find(|lease| IpAddr::V4(lease.ip) == peer)
                .map(|lease| lease.mac.clone()),
        };
        match call {
            InstallerCall::Event { uuid, report } => {
                let kind = parse_event(&report.event)
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
                    .ok_or_else(|| {
                        api(
                            400,
                            format!("`{}` is not an event an installer reports", report.event),
                        )
                    })?;
                if !self.machines.contains_key(&uuid) {
                    // Only a starting installer introduces a new machine.
                    if kind != EventKind::Preparing {
                        return Err(api(404, format!("machine {uuid} is not registered")));
                    }
                    if self.machines.len() >= MAX_MACHINES {
                        return Err(api(507, "this leaf manages as many machines as it can"));
                    }
                }
                self.authorize(&uuid, &caller)?;
                self.adopt_pxe(&uuid, &caller);
                self.report(&uuid, now, kind, &report.message);
                if kind == EventKind::BootingNewKernel
                    && self
                        .machines
                        .get(&uuid)
                        .is_some_and(|m| m.allocation.is_some())
                {
                    // The installed system answers on the tenant network.
                    self.pending_routes.retain(|(u, _, _)| *u != uuid);
                    self.pending_routes
                        .push((uuid.clone(), now + ROUTE_DELAY_MS, true));
                }
                if kind == EventKind::Crashed {
                    tracing::warn!(%uuid, reason = %report.message, "machine crashed");
                }
                self.save(&uuid, now).map_err(|e| api(500, e))?;
                Ok(Directive::None)
            }
            InstallerCall::Register(registration) => {
                self.register(*registration, &caller, &leases, now)
            }
            InstallerCall::Heartbeat { uuid } => {
                self.authorize(&uuid, &caller)?;
                self.heartbeat_directive(&uuid, now)
            }
            InstallerCall::PhoneHome { uuid } => {
                let machine = self
                    .machines
                    .get_mut(&uuid)
                    .ok_or_else(|| api(404, format!("machine {uuid} is not registered")))?;
                // The installed system calls from its allocated address.
                let own = [&machine.allocation, &machine.reclaiming]
                    .into_iter()
                    .flatten()
                    .any(|e| IpAddr::V4(e.request.ip) == peer);
                if !own {
                    return Err(api(
                        403,
                        format!("{peer} is not the address of machine {uuid}"),
                    ));
                }
                machine.lifecycle.last_heartbeat = Some(now);
                if machine.reclaiming.is_some() {
                    // Once the answer is out, the port goes back to the
                    // provisioning network the machine will boot from.
                    self.pending_routes.retain(|(u, _, _)| *u != uuid);
                    self.pending_routes
                        .push((uuid.clone(), now + ROUTE_DELAY_MS, false));
                    return Ok(Directive::Reboot);
                }
                if machine.allocation.is_none() {
                    return Err(api(409, format!("machine {uuid} is not allocated")));
                }
                if machine.lifecycle.state() != Some(EventKind::PhonedHome) {
                    self.event(&uuid, now, EventKind::PhonedHome, "installed system is up");
                    self.save(&uuid, now).map_err(|e| api(500, e))?;
                }
                Ok(Directive::None)
            }
        }
    }

    fn register(
        &mut self,
        registration: Registration,
        caller: &Caller,
        leases: &[Lease],
        now: u64,
    ) -> Result<Directive, ApiError> {
        let hardware = registration.hardware;
        // The installer API hands over UUIDs checked and in lower case.
        let uuid = hardware.uuid.clone();
        if hardware.disks.len() > MAX_DEVICES || hardware.nics.len() > MAX_DEVICES {
            return Err(api(400, format!("more than {MAX_DEVICES} disks or NICs")));
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
            return Err(api(
                400,
                format!(
                    "a hardware field exceeds {MAX_HARDWARE_TEXT} bytes or holds control characters"
                ),
            ));
        }
        if !self.machines.contains_key(&uuid) && self.machines.len() >= MAX_MACHINES {
            return Err(api(507, "this leaf manages as many machines as it can"));
        }
        // A known machine re-registers only from one of its own NICs, and
        // any registration comes from a NIC it reports (when the caller has
        // a lease at all; strangers without one are flagged below).
        self.authorize(&uuid, caller)?;
        if let Some(mac) = &caller.mac
            && !hardware.nics.iter().any(|nic| nic.mac == *mac)
        {
            return Err(api(
                403,
                format!("{} ({mac}) is not one of the registered NICs", caller.addr),
            ));
        }
        self.adopt_pxe(&uuid, caller);
        let seen = self.macs_seen(leases);
        let unknown_mac = !hardware.nics.iter().any(|nic| seen.contains(&nic.mac));
        if unknown_mac {
            tracing::warn!(%uuid, peer = %caller.addr, "registration from MACs not seen on any port of this leaf; flagged");
        }
        let message = format!(
            "{} CPUs, {} MiB, {} disk(s), {} NIC(s), installer {}",
            hardware.cpus,
            hardware.memory_bytes >> 20,
            hardware.disks.len(),
            hardware.nics.len(),
            registration.installer
        );
        self.report(&uuid, now, EventKind::Registering, &message);
        let machine = self
            .machines
            .get_mut(&uuid)
            .ok_or_else(|| api(500, "machine vanished"))?;
        machine.hardware = Some(hardware);
        machine.unknown_mac = unknown_mac;
        machine.reboot_due = false;
        // The reclaimed machine has rebooted: its old network goes.
        machine.reclaiming = None;
        let directive = match &mut machine.allocation {
            // Rebooted while allocated (power loss, crash): install again.
            Some(executed) => {
                executed.routed = false;
                Directive::Install {
                    allocation: executed.installer(),
                }
            }
            None => Directive::Wipe,
        };
        self.save(&uuid, now).map_err(|e| api(500, e))?;
        Ok(directive)
    }

    /// MACs this leaf has seen on its ports: LLDP neighbours and DHCP clients.
    fn macs_seen(&self, leases: &[Lease]) -> HashSet<String> {
        let mut seen: HashSet<String> = self
            .lldp
            .borrow()
            .neighbors
            .iter()
            .map(|n| n.source_mac.to_lowercase())
            .collect();
        seen.extend(leases.iter().map(|l| l.mac.to_lowercase()));
        seen
    }

    pub fn command(&mut self, command: Command, now: u64) {
        match command {
            Command::List { reply } => {
                let uuids: Vec<String> = self.machines.keys().cloned().collect();
                let list = uuids
                    .iter()
                    .filter_map(|uuid| self.view(uuid, now))
                    .collect();
                let _ = reply.send(list);
            }
            Command::Describe { uuid, reply } => {
                let found = self
                    .view(&uuid, now)
                    .ok_or_else(|| format!("no machine {uuid} on this leaf"));
                let _ = reply.send(found);
            }
            Command::Allocate {
                uuid,
                request,
                reply,
            } => {
                let _ = reply.send(self.allocate(&uuid, request, now));
            }
            Command::Free { uuid, reply } => {
                let _ = reply.send(self.free(&uuid, now));
            }
        }
    }

    /// A machine as shown to the operator.
    fn view(&mut self, uuid: &str, now: u64) -> Option<MachineRecord> {
        self.fresh(uuid, now).cloned()
    }

    fn allocate(
        &mut self,
        uuid: &str,
        request: AllocateRequest,
        now: u64,
    ) -> Result<MachineRecord, String> {
        let machine = self
            .machines
            .get(uuid)
            .ok_or_else(|| format!("no machine {uuid} on this leaf"))?;
        if machine.allocation.is_some() {
            return Err(format!("machine {uuid} is already allocated"));
        }
        if machine.lifecycle.state() != Some(EventKind::Waiting) {
            return Err(format!(
                "machine {uuid} is not Waiting (it is {}); only waiting machines can be allocated",
                machine
                    .lifecycle
                    .state()
                    .map(event_name)
                    .unwrap_or_else(|| "unknown".into())
            ));
        }
        if request.hostname.is_empty()
            || request.hostname.len() > 63
            || !request
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!("`{}` is not a host name", request.hostname));
        }
        if request.user_data.len() > MAX_USER_DATA_BYTES {
            return Err(format!(
                "user data of {} bytes exceeds {MAX_USER_DATA_BYTES}",
                request.user_data.len()
            ));
        }
        if request.ssh_keys.len() > MAX_SSH_KEYS
            || request.ssh_keys.iter().any(|k| k.len() > MAX_SSH_KEY_BYTES)
        {
            return Err(format!(
                "at most {MAX_SSH_KEYS} SSH keys of at most {MAX_SSH_KEY_BYTES} bytes each"
            ));
        }
        if !valid_image_name(&request.image) {
            return Err(format!("`{}` is not an image name", request.image));
        }
        let port = port_of(&self.lldp.borrow(), uuid).ok_or_else(|| {
            format!("machine {uuid} has not been seen over LLDP on any port of this leaf")
        })?;
        let vrf = self.vrf_for(&request)?;
        if self
            .machines
            .values()
            .flat_map(|m| [&m.allocation, &m.reclaiming])
            .flatten()
            .any(|e| e.vrf == vrf && e.request.ip == request.ip)
        {
            return Err(format!("{} is already used in VRF {vrf}", request.ip));
        }
        let images = self
            .settings
            .images
            .as_ref()
            .ok_or("this leaf serves no images (no [boot] section)")?;
        let sha = std::fs::read_to_string(images.dir.join(format!("{}.img.sha256", request.image)))
            .map_err(|_| {
                format!(
                    "unknown image `{}` (no {}.img.sha256 in {})",
                    request.image,
                    request.image,
                    images.dir.display()
                )
            })?;
        let sha = sha
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_lowercase();
        let image_url = format!("{}/{}.img", images.base_url, request.image);
        self.commit(uuid, now, |machine| {
            machine.lifecycle.allocate().map_err(|e| e.to_string())?;
            machine.port = Some(port.clone());
            machine.allocation = Some(Executed {
                request,
                vrf,
                port,
                image_url,
                image_sha256: sha,
                routed: false,
            });
            Ok(())
        })
    }

    /// Applies an operator's change to a machine and stores it; when either
    /// fails, the machine is left exactly as it was (not stored means not
    /// done).
    fn commit(
        &mut self,
        uuid: &str,
        now: u64,
        change: impl FnOnce(&mut MachineRecord) -> Result<(), String>,
    ) -> Result<MachineRecord, String> {
        let machine = self
            .machines
            .get_mut(uuid)
            .ok_or_else(|| format!("no machine {uuid} on this leaf"))?;
        let before = machine.clone();
        let saved = change(machine).and_then(|()| self.save(uuid, now));
        if saved.is_err() {
            self.machines.insert(uuid.to_string(), before);
        }
        saved
    }

    fn vrf_for(&self, request: &AllocateRequest) -> Result<String, String> {
        let intents = self.intents.borrow();
        let contains = |vrf: &crate::dataplane::intent::VrfIntent| {
            vrf.prefixes.iter().any(|p| p.contains(request.ip))
        };
        match &request.vrf {
            Some(name) => {
                let vrf = intents
                    .vrfs
                    .iter()
                    .find(|v| &v.name == name)
                    .ok_or_else(|| format!("no VRF `{name}` on this leaf"))?;
                if !contains(vrf) {
                    return Err(format!("{} is not in VRF {name}'s prefixes", request.ip));
                }
                Ok(name.clone())
            }
            None => intents
                .vrfs
                .iter()
                .find(|v| contains(v))
                .map(|v| v.name.clone())
                .ok_or_else(|| {
                    format!(
                        "no tenant VRF on this leaf has a prefix containing {}",
                        request.ip
                    )
                }),
        }
    }

    fn free(&mut self, uuid: &str, now: u64) -> Result<MachineRecord, String> {
        let thresholds = self.settings.thresholds;
        self.commit(uuid, now, |machine| {
            machine
                .lifecycle
                .free(now, &thresholds)
                .map_err(|e| e.to_string())?;
            machine.reclaiming = machine.allocation.take();
            Ok(())
        })
    }

    /// Moves the ports whose time has come into (or out of) their tenant VRF.
    pub fn route_due(&mut self, now: u64) {
        let (due, later): (Vec<_>, Vec<_>) = self
            .pending_routes
            .drain(..)
            .partition(|(_, at, _)| *at <= now);
        self.pending_routes = later;
        for (uuid, _, join) in due {
            let Some(machine) = self.machines.get_mut(&uuid) else {
                continue;
            };
            if join {
                match machine.allocation.as_mut() {
                    Some(executed) => executed.routed = true,
                    None => continue,
                }
            } else if machine.reclaiming.take().is_none() {
                continue;
            }
            if let Err(error) = self.save(&uuid, now) {
                tracing::error!(%error, "port move not stored");
            }
        }
    }

    /// Periodic work: planned reboots, reclaim time-outs, liveliness.
    pub fn tick(&mut self, now: u64) {
        let thresholds = self.settings.thresholds;
        let mut changed = Vec::new();
        for machine in self.machines.values_mut() {
            let before = (
                machine.lifecycle.events.len(),
                machine.lifecycle.failed_machine_reclaim,
            );
            for action in machine.lifecycle.tick(now, &thresholds) {
                if action == metalmesh_provisioning::lifecycle::Action::Reboot {
                    machine.reboot_due = true;
                }
            }
            if let Some(reclaiming) = &machine.reclaiming
                && reclaiming.routed
                && machine
                    .lifecycle
                    .events
                    .iter()
                    .find(|e| e.kind == EventKind::MachineReclaim)
                    .is_some_and(|e| now.saturating_sub(e.time) > RECLAIM_GRACE_MS)
            {
                tracing::warn!(uuid = %machine.uuid, "reclaimed machine did not reboot; removing its network");
                machine.reclaiming = None;
                changed.push(machine.uuid.clone());
                continue;
            }
            let liveliness = format!("{:?}", machine.lifecycle.liveliness(now, &thresholds));
            if before
                != (
                    machine.lifecycle.events.len(),
                    machine.lifecycle.failed_machine_reclaim,
                )
                || liveliness != machine.liveliness
            {
                changed.push(machine.uuid.clone());
            }
        }
        for uuid in changed {
            if let Err(error) = self.save(&uuid, now) {
                tracing::error!(%error, "machine not stored");
            }
        }
    }
}

/// Image names are file names in the images directory: no paths.
fn valid_image_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The inventory key of a machine as this leaf sees it: every leaf writes
/// only its own keys (one writer per key), so a machine recabled to another
/// rack, or a UUID another rack's host claims, never blocks this leaf.
fn record_key(switch: &str, uuid: &str) -> String {
    format!("{switch}/{uuid}")
}

/// The port whose LLDP neighbour announces `uuid` as its chassis ID.
pub fn port_of(lldp: &LldpSnapshot, uuid: &str) -> Option<String> {
    lldp.neighbors
        .iter()
        .find(|n| n.chassis_id.eq_ignore_ascii_case(uuid))
        .map(|n| n.local_port.clone())
}

/// How long a heartbeat with nothing to do is held open: an allocation
/// reaches a waiting machine at once instead of at its next heartbeat.
const HEARTBEAT_HOLD_MS: u64 = 5_000;

/// A heartbeat held open, answered when its machine has something to do.
type Parked = (String, u64, oneshot::Sender<Result<Directive, ApiError>>);

/// Runs the manager: installer calls, PXE events, commands and a tick.
pub async fn run(
    manager: &mut Manager,
    installer: &mut mpsc::Receiver<InstallerRequest>,
    pxe: &mut mpsc::Receiver<String>,
    commands: &mut mpsc::Receiver<Command>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut routes = tokio::time::interval(Duration::from_millis(200));
    let mut parked: Vec<Parked> = Vec::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            Some(request) = installer.recv() => {
                let now = now_ms();
                let heartbeat = match &request.call {
                    InstallerCall::Heartbeat { uuid } => Some(uuid.clone()),
                    _ => None,
                };
                let answer = blocking(|| manager.installer(request.call, request.peer, now));
                match (heartbeat, answer) {
                    (Some(uuid), Ok(Directive::Wait)) => {
                        // One held heartbeat per machine: an older one is answered now.
                        if let Some(index) = parked.iter().position(|(u, _, _)| *u == uuid) {
                            let (_, _, older) = parked.swap_remove(index);
                            let _ = older.send(Ok(Directive::Wait));
                        }
                        parked.push((uuid, now + HEARTBEAT_HOLD_MS, request.reply));
                    }
                    (_, answer) => {
                        let _ = request.reply.send(answer);
                    }
                }
            }
            Some(mac) = pxe.recv() => blocking(|| manager.pxe_booting(&mac, now_ms())),
            Some(command) = commands.recv() => {
                blocking(|| manager.command(command, now_ms()));
                answer_parked(manager, &mut parked, false);
            }
            _ = tick.tick() => blocking(|| manager.tick(now_ms())),
            _ = routes.tick() => {
                blocking(|| manager.route_due(now_ms()));
                answer_parked(manager, &mut parked, true);
            }
        }
    }
}

/// Answers held heartbeats whose machine now has something to do, and (with
/// `expire`) those held long enough.
fn answer_parked(manager: &mut Manager, parked: &mut Vec<Parked>, expire: bool) {
    let now = now_ms();
    let mut still = Vec::new();
    for (uuid, deadline, reply) in parked.drain(..) {
        if reply.is_closed() {
            continue;
        }
        // Authorised when it was parked.
        let directive = manager.heartbeat_directive(&uuid, now);
        match directive {
            Ok(Directive::Wait) if !(expire && now >= deadline) => {
                still.push((uuid, deadline, reply))
            }
            other => {
                let _ = reply.send(other);
            }
        }
    }
    *parked = still;
}

/// Operator intents plus the ports of allocated machines: what the
/// dataplane renders.
pub fn merge(operator: &Intents, machines: &MachinePorts) -> Intents {
    let mut merged = operator.clone();
    for (vrf, port) in machines {
        if let Some(target) = merged.vrfs.iter_mut().find(|v| &v.name == vrf)
            && !target.ports.iter().any(|p| p.name == port.name)
        {
            target.ports.push(port.clone());
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalmesh_provisioning::installer::api::{EventReport, Hardware, Nic};

    const UUID: &str = "6d6d0000-0000-4000-8000-000001000001";
    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 100, 1, 100));
    const MACHINE_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 1, 11));

    struct Rig {
        _dir: tempfile::TempDir,
        store: Store,
        settings: Settings,
        lldp: watch::Sender<LldpSnapshot>,
        intents: watch::Sender<Intents>,
        ports: watch::Receiver<MachinePorts>,
        ports_tx: watch::Sender<MachinePorts>,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(
            images.join("os.img.sha256"),
            format!("{}  os.img\n", "ab".repeat(32)),
        )
        .unwrap();
        let store = Store::open(&dir.path().join("inventory.db"), "leaf1").unwrap();
        let neighbor: crate::lldp::machine::Neighbor = serde_json::from_value(serde_json::json!({
            "local_port": "m1-1", "source_mac": "52:54:00:6d:01:01", "chassis_id": UUID,
            "chassis_id_subtype": "locally_assigned", "port_id": "eth0", "port_id_subtype": "interface_name",
            "port_description": null, "system_name": null, "system_description": null, "capabilities": [],
            "enabled_capabilities": [], "management_addresses": [], "port_vlan_id": null,
            "max_frame_size": null, "ttl_secs": 21, "first_seen": 0, "last_seen": 0, "expires_at": 0
        }))
        .unwrap();
        let (lldp, _) = watch::channel(LldpSnapshot {
            neighbors: vec![neighbor],
            ..LldpSnapshot::default()
        });
        let intents: Intents =
            toml::from_str("[[vrf]]\nname = \"tenant-a\"\nvni = 10001\ntable = 1001\nprefixes = [\"10.0.1.0/24\"]\n")
                .unwrap();
        let (intents, _) = watch::channel(intents);
        let (ports_tx, ports) = watch::channel(Vec::new());
        Rig {
            settings: Settings {
                switch: "leaf1".into(),
                thresholds: Thresholds::default(),
                images: Some(ImageSource {
                    dir: images,
                    base_url: "http://10.100.1.1:8070/boot/images".into(),
                }),
                lease_db: None,
            },
            _dir: dir,
            store,
            lldp,
            intents,
            ports,
            ports_tx,
        }
    }

    fn manager(rig: &Rig) -> Manager {
        Manager::load(
            rig.settings.clone(),
            rig.store.clone(),
            rig.lldp.subscribe(),
            rig.intents.subscribe(),
            rig.ports_tx.clone(),
        )
        .unwrap()
    }

    fn registration() -> InstallerCall {
        InstallerCall::Register(Box::new(Registration {
            hardware: Hardware {
                uuid: UUID.into(),
                cpus: 2,
                memory_bytes: 1 << 30,
                nics: vec![Nic {
                    name: "eth0".into(),
                    mac: "52:54:00:6d:01:01".into(),
                    up: true,
                }],
                ..Hardware::default()
            },
            installer: "test".into(),
        }))
    }

    /// A starting installer at `t` and its registration a moment later,
    /// answered with a disk wipe.
    fn registered(m: &mut Manager, t: u64) {
        m.installer(event("Preparing"), PEER, t).unwrap();
        assert_eq!(
            m.installer(registration(), PEER, t + 1).unwrap(),
            Directive::Wipe
        );
    }

    fn event(name: &str) -> InstallerCall {
        InstallerCall::Event {
            uuid: UUID.into(),
            report: EventReport {
                event: name.into(),
                message: String::new(),
            },
        }
    }

    fn allocation() -> AllocateRequest {
        AllocateRequest {
            image: "os".into(),
            ip: "10.0.1.11".parse().unwrap(),
            hostname: "web-1".into(),
            ssh_keys: vec![],
            user_data: String::new(),
            vrf: None,
        }
    }

    fn kinds(m: &Manager) -> Vec<EventKind> {
        m.machines[UUID]
            .lifecycle
            .events
            .iter()
            .rev()
            .map(|e| e.kind)
            .collect()
    }

    #[test]
    fn lifecycle_allocation_routing_reclaim_and_restart() {
        let rig = rig();
        let mut m = manager(&rig);
        let t = 1_800_000_000_000;
        registered(&mut m, t);
        // Not Waiting yet: refused.
        assert!(
            m.allocate(UUID, allocation(), t + 2)
                .unwrap_err()
                .contains("not Waiting")
        );
        m.installer(event("Waiting"), PEER, t + 3).unwrap();
        assert_eq!(
            m.installer(InstallerCall::Heartbeat { uuid: UUID.into() }, PEER, t + 4)
                .unwrap(),
            Directive::Wait
        );
        // Outside every tenant prefix, or an unknown image: refused.
        let mut outside = allocation();
        outside.ip = "10.9.9.9".parse().unwrap();
        assert!(m.allocate(UUID, outside, t + 5).is_err());
        let mut unknown = allocation();
        unknown.image = "nope".into();
        assert!(
            m.allocate(UUID, unknown, t + 5)
                .unwrap_err()
                .contains("unknown image")
        );
        let machine = m.allocate(UUID, allocation(), t + 5).unwrap();
        assert_eq!(machine.allocation.as_ref().unwrap().vrf, "tenant-a");
        assert!(
            m.allocate(UUID, allocation(), t + 6)
                .unwrap_err()
                .contains("already allocated")
        );
        let Directive::Install { allocation } = m
            .installer(InstallerCall::Heartbeat { uuid: UUID.into() }, PEER, t + 7)
            .unwrap()
        else {
            panic!("no install directive");
        };
        assert_eq!(
            allocation.image_url,
            "http://10.100.1.1:8070/boot/images/os.img"
        );
        assert_eq!(allocation.image_sha256, "ab".repeat(32));
        m.installer(event("Installing"), PEER, t + 8).unwrap();
        m.installer(event("Installing"), PEER, t + 9).unwrap();
        m.installer(event("Booting New Kernel"), PEER, t + 10)
            .unwrap();
        // The port joins the VRF only after the delay.
        m.route_due(t + 11);
        assert!(rig.ports.borrow().is_empty());
        m.route_due(t + 10 + ROUTE_DELAY_MS);
        assert_eq!(rig.ports.borrow()[0].1.name, "m1-1");
        assert_eq!(
            m.installer(
                InstallerCall::PhoneHome { uuid: UUID.into() },
                MACHINE_IP,
                t + 2000
            )
            .unwrap(),
            Directive::None
        );

        // A restart loads exactly what was stored.
        drop(m);
        let mut m = manager(&rig);
        assert_eq!(
            kinds(&m),
            [
                EventKind::Preparing,
                EventKind::Registering,
                EventKind::Waiting,
                EventKind::Installing,
                EventKind::BootingNewKernel,
                EventKind::PhonedHome
            ]
        );
        assert_eq!(rig.ports.borrow().len(), 1);

        m.free(UUID, t + 3000).unwrap();
        assert!(
            m.free(UUID, t + 3001)
                .unwrap_err()
                .contains("not allocated")
        );
        assert_eq!(
            m.installer(
                InstallerCall::PhoneHome { uuid: UUID.into() },
                MACHINE_IP,
                t + 3002
            )
            .unwrap(),
            Directive::Reboot
        );
        m.route_due(t + 3002 + ROUTE_DELAY_MS);
        assert!(
            rig.ports.borrow().is_empty(),
            "the port did not leave the VRF"
        );
        assert_eq!(
            m.installer(registration(), PEER, t + 4000).unwrap(),
            Directive::Wipe
        );
        m.installer(event("Waiting"), PEER, t + 4001).unwrap();
        assert_eq!(m.machines[UUID].state, "Waiting");
        // Only the machine's own address phones home; unknown machines
        // cannot report events other than starting.
        assert_eq!(
            m.installer(
                InstallerCall::PhoneHome { uuid: UUID.into() },
                PEER,
                t + 4002
            )
            .unwrap_err()
            .status,
            403
        );
        let stranger = InstallerCall::Event {
            uuid: "6d6d0000-0000-4000-8000-0000000000fe".into(),
            report: EventReport {
                event: "Crashed".into(),
                message: "x".repeat(10_000),
            },
        };
        assert_eq!(m.installer(stranger, PEER, t).unwrap_err().status, 404);
        // Reports an installer may not make are refused.
        assert_eq!(
            m.installer(event("Phoned Home"), PEER, t + 4002)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            m.installer(
                InstallerCall::Heartbeat {
                    uuid: "6d6d0000-0000-4000-8000-0000000000ff".into()
                },
                PEER,
                t
            )
            .unwrap_err()
            .status,
            404
        );
    }

    /// A rig whose lease store leases PEER to the machine's NIC.
    fn rig_with_lease() -> Rig {
        let mut rig = rig();
        let path = rig._dir.path().join("leases.db");
        let mut leases = metalmesh_provisioning::dhcp::leases::LeaseStore::open(&path).unwrap();
        leases
            .commit(&[metalmesh_provisioning::dhcp::leases::Write::Lease(Lease {
                mac: "52:54:00:6d:01:01".into(),
                ip: "10.100.1.100".parse().unwrap(),
                state: metalmesh_provisioning::dhcp::leases::LeaseState::Bound,
                expires: u64::MAX >> 2,
                client_kind: metalmesh_provisioning::dhcp::client::ClientKind::Plain,
                hostname: None,
                updated: 0,
            })])
            .unwrap();
        rig.settings.lease_db = Some(path);
        rig
    }

    #[test]
    fn held_heartbeats_stay_held_until_an_allocation_arrives() {
        let rig = rig_with_lease();
        let mut m = manager(&rig);
        let t = now_ms();
        registered(&mut m, t);
        m.installer(event("Waiting"), PEER, t).unwrap();
        // Another address may not speak for the machine.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 100, 1, 101));
        assert_eq!(
            m.installer(InstallerCall::Heartbeat { uuid: UUID.into() }, other, t)
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            m.installer(InstallerCall::Heartbeat { uuid: UUID.into() }, PEER, t)
                .unwrap(),
            Directive::Wait
        );
        let (reply, mut answer) = oneshot::channel();
        let mut parked = vec![(UUID.to_string(), t + HEARTBEAT_HOLD_MS, reply)];
        answer_parked(&mut m, &mut parked, true);
        assert_eq!(parked.len(), 1, "{:?}", answer.try_recv());
        m.allocate(UUID, allocation(), t).unwrap();
        answer_parked(&mut m, &mut parked, true);
        assert!(parked.is_empty());
        assert!(matches!(
            answer.try_recv().unwrap(),
            Ok(Directive::Install { .. })
        ));
    }

    #[test]
    fn another_rack_holding_the_uuid_does_not_block_this_leaf() {
        use metalmesh_inventory::replica::Replica;
        let rig = rig();
        // Another leaf (or a host claiming the UUID there) wrote it first.
        let mut store = rig.store.clone();
        store
            .apply(vec![metalmesh_inventory::Record {
                id: metalmesh_inventory::RecordKey::new(
                    RecordKind::Machine,
                    record_key("leaf2", UUID),
                ),
                origin: "leaf2".into(),
                version: 1,
                value: Some("{}".into()),
            }])
            .unwrap();
        let mut m = manager(&rig);
        let t = 1_800_000_000_000;
        registered(&mut m, t);
        m.installer(event("Waiting"), PEER, t + 2).unwrap();
        assert_eq!(m.machines[UUID].state, "Waiting");
    }

    #[test]
    fn a_machine_stuck_netbooting_is_a_crash_loop() {
        let rig = rig_with_lease();
        let mut m = manager(&rig);
        let t = 1_800_000_000_000;
        registered(&mut m, t);
        // The firmware's DHCP and its iPXE's, 15 s apart: one boot.
        m.pxe_booting("52:54:00:6d:01:01", t + 100_000);
        m.pxe_booting("52:54:00:6d:01:01", t + 115_000);
        m.pxe_booting("52:54:00:6d:01:01", t + 200_000);
        assert!(!m.machines[UUID].crash_loop, "{:?}", kinds(&m));
        m.pxe_booting("52:54:00:6d:01:01", t + 300_000);
        assert!(m.machines[UUID].crash_loop, "{:?}", kinds(&m));
    }

    #[test]
    fn records_stay_within_the_mesh_limit_and_allocations_are_bounded() {
        let mut rig = rig();
        rig.settings.thresholds.history = 10_000;
        let mut m = manager(&rig);
        let t = 1_800_000_000_000;
        registered(&mut m, t);
        for i in 0..=600 {
            let call = InstallerCall::Event {
                uuid: UUID.into(),
                report: EventReport {
                    event: if i % 2 == 0 { "Waiting" } else { "Preparing" }.into(),
                    message: format!("{i:x<300}"),
                },
            };
            m.installer(call, PEER, t + 2 + i).unwrap();
        }
        let stored = rig
            .store
            .get(&metalmesh_inventory::RecordKey::new(
                RecordKind::Machine,
                record_key("leaf1", UUID),
            ))
            .unwrap()
            .unwrap();
        assert!(stored.value.unwrap().len() <= MAX_VALUE_BYTES);
        let events = &m.machines[UUID].lifecycle.events;
        assert!(events.len() >= SUMMARY_EVENTS && events.len() < 600);
        assert!(events[0].message.len() <= 200);

        let mut big = allocation();
        big.user_data = "x".repeat(MAX_USER_DATA_BYTES + 1);
        assert!(
            m.allocate(UUID, big, t + 700)
                .unwrap_err()
                .contains("user data")
        );
        let mut escape = allocation();
        escape.image = "../etc/os".into();
        assert!(
            m.allocate(UUID, escape, t + 700)
                .unwrap_err()
                .contains("not an image name")
        );
        assert!(m.machines[UUID].allocation.is_none());
    }
}
