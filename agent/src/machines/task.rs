//! The machine core's driver: it reads the clock, resolves each installer
//! caller from the DHCP lease index, looks images up in a checksum cache,
//! hands LLDP and VRF changes to the core, stores the core's records before
//! any answer leaves (restoring the core when the store refuses), publishes
//! the routed ports and delivers answers to the channels that wait for them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metalmesh_installer::api::Directive;
use metalmesh_inventory::model::AllocateRequest;
use metalmesh_inventory::store::blocking;
use metalmesh_inventory::{RecordKind, Store};
use metalmesh_provisioning::dhcp::service::LeaseIndex;
use metalmesh_provisioning::http::installer_api::{
    InstallerCall, InstallerRequest, Refusal, RefusalKind,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::core::{
    Caller, Command, CoreSettings, ImageFact, Input, MachineCore, MachineError, MachinePorts,
    NeighborFact, Outcome, Reply, Ticket, VrfFact,
};
use super::record::{MachineRecord, MachineSecrets};
use crate::dataplane::Intents;
use crate::lldp::LldpSnapshot;

/// How often time is passed to the core (routes due, held heartbeats).
const TICK: Duration = Duration::from_millis(200);

/// What operators (the admin API; later the API node) ask of the machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorCommand {
    List,
    Describe {
        uuid: String,
    },
    Allocate {
        uuid: String,
        request: AllocateRequest,
    },
    Free {
        uuid: String,
    },
}

/// An operator command and where its answer goes.
#[derive(Debug)]
pub struct CommandRequest {
    pub command: OperatorCommand,
    pub reply: oneshot::Sender<Result<Reply, MachineError>>,
}

/// Where images live and how machines fetch them.
#[derive(Debug, Clone)]
pub struct ImageSource {
    /// `<http_root>/images`: `<name>.img` and `<name>.img.sha256`.
    pub dir: PathBuf,
    /// `http://<server_ip>:<port>/boot/images`.
    pub base_url: String,
    /// Images downloaded from their record's URL, by checksum.
    pub cache_dir: PathBuf,
    /// `http://<server_ip>:<port>/images`.
    pub cache_url: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub switch: String,
    pub thresholds: super::lifecycle::Thresholds,
    /// How disks are wiped at registration.
    pub wipe: metalmesh_installer::disk::WipeMode,
    pub images: Option<ImageSource>,
    /// Who holds which address (none where this leaf serves no DHCP).
    pub leases: Option<LeaseIndex>,
    /// Where provisioning durations are observed.
    pub durations: super::durations::ProvisioningHistograms,
    /// Which port each lease holder is on (where the leaf's packet filter
    /// binds ports): installer callers are identified by it.
    pub bindings: Option<crate::policy::bindings::PortBindings>,
}

