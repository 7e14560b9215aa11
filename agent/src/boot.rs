//! The rack's boot services as agent subsystems: DHCP (its own thread, see
//! `metalmesh_provisioning::dhcp::service`), TFTP and HTTP boot.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metalmesh_provisioning::dhcp::service::{DhcpService, LeaseIndex, ServiceConfig};
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
}

/// What the boot services count, for the metrics.
#[derive(Debug, Clone)]
pub struct BootCounters {
    pub tftp: Arc<TftpCounters>,
    pub http: Arc<HttpCounters>,
}

pub fn spawn(
    supervisor: &mut Supervisor,
    boot: &BootConfig,
    leaf: &str,
    state_dir: &Path,
    shared: DhcpShared,
    machines: Option<metalmesh_provisioning::http::installer_api::InstallerSender>,
    pxe: Option<mpsc::Sender<String>>,
) -> BootCounters {
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
            let service = DhcpService::start(dhcp, events_tx)?;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
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
        async move { Ok(metalmesh_provisioning::tftp::serve(tftp, counters, cancel).await?) }
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
        async move { Ok(metalmesh_provisioning::router_advert::serve(interface, cancel).await?) }
    });
    supervisor.spawn("http", move |cancel| {
        let http = http.clone();
        async move { Ok(metalmesh_provisioning::http::serve(http, cancel).await?) }
    });
    BootCounters {
        tftp: tftp_counters,
        http: http_counters,
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
