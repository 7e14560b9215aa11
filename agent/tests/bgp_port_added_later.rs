//! A fabric port that appears after the agent started (a cable plugged in,
//! a breakout configured) gets its unnumbered session: the agent is running
//! with `interfaces = ["fab*"]` and no such port; then a veth `fab1` to a
//! namespace running FRR (zebra + bgpd, `neighbor eth0 interface`) is
//! created, and the session comes up and FRR's route reaches the kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use metalmesh_testbed::testing::{Guard, eventually, ip, ok, run};

const AGENT: &str = env!("CARGO_BIN_EXE_metalmesh-agent");

fn frr_daemon(dir: &Path, daemon: &str) {
    let binary = format!("/usr/lib/frr/{daemon}");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            "mm-bgpl-spine",
            &binary,
            "-d",
            "-N",
            "mm-bgpl-spine",
        ])
        .arg("-i")
        .arg(dir.join(format!("{daemon}.pid")))
        .arg("-z")
        .arg(dir.join("zserv.api"))
        .arg("--vty_socket")
        .arg(dir)
        .arg("-f")
        .arg(dir.join(format!("{daemon}.conf")))
        .output()
        .unwrap();
    ok(&out);
}

fn neighbors(socket: &Path) -> serde_json::Value {
    let out = Command::new(AGENT)
        .arg("--socket")
        .arg(socket)
        .args(["bgp", "neighbors", "-o", "json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn a_fabric_port_added_after_start_gets_its_session() {
    let guard = Guard::new();
    for ns in ["mm-bgpl-leaf", "mm-bgpl-spine"] {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        // Link-local addresses usable at once: no duplicate detection.
        ip(&[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]);
    }
    ip(&[
        "-n",
        "mm-bgpl-leaf",
        "addr",
        "add",
        "10.255.0.9/32",
        "dev",
        "lo",
    ]);
    let dir = guard.scratch.join("leaf");
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("agent.sock");
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "state_dir = {:?}\n[switch]\nname = \"bgpl\"\nloopback = \"10.255.0.9\"\nasn = 4200000009\nchassis_mac = \"02:00:00:00:00:09\"\n[lldp]\nenabled = false\n[admin]\nsocket = {socket:?}\n[bgp]\nbackend = \"native\"\ninterfaces = [\"fab*\"]\nhold_time_secs = 9\n",
            dir.join("state")
        ),
    )
    .unwrap();
    let mut agent = Command::new("ip")
        .args(["netns", "exec", "mm-bgpl-leaf", AGENT, "run", "--config"])
        .arg(dir.join("agent.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(guard.scratch.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || neighbors(&socket).is_array()));
    assert_eq!(
        neighbors(&socket),
        serde_json::json!([]),
        "no fabric port yet"
    );

    // The cable: fab1 on the leaf, eth0 on the spine; FRR on the spine.
    ip(&[
        "link",
        "add",
        "fab1",
        "netns",
        "mm-bgpl-leaf",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        "mm-bgpl-spine",
    ]);
    ip(&["-n", "mm-bgpl-leaf", "link", "set", "fab1", "up"]);
    ip(&["-n", "mm-bgpl-spine", "link", "set", "eth0", "up"]);
    ip(&[
        "-n",
        "mm-bgpl-spine",
        "route",
        "add",
        "blackhole",
        "10.77.0.0/24",
    ]);
    let frr = guard.scratch.join("frr");
    std::fs::create_dir_all(&frr).unwrap();
    std::fs::write(frr.join("zebra.conf"), "hostname spine\n").unwrap();
    std::fs::write(
        frr.join("bgpd.conf"),
        "frr defaults datacenter\nhostname spine\nrouter bgp 65000\n bgp router-id 10.255.1.9\n no bgp ebgp-requires-policy\n neighbor eth0 interface remote-as external\n neighbor eth0 timers 1 3\n address-family ipv4 unicast\n  redistribute kernel\n exit-address-family\n",
    )
    .unwrap();
    run("chown", &["-R", "frr:frr", frr.to_str().unwrap()]);
    run("chmod", &["755", guard.scratch.to_str().unwrap()]);
    frr_daemon(&frr, "zebra");
    frr_daemon(&frr, "bgpd");

    let established = eventually(Duration::from_secs(40), || {
        neighbors(&socket).as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["remote"]["interface"] == "fab1" && p["state"] == "Established")
        })
    });
    let route = || {
        String::from_utf8_lossy(
            &run(
                "ip",
                &["-n", "mm-bgpl-leaf", "route", "show", "10.77.0.0/24"],
            )
            .stdout,
        )
        .into_owned()
    };
    let installed = established
        && eventually(Duration::from_secs(10), || {
            let r = route();
            r.contains("proto bgp") && r.contains("via inet6 fe80::") && r.contains("dev fab1")
        });
    for daemon in ["bgpd", "zebra"] {
        if let Ok(pid) = std::fs::read_to_string(frr.join(format!("{daemon}.pid"))) {
            run("kill", &[pid.trim()]);
        }
    }
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        established,
        "no session on fab1: {}\n{}",
        neighbors(&socket),
        std::fs::read_to_string(guard.scratch.join("agent.log")).unwrap_or_default()
    );
    assert!(installed, "FRR's route not in the kernel: {}", route());
}
