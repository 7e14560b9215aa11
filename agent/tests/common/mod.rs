//! Helpers shared by the agent's testbed tests of the machine lifecycle.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;

use metalmesh_testbed::testing::agent_on;

pub(crate) const AGENT: &str = env!("CARGO_BIN_EXE_metalmesh-agent");

/// `metalmesh-agent ARGS` on leaf1.
pub(crate) fn agent(run_dir: &Path, args: &[&str]) -> Output {
    agent_on(run_dir, AGENT, "leaf1", args)
}

/// Gives leaf1 the tenant VRF machines are allocated into (10.0.1.0/24).
pub(crate) fn tenant_a(run_dir: &Path, scratch: &Path) {
    let intents = scratch.join("intents.toml");
    std::fs::write(
        &intents,
        "[[vrf]]\nname = \"tenant-a\"\nvni = 10001\ntable = 1001\nprefixes = [\"10.0.1.0/24\"]\n",
    )
    .unwrap();
    let out = agent(run_dir, &["dataplane", "apply", intents.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A machine's event names, oldest first.
pub(crate) fn events(run_dir: &Path, uuid: &str) -> Vec<String> {
    let out = agent(run_dir, &["machine", "events", uuid, "-o", "json"]);
    let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    events
        .iter()
        .rev()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}
