//! The DHCP server's socket loop, on its own thread: it receives a batch of
//! datagrams, lets the protocol logic answer them, commits every lease of the
//! batch in one transaction, and only then sends the replies, so a client
//! never holds an ACK the store could forget (group commit).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc;

use super::leases::{LeaseStore, StoreError};
use super::server::{DhcpCounters, DhcpEvent, DhcpServer, Origin};
use super::settings::{DhcpSettings, SettingsError};

/// The packet mark the leaf's bridge filter gives a DHCP datagram that came
/// in on a provisioning port: this tag in the upper 16 bits, the port's
/// interface index in the lower 16.
pub const PORT_MARK_TAG: u32 = 0x4d4d_0000;

/// The mark for a datagram from the port with `ifindex` (`None` when the
/// index does not fit the mark).
pub fn port_mark(ifindex: u32) -> Option<u32> {
    (ifindex > 0 && ifindex <= 0xffff).then_some(PORT_MARK_TAG | ifindex)
}

/// The port a marked datagram came in on.
fn port_of_mark(mark: Option<u32>) -> Option<String> {
    let mark = mark?;
    if mark & 0xffff_0000 != PORT_MARK_TAG {
        return None;
    }
    metalmesh_packet_socket::marks::interface_name(mark & 0xffff).ok()
}

/// Datagrams handled per batch (and per transaction).
const BATCH: usize = 256;
/// How often the loop checks whether it should stop.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("DHCP settings: {0}")]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open DHCP socket on {interface} port {port}: {source}")]
    Socket {
        interface: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("the DHCP server thread panicked")]
    Panicked,
}

/// Where and how the service runs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub settings: DhcpSettings,
    /// Interface the server answers on (the provisioning bridge).
    pub interface: String,
    /// UDP port (67; tests and benchmarks may use another).
    pub port: u16,
    pub lease_db: PathBuf,
    /// Kept current with every committed batch, for readers on the leaf
    /// (who holds which address) that must not open the database per call.
    pub index: LeaseIndex,
    /// Ports whose leases are to be untied from them (an operator's
    /// `port unbind`).
    pub released_ports: PortReleases,
}

/// Ports whose leases the DHCP service is to untie from them (the machine
/// behind the port moved): a cheap shared handle, applied by the service's
/// loop within its poll interval.
#[derive(Debug, Clone, Default)]
pub struct PortReleases {
    queue: Arc<Mutex<Vec<String>>>,
}

impl PortReleases {
    pub fn release(&self, port: &str) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.push(port.to_string());
        }
    }

    fn take(&self) -> Vec<String> {
        self.queue
            .lock()
            .map(|mut q| q.drain(..).collect())
            .unwrap_or_default()
    }
}

/// Who holds which address, as the DHCP service last committed it: a cheap
/// shared handle.
#[derive(Debug, Clone, Default)]
pub struct LeaseIndex {
    inner: Arc<std::sync::RwLock<IndexState>>,
}

#[derive(Debug, Default)]
struct IndexState {
    by_ip: std::collections::HashMap<Ipv4Addr, String>,
    by_mac: std::collections::HashMap<String, Ipv4Addr>,
}

impl IndexState {
    fn forget(&mut self, mac: &str) {
        if let Some(ip) = self.by_mac.remove(mac) {
            self.by_ip.remove(&ip);
        }
    }

    fn lease(&mut self, mac: &str, ip: Ipv4Addr) {
        self.forget(mac);
        // The address may move from another MAC to this one.
        if let Some(previous) = self.by_ip.insert(ip, mac.to_string()) {
            self.by_mac.remove(&previous);
        }
        self.by_mac.insert(mac.to_string(), ip);
    }
}

