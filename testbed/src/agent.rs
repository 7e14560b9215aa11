//! `metalmesh-agent` on each leaf: its configuration, its daemon, and where
//! its binary comes from.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::daemon::DaemonSpec;
use crate::error::Error;
use crate::plan::{Node, Plan, RunDir};

/// Environment variable naming the agent binary the testbed runs.
pub const AGENT_BIN_ENV: &str = "METALMESH_AGENT_BIN";
const AGENT_BIN: &str = "metalmesh-agent";
/// Where each agent serves `/metrics` (on its loopback).
pub const METRICS_PORT: u16 = 9469;
/// LLDP transmit interval on testbed leaves: quick discovery in tests and demos.
const LLDP_TX_INTERVAL_SECS: u32 = 5;

/// Environment variable naming the `metalmesh` CLI the testbed uses for the
/// mesh CA.
pub(crate) const CLI_BIN_ENV: &str = "METALMESH_CLI_BIN";

/// Finds the agent binary: `$METALMESH_AGENT_BIN`, else next to the running
/// executable (or its parent, for test binaries in `target/*/deps`), else `PATH`.
pub(crate) fn binary() -> Result<PathBuf, Error> {
    find_binary(
        AGENT_BIN,
        AGENT_BIN_ENV,
        "metalmesh-agent: cargo build --bin metalmesh-agent",
    )
}

/// Finds the `metalmesh` CLI the same way (`$METALMESH_CLI_BIN` first).
pub(crate) fn cli_binary() -> Result<PathBuf, Error> {
    find_binary(
        "metalmesh",
        CLI_BIN_ENV,
        "metalmesh: cargo build --bin metalmesh",
    )
}

pub(crate) fn find_binary(name: &str, env: &str, package: &'static str) -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::MissingProgram {
                program: format!("{} (from {env})", path.display()),
                package,
            })
        };
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    if crate::sys::have_program(name) {
        return Ok(PathBuf::from(name));
    }
    Err(Error::MissingProgram {
        program: name.into(),
        package,
    })
}

/// The testbed's mesh CA directory.
pub(crate) fn mesh_ca_dir(run: &RunDir) -> PathBuf {
    run.root.join("mesh-ca")
}

/// Where a leaf's mesh certificate and key live.
pub(crate) fn mesh_dir(run: &RunDir, leaf: &str) -> PathBuf {
    dir(run, leaf).join("mesh")
}

/// Environment variable naming the directory with the kernel and initramfs
/// the leaves serve over HTTP.
pub(crate) const BOOT_DIR_ENV: &str = "METALMESH_BOOT_DIR";

/// `$METALMESH_BOOT_DIR`, else `target/boot` beside the build (what
/// `scripts/build-boot` writes).
pub(crate) fn boot_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BOOT_DIR_ENV) {
        return PathBuf::from(dir);
    }
    binary()
        .ok()
        .and_then(|b| b.canonicalize().ok())
        .and_then(|b| b.parent().and_then(Path::parent).map(|t| t.join("boot")))
        .unwrap_or_else(|| PathBuf::from("target/boot"))
}

pub(crate) fn dir(run: &RunDir, leaf: &str) -> PathBuf {
    run.node_dir(leaf).join("agent")
}

pub(crate) fn config_path(run: &RunDir, leaf: &str) -> PathBuf {
    dir(run, leaf).join("agent.toml")
}

pub(crate) fn socket(run: &RunDir, leaf: &str) -> PathBuf {
    dir(run, leaf).join("agent.sock")
}