/// The channels the machines task reads.
#[derive(Debug)]
pub struct Inputs {
    pub installer: mpsc::Receiver<InstallerRequest>,
    pub pxe: mpsc::Receiver<String>,
    pub commands: mpsc::Receiver<CommandRequest>,
    pub lldp: watch::Receiver<LldpSnapshot>,
    pub intents: watch::Receiver<Intents>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The inventory key of a machine as this leaf sees it: every leaf writes
/// only its own keys (one writer per key), so a machine recabled to another
/// rack, or a UUID another rack's host claims, never blocks this leaf.
pub fn record_key(switch: &str, uuid: &str) -> String {
    format!("{switch}/{uuid}")
}

/// Where this leaf keeps a machine's SSH keys and user data (its store's
/// secrets, never replicated).
fn secret_key(uuid: &str) -> String {
    format!("machine/{uuid}")
}

/// This leaf's machines as the store holds them, their kept secrets back in.
pub fn load(store: &Store) -> anyhow::Result<Vec<MachineRecord>> {
    let mut machines = Vec::new();
    for record in store.list(Some(RecordKind::Machine))? {
        if record.origin != store.origin() {
            continue;
        }
        let Some(value) = record.value else { continue };
        let mut machine: MachineRecord = serde_json::from_str(&value).map_err(|error| {
            anyhow::anyhow!(
                "stored machine {} in {} is unreadable: {error}",
                record.id.key,
                store.path().display()
            )
        })?;
        let secrets = match store.local_secret(&secret_key(&machine.machine.uuid))? {
            Some(text) => serde_json::from_str(&text).map_err(|error| {
                anyhow::anyhow!(
                    "kept secrets of machine {} in {} are unreadable: {error}",
                    record.id.key,
                    store.path().display()
                )
            })?,
            None => MachineSecrets::default(),
        };
        machine.restore_secrets(&secrets).map_err(|error| {
            anyhow::anyhow!(
                "machine {} in {}: {error}",
                record.id.key,
                store.path().display()
            )
        })?;
        machines.push(machine);
    }
    Ok(machines)
}

/// The refusal the installer API shows for an error of the core.
pub fn refusal(error: &MachineError) -> Refusal {
    let kind = match error {
        MachineError::NotAnInstallerEvent(_)
        | MachineError::BadHardware(_)
        | MachineError::BadRequest(_)
        | MachineError::NoVrf(_)
        | MachineError::UnknownImage(_) => RefusalKind::Invalid,
        MachineError::NotItsAddress { .. }
        | MachineError::NotItsNic { .. }
        | MachineError::NotItsPort { .. }
        | MachineError::NoLease { .. }
        | MachineError::NotOnCallersPort { .. } => RefusalKind::Forbidden,
        MachineError::NotRegistered(_)
        | MachineError::NoSuchMachine(_)
        | MachineError::NotSeenOverLldp(_) => RefusalKind::Unknown,
        MachineError::PortNotBound { .. } | MachineError::NotSeenYet(_) => RefusalKind::NotYet,
        MachineError::NotAllocated(_)
        | MachineError::DuplicateUuid { .. }
        | MachineError::AlreadyAllocated(_)
        | MachineError::NotWaiting { .. }
        | MachineError::AddressInUse { .. } => RefusalKind::Conflict,
        MachineError::Full => RefusalKind::Full,
        MachineError::NotStored { .. } => RefusalKind::Internal,
    };
    Refusal {
        kind,
        message: error.to_string(),
    }
}

/// Image checksums, read once per change of their `.sha256` file.
#[derive(Debug, Default)]
struct ImageCatalog {
    cached: HashMap<String, (SystemTime, String)>,
}

impl ImageCatalog {
    /// An image the API defines (its `image` record) is served from the
    /// download cache once the gate fetched it; a name without a record is
    /// a rack-local image in the images directory. The API's record wins a
    /// clash: users chose the image by its record's checksum.
    fn lookup(&mut self, source: Option<&ImageSource>, store: &Store, name: &str) -> ImageFact {
        let Some(source) = source else {
            return ImageFact::Missing {
                reason: "this leaf serves no images (no [boot] section)".into(),
            };
        };
        if !super::core::valid_image_name(name) {
            // The core refuses the name itself; nothing to read.
            return ImageFact::Missing {
                reason: format!("`{name}` is not an image name"),
            };
        }
        match crate::images::image_record(store, name) {
            Err(error) => {
                return ImageFact::Missing {
                    reason: error.to_string(),
                };
            }
            Ok(Some(image)) => {
                return if crate::images::cached_path(&source.cache_dir, &image.sha256).exists() {
                    ImageFact::Found {
                        url: format!("{}/{}.img", source.cache_url, image.sha256),
                        sha256: image.sha256,
                    }
                } else {
                    ImageFact::Missing {
                        reason: format!("image `{name}` is not downloaded to this leaf yet"),
                    }
                };
            }
            Ok(None) => {}
        }
        let path = source.dir.join(format!("{name}.img.sha256"));
        let missing = || ImageFact::Missing {
            reason: format!(
                "unknown image `{name}` (no {name}.img.sha256 in {})",
                source.dir.display()
            ),
        };
        let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) else {
            self.cached.remove(name);
            return missing();
        };
        let sha256 = match self.cached.get(name) {
            Some((at, sha)) if *at == modified => sha.clone(),
            _ => {
                let Ok(text) = std::fs::read_to_string(&path) else {
                    return missing();
                };
                let sha = text
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_lowercase();
                self.cached
                    .insert(name.to_string(), (modified, sha.clone()));
                sha
            }
        };
        ImageFact::Found {
            url: format!("{}/{name}.img", source.base_url),
            sha256,
        }
    }
}

