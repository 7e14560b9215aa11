//! A deterministic simulation of a mesh: many [`MeshNode`]s with in-memory
//! replicas, a simulated clock, and a simulated network with latency, packet
//! loss, partitions and node churn. Everything random comes from one seed and
//! every node is handed the simulated time (no core reads a clock), so a run
//! (and any failure it shows) replays bit for bit: [`SimConfig::trace`]
//! records every delivery to compare runs.
//!
//! Traffic is counted with the real wire encoding of every message plus
//! [`PACKET_OVERHEAD_BYTES`] for QUIC, UDP and IP headers.

use crate::mesh::message::{Envelope, encode};
use crate::mesh::node::{Action, Input, MeshNode, Timer, Tuning};
use crate::mesh::peer::Peer;
use crate::record::{Record, RecordKey, RecordKind};
use crate::replica::{MemoryReplica, Replica};
use crate::trust::{Keyring, KnownNode, Role};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Per-message header cost charged on top of the encoded message.
pub const PACKET_OVERHEAD_BYTES: usize = 60;

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    pub seed: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    pub min_latency: Duration,
    pub max_latency: Duration,
    /// How many of the first nodes every node is told as seeds.
    pub seeds: usize,
    pub tuning: Tuning,
    /// Record a [`TraceLine`] per delivered message and timer.
    pub trace: bool,
}

/// One step of a traced run: at simulated time `at_us`, node `to` handled a
/// message from node `from` (whose encoding hashes to `digest`) or, with
/// `from == None`, a timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceLine {
    pub at_us: u64,
    pub to: usize,
    pub from: Option<usize>,
    pub digest: u64,
    pub actions: usize,
}

impl SimConfig {
    pub fn new(nodes: usize, seed: u64) -> SimConfig {
        SimConfig {
            nodes,
            seed,
            loss: 0.01,
            min_latency: Duration::from_micros(200),
            max_latency: Duration::from_millis(5),
            seeds: 3,
            trace: false,
            tuning: Tuning {
                expected_members: u32::try_from(nodes).unwrap_or(u32::MAX),
                ..Tuning::default()
            },
        }
    }
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: usize,
        envelope: Envelope,
    },
    Timer {
        node: usize,
        life: u32,
        timer: Timer,
    },
}

#[derive(Debug)]
struct Scheduled {
    at: u64,
    sequence: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.sequence).cmp(&(other.at, other.sequence))
    }
}

struct SimNode {
    node: Option<MeshNode<MemoryReplica>>,
    /// Kept while the node is down: a restarted node keeps its store.
    parked: Option<MemoryReplica>,
    life: u32,
    bytes_sent: u64,
    messages_sent: u64,
}

/// The simulated data center.
pub struct Simulation {
    config: SimConfig,
    now: u64,
    sequence: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    rng: SmallRng,
    /// Pairs of nodes that cannot reach each other.
    cut: HashSet<(usize, usize)>,
    /// First time each node stored each watched record.
    watched: HashMap<RecordKey, HashMap<usize, u64>>,
    /// The newest version written by any node (versions stay unique).
    version: u64,
    trace: Vec<TraceLine>,
    /// Each node's signing key (derived from the seed, so runs replay).
    signers: Vec<crate::trust::Signer>,
    /// Every node's key, pinned in every replica (see [`Keyring::pinned`]).
    keys: std::sync::Arc<HashMap<String, KnownNode>>,
}

impl std::fmt::Debug for Simulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("nodes", &self.nodes.len())
            .field("now_us", &self.now)
            .finish()
    }
}

/// Address of simulated node `index`.
pub fn node_addr(index: usize) -> SocketAddr {
    let index = u32::try_from(index).unwrap_or(u32::MAX);
    SocketAddr::new(Ipv4Addr::from(0x0a00_0000 | index).into(), 7946)
}

pub fn node_name(index: usize) -> String {
    format!("node{index}")
}

