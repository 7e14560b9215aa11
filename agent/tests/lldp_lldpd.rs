//! LLDP against a real lldpd in the testbed: both sides see each other, a
//! neighbour disappears when unplugged, and bad frames are counted while the
//! agent keeps running.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use metalmesh_testbed::testing::{Guard, agent_on, eventually, ok, run, spawn_detached_in};
use metalmesh_testbed::{Overrides, Quiet, Testbed, Topology};
use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_metalmesh-agent");

/// `metalmesh-agent ARGS -o json` on a leaf, through `metalmesh-testbed exec`.
fn agent_json(run_dir: &Path, leaf: &str, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.extend_from_slice(&["-o", "json"]);
    let out = agent_on(run_dir, AGENT, leaf, &full);
    ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn neighbors_on(run_dir: &Path, port: &str) -> Vec<Value> {
    let value = agent_json(run_dir, "leaf1", &["lldp", "neighbors"]);
    value["neighbors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["local_port"] == port)
        .cloned()
        .collect()
}

fn lldpcli(socket: &Path, args: &[&str]) -> Output {
    let mut full = vec!["-u", socket.to_str().unwrap()];
    full.extend_from_slice(args);
    run("lldpcli", &full)
}

/// Whether lldpd's JSON neighbour table names our switch and port.
fn lldpd_sees(socket: &Path, system: &str, port: &str) -> bool {
    let out = lldpcli(socket, &["show", "neighbors", "-f", "json"]);
    let Ok(value) = serde_json::from_slice::<Value>(&out.stdout) else {
        return false;
    };
    let text = value.to_string();
    contains_key(&value, system) && text.contains(&format!("\"value\":\"{port}\""))
}

fn contains_key(value: &Value, key: &str) -> bool {
    match value {
        Value::Object(map) => map.contains_key(key) || map.values().any(|v| contains_key(v, key)),
        Value::Array(items) => items.iter().any(|v| contains_key(v, key)),
        _ => false,
    }
}

/// Frames lldpd says it has sent.
fn lldpd_transmitted(socket: &Path) -> u64 {
    let out = lldpcli(socket, &["show", "statistics"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Transmitted:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn kill_machine_processes() {
    let pids = run("ip", &["netns", "pids", "mm-m1-1"]);
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        run("kill", &["-KILL", pid]);
    }
}

/// Starts lldpd in the machine, configured (TX every second, a host name)
/// and transmitting. lldpd occasionally comes up mute or drops configuration
/// given while it starts; such a start is retried, the peer is not ours to fix.
fn start_lldpd(socket: &Path) {
    for _attempt in 0..6 {
        let _ = std::fs::remove_file(socket);
        // In the foreground (-d), detached, logging to a file: lldpd's own
        // daemonising shares /run/lldpd.pid between instances.
        spawn_detached_in(
            "mm-m1-1",
            &[
                "lldpd".as_ref(),
                "-d".as_ref(),
                "-u".as_ref(),
                socket.as_os_str(),
                "-I".as_ref(),
                "eth0".as_ref(),
            ],
            &socket.with_extension("log"),
        );
        let configured = || {
            let _ = lldpcli(socket, &["configure", "lldp", "tx-interval", "1"]);
            let _ = lldpcli(socket, &["configure", "system", "hostname", "server-m1-1"]);
            std::thread::sleep(Duration::from_millis(300));
            let config =
                String::from_utf8_lossy(&lldpcli(socket, &["show", "configuration"]).stdout)
                    .into_owned();
            let chassis =
                String::from_utf8_lossy(&lldpcli(socket, &["show", "chassis"]).stdout).into_owned();
            config.contains("Transmit delay: 1\n") && chassis.contains("server-m1-1")
        };
        if eventually(Duration::from_secs(10), configured) {
            let before = lldpd_transmitted(socket);
            if eventually(Duration::from_secs(10), || {
                let _ = lldpcli(socket, &["update"]);
                lldpd_transmitted(socket) > before
            }) {
                return;
            }
        }
        kill_machine_processes();
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("lldpd would not start transmitting");
}

/// Sends raw frames out of the machine's eth0 (python's AF_PACKET support).
fn send_raw(frames_hex: &[String]) {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('eth0', 0))\nfor f in {frames_hex:?}:\n    s.send(bytes.fromhex(f))\n"
    );
    let out = run(
        "ip",
        &["netns", "exec", "mm-m1-1", "python3", "-c", &script],
    );
    ok(&out);
}

#[test]
fn lldp_interoperates_with_lldpd() {
    let guard = Guard::new();
    let topology = Topology::load(
        None,
        &Overrides {
            racks: Some(1),
            machines_per_rack: Some(1),
            ..Overrides::default()
        },
    )
    .unwrap();
    let testbed = Testbed::up(&guard.run_dir, &topology, &mut Quiet).unwrap();
    let socket = guard.scratch.join("lldpd.sock");
    start_lldpd(&socket);

    // lldpd shows our agent: system name leaf1, port m1-1 (agent transmits every 5 s).
    assert!(
        eventually(Duration::from_secs(20), || lldpd_sees(
            &socket, "leaf1", "m1-1"
        )),
        "lldpd does not see leaf1/m1-1: {}\nagent log:\n{}",
        String::from_utf8_lossy(&lldpcli(&socket, &["show", "neighbors"]).stdout),
        std::fs::read_to_string(guard.run_dir.join("nodes/leaf1/agent/agent.log"))
            .unwrap_or_default()
    );
    let detail =
        String::from_utf8_lossy(&lldpcli(&socket, &["show", "neighbors"]).stdout).into_owned();
    assert!(
        detail.contains("10.255.0.1"),
        "management address missing: {detail}"
    );

    // The agent shows lldpd: its chassis (eth0's MAC), port and system name.
    assert!(
        eventually(Duration::from_secs(20), || {
            let _ = lldpcli(&socket, &["update"]);
            neighbors_on(&guard.run_dir, "m1-1")
                .iter()
                .any(|n| n["system_name"] == "server-m1-1")
        }),
        "agent does not see lldpd: {:?}",
        neighbors_on(&guard.run_dir, "m1-1")
    );
    let neighbor = neighbors_on(&guard.run_dir, "m1-1").pop().unwrap();
    assert_eq!(neighbor["chassis_id"], "52:54:00:6d:01:01");
    assert_eq!(neighbor["chassis_id_subtype"], "mac_address");
    assert_eq!(neighbor["port_id"], "52:54:00:6d:01:01");
    assert_eq!(neighbor["port_description"], "eth0");
    assert!(neighbor["ttl_secs"].as_u64().unwrap() <= 5, "{neighbor}");

    // Malformed and oversized frames are dropped and counted; the agent lives on.
    let status = agent_json(&guard.run_dir, "leaf1", &["status"]);
    let pid = status["pid"].clone();
    for iface in [("mm-m1-1", "eth0"), ("mm-leaf1", "m1-1")] {
        let out = run(
            "ip",
            &["-n", iface.0, "link", "set", iface.1, "mtu", "9000"],
        );
        assert!(out.status.success());
    }
    let header = "0180c200000e5254006d010188cc";
    let truncated = format!("{header}0207045254006d"); // chassis ID TLV cut short
    let oversized = format!("{header}{}", "00".repeat(3000));
    send_raw(&[truncated, oversized]);
    assert!(eventually(Duration::from_secs(10), || {
        let counters = &agent_json(&guard.run_dir, "leaf1", &["status"])["lldp_counters"];
        counters["frames_discarded"].as_u64() >= Some(1)
            && counters["frames_oversized"].as_u64() >= Some(1)
    }));
    let status = agent_json(&guard.run_dir, "leaf1", &["status"]);
    assert_eq!(status["pid"], pid);
    assert_eq!(status["subsystems"]["lldp"]["restarts"], 0);
    assert!(!neighbors_on(&guard.run_dir, "m1-1").is_empty());

    // Unplug 1: the machine's link goes down -> gone at once; back when it returns.
    run("ip", &["-n", "mm-m1-1", "link", "set", "eth0", "down"]);
    assert!(eventually(Duration::from_secs(5), || neighbors_on(
        &guard.run_dir,
        "m1-1"
    )
    .is_empty()));
    run("ip", &["-n", "mm-m1-1", "link", "set", "eth0", "up"]);
    assert!(eventually(Duration::from_secs(20), || {
        // `lldpcli update` makes lldpd send at once, not at its next interval.
        let _ = lldpcli(&socket, &["update"]);
        !neighbors_on(&guard.run_dir, "m1-1").is_empty()
    }));

    // Unplug 2: lldpd dies without a shutdown frame -> aged out within its TTL (4 s).
    // lldpd rewrites its command line, so kill what runs in the machine's namespace.
    kill_machine_processes();
    assert!(eventually(Duration::from_secs(8), || neighbors_on(
        &guard.run_dir,
        "m1-1"
    )
    .is_empty()));

    // Unplug 3: the cable is cut (veth deleted) -> the port and its neighbour are gone.
    start_lldpd(&socket);
    assert!(eventually(Duration::from_secs(20), || {
        // `lldpcli update` makes lldpd send at once, not at its next interval.
        let _ = lldpcli(&socket, &["update"]);
        !neighbors_on(&guard.run_dir, "m1-1").is_empty()
    }));
    run("ip", &["-n", "mm-leaf1", "link", "del", "m1-1"]);
    assert!(eventually(Duration::from_secs(5), || neighbors_on(
        &guard.run_dir,
        "m1-1"
    )
    .is_empty()));
    let status = agent_json(&guard.run_dir, "leaf1", &["status"]);
    assert!(
        !status["lldp_ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "m1-1")
    );
    assert_eq!(status["pid"], pid);

    drop(testbed);
}
