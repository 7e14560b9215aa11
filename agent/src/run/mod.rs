//! `metalmesh-agent run`: [`setup`] checks the configuration against the
//! switch and builds every subsystem's inputs; [`Agent::run`] starts them
//! under the supervisor and stops them cleanly on SIGTERM or SIGINT. See
//! `docs/design/agent.md` for the tasks and the channels between them.

mod setup;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::server::{self, AgentView};
use crate::supervisor::Supervisor;
use setup::{Agent, setup};

/// How long subsystems get to stop after a signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub pidfile: Option<PathBuf>,
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    setup(options).await?.run().await
}

impl Agent {
    /// Starts every subsystem, then waits for a signal to stop them.
    async fn run(self) -> anyhow::Result<()> {
        let Agent {
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
            dhcp,
            channels,
            admin_listener,
            _pidfile,
            _socket,
        } = self;
        let config = &loaded.config;
        let mut supervisor = Supervisor::new(CancellationToken::new());

        // Inventory: the kernel's links, and the switch record built from them.
        let (ports_tx, ports_rx) = channels.ports;
        supervisor.spawn("inventory", move |cancel| {
            let ports_tx = Arc::clone(&ports_tx);
            async move { Ok(crate::switch::links::monitor(&ports_tx, cancel).await?) }
        });
        let (switch_tx, switch_rx) = channels.switch;
        {
            let ports_rx = ports_rx.clone();
            supervisor.spawn("switch-record", move |cancel| {
                crate::switch::publish_record(
                    switch_record.clone(),
                    ports_rx.clone(),
                    Arc::clone(&switch_tx),
                    cancel,
                )
            });
        }

        if let Some(lldp) = lldp {
            supervisor.spawn("lldp", move |cancel| lldp.instance().run(cancel));
        }
        let (_, lldp_rx) = channels.lldp;

        // Boot services, and the machines where they run. Where the leaf's
        // packet filter runs too, its machines are bound to their ports.
        let port_bindings = match (&config.boot, config.policy.enabled) {
            (Some(_), true) => Some(crate::policy::bindings::PortBindings::load(
                &config.state_dir.join("port-bindings.json"),
            )?),
            _ => None,
        };
        let lease_db = config.state_dir.join("leases.db");
        let served_lease_db = config.boot.as_ref().map(|_| lease_db.clone());
        let (installer_tx, installer_rx) = channels.installer;
        let (pxe_tx, pxe_rx) = channels.pxe;
        let (machine_commands_tx, machine_commands_rx) = channels.machine_commands;
        let boot_services = config.boot.as_ref().map(|boot| {
            crate::boot::spawn(
                &mut supervisor,
                boot,
                &name,
                &config.state_dir,
                dhcp.clone(),
                Some(installer_tx),
                Some(pxe_tx),
            )
        });

        // The dataplane renders the tenant networks (the operator's intents
        // file, then the API's network records) plus allocated machines'
        // ports and routes learned over BGP.
        let (intents_tx, operator_intents) = watch::channel(initial_intents.clone());
        let (networks_tx, networks_rx) = watch::channel(Vec::new());
        let networks_tx = Arc::new(networks_tx);
        {
            let store = store.clone();
            supervisor.spawn("networks", move |cancel| {
                crate::dataplane::networks::follow(store.clone(), Arc::clone(&networks_tx), cancel)
            });
        }
        let (tenant_tx, tenant_rx) = watch::channel(initial_intents.clone());
        let tenant_tx = Arc::new(tenant_tx);
        {
            let tenant_tx = Arc::clone(&tenant_tx);
            supervisor.spawn("tenant-intents", move |cancel| {
                crate::dataplane::networks::combine(
                    operator_intents.clone(),
                    networks_rx.clone(),
                    Arc::clone(&tenant_tx),
                    cancel,
                )
            });
        }
        let (machine_ports_tx, machine_ports) = channels.machine_ports;
        let (merged_tx, intents_rx) = watch::channel(initial_intents);
        let merged_tx = Arc::new(merged_tx);
        if let Some(services) = &boot_services
            && kernel_mode == crate::dataplane::desired::KernelMode::VrfDevice
        {
            let (http, intents) = (services.http.clone(), intents_rx.clone());
            supervisor.spawn("phone-home-vrfs", move |cancel| {
                crate::boot::phone_home_in_vrfs(http.clone(), intents.clone(), cancel)
            });
        }
        let boot_counters = boot_services.map(|services| services.counters);
        if config.policy.enabled {
            let base = crate::policy::PolicyInputs {
                provisioning: config
                    .boot
                    .as_ref()
                    .map(|boot| crate::policy::Provisioning {
                        bridge: boot.interface.clone(),
                        dhcp_port: boot.dhcp_port,
                        tftp_port: boot.tftp_port,
                        http_port: boot.http_port,
                    }),
                tenant_ports: Default::default(),
                pxe_ports: Default::default(),
                bindings: None,
                fabric_ports: if config.policy.fabric_ports.is_empty() {
                    config
                        .bgp
                        .as_ref()
                        .map(|bgp| bgp.interfaces.iter().map(|i| i.get_ref().clone()).collect())
                        .unwrap_or_default()
                } else {
                    config.policy.fabric_ports.clone()
                },
                underlay: config
                    .policy
                    .underlay
                    .iter()
                    .map(|p| p.get_ref().clone())
                    .collect(),
            };
            let intents = merged_tx.subscribe();
            let identity = port_bindings
                .clone()
                .map(|bindings| crate::policy::Identity {
                    bindings,
                    leases: dhcp.leases.clone(),
                    lease_bound: Arc::clone(&dhcp.lease_bound),
                });
            let guardrails = Arc::new(loaded.guardrails());
            supervisor.spawn("policy", move |cancel| {
                crate::policy::run(
                    base.clone(),
                    Arc::clone(&guardrails),
                    intents.clone(),
                    identity.clone(),
                    cancel,
                )
            });
        }
        let (learned_tx, learned_rx) = watch::channel(Vec::new());
        supervisor.spawn("intents", move |cancel| {
            crate::dataplane::inputs::run(
                tenant_rx.clone(),
                machine_ports.clone(),
                learned_rx.clone(),
                Arc::clone(&merged_tx),
                cancel,
            )
        });
        // Held until the agent stops: with the FRR backend nothing sends on
        // it, and a closed channel would stop the intents task.
        let learned_tx = Arc::new(learned_tx);
        let bgp = crate::bgp::task::SpeakerSlot::default();
        let mut frr = None;
        match loaded.bgp.as_ref().map(|s| (s, &s.backend)) {
            None => {}
            Some((settings, crate::bgp::Backend::Native)) => {
                let task = crate::bgp::task::BgpTask {
                    settings: settings.clone(),
                    ports: ports_rx.clone(),
                    intents: intents_rx.clone(),
                    learned: Arc::clone(&learned_tx),
                    slot: Arc::clone(&bgp),
                };
                supervisor.spawn("bgp", move |cancel| task.clone().run(cancel));
            }
            Some((settings, crate::bgp::Backend::Frr(vtysh))) => {
                // FRR's zebra installs what BGP learns: the dataplane's
                // third input (learned tenant routes) stays empty.
                let handle = crate::bgp::frr::FrrHandle {
                    vtysh: vtysh.clone(),
                    status: Arc::default(),
                };
                let task = crate::bgp::frr::FrrTask {
                    settings: settings.clone(),
                    vtysh: vtysh.clone(),
                    ports: ports_rx.clone(),
                    intents: intents_rx.clone(),
                    status: Arc::clone(&handle.status),
                };
                supervisor.spawn("bgp-frr", move |cancel| task.clone().run(cancel));
                frr = Some(handle);
            }
        }
        let provisioning_durations = crate::machines::durations::ProvisioningHistograms::default();
        let machine_commands = match &config.boot {
            None => None,
            Some(boot) => {
                let settings = crate::machines::task::Settings {
                    switch: name.clone(),
                    thresholds: config.machines.thresholds(),
                    wipe: config.machines.wipe,
                    images: Some(crate::machines::task::ImageSource {
                        dir: boot.http_root.join("images"),
                        base_url: format!("{}/boot/images", boot.http_base()),
                        cache_dir: boot.image_cache(&config.state_dir),
                        cache_url: format!("{}/images", boot.http_base()),
                    }),
                    leases: Some(dhcp.leases.clone()),
                    durations: provisioning_durations.clone(),
                    bindings: port_bindings.clone(),
                };
                let (core_commands_tx, core_commands_rx) = tokio::sync::mpsc::channel(64);
                let task = crate::machines::task::MachinesTask::load(
                    settings,
                    store.clone(),
                    machine_ports_tx,
                )?;
                let inputs = crate::machines::task::Inputs {
                    installer: installer_rx,
                    pxe: pxe_rx,
                    commands: core_commands_rx,
                    lldp: lldp_rx.clone(),
                    intents: tenant_tx.subscribe(),
                };
                crate::machines::task::spawn(&mut supervisor, task, inputs);
                // Callers' allocations wait for their image here, never
                // in the core's task.
                crate::images::spawn_gate(
                    &mut supervisor,
                    crate::images::ImageCache::new(
                        boot.image_cache(&config.state_dir),
                        store.clone(),
                        boot.image_max_bytes,
                    ),
                    machine_commands_rx,
                    core_commands_tx,
                );
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
            guardrails: Arc::new(loaded.guardrails()),
            intents: intents_rx,
            report: Arc::default(),
            owned_ports: Some(crate::dataplane::reconcile::OwnedPorts::load(
                &config.state_dir,
            )?),
            provisioning: config.boot.as_ref().map(|boot| {
                crate::dataplane::kernel::ProvisioningBridge {
                    name: boot.interface.clone(),
                    address: boot.server_ip,
                    prefix_len: *boot.prefix_len.get_ref(),
                }
            }),
            bridge_ports: match &config.boot {
                Some(_) => Some(crate::dataplane::reconcile::OwnedPorts::load_bridge_ports(
                    &config.state_dir,
                )?),
                None => None,
            },
        };
        {
            let reconciler = reconciler.clone();
            supervisor.spawn("dataplane", move |cancel| reconciler.clone().run(cancel));
        }

        if let (Some(mesh), Some(credentials), Some(view)) =
            (&config.mesh, mesh_credentials, &mesh_view)
        {
            crate::mesh::spawn_mesh(
                &mut supervisor,
                crate::mesh::mesh_settings(mesh, &config.state_dir, &name, config.switch.loopback),
                credentials,
                store.clone(),
                view.clone(),
                machine_commands.clone(),
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
            loaded.bgp.as_ref().map(|b| match &b.backend {
                crate::bgp::Backend::Native => crate::bgp::Sessions::Native(Arc::clone(&bgp)),
                crate::bgp::Backend::Frr(vtysh) => crate::bgp::Sessions::Frr(vtysh.clone()),
            }),
        );
        crate::mesh::spawn_follower(&mut supervisor, store.clone());

        let view = AgentView {
            bgp_identity: loaded.bgp.as_ref().map(|b| (b.asn, b.router_id)),
            bgp: loaded
                .bgp
                .as_ref()
                .filter(|b| b.backend == crate::bgp::Backend::Native)
                .map(|_| bgp),
            frr,
            machines: machine_commands,
            store,
            mesh: mesh_view,
            dataplane: reconciler,
            intents: Arc::new(intents_tx),
            intents_file,
            kernel_mode,
            lease_db: served_lease_db,
            dhcp_pool_size: config
                .boot
                .as_ref()
                .map(|boot| u64::from(boot.dhcp_settings().pool_size())),
            dhcp_counters: dhcp.counters,
            released_ports: dhcp.released_ports,
            boot_counters,
            provisioning_durations: config.boot.as_ref().map(|_| provisioning_durations),
            started: Instant::now(),
            config_path: options.config.clone(),
            state_dir: config.state_dir.clone(),
            lldp_patterns: loaded.lldp_ports.patterns().map(str::to_string).collect(),
            switch: switch_rx,
            ports: ports_rx,
            lldp: lldp_rx,
            health: supervisor.health(),
            apply_lock: Arc::default(),
            port_bindings: port_bindings.clone(),
        };
        {
            let (view, listen) = (Arc::new(view.clone()), config.metrics.listen);
            supervisor.spawn("metrics", move |cancel| {
                crate::metrics::serve(listen, Arc::clone(&view), cancel)
            });
        }
        let admin_peers = server::AdminPeers::new(config.admin.group.as_deref())?;
        supervisor.spawn("admin", move |cancel| {
            server::serve(
                Arc::clone(&admin_listener),
                view.clone(),
                admin_peers.clone(),
                cancel,
            )
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
#[derive(Debug)]
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