impl Simulation {
    /// Builds the nodes and starts them within the first second.
    pub fn new(config: SimConfig) -> Simulation {
        let mut simulation = Simulation {
            rng: SmallRng::seed_from_u64(config.seed),
            now: 0,
            sequence: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::with_capacity(config.nodes),
            by_addr: HashMap::new(),
            cut: HashSet::new(),
            watched: HashMap::new(),
            version: 0,
            trace: Vec::new(),
            signers: Vec::new(),
            keys: std::sync::Arc::default(),
            config,
        };
        let mut keys = HashMap::with_capacity(simulation.config.nodes);
        for index in 0..simulation.config.nodes {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&simulation.config.seed.to_le_bytes());
            seed[8..16].copy_from_slice(&(index as u64).to_le_bytes());
            let signer = crate::trust::Signer::from_seed(&seed);
            keys.insert(
                node_name(index),
                KnownNode {
                    role: Role::Leaf,
                    keys: vec![signer.public_key().clone()],
                    addresses: vec![node_addr(index).ip()],
                    issued: 0,
                },
            );
            simulation.signers.push(signer);
        }
        simulation.keys = std::sync::Arc::new(keys);
        for index in 0..simulation.config.nodes {
            simulation.by_addr.insert(node_addr(index), index);
            let replica = MemoryReplica::new(Keyring::pinned(
                &node_name(index),
                std::sync::Arc::clone(&simulation.keys),
            ));
            simulation.nodes.push(SimNode {
                node: None,
                parked: Some(replica),
                life: 0,
                bytes_sent: 0,
                messages_sent: 0,
            });
        }
        for index in 0..simulation.config.nodes {
            simulation.start(index);
            // Stagger starts so the joins are not one synchronous burst.
            let stagger = 1_000_000 / simulation.config.nodes.max(1) as u64;
            simulation.advance(simulation.now + stagger);
        }
        simulation
    }

    pub fn now(&self) -> Duration {
        Duration::from_micros(self.now)
    }

    /// The simulated wall clock as a record version (the epoch is the start).
    fn now_version(&self) -> crate::record::Version {
        crate::clock::version_at(self.now())
    }

    /// What the run did so far (empty unless [`SimConfig::trace`]).
    pub fn trace(&self) -> &[TraceLine] {
        &self.trace
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn is_up(&self, index: usize) -> bool {
        self.nodes[index].node.is_some()
    }

    pub fn node(&self, index: usize) -> Option<&MeshNode<MemoryReplica>> {
        self.nodes[index].node.as_ref()
    }

    /// Runs the simulation for `duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration.as_micros() as u64;
        self.advance(until);
    }

    /// Runs until `done` holds (checked every 10 ms of simulated time) or
    /// `limit` passes; returns whether it held.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Simulation) -> bool,
    ) -> bool {
        let until = self.now + limit.as_micros() as u64;
        while self.now < until {
            if done(self) {
                return true;
            }
            let step = (self.now + 10_000).min(until);
            self.advance(step);
        }
        done(self)
    }

    /// Node `index` writes one of its own records; returns its id.
    pub fn publish(&mut self, index: usize, kind: RecordKind, key: &str, value: &str) -> Record {
        // Versions from the simulated wall clock, strictly increasing like
        // a node's clock.
        let now = self.now_version();
        self.version = now.max(self.version + 1);
        let mut record = Record {
            id: RecordKey::new(kind, key),
            origin: node_name(index),
            version: self.version,
            value: Some(value.to_string()),
            signature: Vec::new(),
        };
        self.signers[index].sign(&mut record);
        self.watched
            .entry(record.id.clone())
            .or_default()
            .insert(index, self.now);
        if let Some(node) = self.nodes[index].node.as_mut() {
            node.replica_mut().put_own(record.clone());
            let actions = node.handle(now, Input::Published(vec![record.clone()]));
            self.perform(index, actions);
        }
        record
    }

    /// When each node first stored `id`, relative to the simulation start.
    pub fn first_seen(&self, id: &RecordKey) -> HashMap<usize, Duration> {
        self.watched
            .get(id)
            .map(|seen| {
                seen.iter()
                    .map(|(node, at)| (*node, Duration::from_micros(*at)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether node `index` holds `record` at its version or newer.
    pub fn holds(&self, index: usize, record: &Record) -> bool {
        let replica = match &self.nodes[index].node {
            Some(node) => node.replica(),
            None => match &self.nodes[index].parked {
                Some(replica) => replica,
                None => return false,
            },
        };
        replica
            .get(&record.id)
            .is_some_and(|held| held.version >= record.version)
    }

    /// Root digest of a node's replica.
    pub fn digest(&self, index: usize) -> Option<crate::digest::RootDigest> {
        self.nodes[index]
            .node
            .as_ref()
            .map(|node| node.replica().root_digest())
    }

    /// Bytes and messages node `index` has sent so far.
    pub fn sent(&self, index: usize) -> (u64, u64) {
        (
            self.nodes[index].bytes_sent,
            self.nodes[index].messages_sent,
        )
    }

    /// Crashes node `index` (no goodbye); its replica survives for a restart.
    pub fn kill(&mut self, index: usize) {
        if let Some(node) = self.nodes[index].node.take() {
            let (_, _, replica) = node.into_parts();
            self.nodes[index].parked = Some(replica);
        }
    }

    /// Starts node `index` again with the replica it had.
    pub fn start(&mut self, index: usize) {
        if self.nodes[index].node.is_some() {
            return;
        }
        let replica = self.nodes[index].parked.take().unwrap_or_else(|| {
            MemoryReplica::new(Keyring::pinned(
                &node_name(index),
                std::sync::Arc::clone(&self.keys),
            ))
        });
        let life = self.nodes[index].life + 1;
        self.nodes[index].life = life;
        let identity = Peer {
            name: node_name(index),
            addr: node_addr(index),
            bump: self.now,
        };
        let seeds = (0..self.config.seeds.min(self.nodes.len()))
            .map(node_addr)
            .collect();
        let seed = self.config.seed ^ ((index as u64) << 32) ^ u64::from(life);
        let mut node = MeshNode::new(identity, seeds, replica, self.config.tuning.clone(), seed);
        let actions = node.start();
        self.nodes[index].node = Some(node);
        self.perform(index, actions);
    }

    /// Cuts (or heals) the network between two groups of nodes.
    pub fn partition(&mut self, left: &[usize], right: &[usize], cut: bool) {
        for a in left {
            for b in right {
                if cut {
                    self.cut.insert((*a, *b));
                    self.cut.insert((*b, *a));
                } else {
                    self.cut.remove(&(*a, *b));
                    self.cut.remove(&(*b, *a));
                }
            }
        }
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.sequence += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            sequence: self.sequence,
            event,
        }));
    }

    fn advance(&mut self, until: u64) {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            let Some(Reverse(next)) = self.queue.pop() else {
                break;
            };
            self.now = next.at;
            let now = self.now_version();
            let (to, from, digest, actions) = match next.event {
                Event::Deliver { to, envelope } => {
                    let Some(node) = self.nodes[to].node.as_mut() else {
                        continue;
                    };
                    let from = self.by_addr.get(&envelope.from.addr).copied();
                    let digest = if self.config.trace {
                        use std::hash::{Hash, Hasher};
                        // Fixed keys: the same bytes hash the same in every run.
                        let mut hasher = std::hash::DefaultHasher::new();
                        encode(&envelope).hash(&mut hasher);
                        hasher.finish()
                    } else {
                        0
                    };
                    (
                        to,
                        from,
                        digest,
                        node.handle(now, Input::Received(envelope)),
                    )
                }
                Event::Timer { node, life, timer } => {
                    if self.nodes[node].life != life {
                        continue;
                    }
                    let Some(mesh) = self.nodes[node].node.as_mut() else {
                        continue;
                    };
                    (node, None, 0, mesh.handle(now, Input::Timer(timer)))
                }
            };
            if self.config.trace {
                self.trace.push(TraceLine {
                    at_us: self.now,
                    to,
                    from,
                    digest,
                    actions: actions.len(),
                });
            }
            self.perform(to, actions);
        }
        self.now = self.now.max(until);
    }

    fn perform(&mut self, from: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, envelope } => {
                    let bytes = encode(&envelope).len() + PACKET_OVERHEAD_BYTES;
                    self.nodes[from].bytes_sent += bytes as u64;
                    self.nodes[from].messages_sent += 1;
                    let Some(&target) = self.by_addr.get(&to.addr) else {
                        continue;
                    };
                    if self.cut.contains(&(from, target))
                        || self.rng.random_bool(self.config.loss.clamp(0.0, 1.0))
                    {
                        continue;
                    }
                    let min = self.config.min_latency.as_micros() as u64;
                    let max = (self.config.max_latency.as_micros() as u64).max(min + 1);
                    let at = self.now + self.rng.random_range(min..max);
                    self.schedule(
                        at,
                        Event::Deliver {
                            to: target,
                            envelope,
                        },
                    );
                }
                Action::Schedule { after, timer } => {
                    let at = self.now + after.as_micros() as u64;
                    let life = self.nodes[from].life;
                    self.schedule(
                        at,
                        Event::Timer {
                            node: from,
                            life,
                            timer,
                        },
                    );
                }
                Action::Applied(records) => {
                    for record in records {
                        if let Some(seen) = self.watched.get_mut(&record.id) {
                            seen.entry(from).or_insert(self.now);
                        }
                    }
                }
                Action::MemberUp(_) | Action::MemberDown(_) | Action::Refused { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up_nodes(sim: &Simulation) -> Vec<usize> {
        (0..sim.len()).filter(|i| sim.is_up(*i)).collect()
    }

    #[test]
    fn an_update_reaches_every_node_of_a_lossy_mesh() {
        let mut sim = Simulation::new(SimConfig::new(60, 7));
        sim.run_for(Duration::from_secs(20));
        for index in 0..sim.len() {
            assert!(
                sim.node(index).unwrap().members().len() >= 55,
                "node {index} sees {} members",
                sim.node(index).unwrap().members().len()
            );
        }
        let record = sim.publish(17, RecordKind::Switch, "node17", "{\"v\":1}");
        let all = up_nodes(&sim);
        assert!(sim.run_until(Duration::from_secs(3), |sim| {
            all.iter().all(|i| sim.holds(*i, &record))
        }));
    }

    #[test]
    fn restarted_and_partitioned_nodes_converge() {
        let mut sim = Simulation::new(SimConfig::new(30, 11));
        sim.run_for(Duration::from_secs(15));
        let left: Vec<usize> = (0..15).collect();
        let right: Vec<usize> = (15..30).collect();
        sim.kill(29);
        sim.partition(&left, &right, true);
        let mut written = Vec::new();
        for i in 0..28 {
            written.push(sim.publish(i, RecordKind::Port, &format!("node{i}/p1"), "{}"));
        }
        sim.run_for(Duration::from_secs(20));
        // Nothing crossed the cut.
        assert!(!sim.holds(0, &written[20]));
        assert!(!sim.holds(20, &written[0]));
        sim.partition(&left, &right, false);
        sim.start(29);
        let converged = sim.run_until(Duration::from_secs(30), |sim| {
            let first = sim.digest(0);
            (0..sim.len()).all(|i| sim.digest(i) == first)
                && written.iter().all(|record| sim.holds(29, record))
        });
        assert!(converged, "replicas differ 30 s after the partition healed");
    }

    #[test]
    fn runs_replay_bit_for_bit_from_their_seed() {
        let run = |seed| {
            let mut config = SimConfig::new(20, seed);
            config.trace = true;
            let mut sim = Simulation::new(config);
            sim.run_for(Duration::from_secs(5));
            sim.publish(3, RecordKind::Switch, "node3", "x");
            sim.kill(7);
            sim.run_for(Duration::from_secs(2));
            sim.start(7);
            sim.publish(5, RecordKind::Switch, "node5", "y");
            sim.run_for(Duration::from_secs(20));
            let sent: Vec<_> = (0..20).map(|i| sim.sent(i)).collect();
            (sim.trace().to_vec(), sent)
        };
        let (first, sent) = run(3);
        assert!(first.len() > 1_000, "the trace holds the run");
        let (second, sent_again) = run(3);
        assert_eq!(sent, sent_again);
        // Every delivery and timer, at the same time, with the same bytes.
        assert_eq!(first.len(), second.len());
        if let Some(at) = first.iter().zip(&second).position(|(a, b)| a != b) {
            panic!(
                "runs diverge at step {at}: {:?} vs {:?}",
                first[at], second[at]
            );
        }
        // A different seed is a different run (the trace can tell them apart).
        assert_ne!(run(4).0, first);
    }
}
