//! `scripts/bench api`: the API node with 10,000 machines in its replica.
//!
//! In one process on loopback: the testbed's development OIDC issuer, the
//! API node (HTTPS, OIDC, its mesh replica), and a simulated rack: a real
//! mesh node with a `leaf` certificate that publishes the machines' records
//! and commits `machine.allocate` commands in its own store the way an
//! agent's machine core does (one owner, refuses a machine allocated
//! already). Measures `GET /v1/machines` latency (p50/p99 of sequential
//! requests) and end-to-end allocations per second with concurrent clients,
//! then checks that no machine or address was handed out twice.
//!
//!   BENCH_MACHINES (default 10000), BENCH_ALLOCATIONS (default 1000),
//!   BENCH_CLIENTS (default 16)

#[path = "../tests/support/mod.rs"]
mod support;

use metalmesh_api::cli::client::ApiClient;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fail(message: &str) -> ! {
    eprintln!("bench api: {message}");
    std::process::exit(1)
}

fn uuid(i: usize) -> String {
    format!("6d6d0000-0000-4000-8000-{i:012x}")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let machines = env("BENCH_MACHINES", 10_000);
    let allocations = env("BENCH_ALLOCATIONS", 1_000).min(machines);
    let clients = env("BENCH_CLIENTS", 16).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&e.to_string()));
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&e.to_string()));
    let root = dir.path().to_path_buf();
    let (client, deployment) = runtime.block_on(setup(&root, machines));
    println!("api bench: {machines} machines in the replica, HTTPS, OIDC (ES256), release build");

    // machine ls: sequential requests.
    let mut latencies = Vec::new();
    for _ in 0..100 {
        // Time to the answer's last byte; the answer is checked after.
        let started = Instant::now();
        let body = client
            .get_bytes("/v1/machines")
            .unwrap_or_else(|e| fail(&e.to_string()));
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        let list: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|e| fail(&e.to_string()));
        if list.as_array().map_or(0, Vec::len) != machines {
            fail("machine ls did not return every machine");
        }
    }
    let first = latencies[0];
    if std::env::var_os("BENCH_TRACE").is_some() {
        let trace: Vec<String> = latencies.iter().map(|l| format!("{l:.0}")).collect();
        println!("machine ls latencies in order (ms): {}", trace.join(" "));
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    let slowest: Vec<String> = latencies
        .iter()
        .rev()
        .take(5)
        .map(|l| format!("{l:.1}"))
        .collect();
    println!(
        "machine ls: first request {first:.1} ms; slowest five {} ms",
        slowest.join(", ")
    );
    println!(
        "machine ls ({machines} machines):  p50 {p50:.1} ms  p99 {p99:.1} ms  (100 requests; target p99 <= 50 ms -> {})",
        if p99 <= 50.0 { "met" } else { "NOT met" }
    );

    // Allocations from concurrent clients.
    let started = Instant::now();
    let results: Vec<serde_json::Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let client = client.clone();
                scope.spawn(move || {
                    let mut won = Vec::new();
                    let mut i = c;
                    while i < allocations {
                        let body = serde_json::json!({
                            "project": "bench", "network": "bench", "hostname": format!("h{i}"),
                            "image": "debian",
                        });
                        match client.post("/v1/machines/allocate", &body) {
                            Ok(machine) => won.push(machine),
                            Err(error) => fail(&format!("allocation {i}: {error}")),
                        }
                        i += clients;
                    }
                    won
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let rate = results.len() as f64 / elapsed;
    let uuids: BTreeSet<&str> = results.iter().filter_map(|m| m["uuid"].as_str()).collect();
    let ips: BTreeSet<&str> = results.iter().filter_map(|m| m["ip"].as_str()).collect();
    if uuids.len() != allocations || ips.len() != allocations {
        fail(&format!(
            "{} allocations gave {} machines and {} addresses: something was handed out twice",
            allocations,
            uuids.len(),
            ips.len()
        ));
    }
    println!(
        "allocations: {allocations} by {clients} clients in {elapsed:.1} s = {rate:.0}/s (target >= 200/s -> {}); {} distinct machines, {} distinct addresses",
        if rate >= 200.0 { "met" } else { "NOT met" },
        uuids.len(),
        ips.len()
    );
    drop(deployment);
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
}

/// Issuer, CA, a simulated rack with its machines, the API node, the
/// bench's project, network and image; returns an admin's client.
async fn setup(root: &Path, machines: usize) -> (ApiClient, support::Deployment) {
    let rack = support::RackSpec {
        name: "rack1".into(),
        partition: "bench".into(),
        machines: (0..machines).map(|i| (uuid(i), None)).collect(),
    };
    let deployment = support::start(
        root,
        support::Addresses { base: [127, 0, 16] },
        &[rack],
        "prefix_length = 20",
    )
    .await
    .unwrap_or_else(|e| fail(&e.to_string()));
    let token = support::token(&deployment.issuer_dir, "bench", "admin", &[])
        .unwrap_or_else(|e| fail(&e.to_string()));
    let client = deployment
        .client(&token)
        .unwrap_or_else(|e| fail(&e.to_string()));
    for (path, body) in [
        ("/v1/projects", serde_json::json!({"name": "bench"})),
        (
            "/v1/networks",
            serde_json::json!({"project": "bench", "name": "bench"}),
        ),
        (
            "/v1/images",
            serde_json::json!({"name": "debian", "url": "http://images.example/debian.img", "sha256": "0".repeat(64)}),
        ),
    ] {
        let c = client.clone();
        tokio::task::spawn_blocking(move || c.post(path, &body))
            .await
            .unwrap_or_else(|e| fail(&e.to_string()))
            .unwrap_or_else(|e| fail(&e.to_string()));
    }
    (client, deployment)
}
