//! The tokio side of LLDP: one raw socket and reader task per selected port
//! that is up, frames funnelled to the state machine over a bounded channel,
//! and the machine's outputs carried out (frames sent, events logged, the
//! neighbour table published for the admin API).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use metalmesh_lldp::{ETHERTYPE, MULTICAST_MAC};
use metalmesh_packet_socket::PacketSocket;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::machine::{Counters, Input, LldpMachine, LocalSystem, Neighbor, Output, Settings};
use crate::config::{PortSelector, parse_mac};
use crate::switch::Port;

/// Frames queued from the readers to the state machine; beyond this, readers
/// wait and the kernel's socket buffers absorb (and eventually drop) bursts.
const FRAME_QUEUE: usize = 1024;
/// Counters are published at most this often (neighbour changes at once).
const PUBLISH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// Receive buffer: larger than any jumbo frame, so oversized LLDP frames are
/// seen whole and counted rather than silently cut.
const RECEIVE_BUFFER: usize = 65536;

/// What the admin API shows about LLDP.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LldpSnapshot {
    /// Ports LLDP currently runs on.
    pub ports: Vec<String>,
    pub neighbors: Vec<Neighbor>,
    pub counters: Counters,
}

enum FromPort {
    Frame {
        port: String,
        bytes: Vec<u8>,
    },
    /// The socket of `port` (as it was at `ifindex`) failed for good.
    Closed {
        port: String,
        ifindex: u32,
        error: std::io::Error,
    },
}

