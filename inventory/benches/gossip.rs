//! `scripts/bench gossip`: a deterministic simulation of a large mesh
//! (default 1,000 nodes, 1% packet loss, 0.2–5 ms latency, node churn) that
//! prints how fast one update reaches every node and what the mesh costs
//! each node in bytes per second. The same run repeats the convergence
//! measurement with push gossip switched off (anti-entropy alone, the way a
//! digest-exchange-only replicator spreads data) as the reference.
//!
//! Arguments: `[nodes] [seeds] [trials per seed]`, seeds comma-separated
//! (default `1000 42,43,44,45 50`: 200 updates in all, and as many for the
//! reference, so both p99s rest on the same number of samples).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use metalmesh_inventory::RecordKind;
use metalmesh_inventory::sim::{SimConfig, Simulation};
use std::time::{Duration, Instant};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn bytes_per_node_second(sim: &Simulation, before: &[u64], window: Duration) -> (f64, f64) {
    let rates: Vec<f64> = (0..sim.len())
        .filter(|i| sim.is_up(*i))
        .map(|i| (sim.sent(i).0 - before[i]) as f64 / window.as_secs_f64())
        .collect();
    let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    let max = rates.iter().copied().fold(0.0, f64::max);
    (mean, max)
}

#[derive(Default)]
struct Convergence {
    /// Time until every live node had the update, per update.
    full: Vec<f64>,
    /// Time until each node had the update.
    per_node: Vec<f64>,
    missed: usize,
}

fn join(sim: &mut Simulation, nodes: usize) {
    let joined = sim.run_until(Duration::from_secs(120), |sim| {
        (0..sim.len()).all(|i| {
            sim.node(i)
                .is_some_and(|n| n.members().len() + 1 >= nodes * 99 / 100)
        })
    });
    println!(
        "  membership {} after {:.1} s simulated (fewest members seen by a node: {})",
        if joined { "converged" } else { "NOT converged" },
        sim.now().as_secs_f64(),
        (0..sim.len())
            .filter_map(|i| sim.node(i).map(|n| n.members().len()))
            .min()
            .unwrap_or(0)
    );
    sim.run_for(Duration::from_secs(10));
}

/// Single updates with churn: before each, one node crashes and the one
/// crashed before comes back.
fn converge(sim: &mut Simulation, nodes: usize, trials: usize) -> Convergence {
    let mut result = Convergence {
        full: Vec::new(),
        per_node: Vec::new(),
        missed: 0,
    };
    let mut down: Option<usize> = None;
    for trial in 0..trials {
        if let Some(index) = down.take() {
            sim.start(index);
        }
        let victim = (trial * 7919 + 13) % nodes;
        if victim != 0 {
            sim.kill(victim);
            down = Some(victim);
        }
        sim.run_for(Duration::from_secs(2));
        let writer = (trial * 104_729 + 1) % nodes;
        let writer = if sim.is_up(writer) {
            writer
        } else {
            (writer + 1) % nodes
        };
        let start = sim.now();
        let record = sim.publish(
            writer,
            RecordKind::Port,
            &format!("node{writer}/swp{trial}"),
            "{\"up\":true,\"mtu\":9000}",
        );
        let up: Vec<usize> = (0..nodes).filter(|i| sim.is_up(*i)).collect();
        if !sim.run_until(Duration::from_secs(10), |sim| {
            up.iter().all(|i| sim.holds(*i, &record))
        }) {
            result.missed += 1;
        }
        let seen = sim.first_seen(&record.id);
        let mut latest = Duration::ZERO;
        for index in &up {
            if let Some(at) = seen.get(index) {
                let latency = at.saturating_sub(start);
                latest = latest.max(latency);
                result.per_node.push(latency.as_secs_f64());
            }
        }
        result.full.push(latest.as_secs_f64());
    }
    result.full.sort_by(f64::total_cmp);
    result.per_node.sort_by(f64::total_cmp);
    result
}

