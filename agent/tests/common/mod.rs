//! Helpers shared by the agent's testbed tests of the machine lifecycle.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub(crate) mod api;
pub(crate) mod browser;

use std::path::Path;
use std::process::Output;

use metalmesh_testbed::testing::agent_on;

pub(crate) const AGENT: &str = env!("CARGO_BIN_EXE_metalmesh-agent");

/// `metalmesh-agent ARGS` on leaf1.
pub(crate) fn agent(run_dir: &Path, args: &[&str]) -> Output {
    agent_on(run_dir, AGENT, "leaf1", args)
}

/// `metalmesh-agent machine allocate` on leaf1 of the testbed's default
/// image, with `extra` flags.
pub(crate) fn allocate_local(
    run_dir: &Path,
    uuid: &str,
    ip: &str,
    hostname: &str,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "machine",
        "allocate",
        uuid,
        "--image",
        "testbed-default",
        "--ip",
        ip,
        "--hostname",
        hostname,
    ];
    args.extend_from_slice(extra);
    agent(run_dir, &args)
}

/// Packets dropped so far by the counted rules of one chain of the
/// leaf1 packet filter (`nft -j list chain FAMILY TABLE CHAIN`).
pub(crate) fn nft_dropped(family: &str, table: &str, chain: &str) -> u64 {
    let out = metalmesh_testbed::testing::run(
        "ip",
        &[
            "netns", "exec", "mm-leaf1", "nft", "-j", "list", "chain", family, table, chain,
        ],
    );
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|expr| expr["counter"]["packets"].as_u64())
        .sum()
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

/// Size of a namespace machine's disk file.
pub(crate) const DISK_BYTES: u64 = 64 * 1024 * 1024;

pub(crate) fn installer() -> std::path::PathBuf {
    let path = Path::new(AGENT).with_file_name("metalmesh-installer");
    assert!(
        path.is_file(),
        "metalmesh-installer not built at {}",
        path.display()
    );
    path
}

/// The UUID namespace machine `m<rack>-<index>` announces.
pub(crate) fn uuid(rack: u32, index: u32) -> String {
    format!("6d6d0000-0000-4000-8000-{rack:06x}{index:06x}")
}

/// A disk file with a recognisable pattern everywhere.
pub(crate) fn disk(scratch: &Path, name: &str) -> std::path::PathBuf {
    let path = scratch.join(format!("{name}.disk"));
    std::fs::write(&path, vec![0xa5u8; DISK_BYTES as usize]).unwrap();
    path
}

/// Starts `metalmesh-installer --simulate` in namespace machine
/// `m<rack>-<index>`; returns its disk file.
pub(crate) fn start_installer(scratch: &Path, rack: u32, index: u32) -> std::path::PathBuf {
    let name = format!("m{rack}-{index}");
    let disk = disk(scratch, &name);
    let work = scratch.join(format!("{name}.work"));
    let uuid = uuid(rack, index);
    metalmesh_testbed::testing::spawn_detached_in(
        &format!("mm-{name}"),
        &[
            installer().as_os_str(),
            "--simulate".as_ref(),
            "--uuid".as_ref(),
            uuid.as_ref(),
            "--disk".as_ref(),
            disk.as_os_str(),
            "--work-dir".as_ref(),
            work.as_os_str(),
            "--heartbeat-ms".as_ref(),
            "500".as_ref(),
        ],
        &scratch.join(format!("{name}.log")),
    );
    disk
}

/// The one NIC of a namespace machine.
pub(crate) fn nic(namespace: &str) -> String {
    metalmesh_testbed::testing::in_netns(namespace, &["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .find(|name| name != "lo")
        .unwrap()
}