struct PortIo {
    ifindex: u32,
    socket: Arc<PacketSocket>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for PortIo {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Everything the LLDP task needs from the agent.
#[derive(Debug)]
pub struct LldpTask {
    pub local: LocalSystem,
    pub settings: Settings,
    pub selector: PortSelector,
    pub ports: watch::Receiver<Option<Vec<Port>>>,
    pub snapshot: std::sync::Arc<watch::Sender<LldpSnapshot>>,
}

impl LldpTask {
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut machine = LldpMachine::new(
            self.local.clone(),
            self.settings.clone(),
            super::machine::WallAnchor::now(),
        );
        let mut io: BTreeMap<String, PortIo> = BTreeMap::new();
        let (frames_tx, mut frames_rx) = mpsc::channel::<FromPort>(FRAME_QUEUE);
        // Start from whatever the inventory already knows.
        self.ports.mark_changed();
        let mut published = Instant::now();
        let mut pending = false;
        loop {
            let mut wakeup = machine.next_wakeup();
            if pending {
                // A skipped publish happens within a quarter second at the latest.
                let due = published + PUBLISH_INTERVAL;
                wakeup = Some(wakeup.map_or(due, |w| w.min(due)));
            }
            let outputs = tokio::select! {
                () = cancel.cancelled() => {
                    let outputs = machine.shutdown();
                    execute(&mut machine, &io, outputs).await;
                    return Ok(());
                }
                changed = self.ports.changed() => {
                    if changed.is_err() {
                        anyhow::bail!("switch inventory stopped");
                    }
                    let ports = self.ports.borrow_and_update().clone().unwrap_or_default();
                    reconcile(&mut machine, &mut io, &self.selector, &ports, &frames_tx)
                }
                message = frames_rx.recv() => match message {
                    Some(FromPort::Frame { port, bytes }) => {
                        machine.handle(Instant::now(), Input::Frame { port: &port, bytes: &bytes })
                    }
                    Some(FromPort::Closed { port, ifindex, error }) => {
                        // Only the socket that failed goes, never a newer one.
                        if io.get(&port).is_some_and(|p| p.ifindex == ifindex) {
                            tracing::warn!(%port, %error, "LLDP socket closed; reopening");
                            io.remove(&port);
                            // Reconcile again, which reopens it if the port is still up.
                            self.ports.mark_changed();
                            machine.handle(Instant::now(), Input::PortDown { port })
                        } else {
                            Vec::new()
                        }
                    }
                    None => anyhow::bail!("LLDP frame channel closed"),
                },
                () = sleep_until(wakeup) => machine.handle(Instant::now(), Input::Tick),
            };
            // Neighbour changes are published at once; counters at most
            // four times a second, so a frame flood costs no table copies.
            let changed = outputs
                .iter()
                .any(|o| !matches!(o, Output::Transmit { .. }));
            execute(&mut machine, &io, outputs).await;
            if changed || published.elapsed() >= PUBLISH_INTERVAL {
                publish(&machine, &self.snapshot);
                published = Instant::now();
                pending = false;
            } else {
                pending = true;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Opens sockets on selected ports that are up, closes them on the others,
/// and tells the machine.
fn reconcile(
    machine: &mut LldpMachine,
    io: &mut BTreeMap<String, PortIo>,
    selector: &PortSelector,
    ports: &[Port],
    frames: &mpsc::Sender<FromPort>,
) -> Vec<Output> {
    let now = Instant::now();
    let mut outputs = Vec::new();
    let mut wanted = BTreeMap::new();
    for port in ports.iter().filter(|p| selector.matches(&p.name)) {
        let mac = port.mac.as_deref().and_then(parse_mac);
        if let (true, Some(mac)) = (port.oper_up, mac) {
            wanted.insert(port.name.clone(), (port.ifindex, mac));
        }
    }
    let stale: Vec<String> = io
        .iter()
        .filter(|(name, p)| {
            wanted
                .get(*name)
                .is_none_or(|(ifindex, _)| *ifindex != p.ifindex)
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in stale {
        io.remove(&name);
    }
    let running: Vec<String> = machine.ports().map(str::to_string).collect();
    for name in running.into_iter().filter(|n| !wanted.contains_key(n)) {
        tracing::info!(port = %name, "LLDP stopped on port");
        outputs.extend(machine.handle(now, Input::PortDown { port: name }));
    }
    for (name, (ifindex, mac)) in wanted {
        if !io.contains_key(&name) {
            match open(&name, ifindex, frames.clone()) {
                Ok(port_io) => {
                    tracing::info!(port = %name, ifindex, "LLDP running on port");
                    io.insert(name.clone(), port_io);
                }
                Err(error) => {
                    tracing::warn!(port = %name, %error, "cannot open LLDP socket");
                    continue;
                }
            }
        }
        outputs.extend(machine.handle(now, Input::PortUp { port: name, mac }));
    }
    outputs
}

fn open(port: &str, ifindex: u32, frames: mpsc::Sender<FromPort>) -> std::io::Result<PortIo> {
    let socket = Arc::new(PacketSocket::bind(ifindex, ETHERTYPE)?);
    socket.join_multicast(MULTICAST_MAC)?;
    let reader_socket = Arc::clone(&socket);
    let name = port.to_string();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; RECEIVE_BUFFER];
        loop {
            match reader_socket.recv(&mut buf).await {
                Ok(received) if received.outgoing || received.ifindex != ifindex => continue,
                Ok(received) => {
                    // At most one byte more than the largest valid frame is
                    // kept: enough for the decoder to count it as oversized.
                    let keep = received.len.min(metalmesh_lldp::MAX_FRAME + 1);
                    let message = FromPort::Frame {
                        port: name.clone(),
                        bytes: buf[..keep].to_vec(),
                    };
                    if frames.send(message).await.is_err() {
                        return;
                    }
                }
                // The kernel reports ENETDOWN once when the link goes down;
                // the socket works again when it comes back.
                Err(error) if error.raw_os_error() == Some(libc::ENETDOWN) => continue,
                Err(error) => {
                    let _ = frames
                        .send(FromPort::Closed {
                            port: name,
                            ifindex,
                            error,
                        })
                        .await;
                    return;
                }
            }
        }
    });
    Ok(PortIo {
        ifindex,
        socket,
        reader,
    })
}

async fn execute(machine: &mut LldpMachine, io: &BTreeMap<String, PortIo>, outputs: Vec<Output>) {
    for output in outputs {
        match output {
            Output::Transmit { port, frame } => {
                let Some(port_io) = io.get(&port) else {
                    continue;
                };
                if let Err(error) = port_io.socket.send(&frame).await {
                    tracing::warn!(%port, %error, "LLDP transmit failed");
                    machine.handle(Instant::now(), Input::TransmitFailed { port: &port });
                }
            }
            Output::Added(n) => tracing::info!(
                port = %n.local_port, chassis = %n.chassis_id, remote_port = %n.port_id,
                system = n.system_name.as_deref().unwrap_or("-"), "LLDP neighbour added"
            ),
            Output::Changed(n) => tracing::info!(
                port = %n.local_port, chassis = %n.chassis_id, remote_port = %n.port_id,
                system = n.system_name.as_deref().unwrap_or("-"), "LLDP neighbour changed"
            ),
            Output::Gone {
                neighbor: n,
                reason,
            } => tracing::info!(
                port = %n.local_port, chassis = %n.chassis_id, remote_port = %n.port_id,
                ?reason, "LLDP neighbour gone"
            ),
        }
    }
}

fn publish(machine: &LldpMachine, snapshot: &watch::Sender<LldpSnapshot>) {
    let fresh = LldpSnapshot {
        ports: machine.ports().map(str::to_string).collect(),
        neighbors: machine.neighbors().cloned().collect(),
        counters: machine.counters().clone(),
    };
    snapshot.send_replace(fresh);
}

/// The parts of an LLDP task a supervisor restart builds afresh from.
#[derive(Debug)]
pub struct LldpTemplate {
    pub local: LocalSystem,
    pub settings: Settings,
    pub selector: PortSelector,
    pub ports: watch::Receiver<Option<Vec<Port>>>,
    pub snapshot: Arc<watch::Sender<LldpSnapshot>>,
}

impl LldpTemplate {
    pub fn instance(&self) -> LldpTask {
        LldpTask {
            local: self.local.clone(),
            settings: self.settings.clone(),
            selector: self.selector.clone(),
            ports: self.ports.clone(),
            snapshot: Arc::clone(&self.snapshot),
        }
    }
}