impl LeaseIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The MAC the address is leased to.
    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<String> {
        self.read().by_ip.get(&ip).cloned()
    }

    /// Every lease holder's address, by MAC (lower case).
    pub fn entries(&self) -> std::collections::BTreeMap<String, Ipv4Addr> {
        self.read()
            .by_mac
            .iter()
            .map(|(mac, ip)| (mac.to_ascii_lowercase(), *ip))
            .collect()
    }

    /// Whether the MAC holds a lease.
    pub fn has_mac(&self, mac: &str) -> bool {
        self.read().by_mac.contains_key(mac)
    }

    /// Replaces the index with `leases` (the store as loaded).
    pub fn reset(&self, leases: &[super::Lease]) {
        let mut state = IndexState::default();
        for lease in leases {
            state.lease(&lease.mac, lease.ip);
        }
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Applies one committed batch.
    pub fn apply(&self, writes: &[super::leases::Write]) {
        use super::leases::Write;
        let mut state = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for write in writes {
            match write {
                Write::Lease(lease) => state.lease(&lease.mac, lease.ip),
                Write::Forget { mac } => state.forget(mac),
                Write::Quarantine(_) => {}
            }
        }
    }
}

/// A running DHCP service.
#[derive(Debug)]
pub struct DhcpService {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), ServiceError>>>,
    counters: Arc<Mutex<DhcpCounters>>,
}

fn open_socket(interface: &str, port: u16) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    // Only the provisioning bridge: a leaf must never answer DHCP on its uplinks.
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    socket.set_recv_buffer_size(4 * 1024 * 1024)?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(POLL))?;
    if let Err(error) = metalmesh_packet_socket::marks::receive_marks(&socket) {
        // Kernels before 5.19: leases are not tied to ports (no per-port
        // quota or RELEASE check); everything else works.
        tracing::warn!(%error, "DHCP cannot read packet marks: the bridge port of a request stays unknown");
    }
    Ok(socket)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl DhcpService {
    /// Validates, opens the store and the socket, and starts the loop.
    pub fn start(
        config: ServiceConfig,
        events: mpsc::Sender<DhcpEvent>,
    ) -> Result<Self, ServiceError> {
        config.settings.validate()?;
        let store = LeaseStore::open(&config.lease_db)?;
        let leases = store.leases()?;
        config.index.reset(&leases);
        let server = DhcpServer::new(config.settings.clone(), leases, store.quarantine()?);
        let socket =
            open_socket(&config.interface, config.port).map_err(|source| ServiceError::Socket {
                interface: config.interface.clone(),
                port: config.port,
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Mutex::new(DhcpCounters::default()));
        let thread = {
            let stop = Arc::clone(&stop);
            let counters = Arc::clone(&counters);
            let forget = config.released_ports.clone();
            let index = config.index.clone();
            std::thread::Builder::new()
                .name("dhcp".into())
                .spawn(move || {
                    serve(
                        socket,
                        Loop {
                            server,
                            store,
                            index: &index,
                            events,
                            stop: &stop,
                            counters: &counters,
                            released_ports: &forget,
                        },
                    )
                })
                .map_err(|source| ServiceError::Socket {
                    interface: config.interface.clone(),
                    port: config.port,
                    source,
                })?
        };
        tracing::info!(interface = %config.interface, port = config.port, "DHCP server running");
        Ok(DhcpService {
            stop,
            thread: Some(thread),
            counters,
        })
    }

    pub fn counters(&self) -> DhcpCounters {
        self.counters.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Whether the loop has ended (it only ends on a store failure or stop).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the loop and returns how it ended.
    pub fn stop(mut self) -> Result<(), ServiceError> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ServiceError::Panicked),
            None => Ok(()),
        }
    }
}

impl Drop for DhcpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What the socket loop works with.
struct Loop<'a> {
    server: DhcpServer,
    store: LeaseStore,
    index: &'a LeaseIndex,
    events: mpsc::Sender<DhcpEvent>,
    stop: &'a AtomicBool,
    counters: &'a Mutex<DhcpCounters>,
    released_ports: &'a PortReleases,
}

