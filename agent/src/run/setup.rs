//! Everything `metalmesh-agent run` checks and builds before a task starts:
//! the configuration against the switch's ports, the inventory store, mesh
//! credentials, the stored dataplane intents, the admin socket, and the
//! channels the subsystems talk over. A problem here stops the start with
//! the file or setting named, rather than later in a restart loop.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use metalmesh_inventory::Store;
use metalmesh_inventory::mesh::service::MeshView;
use metalmesh_inventory::pki::NodeCredentials;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};

use super::{RemoveOnDrop, RunOptions, create_pid_file};
use crate::boot::DhcpShared;
use crate::config::{Loaded, parse_mac};
use crate::dataplane::{Intents, KernelMode};
use crate::lldp::task::LldpTemplate;
use crate::lldp::{LldpSnapshot, LocalSystem, Settings};
use crate::machines::core::MachinePorts;
use crate::machines::task::CommandRequest;
use crate::switch::{self, Port, SwitchRecord, links};
use metalmesh_provisioning::http::installer_api::InstallerRequest;

/// The agent, built and checked, nothing running yet.
#[derive(Debug)]
pub(super) struct Agent {
    pub(super) options: RunOptions,
    pub(super) loaded: Loaded,
    pub(super) name: String,
    pub(super) kernel_mode: KernelMode,
    pub(super) store: Store,
    pub(super) mesh_credentials: Option<NodeCredentials>,
    pub(super) mesh_view: Option<MeshView>,
    pub(super) initial_intents: Intents,
    pub(super) intents_file: PathBuf,
    pub(super) switch_record: SwitchRecord,
    pub(super) lldp: Option<LldpTemplate>,
    pub(super) dhcp: DhcpShared,
    pub(super) channels: Channels,
    pub(super) admin_listener: Arc<UnixListener>,
    /// Removed when the agent stops.
    pub(super) _pidfile: Option<RemoveOnDrop>,
    pub(super) _socket: RemoveOnDrop,
}

/// A watched value: the sender (shared by a task's restarts) and a receiver.
pub(super) type Watched<T> = (Arc<watch::Sender<T>>, watch::Receiver<T>);

/// The channels between subsystems: each sender and receiver is taken by
/// the subsystem that owns that end.
#[derive(Debug)]
pub(super) struct Channels {
    pub(super) ports: Watched<Option<Vec<Port>>>,
    pub(super) switch: Watched<Option<SwitchRecord>>,
    pub(super) lldp: Watched<LldpSnapshot>,
    pub(super) installer: (
        mpsc::Sender<InstallerRequest>,
        mpsc::Receiver<InstallerRequest>,
    ),
    pub(super) pxe: (mpsc::Sender<String>, mpsc::Receiver<String>),
    pub(super) machine_commands: (mpsc::Sender<CommandRequest>, mpsc::Receiver<CommandRequest>),
    /// The machines' routed ports, merged into the operator's intents.
    pub(super) machine_ports: (watch::Sender<MachinePorts>, watch::Receiver<MachinePorts>),
}

pub(super) async fn setup(options: RunOptions) -> anyhow::Result<Agent> {
    let loaded = Loaded::load(&options.config)?;
    let config = &loaded.config;
    std::fs::create_dir_all(&config.state_dir).with_context(|| {
        format!(
            "cannot create state directory {}",
            config.state_dir.display()
        )
    })?;

    let ports = links::dump_once().await?;
    let kernel_mode = {
        use crate::config::KernelModeChoice;
        use crate::dataplane::desired::KernelMode;
        let (handle, _driver) = crate::netlink::connect()?;
        match config.switch.kernel_mode {
            KernelModeChoice::RoutingTables => KernelMode::RoutingTables,
            choice => {
                let detected = crate::dataplane::mode::detect(&handle).await;
                if choice == KernelModeChoice::VrfDevices && detected != KernelMode::VrfDevice {
                    anyhow::bail!(
                        "switch.kernel_mode = \"vrf_devices\", but this kernel has no VRF devices (CONFIG_NET_VRF)"
                    );
                }
                detected
            }
        }
    };
    let names: Vec<String> = ports.iter().map(|p| p.name.clone()).collect();
    loaded.check_ports_exist(&names)?;
    let chassis_mac = match &config.switch.chassis_mac {
        Some(text) => parse_mac(text).context("switch.chassis_mac")?,
        None => switch::default_chassis_mac(&ports).context(
            "no interface with a MAC address to use as chassis ID; set switch.chassis_mac",
        )?,
    };
    let name = config.switch.name.clone().unwrap_or_else(switch::host_name);
    let rack = config.switch.rack.clone().unwrap_or_else(|| name.clone());

    let mesh_credentials = config
        .mesh
        .as_ref()
        .map(|mesh| crate::mesh::load_credentials(mesh, &config.state_dir, &name))
        .transpose()?;
    let store = crate::mesh::open_store(&config.state_dir, &name, mesh_credentials.as_ref())?;
    let intents_file = crate::dataplane::reconcile::intents_file(&config.state_dir);
    let initial_intents = crate::dataplane::reconcile::load_intents(&intents_file)?;

    let admin_listener = Arc::new(
        crate::admin::server::bind(&config.admin.socket, config.admin.group.as_deref()).await?,
    );
    let _pidfile = options
        .pidfile
        .as_deref()
        .map(create_pid_file)
        .transpose()?;
    let _socket = RemoveOnDrop(config.admin.socket.clone());

    let switch_record = SwitchRecord {
        name: name.clone(),
        partition: config.switch.partition.clone(),
        rack,
        loopback: config.switch.loopback,
        asn: config.switch.asn,
        chassis_mac: metalmesh_lldp::format_mac(&chassis_mac),
        ports: Vec::new(),
    };

    let (ports_tx, ports_rx) = watch::channel(Some(ports));
    let (switch_tx, switch_rx) = watch::channel(None);
    let (lldp_tx, lldp_rx) = watch::channel(LldpSnapshot::default());
    let channels = Channels {
        ports: (Arc::new(ports_tx), ports_rx),
        switch: (Arc::new(switch_tx), switch_rx),
        lldp: (Arc::new(lldp_tx), lldp_rx),
        installer: mpsc::channel(256),
        pxe: mpsc::channel(1024),
        machine_commands: mpsc::channel(64),
        machine_ports: watch::channel(Vec::new()),
    };
    let lldp = config.lldp.enabled.then(|| LldpTemplate {
        local: LocalSystem {
            name: name.clone(),
            description: format!("metalmesh-agent {}", env!("CARGO_PKG_VERSION")),
            chassis_mac,
            management_address: Some(IpAddr::V4(config.switch.loopback)),
            management_ifindex: 1,
        },
        settings: Settings {
            tx_interval: Duration::from_secs(u64::from(*config.lldp.tx_interval_secs.get_ref())),
            hold_multiplier: *config.lldp.hold_multiplier.get_ref(),
            max_neighbors_per_port: *config.lldp.max_neighbors_per_port.get_ref() as usize,
        },
        selector: loaded.lldp_ports.clone(),
        ports: channels.ports.1.clone(),
        snapshot: Arc::clone(&channels.lldp.0),
    });
    let mesh_view = config.mesh.as_ref().map(|_| MeshView::default());

    Ok(Agent {
        options,
        loaded,
        name,
        kernel_mode,
        store,
        mesh_credentials,
        mesh_view,
        initial_intents,
        intents_file,
        switch_record,
        lldp,
        dhcp: DhcpShared::default(),
        channels,
        admin_listener,
        _pidfile,
        _socket,
    })
}
