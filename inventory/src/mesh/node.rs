//! The mesh protocol of one node, free of I/O: SWIM membership (foca),
//! dissemination of new records (push to a few random members, a bounded
//! number of times), and anti-entropy (periodic digest comparison with one
//! random member, then exchange of exactly the records that differ).
//!
//! The caller feeds [`Input`]s to [`MeshNode::handle`] and carries out the
//! returned [`Action`]s: the QUIC service does that with real sockets and
//! timers, [`crate::sim`] with a simulated network and clock.

use crate::digest::RootDigest;
use crate::mesh::message::{Envelope, Message, WIRE_VERSION, batches, id_batches};
use crate::mesh::peer::Peer;
use crate::record::{Record, RecordKey, Version};
use crate::replica::Replica;
use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec};
use indexmap::IndexMap;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

/// Protocol knobs. The defaults suit a partition of up to a few thousand
/// nodes on a data-center network.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Cluster size SWIM's timeouts are derived from.
    pub expected_members: u32,
    /// How often pending records are pushed again.
    pub gossip_interval: Duration,
    /// Members each push goes to.
    pub fanout: usize,
    /// Push rounds per record (the first one happens as soon as it is new).
    pub transmissions: u8,
    /// How often a digest is compared with a random member.
    pub anti_entropy_interval: Duration,
    /// How often seeds that are not members are announced to again.
    pub rejoin_interval: Duration,
    /// Records waiting for dissemination; beyond this the oldest are dropped
    /// (anti-entropy still delivers them).
    pub max_pending: usize,
    /// Largest SWIM packet.
    pub swim_packet_bytes: usize,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            expected_members: 64,
            gossip_interval: Duration::from_millis(200),
            fanout: 3,
            transmissions: 2,
            anti_entropy_interval: Duration::from_secs(1),
            rejoin_interval: Duration::from_secs(5),
            max_pending: 8192,
            swim_packet_bytes: 1200,
        }
    }
}

/// Timers the node asks to be woken by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timer {
    Swim(foca::Timer<Peer>),
    Gossip,
    AntiEntropy,
    Rejoin,
}

/// What a node is handed. Inputs and actions are serde types so that
/// conformance cases can record and replay them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// A message from another node (already authenticated by the transport).
    Received(Envelope),
    Timer(Timer),
    /// Records this node wrote to its own replica: disseminate them.
    Published(Vec<Record>),
    /// A node was revoked: it is declared down at once (and the others
    /// told), instead of waiting for failure detection.
    Revoked(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Send {
        to: Peer,
        envelope: Envelope,
    },
    Schedule {
        after: Duration,
        timer: Timer,
    },
    MemberUp(Peer),
    MemberDown(Peer),
    /// Records from other nodes that are now stored here.
    Applied(Vec<Record>),
    /// Something received was refused; the driver logs it.
    Refused {
        from: Peer,
        reason: String,
    },
}

/// Counters for `mesh members`, logs and the simulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub records_pushed: u64,
    pub records_applied: u64,
    pub pending_dropped: u64,
    pub sync_rounds: u64,
    pub sync_repairs: u64,
}

#[derive(Debug)]
struct Pending {
    record: Record,
    rounds_left: u8,
}

pub struct MeshNode<R> {
    identity: Peer,
    seeds: Vec<SocketAddr>,
    tuning: Tuning,
    foca: Foca<Peer, PostcardCodec, SmallRng, NoCustomBroadcast>,
    /// What SWIM instances are built with (again after a rejoin).
    swim: foca::Config,
    runtime: AccumulatingRuntime<Peer>,
    replica: R,
    /// Records still to push, oldest first, by key.
    pending: IndexMap<RecordKey, Pending>,
    rng: SmallRng,
    counters: Counters,
}