/// The agent configuration of a leaf.
pub(crate) fn config(plan: &Plan, leaf: &Node, run: &RunDir) -> String {
    let rack = leaf.rack.unwrap_or_default();
    let mut ports: Vec<String> = leaf.bgp_interfaces.clone();
    if plan.machines.iter().any(|m| m.leaf == leaf.name) {
        ports.push(format!("m{rack}-*"));
    }
    let ports = ports
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut conf = String::new();
    let _ = writeln!(
        conf,
        "# metalmesh-agent on {} (written by metalmesh-testbed)",
        leaf.name
    );
    let _ = writeln!(
        conf,
        "state_dir = {:?}",
        path(&dir(run, &leaf.name).join("state"))
    );
    let _ = writeln!(conf, "\n[switch]");
    let _ = writeln!(conf, "name = {:?}", leaf.name);
    let _ = writeln!(conf, "partition = \"testbed\"");
    let _ = writeln!(conf, "rack = \"rack{rack}\"");
    let _ = writeln!(conf, "loopback = \"{}\"", leaf.loopback);
    let _ = writeln!(conf, "asn = {}", leaf.asn.unwrap_or_default());
    // The same dataplane on every host kernel: VRF-device mode is tested
    // in the Debian-kernel VM (scripts/build-vrf-vm).
    let _ = writeln!(conf, "kernel_mode = \"routing_tables\"");
    if let Some(bgp) = leaf.leaf_bgp {
        use crate::topology::LeafBgp;
        let spines = leaf
            .bgp_interfaces
            .iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let backend = match bgp {
            LeafBgp::Native => "native",
            // The leaf's FRR, started by the testbed with nothing of BGP
            // configured: the agent writes it through vtysh.
            LeafBgp::Frr => "frr",
        };
        let _ = writeln!(conf, "\n[bgp]");
        let _ = writeln!(conf, "backend = \"{backend}\"");
        let _ = writeln!(conf, "interfaces = [{spines}]");
        // Fabric sessions fail over within seconds, as the spines' FRR does.
        let _ = writeln!(conf, "hold_time_secs = 3");
        if bgp == LeafBgp::Frr {
            let _ = writeln!(conf, "\n[bgp.frr]");
            let _ = writeln!(conf, "vty_socket = {:?}", path(&run.frr_dir(&leaf.name)));
        }
    }
    let _ = writeln!(conf, "\n[lldp]");
    let _ = writeln!(conf, "ports = [{ports}]");
    let _ = writeln!(conf, "tx_interval_secs = {LLDP_TX_INTERVAL_SECS}");
    if let Some((address, prefix)) = leaf.provisioning {
        let octets = address.octets();
        let host = |last: u8| format!("{}.{}.{}.{last}", octets[0], octets[1], octets[2]);
        let _ = writeln!(conf, "\n[boot]");
        let _ = writeln!(conf, "interface = \"{}\"", crate::plan::PROVISIONING_BRIDGE);
        let _ = writeln!(conf, "server_ip = \"{address}\"");
        let _ = writeln!(conf, "prefix_len = {prefix}");
        let _ = writeln!(conf, "pool_start = \"{}\"", host(100));
        let _ = writeln!(conf, "pool_end = \"{}\"", host(250));
        let _ = writeln!(conf, "domain = \"rack{rack}.testbed\"");
        let _ = writeln!(conf, "tftp_root = \"/usr/lib/ipxe\"");
        let _ = writeln!(conf, "http_root = {:?}", path(&boot_dir()));
    }
    let leaves: Vec<String> = plan
        .nodes
        .iter()
        .filter(|n| n.role == crate::plan::Role::Leaf)
        .map(|n| format!("\"{}\"", n.loopback))
        .collect();
    let mesh = mesh_dir(run, &leaf.name);
    let _ = writeln!(conf, "\n[mesh]");
    let _ = writeln!(conf, "seeds = [{}]", leaves.join(", "));
    let _ = writeln!(conf, "ca = {:?}", path(&mesh_ca_dir(run).join("ca.pem")));
    let _ = writeln!(
        conf,
        "cert = {:?}",
        path(&mesh.join(format!("{}.pem", leaf.name)))
    );
    let _ = writeln!(
        conf,
        "key = {:?}",
        path(&mesh.join(format!("{}.key", leaf.name)))
    );
    // The loopback is the leaf's management address here: the API node's
    // Prometheus (`up --prometheus`) reaches it over the underlay.
    let _ = writeln!(
        conf,
        "\n[metrics]\nlisten = \"{}:{METRICS_PORT}\"",
        leaf.loopback
    );
    let _ = writeln!(conf, "\n[admin]");
    let _ = writeln!(conf, "socket = {:?}", path(&socket(run, &leaf.name)));
    conf
}

pub(crate) fn daemon(leaf: &Node, run: &RunDir, binary: &Path) -> DaemonSpec {
    let dir = dir(run, &leaf.name);
    let pidfile = dir.join("agent.pid");
    DaemonSpec {
        name: "agent".into(),
        namespace: leaf.namespace(),
        argv: vec![
            path(binary),
            "run".into(),
            "--config".into(),
            path(&config_path(run, &leaf.name)),
            "--pidfile".into(),
            path(&pidfile),
        ],
        pidfile,
        output: dir.join("agent.log"),
        detach: true,
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;

    #[test]
    fn leaf_config_selects_uplinks_and_machine_ports() {
        let plan = Plan::new(&Topology {
            machines_per_rack: 2,
            ..Topology::default()
        });
        let leaf = plan.node("leaf2").unwrap();
        let conf = config(&plan, leaf, &RunDir::new("/r"));
        assert!(
            conf.contains("ports = [\"spine1\", \"spine2\", \"m2-*\"]"),
            "{conf}"
        );
        assert!(conf.contains("loopback = \"10.255.0.2\""), "{conf}");
        assert!(
            conf.contains("seeds = [\"10.255.0.1\", \"10.255.0.2\"]"),
            "{conf}"
        );
        assert!(
            conf.contains("cert = \"/r/nodes/leaf2/agent/mesh/leaf2.pem\""),
            "{conf}"
        );
        assert!(
            conf.contains("socket = \"/r/nodes/leaf2/agent/agent.sock\""),
            "{conf}"
        );
        let spec = daemon(leaf, &RunDir::new("/r"), Path::new("/bin/metalmesh-agent"));
        assert!(spec.detach);
        assert_eq!(spec.namespace, "mm-leaf2");
    }
}
