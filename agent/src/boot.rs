//! The rack's boot services as agent subsystems: DHCP (its own thread, see
//! `metalmesh_provisioning::dhcp::service`), TFTP and HTTP boot.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metalmesh_provisioning::dhcp::service::{DhcpService, LeaseIndex, PortReleases, ServiceConfig};
use metalmesh_provisioning::dhcp::{DhcpCounters, DhcpEvent};
use metalmesh_provisioning::http::{HttpBootConfig, HttpCounters, IpxeSettings};
use metalmesh_provisioning::tftp::{TftpConfig, TftpCounters};
use tokio::sync::mpsc;

use crate::config::BootConfig;
use crate::supervisor::Supervisor;

/// DHCP events waiting for the lifecycle; beyond this they are dropped (and logged).
const EVENT_QUEUE: usize = 4096;

/// What the DHCP service shares with the rest of the agent.
#[derive(Debug, Clone, Default)]
pub struct DhcpShared {
    /// Its counters, refreshed twice a second (for `status`).
    pub counters: Arc<Mutex<Option<DhcpCounters>>>,
    /// Who holds which address (for the machines' installer calls).
    pub leases: LeaseIndex,
    /// Woken when a lease is bound (the packet filter binds its port).
    pub lease_bound: Arc<tokio::sync::Notify>,
    /// Ports whose leases are untied from them (`port unbind`).
    pub released_ports: PortReleases,
}

/// What the boot services count, for the metrics.
#[derive(Debug, Clone)]
pub struct BootCounters {
    pub tftp: Arc<TftpCounters>,
    pub http: Arc<HttpCounters>,
}

/// The running boot services: their counters, and the HTTP server's
/// configuration (phone-home listeners in tenant VRFs serve with it).
#[derive(Debug, Clone)]
pub struct BootServices {
    pub counters: BootCounters,
    pub http: HttpBootConfig,
}

/// Resolves once `interface` is replaced: deleted and created again (by
/// hand, or by the dataplane putting the provisioning bridge back), so it
/// has a new index. Sockets bound to the old one receive nothing; the boot
/// service ends with an error and the supervisor starts it again, bound to
/// the new one.
async fn replaced(interface: &str) {
    let first = metalmesh_packet_socket::interface_index(interface).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = metalmesh_packet_socket::interface_index(interface).ok();
        if now.is_some() && now != first {
            return;
        }
    }
}