impl<R> std::fmt::Debug for MeshNode<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshNode")
            .field("identity", &self.identity)
            .field("members", &self.foca.num_members())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<R: Replica> MeshNode<R> {
    pub fn new(
        identity: Peer,
        seeds: Vec<SocketAddr>,
        replica: R,
        tuning: Tuning,
        seed: u64,
    ) -> MeshNode<R> {
        let mut config = foca::Config::new_lan(
            NonZeroU32::new(tuning.expected_members.max(2)).unwrap_or(NonZeroU32::MIN),
        );
        config.max_packet_size =
            NonZeroUsize::new(tuning.swim_packet_bytes.max(512)).unwrap_or(NonZeroUsize::MIN);
        // Nodes declared down (a partition, a long restart) are asked to come
        // back often, so a healed partition rejoins in seconds.
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(3),
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        config.remove_down_after = Some(Duration::from_secs(15 * 60));
        let foca = Foca::new(
            identity.clone(),
            config.clone(),
            SmallRng::seed_from_u64(seed),
            PostcardCodec,
        );
        MeshNode {
            identity,
            seeds,
            tuning,
            foca,
            swim: config,
            runtime: AccumulatingRuntime::new(),
            replica,
            pending: IndexMap::new(),
            rng: SmallRng::seed_from_u64(seed.wrapping_add(1)),
            counters: Counters::default(),
        }
    }

    pub fn identity(&self) -> &Peer {
        &self.identity
    }

    pub fn replica(&self) -> &R {
        &self.replica
    }

    pub fn replica_mut(&mut self) -> &mut R {
        &mut self.replica
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Active members (alive or suspected), without this node.
    pub fn members(&self) -> Vec<(Peer, foca::State)> {
        self.foca
            .iter_members()
            .map(|member| (member.id().clone(), member.state()))
            .collect()
    }

    /// First actions: announce to the seeds and arm the periodic timers.
    pub fn start(&mut self) -> Vec<Action> {
        let mut actions = vec![
            Action::Schedule {
                after: self.tuning.gossip_interval,
                timer: Timer::Gossip,
            },
            Action::Schedule {
                after: self.jittered(self.tuning.anti_entropy_interval),
                timer: Timer::AntiEntropy,
            },
            Action::Schedule {
                after: self.tuning.rejoin_interval,
                timer: Timer::Rejoin,
            },
        ];
        self.announce_to_seeds(&mut actions);
        actions
    }

    /// Leaves the cluster politely (members learn at once instead of by
    /// failure detection).
    pub fn leave(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!(%error, "leaving the mesh");
        }
        self.drain_swim(&mut actions);
        actions
    }

    /// Handles one input at `now` (the wall clock as a version, which the
    /// future-version rule compares received records against): the node
    /// reads no clock of its own, so a simulation replays exactly.
    pub fn handle(&mut self, now: Version, input: Input) -> Vec<Action> {
        let mut actions = Vec::new();
        match input {
            Input::Received(envelope) => self.receive(now, envelope, &mut actions),
            Input::Timer(timer) => self.timer(timer, &mut actions),
            Input::Published(records) => {
                self.enqueue(records);
                self.gossip_round(&mut actions);
            }
            Input::Revoked(name) => {
                let down: Vec<foca::Member<Peer>> = self
                    .foca
                    .iter_members()
                    .filter(|member| member.id().name == name)
                    .map(|member| foca::Member::down(member.id().clone()))
                    .collect();
                if let Err(error) = self
                    .foca
                    .apply_many(down.into_iter(), true, &mut self.runtime)
                {
                    tracing::debug!(%error, "declaring a revoked member down");
                }
                self.drain_swim(&mut actions);
            }
        }
        actions
    }

    fn receive(&mut self, now: Version, envelope: Envelope, actions: &mut Vec<Action>) {
        let from = envelope.from;
        match envelope.message {
            Message::Swim(bytes) => {
                // The SWIM sender must be the node the envelope (and so the
                // certificate) names: nobody speaks for another member.
                match <PostcardCodec as foca::Codec<Peer>>::decode_header(
                    &mut PostcardCodec,
                    &bytes[..],
                ) {
                    Ok(header) if header.src.name == from.name => {}
                    Ok(header) => {
                        actions.push(Action::Refused {
                            reason: format!("SWIM packet claims to come from {}", header.src),
                            from,
                        });
                        return;
                    }
                    Err(error) => {
                        actions.push(Action::Refused {
                            from,
                            reason: format!("SWIM packet: {error}"),
                        });
                        return;
                    }
                }
                if let Err(error) = self.foca.handle_data(&bytes, &mut self.runtime) {
                    actions.push(Action::Refused {
                        from: from.clone(),
                        reason: format!("SWIM packet: {error}"),
                    });
                }
                self.drain_swim(actions);
            }
            Message::Records(records) => {
                let applied = self.apply(&from, records, now, actions);
                if !applied.is_empty() {
                    self.enqueue(applied.clone());
                    actions.push(Action::Applied(applied));
                    self.gossip_round(actions);
                }
            }
            Message::SyncRoot(root) => {
                if root != self.replica.root_digest() {
                    let origins = self.replica.origin_digests().into_iter().collect();
                    self.send(actions, &from, Message::SyncOrigins(origins));
                }
            }
            Message::SyncOrigins(theirs) => self.sync_origins(&from, theirs, actions),
            Message::SyncVersions(theirs) => self.sync_versions(&from, theirs, actions),
            Message::SyncWant(ids) => match self.replica.records(&unique_capped(ids)) {
                Ok(records) => {
                    for batch in batches(records) {
                        self.send(actions, &from, Message::SyncRecords(batch));
                    }
                }
                Err(error) => actions.push(Action::Refused {
                    from,
                    reason: format!("reading wanted records: {error}"),
                }),
            },
            Message::SyncRecords(records) => {
                let applied = self.apply(&from, records, now, actions);
                if !applied.is_empty() {
                    self.counters.sync_repairs += applied.len() as u64;
                    actions.push(Action::Applied(applied));
                }
            }
        }
    }

    fn apply(
        &mut self,
        from: &Peer,
        records: Vec<Record>,
        now: Version,
        actions: &mut Vec<Action>,
    ) -> Vec<Record> {
        match self.replica.apply(records, now) {
            Ok(applied) => {
                self.counters.records_applied += applied.len() as u64;
                applied
            }
            Err(error) => {
                actions.push(Action::Refused {
                    from: from.clone(),
                    reason: format!("storing records: {error}"),
                });
                Vec::new()
            }
        }
    }

    /// The initiator learned the responder's per-origin digests: list what it
    /// holds of every origin that differs (an empty list for origins it
    /// lacks, so the responder sends all of them).
    fn sync_origins(
        &mut self,
        from: &Peer,
        theirs: Vec<(String, crate::digest::OriginDigest)>,
        actions: &mut Vec<Action>,
    ) {
        let mine = self.replica.origin_digests();
        let theirs: HashMap<String, crate::digest::OriginDigest> = theirs.into_iter().collect();
        let mut differing: Vec<&String> = mine
            .iter()
            .filter(|(origin, digest)| theirs.get(*origin) != Some(digest))
            .map(|(origin, _)| origin)
            .collect();
        differing.extend(theirs.keys().filter(|origin| !mine.contains_key(*origin)));
        let mut listing = Vec::new();
        let mut size = 0;
        for origin in differing {
            let versions = match self.replica.versions_of(origin) {
                Ok(versions) => versions,
                Err(error) => {
                    actions.push(Action::Refused {
                        from: from.clone(),
                        reason: format!("listing records of {origin}: {error}"),
                    });
                    return;
                }
            };
            size += versions
                .iter()
                .map(|(id, _)| id.key.len() + 12)
                .sum::<usize>();
            listing.push((origin.clone(), versions));
            if size > crate::mesh::message::RECORDS_PER_MESSAGE_BYTES {
                self.send(
                    actions,
                    from,
                    Message::SyncVersions(std::mem::take(&mut listing)),
                );
                size = 0;
            }
        }
        if !listing.is_empty() {
            self.send(actions, from, Message::SyncVersions(listing));
        }
    }

    /// The responder compares the initiator's listing with its own: sends
    /// what the initiator lacks or has older, asks for what it lacks itself.
    fn sync_versions(
        &mut self,
        from: &Peer,
        theirs: Vec<(String, Vec<(RecordKey, Version)>)>,
        actions: &mut Vec<Action>,
    ) {
        let mut push = Vec::new();
        let mut want = Vec::new();
        let mut origins_seen = HashSet::new();
        for (origin, their_versions) in theirs {
            // Each origin is answered once per exchange, however often listed.
            if !origins_seen.insert(origin.clone()) {
                continue;
            }
            let mine: HashMap<RecordKey, Version> = match self.replica.versions_of(&origin) {
                Ok(versions) => versions.into_iter().collect(),
                Err(error) => {
                    actions.push(Action::Refused {
                        from: from.clone(),
                        reason: format!("listing records of {origin}: {error}"),
                    });
                    return;
                }
            };
            let mut seen = HashSet::with_capacity(their_versions.len());
            for (id, their_version) in their_versions {
                match mine.get(&id) {
                    Some(my_version) if *my_version > their_version => push.push(id.clone()),
                    Some(my_version) if *my_version == their_version => {}
                    _ => want.push(id.clone()),
                }
                seen.insert(id);
            }
            push.extend(mine.into_keys().filter(|id| !seen.contains(id)));
        }
        self.counters.sync_rounds += 1;
        let push = unique_capped(push);
        let want = unique_capped(want);
        if !push.is_empty() {
            match self.replica.records(&push) {
                Ok(records) => {
                    for batch in batches(records) {
                        self.send(actions, from, Message::SyncRecords(batch));
                    }
                }
                Err(error) => actions.push(Action::Refused {
                    from: from.clone(),
                    reason: format!("reading records to push: {error}"),
                }),
            }
        }
        for want in id_batches(want) {
            self.send(actions, from, Message::SyncWant(want));
        }
    }

    fn timer(&mut self, timer: Timer, actions: &mut Vec<Action>) {
        match timer {
            Timer::Swim(timer) => {
                if let Err(error) = self.foca.handle_timer(timer, &mut self.runtime) {
                    tracing::debug!(%error, "SWIM timer");
                }
                self.drain_swim(actions);
            }
            Timer::Gossip => {
                self.gossip_round(actions);
                actions.push(Action::Schedule {
                    after: self.tuning.gossip_interval,
                    timer: Timer::Gossip,
                });
            }
            Timer::AntiEntropy => {
                if let Some(peer) = self.random_members(1).pop() {
                    let root: RootDigest = self.replica.root_digest();
                    self.send(actions, &peer, Message::SyncRoot(root));
                }
                actions.push(Action::Schedule {
                    after: self.jittered(self.tuning.anti_entropy_interval),
                    timer: Timer::AntiEntropy,
                });
            }
            Timer::Rejoin => {
                self.announce_to_seeds(actions);
                actions.push(Action::Schedule {
                    after: self.tuning.rejoin_interval,
                    timer: Timer::Rejoin,
                });
            }
        }
    }

    /// Announces to every seed address that is neither this node nor an
    /// active member, which (re)joins after start, restarts and partitions.
    fn announce_to_seeds(&mut self, actions: &mut Vec<Action>) {
        let active: HashSet<SocketAddr> = self
            .foca
            .iter_members()
            .map(|member| member.id().addr)
            .collect();
        let seeds: Vec<SocketAddr> = self
            .seeds
            .iter()
            .filter(|addr| **addr != self.identity.addr && !active.contains(addr))
            .copied()
            .collect();
        for addr in seeds {
            if let Err(error) = self.foca.announce(Peer::seed(addr), &mut self.runtime) {
                tracing::debug!(%error, %addr, "announcing to seed");
            }
        }
        self.drain_swim(actions);
    }

    fn enqueue(&mut self, records: Vec<Record>) {
        if self.tuning.transmissions == 0 {
            // Push gossip off: anti-entropy alone spreads records.
            return;
        }
        for record in records {
            // A newer version of a pending record replaces it in place.
            if let Some(pending) = self.pending.get_mut(&record.id) {
                pending.record = record;
                pending.rounds_left = self.tuning.transmissions;
                continue;
            }
            if self.pending.len() >= self.tuning.max_pending {
                self.pending.shift_remove_index(0);
                self.counters.pending_dropped += 1;
            }
            self.pending.insert(
                record.id.clone(),
                Pending {
                    record,
                    rounds_left: self.tuning.transmissions,
                },
            );
        }
    }

    fn gossip_round(&mut self, actions: &mut Vec<Action>) {
        if self.pending.is_empty() {
            return;
        }
        let targets = self.random_members(self.tuning.fanout);
        if targets.is_empty() {
            return;
        }
        let records: Vec<Record> = self.pending.values().map(|p| p.record.clone()).collect();
        let batches = batches(records);
        for target in &targets {
            for batch in &batches {
                self.counters.records_pushed += batch.len() as u64;
                self.send(actions, target, Message::Records(batch.clone()));
            }
        }
        self.pending.retain(|_, pending| {
            pending.rounds_left = pending.rounds_left.saturating_sub(1);
            pending.rounds_left > 0
        });
    }

    fn random_members(&mut self, count: usize) -> Vec<Peer> {
        let mut members: Vec<&Peer> = self.foca.iter_members().map(|m| m.id()).collect();
        let count = count.min(members.len());
        for index in 0..count {
            let pick = self.rng.random_range(index..members.len());
            members.swap(index, pick);
        }
        members.into_iter().take(count).cloned().collect()
    }

    fn jittered(&mut self, base: Duration) -> Duration {
        // ±25% so nodes started together do not synchronise their rounds.
        let millis = base.as_millis() as u64;
        let spread = millis / 2;
        Duration::from_millis(millis - millis / 4 + self.rng.random_range(0..=spread))
    }

    fn send(&self, actions: &mut Vec<Action>, to: &Peer, message: Message) {
        actions.push(Action::Send {
            to: to.clone(),
            envelope: Envelope {
                version: WIRE_VERSION,
                from: self.identity.clone(),
                message,
            },
        });
    }

    fn drain_swim(&mut self, actions: &mut Vec<Action>) {
        let mut rejoined = None;
        while let Some((to, data)) = self.runtime.to_send() {
            self.send(actions, &to, Message::Swim(data.to_vec()));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            actions.push(Action::Schedule {
                after,
                timer: Timer::Swim(timer),
            });
        }
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(peer) => actions.push(Action::MemberUp(peer)),
                OwnedNotification::MemberDown(peer) => actions.push(Action::MemberDown(peer)),
                OwnedNotification::Rename(old, new) => {
                    actions.push(Action::MemberDown(old));
                    actions.push(Action::MemberUp(new));
                }
                OwnedNotification::Rejoin(new) => {
                    tracing::info!(identity = %new, "rejoined the mesh with a renewed identity");
                    self.identity = new.clone();
                    rejoined = Some(new);
                }
                other => tracing::debug!(?other, "SWIM notification"),
            }
        }
        if let Some(new) = rejoined {
            self.restart_swim(new, actions);
        }
    }

    /// Starts SWIM afresh under a renewed identity. A renewed SWIM instance
    /// drops the timers it had armed, so members it suspected would stay
    /// suspected forever, neither alive nor ever declared down (seen after
    /// a healed partition); a new instance learns the members again from
    /// the seeds and a few members it knew, within a round trip.
    fn restart_swim(&mut self, identity: Peer, actions: &mut Vec<Action>) {
        let mut known: Vec<Peer> = self
            .foca
            .iter_members()
            .map(|member| member.id().clone())
            .collect();
        self.foca = Foca::new(
            identity,
            self.swim.clone(),
            SmallRng::seed_from_u64(self.rng.random::<u64>()),
            PostcardCodec,
        );
        known.shuffle(&mut self.rng);
        for peer in known.into_iter().take(3) {
            if let Err(error) = self.foca.announce(peer, &mut self.runtime) {
                tracing::debug!(%error, "announcing after a rejoin");
            }
        }
        self.announce_to_seeds(actions);
    }
}

