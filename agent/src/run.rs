//! `metalmesh-agent run`: loads the configuration, checks it against the
//! switch, starts every subsystem under the supervisor and stops them
//! cleanly on SIGTERM or SIGINT.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::server::{self, AgentView};
use crate::config::{Loaded, parse_mac};
use crate::lldp::task::LldpTask;
use crate::lldp::{LldpSnapshot, LocalSystem, Settings};
use crate::supervisor::Supervisor;
use crate::switch::{self, Port, SwitchRecord, links};
use metalmesh_inventory::mesh::service::MeshView;

/// How long subsystems get to stop after a signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub pidfile: Option<PathBuf>,
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
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
        let (handle, _driver) = crate::netlink::connect()?;
        crate::dataplane::mode::detect(&handle).await
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

    // The inventory store and mesh credentials: problems stop the start here,
    // with the file named, rather than later in a restart loop.
    let store = crate::mesh::open_store(&config.state_dir, &name)?;
    let mesh_credentials = config
        .mesh
        .as_ref()
        .map(|mesh| crate::mesh::load_credentials(mesh, &config.state_dir, &name))
        .transpose()?;

    let listener = Arc::new(server::bind(&config.admin.socket).await?);
    let _pidfile = options
        .pidfile
        .as_deref()
        .map(create_pid_file)
        .transpose()?;
    let _socket = RemoveOnDrop(config.admin.socket.clone());

    let cancel = CancellationToken::new();
    let mut supervisor = Supervisor::new(cancel.clone());
    let (ports_tx, ports_rx) = watch::channel::<Option<Vec<Port>>>(Some(ports));
    let ports_tx = Arc::new(ports_tx);
    let (switch_tx, switch_rx) = watch::channel::<Option<SwitchRecord>>(None);
    let (lldp_tx, lldp_rx) = watch::channel(LldpSnapshot::default());
    let lldp_tx = Arc::new(lldp_tx);

    // Inventory: the kernel's links, and the switch record built from them.
    {
        let ports_tx = Arc::clone(&ports_tx);
        supervisor.spawn("inventory", move |cancel| {
            let ports_tx = Arc::clone(&ports_tx);
            async move { Ok(links::monitor(&ports_tx, cancel).await?) }
        });
        let record_ports = ports_rx.clone();
        let record = SwitchRecord {
            name: name.clone(),
            partition: config.switch.partition.clone(),
            rack,
            loopback: config.switch.loopback,
            asn: config.switch.asn,
            chassis_mac: metalmesh_lldp::format_mac(&chassis_mac),
            ports: Vec::new(),
        };
        let switch_tx = Arc::new(switch_tx);
        supervisor.spawn("switch-record", move |cancel| {
            let switch_tx = Arc::clone(&switch_tx);
            let mut record = record.clone();
            let mut ports_rx = record_ports.clone();
            async move {
                ports_rx.mark_changed();
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return Ok(()),
                        changed = ports_rx.changed() => changed?,
                    }
                    record.ports = ports_rx.borrow_and_update().clone().unwrap_or_default();
                    switch_tx.send_replace(Some(record.clone()));
                }
            }
        });
    }

    if config.lldp.enabled {
        let task = LldpTaskTemplate {
            local: LocalSystem {
                name: name.clone(),
                description: format!("metalmesh-agent {}", env!("CARGO_PKG_VERSION")),
                chassis_mac,
                management_address: Some(IpAddr::V4(config.switch.loopback)),
                management_ifindex: 1,
            },
            settings: Settings {
                tx_interval: Duration::from_secs(u64::from(
                    *config.lldp.tx_interval_secs.get_ref(),
                )),
                hold_multiplier: *config.lldp.hold_multiplier.get_ref(),
                max_neighbors_per_port: *config.lldp.max_neighbors_per_port.get_ref() as usize,
            },
            selector: loaded.lldp_ports.clone(),
            ports: ports_rx.clone(),
            snapshot: Arc::clone(&lldp_tx),
        };
        supervisor.spawn("lldp", move |cancel| task.instance().run(cancel));
    }

    let dhcp = crate::boot::DhcpShared::default();
    let lease_db = config.state_dir.join("leases.db");
    // The lease store exists only where this leaf serves DHCP.
    let served_lease_db = config.boot.as_ref().map(|_| lease_db.clone());
    // Machines are managed where boot services run.
    let (installer_tx, installer_rx) = tokio::sync::mpsc::channel(256);
    let (pxe_tx, pxe_rx) = tokio::sync::mpsc::channel(1024);
    let (machine_commands_tx, machine_commands_rx) = tokio::sync::mpsc::channel(64);
    if let Some(boot) = &config.boot {
        crate::boot::spawn(
            &mut supervisor,
            boot,
            &name,
            &lease_db,
            dhcp.clone(),
            Some(installer_tx),
            Some(pxe_tx),
        );
    }

    // The dataplane: intents as last given (persisted), reconciled for this kernel.
    let intents_file = crate::dataplane::reconcile::intents_file(&config.state_dir);
    let intents = match std::fs::read_to_string(&intents_file) {
        Ok(text) => toml::from_str::<crate::dataplane::Intents>(&text).with_context(|| {
            format!("stored dataplane intents {} are unreadable (refusing to start rather than tear the dataplane down)", intents_file.display())
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => crate::dataplane::Intents::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", intents_file.display())),
    };
    let (intents_tx, operator_intents) = watch::channel(intents.clone());
    // The dataplane renders the operator's intents plus allocated machines' ports.
    let (machine_ports_tx, machine_ports) = watch::channel(Vec::new());
    let (merged_tx, intents_rx) = watch::channel(intents);
    {
        let merged_tx = Arc::new(merged_tx);
        supervisor.spawn("intents", move |cancel| {
            let (merged_tx, mut operator, mut machines) = (
                Arc::clone(&merged_tx),
                operator_intents.clone(),
                machine_ports.clone(),
            );
            async move {
                loop {
                    let merged = crate::machines::task::merge(
                        &operator.borrow_and_update(),
                        &machines.borrow_and_update(),
                    );
                    merged_tx.send_if_modified(|current| {
                        let changed = *current != merged;
                        *current = merged;
                        changed
                    });
                    tokio::select! {
                        () = cancel.cancelled() => return Ok(()),
                        changed = operator.changed() => changed?,
                        changed = machines.changed() => changed?,
                    }
                }
            }
        });
    }
    let machine_commands = match &config.boot {
        None => None,
        Some(boot) => {
            let settings = crate::machines::task::Settings {
                switch: name.clone(),
                thresholds: config.machines.thresholds(),
                images: Some(crate::machines::task::ImageSource {
                    dir: boot.http_root.join("images"),
                    base_url: format!("{}/boot/images", boot.http_base()),
                }),
                leases: Some(dhcp.leases.clone()),
            };
            let task = crate::machines::task::MachinesTask::load(
                settings,
                store.clone(),
                machine_ports_tx,
            )?;
            let inputs = crate::machines::task::Inputs {
                installer: installer_rx,
                pxe: pxe_rx,
                commands: machine_commands_rx,
                lldp: lldp_rx.clone(),
                intents: intents_tx.subscribe(),
            };
            // One owner across supervisor restarts: the core and its queues.
            let state = Arc::new(tokio::sync::Mutex::new((task, inputs)));
            supervisor.spawn("machines", move |cancel| {
                let state = Arc::clone(&state);
                async move {
                    let mut guard = state.lock().await;
                    let (task, inputs) = &mut *guard;
                    task.run(inputs, cancel).await
                }
            });
            Some(machine_commands_tx)
        }
    };
    let reconciler = crate::dataplane::reconcile::Reconciler {
        mode: kernel_mode,
        vtep: config.switch.loopback,
        provisioning_bridge: config
            .boot
            .as_ref()
            .map(|b| b.interface.clone())
            .unwrap_or_else(|| "mm-pxe".into()),
        intents: intents_rx,
        report: Arc::default(),
    };
    {
        let reconciler = reconciler.clone();
        supervisor.spawn("dataplane", move |cancel| reconciler.clone().run(cancel));
    }

    let mesh_view = config.mesh.as_ref().map(|_| MeshView::default());
    if let (Some(mesh), Some(credentials), Some(view)) =
        (&config.mesh, mesh_credentials, &mesh_view)
    {
        crate::mesh::spawn_mesh(
            &mut supervisor,
            mesh,
            credentials,
            &name,
            config.switch.loopback,
            store.clone(),
            view.clone(),
        );
    }
    crate::mesh::spawn_publisher(
        &mut supervisor,
        store.clone(),
        switch_rx.clone(),
        lldp_rx.clone(),
        served_lease_db.clone(),
        config
            .mesh
            .as_ref()
            .map(|mesh| mesh.advertise_addr(config.switch.loopback).to_string()),
    );
    crate::mesh::spawn_follower(&mut supervisor, store.clone());

    let view = AgentView {
        machines: machine_commands,
        store,
        mesh: mesh_view,
        dataplane: reconciler,
        intents: Arc::new(intents_tx),
        intents_file,
        kernel_mode,
        lease_db: served_lease_db,
        dhcp_counters: dhcp.counters,
        started: Instant::now(),
        config_path: options.config.clone(),
        state_dir: config.state_dir.clone(),
        lldp_patterns: loaded.lldp_ports.patterns().map(str::to_string).collect(),
        switch: switch_rx,
        ports: ports_rx,
        lldp: lldp_rx,
        health: supervisor.health(),
    };
    supervisor.spawn("admin", move |cancel| {
        server::serve(Arc::clone(&listener), view.clone(), cancel)
    });

    tracing::info!(
        switch = %name, loopback = %config.switch.loopback, asn = config.switch.asn, ?kernel_mode,
        socket = %config.admin.socket.display(), "metalmesh-agent running"
    );
    wait_for_signal().await?;
    tracing::info!("shutting down");
    supervisor.shutdown(SHUTDOWN_GRACE).await;
    Ok(())
}

/// The parts of an LLDP task a restart builds afresh from.
struct LldpTaskTemplate {
    local: LocalSystem,
    settings: Settings,
    selector: crate::config::PortSelector,
    ports: watch::Receiver<Option<Vec<Port>>>,
    snapshot: Arc<watch::Sender<LldpSnapshot>>,
}

impl LldpTaskTemplate {
    fn instance(&self) -> LldpTask {
        LldpTask {
            local: self.local.clone(),
            settings: self.settings.clone(),
            selector: self.selector.clone(),
            ports: self.ports.clone(),
            snapshot: Arc::clone(&self.snapshot),
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}

/// Writes the agent's pid file; it is removed on clean exit.
fn create_pid_file(path: &Path) -> anyhow::Result<RemoveOnDrop> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write pid file {}", path.display()))?;
    Ok(RemoveOnDrop(path.to_path_buf()))
}

/// A file removed when this is dropped (pid file, admin socket).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
