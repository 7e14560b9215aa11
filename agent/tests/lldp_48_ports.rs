//! One agent runs LLDP on 48 ports at once against lldpd on the far ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use metalmesh_testbed::testing::{Guard, eventually, run, spawn_detached_in};
use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_metalmesh-agent");
const PORTS: usize = 48;
const SWITCH_NS: &str = "mm-t48-switch";
const PEER_NS: &str = "mm-t48-servers";

fn ip_batch(namespace: Option<&str>, commands: &[String]) {
    let mut args = Vec::new();
    if let Some(ns) = namespace {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all((commands.join("\n") + "\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn neighbors(socket: &Path) -> Vec<Value> {
    let out = run(
        AGENT,
        &[
            "--socket",
            socket.to_str().unwrap(),
            "lldp",
            "neighbors",
            "-o",
            "json",
        ],
    );
    if !out.status.success() {
        return Vec::new();
    }
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    value["neighbors"].as_array().cloned().unwrap_or_default()
}

#[test]
fn forty_eight_ports() {
    let guard = Guard::new();
    let mut commands = vec![
        format!("netns add {SWITCH_NS}"),
        format!("netns add {PEER_NS}"),
    ];
    for i in 1..=PORTS {
        commands.push(format!(
            "link add swp{i} netns {SWITCH_NS} type veth peer name eth{i} netns {PEER_NS}"
        ));
    }
    ip_batch(None, &commands);
    let mut up = vec![
        "link set lo up".to_string(),
        "address add 10.255.0.48/32 dev lo".into(),
    ];
    up.extend((1..=PORTS).map(|i| format!("link set swp{i} up")));
    ip_batch(Some(SWITCH_NS), &up);
    ip_batch(
        Some(PEER_NS),
        &(1..=PORTS)
            .map(|i| format!("link set eth{i} up"))
            .collect::<Vec<_>>(),
    );

    let socket = guard.scratch.join("agent.sock");
    let config = guard.scratch.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[switch]\nname = \"t48-switch\"\nloopback = \"10.255.0.48\"\nasn = 4200000048\n[lldp]\nports = [\"swp*\"]\ntx_interval_secs = 2\n[admin]\nsocket = {:?}\n",
            guard.scratch.join("state"),
            socket
        ),
    )
    .unwrap();
    let pidfile = guard.scratch.join("agent.pid");
    spawn_detached_in(
        SWITCH_NS,
        &[
            AGENT.as_ref(),
            "run".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--pidfile".as_ref(),
            pidfile.as_os_str(),
        ],
        &guard.scratch.join("agent.log"),
    );
    let lldpd_socket = guard.scratch.join("lldpd.sock");
    // lldpd in the foreground (-d), detached: its daemon mode shares /run/lldpd.pid.
    spawn_detached_in(
        PEER_NS,
        &[
            "lldpd".as_ref(),
            "-d".as_ref(),
            "-u".as_ref(),
            lldpd_socket.as_os_str(),
            "-I".as_ref(),
            "eth*".as_ref(),
        ],
        &guard.scratch.join("lldpd.log"),
    );

    // The agent hears lldpd on all 48 ports, each neighbour on its own port.
    assert!(
        eventually(Duration::from_secs(90), || neighbors(&socket).len()
            == PORTS),
        "agent sees {} of {PORTS} neighbours",
        neighbors(&socket).len()
    );
    let mut ports: Vec<String> = neighbors(&socket)
        .iter()
        .map(|n| n["local_port"].as_str().unwrap().to_string())
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), PORTS);

    // lldpd hears the agent on all 48 of its ports.
    let lldpd_count = || {
        let out = run(
            "lldpcli",
            &[
                "-u",
                lldpd_socket.to_str().unwrap(),
                "show",
                "neighbors",
                "-f",
                "json",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.matches("\"t48-switch\"").count()
    };
    assert!(
        eventually(Duration::from_secs(30), || lldpd_count() == PORTS),
        "lldpd sees the agent on {} of {PORTS} ports",
        lldpd_count()
    );
    // Guard's drop removes the mm- namespaces and every process in them.
}