/// Records one request may ask for or send: bounds the work and memory a
/// single peer message can cause (anti-entropy fetches the rest next round).
pub const MAX_IDS_PER_EXCHANGE: usize = 16_384;

/// `ids` without repeats, at most [`MAX_IDS_PER_EXCHANGE`].
fn unique_capped(ids: Vec<RecordKey>) -> Vec<RecordKey> {
    let mut seen = HashSet::with_capacity(ids.len().min(MAX_IDS_PER_EXCHANGE));
    ids.into_iter()
        .filter(|id| seen.insert(id.clone()))
        .take(MAX_IDS_PER_EXCHANGE)
        .collect()
}

impl<R> MeshNode<R> {
    /// Takes the node apart (identity, counters, replica), e.g. to restart it.
    pub fn into_parts(self) -> (Peer, Counters, R) {
        (self.identity, self.counters, self.replica)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::MemoryReplica;

    fn peer(name: &str, last: u8) -> Peer {
        Peer {
            name: name.into(),
            addr: SocketAddr::from(([10, 0, 0, last], 7946)),
            bump: 1,
        }
    }

    fn swim_from(sender: &Peer, to: &Peer) -> Vec<u8> {
        let mut node = MeshNode::new(
            sender.clone(),
            vec![to.addr],
            MemoryReplica::new(crate::trust::Keyring::pinned(
                "test",
                std::sync::Arc::default(),
            )),
            Tuning::default(),
            1,
        );
        node.start()
            .into_iter()
            .find_map(|action| match action {
                Action::Send {
                    envelope:
                        Envelope {
                            message: Message::Swim(bytes),
                            ..
                        },
                    ..
                } => Some(bytes),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn swim_packets_must_come_from_the_envelope_sender() {
        let (a, b, c) = (peer("a", 1), peer("b", 2), peer("c", 3));
        let mut node = MeshNode::new(
            b.clone(),
            vec![],
            MemoryReplica::new(crate::trust::Keyring::pinned(
                "test",
                std::sync::Arc::default(),
            )),
            Tuning::default(),
            2,
        );
        let announce = swim_from(&a, &b);
        let forged = Envelope {
            version: WIRE_VERSION,
            from: c.clone(),
            message: Message::Swim(announce.clone()),
        };
        let actions = node.handle(0, Input::Received(forged));
        assert!(
            actions.iter().any(|a| matches!(a, Action::Refused { .. })),
            "{actions:?}"
        );
        assert!(node.members().is_empty());
        let genuine = Envelope {
            version: WIRE_VERSION,
            from: a.clone(),
            message: Message::Swim(announce),
        };
        node.handle(0, Input::Received(genuine));
        assert_eq!(node.members().len(), 1);
        assert_eq!(node.members()[0].0.name, "a");
    }
}