/// Microseconds to sign and to verify one record, for a lease-sized and a
/// machine-sized value (measured here, on this host).
fn signature_cost() -> Vec<(&'static str, f64, f64)> {
    use metalmesh_inventory::record::{Record, RecordKey};
    use metalmesh_inventory::trust::Signer;
    let signer = Signer::from_seed(&[3; 32]);
    let key = signer.public_key().clone();
    let mut out = Vec::new();
    for (label, value) in [
        ("lease (100 B value)", "x".repeat(100)),
        ("machine (4 KiB value)", "x".repeat(4096)),
    ] {
        let count = 5_000u32;
        let mut records: Vec<Record> = (0..count)
            .map(|i| Record {
                id: RecordKey::new(RecordKind::Lease, format!("node1/{i}")),
                origin: "node1".into(),
                version: u64::from(i),
                value: Some(value.clone()),
                signature: Vec::new(),
            })
            .collect();
        let start = Instant::now();
        for record in &mut records {
            signer.sign(record);
        }
        let sign = start.elapsed().as_secs_f64() * 1e6 / f64::from(count);
        let start = Instant::now();
        let valid = records.iter().filter(|r| key.verify(r)).count();
        let verify = start.elapsed().as_secs_f64() * 1e6 / f64::from(count);
        assert_eq!(valid, count as usize, "a signed record failed to verify");
        out.push((label, sign, verify));
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let nodes: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seeds: Vec<u64> = args
        .get(1)
        .map(|a| a.split(',').filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_else(|| vec![42, 43, 44, 45]);
    let per_seed: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50);
    let trials = per_seed * seeds.len();
    let wall = Instant::now();
    let config = SimConfig::new(nodes, seeds[0]);
    println!(
        "gossip simulation: {nodes} nodes, seeds {seeds:?}, {per_seed} updates each, loss {:.0}%, latency {:?}..{:?}, fanout {}, {} push rounds, anti-entropy every {:?}",
        config.loss * 100.0,
        config.min_latency,
        config.max_latency,
        config.tuning.fanout,
        config.tuning.transmissions,
        config.tuning.anti_entropy_interval
    );
    let updates_per_second = 20;
    let (mut idle_mean, mut idle_max, mut busy_mean, mut busy_max) = (0.0, 0.0, 0.0, 0.0);
    let mut ours = Convergence::default();
    let mut baseline = Convergence::default();
    for (index, seed) in seeds.iter().enumerate() {
        let config = SimConfig::new(nodes, *seed);
        println!("seed {seed}: metalmesh (push gossip + anti-entropy):");
        let mut sim = Simulation::new(config.clone());
        join(&mut sim, nodes);
        if index == 0 {
            // Steady state: membership and anti-entropy only.
            let window = Duration::from_secs(30);
            let before: Vec<u64> = (0..sim.len()).map(|i| sim.sent(i).0).collect();
            sim.run_for(window);
            (idle_mean, idle_max) = bytes_per_node_second(&sim, &before, window);
        }
        let run = converge(&mut sim, nodes, per_seed);
        ours.full.extend(run.full);
        ours.per_node.extend(run.per_node);
        ours.missed += run.missed;
        if index == 0 {
            // Background churn of records: 20 updates per second across the mesh.
            let before: Vec<u64> = (0..sim.len()).map(|i| sim.sent(i).0).collect();
            let window = Duration::from_secs(20);
            for step in 0..(window.as_millis() as usize / (1000 / updates_per_second)) {
                let writer = (step * 31 + 5) % nodes;
                if sim.is_up(writer) {
                    sim.publish(
                        writer,
                        RecordKind::Lease,
                        &format!("node{writer}/lease{step}"),
                        "{\"ip\":\"10.100.1.23\"}",
                    );
                }
                sim.run_for(Duration::from_millis(1000 / updates_per_second as u64));
            }
            (busy_mean, busy_max) = bytes_per_node_second(&sim, &before, window);
        }
        drop(sim);

        println!("seed {seed}: reference (anti-entropy alone, same network and churn):");
        let mut reference = config.clone();
        reference.tuning.transmissions = 0;
        let mut sim = Simulation::new(reference);
        join(&mut sim, nodes);
        let run = converge(&mut sim, nodes, per_seed);
        baseline.full.extend(run.full);
        baseline.per_node.extend(run.per_node);
        baseline.missed += run.missed;
    }
    for result in [&mut ours, &mut baseline] {
        result.full.sort_by(f64::total_cmp);
        result.per_node.sort_by(f64::total_cmp);
    }
    let crypto = signature_cost();

    let p99 = percentile(&ours.full, 99.0);
    let baseline_p99 = percentile(&baseline.full, 99.0);
    println!();
    println!(
        "one update to all {nodes} nodes:  p50 {:.3} s  p99 {:.3} s  ({} of {trials} not everywhere within 10 s)",
        percentile(&ours.full, 50.0),
        p99,
        ours.missed
    );
    println!(
        "one update, per node:            p50 {:.3} s  p99 {:.3} s",
        percentile(&ours.per_node, 50.0),
        percentile(&ours.per_node, 99.0)
    );
    println!(
        "reference, all nodes:            p50 {:.3} s  p99 {:.3} s  ({} of {trials} not everywhere within 10 s) -> metalmesh p99 is {:.1}x faster",
        percentile(&baseline.full, 50.0),
        baseline_p99,
        baseline.missed,
        baseline_p99 / p99
    );
    println!(
        "traffic at steady state (membership + anti-entropy): {:.2} kB/s per node (max {:.2})",
        idle_mean / 1000.0,
        idle_max / 1000.0
    );
    println!(
        "traffic with {updates_per_second} record updates/s mesh-wide:        {:.1} kB/s per node (max {:.1})",
        busy_mean / 1000.0,
        busy_max / 1000.0
    );
    println!(
        "record signatures (Ed25519, every record signed by its writer, checked by every node once):"
    );
    for (label, sign, verify) in &crypto {
        println!(
            "  {label:<28} sign {sign:>6.1} us   verify {verify:>6.1} us   -> {:.2}% of one core per node at {updates_per_second} updates/s",
            verify * updates_per_second as f64 / 10_000.0
        );
    }
    println!(
        "targets: p99 <= 2 s -> {}; <= 50 kB/s per node at steady state -> {}",
        if p99 <= 2.0 && ours.missed == 0 {
            "met"
        } else {
            "NOT met"
        },
        if idle_max <= 50_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("({:.1} s of wall time)", wall.elapsed().as_secs_f64());
}