/// One datagram and where it came from.
fn receive(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(Origin, Vec<u8>)> {
    let got = metalmesh_packet_socket::marks::recv_marked(socket, buf)?;
    let origin = Origin {
        address: *got.from.ip(),
        port: port_of_mark(got.mark),
    };
    Ok((origin, buf[..got.len.min(buf.len())].to_vec()))
}

fn serve(socket: UdpSocket, state: Loop<'_>) -> Result<(), ServiceError> {
    let Loop {
        mut server,
        mut store,
        index,
        events,
        stop,
        counters,
        released_ports,
    } = state;
    let mut buf = vec![0u8; 2048];
    let mut batch: Vec<(Origin, Vec<u8>)> = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::SeqCst) {
        batch.clear();
        let ports = released_ports.take();
        if !ports.is_empty() {
            let writes: Vec<_> = ports.iter().flat_map(|p| server.forget_port(p)).collect();
            if let Err(error) = store.commit(&writes) {
                tracing::error!(%error, "cannot persist leases; not answering");
                return Err(error.into());
            }
            index.apply(&writes);
            tracing::info!(ports = ?ports, leases = writes.len(), "leases untied from their ports");
        }
        // Block for the first datagram, then take whatever else is queued.
        socket.set_nonblocking(false).ok();
        match receive(&socket, &mut buf) {
            Ok(received) => batch.push(received),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "DHCP receive failed");
                continue;
            }
        }
        socket.set_nonblocking(true).ok();
        while batch.len() < BATCH {
            match receive(&socket, &mut buf) {
                Ok(received) => batch.push(received),
                Err(_) => break,
            }
        }
        let now = now_ms();
        let mut writes = Vec::new();
        let mut replies = Vec::new();
        for (origin, datagram) in &batch {
            let outcome = server.handle(now, origin, datagram);
            writes.extend(outcome.writes);
            replies.extend(outcome.replies);
            for event in outcome.events {
                if events.try_send(event).is_err() {
                    tracing::debug!("DHCP event queue full; event dropped");
                }
            }
        }
        // Durable before any ACK leaves. If the disk fails, no ACK is sent
        // and the loop ends; the supervisor restarts it from the store.
        if let Err(error) = store.commit(&writes) {
            tracing::error!(%error, "cannot persist leases; not answering");
            return Err(error.into());
        }
        index.apply(&writes);
        socket.set_nonblocking(false).ok();
        for reply in replies.drain(..) {
            if let Err(error) = socket.send_to(&reply.bytes, reply.destination) {
                tracing::debug!(%error, to = %reply.destination, "DHCP send failed");
            }
        }
        if let Ok(mut c) = counters.lock() {
            *c = server.counters().clone();
        }
    }
    Ok(())
}

/// Reads the leases of a store file beside its running server (admin API,
/// mesh publisher).
pub fn read_leases(path: &Path) -> Result<Vec<super::Lease>, StoreError> {
    if !path.exists() {
        // The DHCP server has not created its store yet: no leases.
        return Ok(Vec::new());
    }
    match LeaseStore::open_read_only(path)? {
        Some(store) => store.leases(),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::leases::Write;
    use crate::dhcp::{ClientKind, Lease, LeaseState};

    fn lease(mac: &str, ip: [u8; 4]) -> Lease {
        Lease {
            mac: mac.into(),
            ip: Ipv4Addr::from(ip),
            state: LeaseState::Bound,
            expires: 0,
            client_kind: ClientKind::Plain,
            hostname: None,
            updated: 0,
            port: None,
        }
    }

    #[test]
    fn the_index_follows_committed_batches() {
        let index = LeaseIndex::default();
        index.reset(&[lease("aa", [10, 0, 0, 10])]);
        assert_eq!(
            index.mac_of(Ipv4Addr::new(10, 0, 0, 10)).as_deref(),
            Some("aa")
        );
        // A MAC moves to another address; an address moves to another MAC.
        index.apply(&[
            Write::Lease(lease("aa", [10, 0, 0, 11])),
            Write::Lease(lease("bb", [10, 0, 0, 11])),
        ]);
        assert_eq!(index.mac_of(Ipv4Addr::new(10, 0, 0, 10)), None);
        assert_eq!(
            index.mac_of(Ipv4Addr::new(10, 0, 0, 11)).as_deref(),
            Some("bb")
        );
        assert!(!index.has_mac("aa") && index.has_mac("bb"));
        index.apply(&[Write::Forget { mac: "bb".into() }]);
        assert_eq!(index.mac_of(Ipv4Addr::new(10, 0, 0, 11)), None);
    }
}