/// The machines task: one core, its I/O, and the channels waiting for it.
pub struct MachinesTask {
    settings: Settings,
    store: Store,
    core: MachineCore,
    images: ImageCatalog,
    ports: watch::Sender<MachinePorts>,
    next_ticket: Ticket,
    installer_replies: HashMap<Ticket, oneshot::Sender<Result<Directive, Refusal>>>,
    command_replies: HashMap<Ticket, oneshot::Sender<Result<Reply, MachineError>>>,
    timer: super::durations::ProvisioningTimer,
}

impl std::fmt::Debug for MachinesTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachinesTask")
            .field("switch", &self.settings.switch)
            .finish()
    }
}

impl MachinesTask {
    /// Loads this leaf's machines and publishes the ports they route.
    pub fn load(
        settings: Settings,
        store: Store,
        ports: watch::Sender<MachinePorts>,
    ) -> anyhow::Result<MachinesTask> {
        let core = MachineCore::new(
            CoreSettings {
                switch: settings.switch.clone(),
                thresholds: settings.thresholds,
                leases_known: settings.leases.is_some(),
                ports_known: settings.leases.is_some() && settings.bindings.is_some(),
                wipe: settings.wipe,
            },
            load(&store)?,
        );
        ports.send_replace(core.ports().clone());
        Ok(MachinesTask {
            timer: super::durations::ProvisioningTimer::new(settings.durations.clone()),
            settings,
            store,
            core,
            images: ImageCatalog::default(),
            ports,
            next_ticket: 0,
            installer_replies: HashMap::new(),
            command_replies: HashMap::new(),
        })
    }

    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Who called, from the lease index (no database read per call).
    fn caller(&self, peer: IpAddr, call: &InstallerCall) -> Caller {
        let index = self.settings.leases.as_ref();
        let lease_mac = match (index, peer) {
            (Some(index), IpAddr::V4(ip)) => index.mac_of(ip),
            _ => None,
        };
        let leased = match (index, call) {
            (Some(index), InstallerCall::Register(registration)) => registration
                .hardware
                .nics
                .iter()
                .filter(|nic| index.has_mac(&nic.mac))
                .map(|nic| nic.mac.clone())
                .collect(),
            _ => Vec::new(),
        };
        let port = match (&self.settings.bindings, &lease_mac) {
            (Some(bindings), Some(mac)) => bindings.port_of_mac(mac),
            _ => None,
        };
        Caller {
            addr: peer,
            lease_mac,
            leased,
            port,
        }
    }

    /// Hands one input to the core and carries out its outcome.
    fn step(&mut self, input: Input) {
        let outcome = self.core.handle(now_ms(), input);
        self.perform(outcome);
    }

    fn perform(&mut self, mut outcome: Outcome) {
        // Not stored means not done: the core goes back to how it was and
        // every answer of this step says why.
        if let Err(error) = self.write(&outcome.writes) {
            tracing::error!(%error, "machine records not stored");
            self.core.restore(std::mem::take(&mut outcome.undo));
            for (_, answer) in &mut outcome.answers {
                *answer = Err(error.clone());
            }
            if let Some((_, reply)) = &mut outcome.reply {
                *reply = Err(error.clone());
            }
            outcome.ports = Some(self.core.ports().clone());
        } else {
            let now = now_ms();
            for after in &outcome.writes {
                let before = outcome
                    .undo
                    .iter()
                    .find(|(uuid, _)| *uuid == after.machine.uuid)
                    .and_then(|(_, before)| before.as_ref());
                self.timer.stored(now, before, after);
            }
        }
        for notice in &outcome.notices {
            tracing::warn!(uuid = %notice.uuid, "{}", notice.message);
        }
        if let Some(ports) = outcome.ports {
            self.ports.send_if_modified(|current| {
                let changed = *current != ports;
                *current = ports;
                changed
            });
        }
        for (ticket, answer) in outcome.answers {
            if let Some(reply) = self.installer_replies.remove(&ticket) {
                let _ = reply.send(answer.map_err(|e| refusal(&e)));
            }
        }
        if let Some((ticket, reply)) = outcome.reply
            && let Some(sender) = self.command_replies.remove(&ticket)
        {
            let _ = sender.send(reply);
        }
    }