pub fn spawn(
    supervisor: &mut Supervisor,
    boot: &BootConfig,
    leaf: &str,
    state_dir: &Path,
    shared: DhcpShared,
    machines: Option<metalmesh_provisioning::http::installer_api::InstallerSender>,
    pxe: Option<mpsc::Sender<String>>,
) -> BootServices {
    for (file, what) in [
        (boot.tftp_root.join(&boot.bios_file), "BIOS iPXE (TFTP)"),
        (
            boot.tftp_root.join(&boot.uefi_x64_file),
            "UEFI x86-64 iPXE (TFTP)",
        ),
        (boot.http_root.join(&boot.kernel), "kernel (HTTP)"),
        (boot.http_root.join(&boot.initrd), "initramfs (HTTP)"),
    ] {
        if !file.is_file() {
            tracing::warn!(file = %file.display(), "boot file missing: {what} requests will fail");
        }
    }

    let dhcp = ServiceConfig {
        settings: boot.dhcp_settings(),
        interface: boot.interface.clone(),
        port: boot.dhcp_port,
        lease_db: state_dir.join("leases.db"),
        index: shared.leases.clone(),
        released_ports: shared.released_ports.clone(),
    };
    let dhcp_counters = shared.counters;
    let lease_bound = shared.lease_bound;
    supervisor.spawn("dhcp", move |cancel| {
        let dhcp = dhcp.clone();
        let counters = Arc::clone(&dhcp_counters);
        let lease_bound = Arc::clone(&lease_bound);
        let pxe = pxe.clone();
        async move {
            let (events_tx, mut events) = mpsc::channel::<DhcpEvent>(EVENT_QUEUE);
            let interface = dhcp.interface.clone();
            let service = DhcpService::start(dhcp, events_tx)?;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let replaced = replaced(&interface);
            tokio::pin!(replaced);
            let mut rebind = false;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = &mut replaced => {
                        rebind = true;
                        break;
                    }
                    Some(event) = events.recv() => {
                        log_event(&event);
                        if matches!(event, DhcpEvent::LeaseBound { .. }) {
                            lease_bound.notify_one();
                        }
                        if let (DhcpEvent::PxeBooting { mac, .. }, Some(pxe)) = (&event, &pxe)
                            && pxe.try_send(mac.clone()).is_err()
                        {
                            tracing::warn!(%mac, "PXE Booting not passed to the machine lifecycle (queue full)");
                        }
                    }
                    _ = tick.tick() => {
                        if let Ok(mut c) = counters.lock() {
                            *c = Some(service.counters());
                        }
                        if service.is_finished() {
                            break;
                        }
                    }
                }
            }
            let stopped = tokio::task::spawn_blocking(move || service.stop()).await?;
            stopped?;
            if rebind {
                anyhow::bail!("{interface} was replaced; DHCP binds to it again");
            }
            if cancel.is_cancelled() {
                Ok(())
            } else {
                anyhow::bail!("DHCP service ended")
            }
        }
    });

    let tftp = TftpConfig {
        root: boot.tftp_root.clone(),
        listen: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), boot.tftp_port),
        interface: Some(boot.interface.clone()),
        max_transfers: boot.max_tftp_transfers,
        max_transfers_per_source: boot.max_tftp_transfers_per_source,
    };
    let tftp_counters = Arc::new(TftpCounters::default());
    let tftp_counters_for_task = Arc::clone(&tftp_counters);
    supervisor.spawn("tftp", move |cancel| {
        let tftp = tftp.clone();
        let counters = Arc::clone(&tftp_counters_for_task);
        async move {
            let interface = tftp.interface.clone().unwrap_or_default();
            tokio::select! {
                served = metalmesh_provisioning::tftp::serve(tftp, counters, cancel) => Ok(served?),
                () = replaced(&interface) => anyhow::bail!("{interface} was replaced; TFTP binds to it again"),
            }
        }
    });

    // All addresses: installed machines phone home to 169.254.0.1 on their
    // routed port, not to the provisioning address.
    let http = HttpBootConfig {
        listen: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), boot.http_port),
        machines,
        root: boot.http_root.clone(),
        image_cache: Some(boot.image_cache(state_dir)),
        ipxe: IpxeSettings {
            base_url: boot.http_base(),
            kernel: boot.kernel.clone(),
            initrd: boot.initrd.clone(),
            cmdline: boot.cmdline.clone(),
            leaf: leaf.to_string(),
        },
        counters: Arc::default(),
        max_connections_per_source: boot.max_http_connections_per_source,
        body_deadline: metalmesh_provisioning::http::BODY_DEADLINE,
    };
    let http_counters = Arc::clone(&http.counters);
    let interface = boot.interface.clone();
    supervisor.spawn("router-advert", move |cancel| {
        let interface = interface.clone();
        async move {
            tokio::select! {
                served = metalmesh_provisioning::router_advert::serve(interface.clone(), cancel) => Ok(served?),
                () = replaced(&interface) => anyhow::bail!("{interface} was replaced; router advertisements bind to it again"),
            }
        }
    });
    let http_config = http.clone();
    supervisor.spawn("http", move |cancel| {
        let http = http.clone();
        async move { Ok(metalmesh_provisioning::http::serve(http, cancel).await?) }
    });
    BootServices {
        counters: BootCounters {
            tftp: tftp_counters,
            http: http_counters,
        },
        http: http_config,
    }
}

/// In VRF-device mode: one phone-home listener per tenant VRF device of the
/// intents (a listener in the default VRF does not see connections that
/// arrive in a tenant VRF), started once the reconciler created the device
/// and stopped when the VRF goes.
pub async fn phone_home_in_vrfs(
    http: HttpBootConfig,
    mut intents: tokio::sync::watch::Receiver<crate::dataplane::Intents>,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let mut running: BTreeMap<
        String,
        (
            tokio_util::sync::CancellationToken,
            tokio::task::JoinHandle<()>,
        ),
    > = BTreeMap::new();
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    loop {
        let wanted: std::collections::BTreeSet<String> = intents
            .borrow_and_update()
            .vrfs
            .iter()
            .map(|vrf| crate::dataplane::desired::vrf_name(vrf.vni))
            .collect();
        running.retain(|vrf, (stop, task)| {
            let keep = wanted.contains(vrf) && !task.is_finished();
            if !keep {
                stop.cancel();
            }
            keep
        });
        for vrf in wanted {
            if running.contains_key(&vrf) {
                continue;
            }
            let stop = cancel.child_token();
            let (http, name, token) = (http.clone(), vrf.clone(), stop.clone());
            let task = tokio::spawn(async move {
                if let Err(error) =
                    metalmesh_provisioning::http::serve_in_vrf(http, &name, token).await
                {
                    // The device is not there yet: tried again within a second.
                    tracing::debug!(vrf = %name, %error, "phone-home listener not running");
                }
            });
            running.insert(vrf, (stop, task));
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            changed = intents.changed() => changed?,
            _ = retry.tick() => {}
        }
    }
}

fn log_event(event: &DhcpEvent) {
    match event {
        DhcpEvent::PxeBooting { mac, kind } => {
            tracing::info!(%mac, kind = kind.as_str(), "PXE Booting")
        }
        DhcpEvent::PoolExhausted { mac, pool_size } => {
            tracing::warn!(%mac, pool_size, "DHCP pool exhausted: no address for this client")
        }
        // One per ACK: debug, or a busy rack's log is all leases.
        DhcpEvent::LeaseBound { mac, ip, kind } => {
            tracing::debug!(%mac, %ip, kind = kind.as_str(), "lease bound")
        }
        DhcpEvent::Declined { mac, ip } => tracing::warn!(%mac, %ip, "address declined"),
    }
}
