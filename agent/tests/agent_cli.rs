//! The agent binary's behaviour on bad configuration, an unreachable agent,
//! and a clean stop on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use metalmesh_testbed::testing::{Guard, Scratch, eventually, run};

const AGENT: &str = env!("CARGO_BIN_EXE_metalmesh-agent");

fn config(scratch: &std::path::Path, body: &str) -> std::path::PathBuf {
    let path = scratch.join("agent.toml");
    let text = format!(
        "state_dir = {:?}\n[switch]\nname = \"tcli\"\nloopback = \"10.255.0.9\"\nasn = 4200000009\nchassis_mac = \"02:00:00:00:00:09\"\n{body}[admin]\nsocket = {:?}\n",
        scratch.join("state"),
        scratch.join("agent.sock"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn typo_in_config_is_rejected_with_file_line_and_key() {
    // No root: a configuration error is found before anything starts.
    let scratch = Scratch::new();
    let path = config(
        &scratch.path,
        "[lldp]\nports = [\"swp*\"]\ntx_intervall_secs = 5\n",
    );
    let out = run(AGENT, &["run", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    assert!(
        stderr.contains("line 9, key `tx_intervall_secs`"),
        "{stderr}"
    );
    // check-config says the same without starting anything.
    let out = run(AGENT, &["check-config", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tx_intervall_secs"));
}

#[test]
fn bad_bgp_config_is_refused_with_line_and_key() {
    // No root: `check-config` finds these before anything starts.
    let scratch = Scratch::new();
    let cases = [
        (
            "[bgp]\nbackend = \"native\"\n[[bgp.neighbor]]\naddress = \"192.0.2.1\"\nremote_as = 65001\nfamilies = [\"ipv4\", \"vpnv4\"]\n",
            "key `bgp.neighbor.families`: unknown family `vpnv4` (expected ipv4, ipv6 or evpn)",
        ),
        (
            "[bgp]\nbackend = \"native\"\n[[bgp.neighbor]]\naddress = \"192.0.2.1\"\nremote_as = 65001\n[[bgp.neighbor]]\naddress = \"192.0.2.1\"\nremote_as = \"external\"\n",
            "key `bgp.neighbor.address`: neighbour 192.0.2.1 is configured twice",
        ),
        (
            "[bgp]\nbackend = \"quagga\"\n",
            "key `bgp.backend`: unknown backend `quagga` (expected `native` or `frr`)",
        ),
        (
            "[bgp]\nbackend = \"frr\"\n[[bgp.neighbor]]\naddress = \"192.0.2.1\"\nremote_as = 65001\n",
            "key `bgp.neighbor`: numbered neighbours are configured in FRR itself",
        ),
        (
            "[bgp]\nbackend = \"native\"\n[bgp.frr]\nvtysh = \"/usr/bin/vtysh\"\n",
            "key `bgp.frr`: [bgp.frr] is set but the backend is `native`",
        ),
        (
            "[bgp]\nbackend = \"frr\"\n[bgp.frr]\nvtysh_path = \"/usr/bin/vtysh\"\n",
            "vtysh_path",
        ),
        (
            "[bgp]\nbackend = \"native\"\n[[bgp.neighbor]]\naddress = \"192.0.2.1\"\nremote_as = \"outside\"\n",
            "key `bgp.neighbor.remote_as`",
        ),
        (
            "[bgp]\nbackend = \"native\"\nhold_time_secs = 2\n",
            "key `bgp.hold_time_secs`: 2 is not 0 or 3..=65535",
        ),
    ];
    for (index, (text, expected)) in cases.iter().enumerate() {
        let dir = scratch.path.join(index.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let path = config(&dir, &format!("[lldp]\nports = [\"swp*\"]\n{text}"));
        let out = run(AGENT, &["check-config", "--config", path.to_str().unwrap()]);
        assert!(!out.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
        assert!(stderr.contains(expected), "{text}\n{stderr}");
    }
    // And a good one passes.
    std::fs::create_dir_all(scratch.path.join("good")).unwrap();
    let path = config(
        &scratch.path.join("good"),
        "[lldp]\nports = [\"swp*\"]\n[bgp]\nbackend = \"native\"\ninterfaces = [\"spine*\"]\n[[bgp.neighbor]]\naddress = \"2001:db8::1\"\nremote_as = 65010\nfamilies = [\"ipv6\", \"evpn\"]\n",
    );
    let out = run(AGENT, &["check-config", "--config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_port_is_rejected() {
    let guard = Guard::new();
    let path = config(&guard.scratch, "[lldp]\nports = [\"swp*\", \"swp99\"]\n");
    let out = run("ip", &["netns", "add", "mm-tcli"]);
    assert!(out.status.success());
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            "mm-tcli",
            AGENT,
            "run",
            "--config",
            path.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 8, key `lldp.ports`: unknown port `swp99`"),
        "{stderr}"
    );
    assert!(!guard.scratch.join("agent.sock").exists());
}

#[test]
fn unreachable_agent_is_a_clear_error() {
    let out = run(AGENT, &["--socket", "/nonexistent/agent.sock", "status"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the agent at /nonexistent/agent.sock"),
        "{stderr}"
    );
}

#[test]
fn sigterm_stops_cleanly() {
    let guard = Guard::new();
    let path = config(&guard.scratch, "[lldp]\nports = [\"swp*\"]\n");
    let out = run("ip", &["netns", "add", "mm-tcli"]);
    assert!(out.status.success());
    let pidfile = guard.scratch.join("agent.pid");
    let socket = guard.scratch.join("agent.sock");
    let mut child = Command::new("ip")
        .args(["netns", "exec", "mm-tcli", AGENT, "run", "--config"])
        .arg(&path)
        .arg("--pidfile")
        .arg(&pidfile)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        run(AGENT, &["--socket", socket.to_str().unwrap(), "status"])
            .status
            .success()
    }));
    // The kernel mode matches what this kernel can do.
    let status = run(
        AGENT,
        &["--socket", socket.to_str().unwrap(), "status", "-o", "json"],
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let has_vrf = run(
        "ip",
        &[
            "-n", "mm-tcli", "link", "add", "mm-vrf-t", "type", "vrf", "table", "10",
        ],
    )
    .status
    .success();
    let expected = if has_vrf {
        "vrf_device"
    } else {
        "routing_tables"
    };
    assert_eq!(status["kernel_mode"], expected);
    assert!(
        run("ip", &["-n", "mm-tcli", "link", "show", "mm-vrf-probe"])
            .stdout
            .is_empty(),
        "probe left behind"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "admin socket left behind");
    assert!(!pidfile.exists(), "pid file left behind");
}

/// Missing mesh credentials, a certificate issued to another node and a
/// corrupt inventory store stop the start with the file named; the store is
/// left as it was.
#[test]
fn mesh_credentials_and_corrupt_store_problems_are_named() {
    let guard = Guard::new();
    let missing = guard.scratch.join("mesh/node.key");
    let path = config(
        &guard.scratch,
        &format!("[lldp]\nenabled = false\n[mesh]\nkey = {missing:?}\n"),
    );
    let out = run("ip", &["netns", "add", "mm-tcli"]);
    assert!(out.status.success());
    let start = || {
        run(
            "ip",
            &[
                "netns",
                "exec",
                "mm-tcli",
                AGENT,
                "run",
                "--config",
                path.to_str().unwrap(),
            ],
        )
    };
    let out = start();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The CA file is read first; it is missing too and named.
    assert!(
        stderr.contains("mesh credentials") && stderr.contains("mesh/ca.pem"),
        "{stderr}"
    );

    // With the CA and certificate in place, the missing key is named.
    let mesh = guard.scratch.join("state/mesh");
    metalmesh_inventory::pki::init_ca_files(&mesh, "test").unwrap();
    let issue = |node: &str| {
        let out = guard.scratch.join(format!("issued-{node}"));
        let (cert, key) = metalmesh_inventory::pki::issue_node_files(
            &mesh,
            &metalmesh_inventory::pki::NodeIdentity::new(
                node,
                metalmesh_inventory::trust::Role::Leaf,
            ),
            &out,
            30,
        )
        .unwrap();
        std::fs::copy(cert, mesh.join("node.pem")).unwrap();
        (out, key)
    };
    issue("tcli");
    let out = start();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mesh/node.key"), "{stderr}");

    // A certificate issued to another name is refused at start.
    let (_, key) = issue("leaf7");
    std::fs::create_dir_all(missing.parent().unwrap()).unwrap();
    std::fs::copy(key, &missing).unwrap();
    let out = start();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("issued to \"leaf7\"") && stderr.contains("node.pem"),
        "{stderr}"
    );

    // With good credentials, a store that is not a database is named and
    // left as it is.
    std::fs::remove_dir_all(guard.scratch.join("issued-tcli")).unwrap();
    let (_, key) = issue("tcli");
    std::fs::copy(key, &missing).unwrap();
    let store = guard.scratch.join("state/inventory.db");
    std::fs::write(&store, b"this is not a database, but an operator's file").unwrap();
    let out = start();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("inventory.db") && stderr.contains("corrupt"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&store).unwrap(),
        b"this is not a database, but an operator's file"
    );
    assert!(!guard.scratch.join("agent.sock").exists());
}

/// The admin socket admits root and `[admin] group`, and, should its
/// permissions be loosened by hand, still no one else (`SO_PEERCRED`).
#[test]
fn the_admin_socket_admits_root_and_its_group_only() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let guard = Guard::new();
    // Others must be able to walk to the socket's directory.
    std::fs::set_permissions(&guard.scratch, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = guard.scratch.join("run");
    let socket = dir.join("agent.sock");
    let path = guard.scratch.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = {:?}\n[switch]\nname = \"tcli\"\nloopback = \"10.255.0.9\"\nasn = 4200000009\nchassis_mac = \"02:00:00:00:00:09\"\n[lldp]\nports = [\"swp*\"]\n[admin]\nsocket = {socket:?}\ngroup = \"nogroup\"\n",
            guard.scratch.join("state"),
        ),
    )
    .unwrap();
    assert!(run("ip", &["netns", "add", "mm-tcli"]).status.success());
    let mut child = Command::new("ip")
        .args(["netns", "exec", "mm-tcli", AGENT, "run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status_as = |ids: Option<&str>| {
        let mut command = match ids {
            None => Command::new(AGENT),
            Some(ids) => {
                let mut setpriv = Command::new("setpriv");
                setpriv
                    .args([
                        &format!("--reuid={ids}"),
                        &format!("--regid={ids}"),
                        "--clear-groups",
                    ])
                    .arg(AGENT);
                setpriv
            }
        };
        command
            .args(["--socket", socket.to_str().unwrap(), "status"])
            .output()
            .unwrap()
    };
    assert!(eventually(Duration::from_secs(10), || status_as(None)
        .status
        .success()));
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    let dir_meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(dir_meta.mode() & 0o777, 0o750);
    assert_eq!(dir_meta.gid(), nogroup);
    let socket_meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(socket_meta.mode() & 0o777, 0o660);
    assert_eq!(socket_meta.gid(), nogroup);
    // A member of the group may; a stranger cannot even reach the socket.
    let member = status_as(Some("65534"));
    assert!(
        member.status.success(),
        "{}",
        String::from_utf8_lossy(&member.stderr)
    );
    assert!(!status_as(Some("4242")).status.success());
    // Permissions loosened by hand: the stranger connects and is refused.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let stranger = status_as(Some("4242"));
    assert!(!stranger.status.success());
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("may not use the admin API"),
        "{}",
        String::from_utf8_lossy(&stranger.stderr)
    );
    let _ = child.kill();
    let _ = child.wait();
}