    fn write(&self, records: &[MachineRecord]) -> Result<(), MachineError> {
        blocking(|| {
            for record in records {
                let uuid = &record.machine.uuid;
                let not_stored = |reason: String| MachineError::NotStored {
                    uuid: uuid.clone(),
                    reason,
                };
                // The secrets first: a mesh record whose digest names
                // secrets not kept would not load.
                let (public, secrets) = record.split_secrets();
                let kept = (secrets != MachineSecrets::default())
                    .then(|| serde_json::to_string(&secrets))
                    .transpose()
                    .map_err(|e| not_stored(e.to_string()))?;
                self.store
                    .put_local_secret(&secret_key(uuid), kept.as_deref())
                    .map_err(|e| not_stored(e.to_string()))?;
                let json = serde_json::to_string(&public).map_err(|e| not_stored(e.to_string()))?;
                self.store
                    .put_local(
                        RecordKind::Machine,
                        &record_key(&self.settings.switch, uuid),
                        Some(json),
                    )
                    .map_err(|e| not_stored(e.to_string()))?;
            }
            Ok(())
        })
    }

    fn installer(&mut self, request: InstallerRequest) {
        let ticket = self.ticket();
        let caller = self.caller(request.peer, &request.call);
        self.installer_replies.insert(ticket, request.reply);
        self.step(Input::Installer {
            ticket,
            caller,
            call: request.call,
        });
    }

    fn command(&mut self, request: CommandRequest) {
        let ticket = self.ticket();
        let command = match request.command {
            OperatorCommand::List => Command::List,
            OperatorCommand::Describe { uuid } => Command::Describe { uuid },
            OperatorCommand::Free { uuid } => Command::Free { uuid },
            OperatorCommand::Allocate { uuid, request } => {
                let image = blocking(|| {
                    self.images
                        .lookup(self.settings.images.as_ref(), &self.store, &request.image)
                });
                Command::Allocate {
                    uuid,
                    request: Box::new(request),
                    image,
                }
            }
        };
        self.command_replies.insert(ticket, request.reply);
        self.step(Input::Command { ticket, command });
    }

    /// Runs until cancelled.
    pub async fn run(
        &mut self,
        inputs: &mut Inputs,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(TICK);
        inputs.lldp.mark_changed();
        inputs.intents.mark_changed();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                Some(request) = inputs.installer.recv() => self.installer(request),
                Some(mac) = inputs.pxe.recv() => self.step(Input::PxeBooting { mac }),
                Some(request) = inputs.commands.recv() => self.command(request),
                Ok(()) = inputs.lldp.changed() => {
                    let neighbors = neighbor_facts(&inputs.lldp.borrow_and_update());
                    self.step(Input::Neighbors(neighbors));
                }
                Ok(()) = inputs.intents.changed() => {
                    let vrfs = vrf_facts(&inputs.intents.borrow_and_update());
                    self.step(Input::Vrfs(vrfs));
                }
                _ = tick.tick() => {
                    // Answers whose caller went away are not kept.
                    self.installer_replies.retain(|_, reply| !reply.is_closed());
                    self.step(Input::Tick);
                }
            }
        }
    }
}

/// What the core needs of an LLDP snapshot.
pub fn neighbor_facts(snapshot: &LldpSnapshot) -> Vec<NeighborFact> {
    snapshot
        .neighbors
        .iter()
        .map(|n| NeighborFact {
            port: n.local_port.clone(),
            chassis_id: n.chassis_id.clone(),
            source_mac: n.source_mac.to_lowercase(),
        })
        .collect()
}

/// What the core needs of the operator's intents.
pub fn vrf_facts(intents: &Intents) -> Vec<VrfFact> {
    intents
        .vrfs
        .iter()
        .map(|v| VrfFact {
            name: v.name.clone(),
            prefixes: v.prefixes.clone(),
        })
        .collect()
}

/// Runs the machines under the supervisor. The core and its queues have
/// one owner across restarts, so a restarted task resumes where it stopped.
pub fn spawn(supervisor: &mut crate::supervisor::Supervisor, task: MachinesTask, inputs: Inputs) {
    let state = std::sync::Arc::new(tokio::sync::Mutex::new((task, inputs)));
    supervisor.spawn("machines", move |cancel| {
        let state = std::sync::Arc::clone(&state);
        async move {
            let mut guard = state.lock().await;
            let (task, inputs) = &mut *guard;
            task.run(inputs, cancel).await
        }
    });
}
