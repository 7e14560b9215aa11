//! The agent's boot services against real clients: dhclient and busybox
//! udhcpc (obtain, renew, release), tftp-hpa and atftp (options, traversal,
//! missing files), curl (ranges), `kill -9` between two clients' leases, an
//! exhausted pool, a DHCP flood from one port against its port's quota. A
//! leaf namespace with a provisioning bridge and three client namespaces
//! cabled into it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use metalmesh_testbed::testing::{Guard, eventually, ok, run, spawn_detached_in};
use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_metalmesh-agent");
const LEAF: &str = "mm-tb-leaf";
const CLIENTS: [&str; 3] = ["mm-tb-c1", "mm-tb-c2", "mm-tb-c3"];
const SERVER: &str = "10.100.9.1";

struct Rack {
    guard: Guard,
    config: PathBuf,
    socket: PathBuf,
    http_root: PathBuf,
}

fn in_ns(ns: &str, args: &[&str]) -> Output {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

impl Rack {
    /// A pool of two addresses.
    fn new() -> Rack {
        Rack::with_pool_end("10.100.9.101")
    }

    fn with_pool_end(pool_end: &str) -> Rack {
        let guard = Guard::new();
        ok(&run("ip", &["netns", "add", LEAF]));
        ok(&run("ip", &["-n", LEAF, "link", "set", "lo", "up"]));
        ok(&run(
            "ip",
            &["-n", LEAF, "link", "add", "mm-pxe", "type", "bridge"],
        ));
        ok(&run(
            "ip",
            &[
                "-n",
                LEAF,
                "address",
                "add",
                &format!("{SERVER}/24"),
                "dev",
                "mm-pxe",
            ],
        ));
        ok(&run("ip", &["-n", LEAF, "link", "set", "mm-pxe", "up"]));
        for (i, client) in CLIENTS.iter().enumerate() {
            let port = format!("swp{}", i + 1);
            ok(&run("ip", &["netns", "add", client]));
            ok(&run(
                "ip",
                &[
                    "link",
                    "add",
                    &port,
                    "netns",
                    LEAF,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    client,
                    "address",
                    &format!("02:00:00:00:09:0{}", i + 1),
                ],
            ));
            ok(&run(
                "ip",
                &["-n", LEAF, "link", "set", &port, "master", "mm-pxe", "up"],
            ));
            ok(&run("ip", &["-n", client, "link", "set", "eth0", "up"]));
            ok(&run("ip", &["-n", client, "link", "set", "lo", "up"]));
        }
        let http_root = guard.scratch.join("http");
        std::fs::create_dir_all(&http_root).unwrap();
        // The TFTP root: the iPXE binary, and a file of more than 65,535
        // blocks of 8 bytes (block numbers wrap on the wire).
        let tftp_root = guard.scratch.join("tftp");
        std::fs::create_dir_all(&tftp_root).unwrap();
        std::fs::copy(
            "/usr/lib/ipxe/undionly.kpxe",
            tftp_root.join("undionly.kpxe"),
        )
        .unwrap();
        let wrapping: Vec<u8> = (0..(70_000u32 * 8 - 3))
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        std::fs::write(tftp_root.join("wrapping.bin"), wrapping).unwrap();
        // A file with a recognisable, position-dependent pattern.
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(http_root.join("image.bin"), data).unwrap();
        let socket = guard.scratch.join("agent.sock");
        let config = guard.scratch.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\n[switch]\nname = \"tb-leaf\"\nloopback = \"10.255.0.9\"\nasn = 4200000009\nchassis_mac = \"02:00:00:00:09:00\"\n[lldp]\nenabled = false\n[admin]\nsocket = {:?}\n[boot]\ninterface = \"mm-pxe\"\nserver_ip = \"{SERVER}\"\nprefix_len = 24\npool_start = \"10.100.9.100\"\npool_end = \"{pool_end}\"\nlease_secs = 120\nhttp_root = {:?}\ntftp_root = {:?}\n",
                guard.scratch.join("state"),
                socket,
                http_root,
                tftp_root
            ),
        )
        .unwrap();
        let rack = Rack {
            guard,
            config,
            socket,
            http_root,
        };
        rack.start_agent();
        rack
    }

    fn start_agent(&self) {
        let pidfile = self.guard.scratch.join("agent.pid");
        spawn_detached_in(
            LEAF,
            &[
                AGENT.as_ref(),
                "run".as_ref(),
                "--config".as_ref(),
                self.config.as_os_str(),
                "--pidfile".as_ref(),
                pidfile.as_os_str(),
            ],
            &self.guard.scratch.join("agent.log"),
        );
        assert!(eventually(Duration::from_secs(10), || self
            .agent(&["status"])
            .status
            .success()));
    }

    fn kill9(&self) {
        let pid = std::fs::read_to_string(self.guard.scratch.join("agent.pid")).unwrap();
        ok(&run("kill", &["-KILL", pid.trim()]));
        assert!(eventually(Duration::from_secs(5), || !self
            .agent(&["status"])
            .status
            .success()));
    }

    fn agent(&self, args: &[&str]) -> Output {
        let mut full = vec!["--socket", self.socket.to_str().unwrap()];
        full.extend_from_slice(args);
        run(AGENT, &full)
    }

    fn leases(&self) -> Vec<Value> {
        let out = ok(&self.agent(&["leases", "-o", "json"]));
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn lease_of(&self, mac: &str) -> Option<Value> {
        self.leases().into_iter().find(|l| l["mac"] == mac)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.guard.scratch.join("agent.log")).unwrap_or_default()
    }

    fn counters(&self) -> Value {
        let out = ok(&self.agent(&["status", "-o", "json"]));
        serde_json::from_str::<Value>(&out).unwrap()["dhcp_counters"].clone()
    }
}

fn address_of(ns: &str) -> Option<String> {
    let out = in_ns(ns, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .map(|a| a.split('/').next().unwrap_or_default().to_string())
}

fn udhcpc_script(dir: &Path) -> PathBuf {
    let path = dir.join("udhcpc.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\ncase \"$1\" in\n  bound|renew) ip addr flush dev \"$interface\"; ip addr add \"$ip/${mask:-24}\" dev \"$interface\" ;;\n  deconfig) ip addr flush dev \"$interface\" ;;\nesac\nexit 0\n",
    )
    .unwrap();
    ok(&run("chmod", &["+x", path.to_str().unwrap()]));
    path
}

/// One busybox udhcpc exchange in `namespace` (`tries` DISCOVERs a second
/// apart), configuring the lease with `script`.
fn udhcpc_once(namespace: &str, tries: &str, script: &Path) -> Output {
    in_ns(
        namespace,
        &[
            "busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-t",
            tries,
            "-T",
            "1",
            "-s",
            script.to_str().unwrap(),
        ],
    )
}

fn sha256(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn dhcp_clients_tftp_http_restart_and_exhaustion() {
    let rack = Rack::new();
    let scratch = rack.guard.scratch.clone();

    // dhclient: obtain.
    let lease_file = scratch.join("dhclient.leases");
    let pid_file = scratch.join("dhclient.pid");
    let dhclient = |extra: &[&str]| {
        let mut args = vec![
            "dhclient",
            "-1",
            "-v",
            "-lf",
            lease_file.to_str().unwrap(),
            "-pf",
            pid_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push("eth0");
        in_ns(CLIENTS[0], &args)
    };
    ok(&dhclient(&[]));
    let c1 = address_of(CLIENTS[0]).expect("dhclient got no address");
    assert!(c1.starts_with("10.100.9.10"), "{c1}");
    let lease = rack.lease_of("02:00:00:00:09:01").unwrap();
    assert_eq!(lease["ip"], c1.as_str());
    assert_eq!(lease["state"], "bound");
    assert_eq!(lease["client_kind"], "plain");

    // kill -9 the agent between two clients' leases: nothing is handed out twice.
    rack.kill9();
    rack.start_agent();
    let script = udhcpc_script(&scratch);
    let out = udhcpc_once(CLIENTS[1], "5", &script);
    ok(&out);
    let c2 = address_of(CLIENTS[1]).expect("udhcpc got no address");
    assert_ne!(c1, c2, "an address was handed out twice across a kill -9");
    assert_eq!(
        rack.lease_of("02:00:00:00:09:01").unwrap()["ip"],
        c1.as_str()
    );

    // dhclient renews (INIT-REBOOT after its restart) and keeps its address.
    ok(&run(
        "sh",
        &[
            "-c",
            &format!("kill $(cat {}) 2>/dev/null; true", pid_file.display()),
        ],
    ));
    ok(&dhclient(&[]));
    assert_eq!(address_of(CLIENTS[0]).as_deref(), Some(c1.as_str()));

    // udhcpc in the foreground: renew on SIGUSR1, release on SIGUSR2.
    let mut udhcpc = Command::new("ip")
        .args([
            "netns", "exec", CLIENTS[1], "busybox", "udhcpc", "-f", "-i", "eth0", "-t", "5", "-T",
            "1", "-s",
        ])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || address_of(
        CLIENTS[1]
    )
    .as_deref()
        == Some(c2.as_str())));
    // Counters are published twice a second: wait until they include the bind.
    assert!(eventually(
        Duration::from_secs(5),
        || rack.counters()["acks"].as_u64() >= Some(1)
    ));
    let before = rack.counters()["acks"].as_u64().unwrap();
    ok(&run("kill", &["-USR1", &udhcpc.id().to_string()]));
    assert!(eventually(
        Duration::from_secs(10),
        || rack.counters()["acks"].as_u64().unwrap() > before
    ));
    ok(&run("kill", &["-USR2", &udhcpc.id().to_string()]));
    assert!(eventually(Duration::from_secs(10), || {
        rack.lease_of("02:00:00:00:09:02")
            .is_some_and(|l| l["state"] == "released")
    }));
    let _ = udhcpc.kill();
    let _ = udhcpc.wait();
    // dhclient releases too.
    ok(&dhclient(&["-r"]));
    assert!(eventually(Duration::from_secs(5), || {
        rack.lease_of("02:00:00:00:09:01")
            .is_some_and(|l| l["state"] == "released")
    }));

    // Exhausted pool: both addresses bound again, the third client gets no offer.
    ok(&dhclient(&[]));
    ok(&udhcpc_once(CLIENTS[1], "5", &script));
    let third = udhcpc_once(CLIENTS[2], "3", &script);
    assert!(
        !third.status.success(),
        "the third client got an address from a pool of two"
    );
    assert!(eventually(
        Duration::from_secs(5),
        || rack.counters()["pool_exhausted"].as_u64() >= Some(1)
    ));
    assert!(rack.log().contains("DHCP pool exhausted"), "{}", rack.log());

    // TFTP: tftp-hpa plain, atftp with blksize/tsize/windowsize; checksums match.
    let original = std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap();
    let out_hpa = scratch.join("hpa.kpxe");
    ok(&in_ns(
        CLIENTS[0],
        &[
            "tftp",
            SERVER,
            "-m",
            "binary",
            "-c",
            "get",
            "undionly.kpxe",
            out_hpa.to_str().unwrap(),
        ],
    ));
    assert_eq!(sha256(&std::fs::read(&out_hpa).unwrap()), sha256(&original));
    let out_atftp = scratch.join("atftp.kpxe");
    ok(&in_ns(
        CLIENTS[0],
        &[
            "atftp",
            "--option",
            "blksize 1468",
            "--option",
            "tsize 0",
            "--option",
            "windowsize 8",
            "-g",
            "-r",
            "undionly.kpxe",
            "-l",
            out_atftp.to_str().unwrap(),
            SERVER,
        ],
    ));
    assert_eq!(
        sha256(&std::fs::read(&out_atftp).unwrap()),
        sha256(&original)
    );
    // Past block 65,535 (wire numbers wrap), windowed, with the options
    // the server acknowledged as asked.
    let wrapping = std::fs::read(rack.guard.scratch.join("tftp/wrapping.bin")).unwrap();
    let out_wrapping = scratch.join("wrapping.bin");
    let traced = in_ns(
        CLIENTS[0],
        &[
            "atftp",
            "--trace",
            "--option",
            "blksize 8",
            "--option",
            "windowsize 16",
            "--option",
            "tsize 0",
            "-g",
            "-r",
            "wrapping.bin",
            "-l",
            out_wrapping.to_str().unwrap(),
            SERVER,
        ],
    );
    let trace = format!(
        "{}{}",
        String::from_utf8_lossy(&traced.stdout),
        String::from_utf8_lossy(&traced.stderr)
    );
    assert!(
        traced.status.success(),
        "{}",
        &trace[trace.len().saturating_sub(2000)..]
    );
    let oack = trace
        .lines()
        .find(|l| l.contains("OACK"))
        .unwrap_or_else(|| panic!("no OACK: {}", &trace[..trace.len().min(2000)]));
    for option in ["blksize", "windowsize", "tsize"] {
        assert!(oack.contains(option), "{option} not acknowledged: {oack}");
    }
    assert!(
        oack.contains(&(70_000 * 8 - 3).to_string()),
        "tsize: {oack}"
    );
    // Past the wrap of wire numbers (atftp counts on: 65,535, 65,536, …).
    assert!(
        trace.contains("DATA <block: 65535,") && trace.contains("DATA <block: 65536,"),
        "the transfer did not cross block 65535"
    );
    assert_eq!(
        sha256(&std::fs::read(&out_wrapping).unwrap()),
        sha256(&wrapping)
    );
    for (name, expected) in [
        ("../../../../etc/passwd", "Access violation"),
        ("missing.efi", "not found"),
    ] {
        let out = in_ns(
            CLIENTS[0],
            &[
                "atftp",
                "-g",
                "-r",
                name,
                "-l",
                scratch.join("x").to_str().unwrap(),
                SERVER,
            ],
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.to_lowercase().contains(&expected.to_lowercase()),
            "{name}: {text}"
        );
        // Nothing of the refused file reached the client.
        assert!(
            !std::fs::read_to_string(scratch.join("x"))
                .unwrap_or_default()
                .contains("root:"),
            "{name} was served"
        );
    }

    // HTTP: whole and ranged downloads match the file.
    let image = std::fs::read(rack.http_root.join("image.bin")).unwrap();
    let url = format!("http://{SERVER}:8070/boot/image.bin");
    for (range, slice) in [
        (None, &image[..]),
        (Some("0-99"), &image[0..100]),
        (Some("1000000-1999999"), &image[1_000_000..2_000_000]),
        (Some("2999000-"), &image[2_999_000..]),
    ] {
        let target = scratch.join("download");
        let mut args = vec!["curl", "-sSf", "-o", target.to_str().unwrap()];
        if let Some(range) = range {
            args.extend(["-r", range]);
        }
        args.push(&url);
        ok(&in_ns(CLIENTS[0], &args));
        assert_eq!(
            sha256(&std::fs::read(&target).unwrap()),
            sha256(slice),
            "range {range:?}"
        );
    }
    let head = ok(&in_ns(CLIENTS[0], &["curl", "-sSfI", &url]));
    assert!(
        head.contains("content-length: 3000000") && head.contains("etag:"),
        "{head}"
    );
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .trim()
        .to_string();
    let not_modified = ok(&in_ns(
        CLIENTS[0],
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("If-None-Match: {etag}"),
            &url,
        ],
    ));
    assert_eq!(not_modified, "304");
    let missing = ok(&in_ns(
        CLIENTS[0],
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{SERVER}:8070/boot/nope.img"),
        ],
    ));
    assert_eq!(missing, "404");
    assert!(rack.log().contains("boot file missing"));
    let script = ok(&in_ns(
        CLIENTS[0],
        &[
            "curl",
            "-sSf",
            &format!("http://{SERVER}:8070/ipxe/02-00-00-00-09-01"),
        ],
    ));
    assert!(
        script.starts_with("#!ipxe") && script.contains("metalmesh.mac=02:00:00:00:09:01"),
        "{script}"
    );
}

/// DHCP messages from `namespace`'s eth0, broadcast, at most `per_sec` a
/// second: a DISCOVER per random MAC (`count` of them), or with
/// `request = MAC/IP` one INIT-REBOOT REQUEST under that MAC.
fn dhcp_from(namespace: &str, count: u32, per_sec: u32, request: Option<(&str, &str)>) {
    let program = r#"
import os, socket, struct, sys, time
count, per_sec = int(sys.argv[1]), int(sys.argv[2])
def message(chaddr, kind, requested):
    packet = struct.pack('!BBBBIHH4s4s4s4s16s64s128s', 1, 1, 6, 0, int.from_bytes(os.urandom(4), 'big'), 0, 0x8000,
                         b'\0' * 4, b'\0' * 4, b'\0' * 4, b'\0' * 4, chaddr.ljust(16, b'\0'), b'', b'')
    packet += b'\x63\x82\x53\x63' + bytes([53, 1, kind])
    if requested:
        packet += bytes([50, 4]) + requested
    return packet + b'\xff'
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'eth0')
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if len(sys.argv) > 3:
    chaddr = bytes.fromhex(sys.argv[3].replace(':', ''))
    s.sendto(message(chaddr, 3, socket.inet_aton(sys.argv[4])), ('255.255.255.255', 67))
    sys.exit(0)
for i in range(count):
    s.sendto(message(bytes([2]) + os.urandom(5), 1, None), ('255.255.255.255', 67))
    time.sleep(1 / per_sec)
"#;
    let (count, per_sec) = (count.to_string(), per_sec.to_string());
    let mut args = vec!["python3", "-c", program, &count, &per_sec];
    if let Some((mac, ip)) = request {
        args.extend([mac, ip]);
    }
    ok(&in_ns(namespace, &args));
}

#[test]
fn a_dhcp_flood_from_one_port_takes_only_its_quota() {
    // 20 addresses; each port may hold 4 (the default).
    let rack = Rack::with_pool_end("10.100.9.119");
    let script = udhcpc_script(&rack.guard.scratch);
    // 300 DISCOVERs under random MACs from swp1 within the offer hold
    // time: without a port quota they would take the whole pool.
    dhcp_from(CLIENTS[0], 300, 60, None);
    assert!(
        eventually(Duration::from_secs(5), || rack.counters()["received"]
            .as_u64()
            >= Some(250)),
        "{}",
        rack.counters()
    );
    let counters = rack.counters();
    assert_eq!(counters["offers"], 4, "{counters}");
    assert!(
        counters["port_quota_exceeded"].as_u64() >= Some(200),
        "{counters}"
    );
    assert_eq!(counters["pool_exhausted"], 0, "{counters}");
    // Real clients on the other ports still get addresses, tied to their port.
    for (client, port, mac) in [
        (CLIENTS[1], "swp2", "02:00:00:00:09:02"),
        (CLIENTS[2], "swp3", "02:00:00:00:09:03"),
    ] {
        let out = udhcpc_once(client, "5", &script);
        assert!(out.status.success(), "{client}: {out:?}\n{}", rack.log());
        let lease = rack.lease_of(mac).unwrap();
        assert_eq!(lease["port"], port, "{lease}");
        assert_eq!(lease["state"], "bound", "{lease}");
    }
    // swp3 asking under swp2's MAC for swp2's address: not answered (no
    // NAK that would unsettle swp2's client), counted.
    let victim = rack.lease_of("02:00:00:00:09:02").unwrap();
    // (`status` counters are refreshed twice a second.)
    assert!(eventually(
        Duration::from_secs(5),
        || rack.counters()["acks"].as_u64() >= Some(2)
    ));
    let before = rack.counters();
    dhcp_from(
        CLIENTS[2],
        1,
        1,
        Some(("02:00:00:00:09:02", victim["ip"].as_str().unwrap())),
    );
    assert!(
        eventually(Duration::from_secs(5), || rack.counters()["wrong_port"]
            .as_u64()
            > before["wrong_port"].as_u64()),
        "{}",
        rack.counters()
    );
    let after = rack.counters();
    assert_eq!(after["naks"], before["naks"], "{after}");
    assert_eq!(after["acks"], before["acks"], "{after}");
    assert_eq!(rack.lease_of("02:00:00:00:09:02").unwrap(), victim);
    // The quota and the wrong-port drops are in the metrics too.
    let metrics = ok(&in_ns(
        LEAF,
        &[
            "curl",
            "-sSf",
            "--max-time",
            "10",
            "http://127.0.0.1:9469/metrics",
        ],
    ));
    let sample = |kind: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "metalmesh_agent_dhcp_messages_total{{kind=\"{kind}\"}} "
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert!(sample("port_quota_exceeded") >= Some(200), "{metrics}");
    assert!(sample("wrong_port") >= Some(1), "{metrics}");
}

#[test]
fn pool_outside_the_bridge_subnet_is_rejected() {
    let guard = Guard::new();
    let config = guard.scratch.join("agent.toml");
    std::fs::write(
        &config,
        "[switch]\nloopback = \"10.255.0.9\"\nasn = 1\n[lldp]\nenabled = false\n[boot]\ninterface = \"mm-pxe\"\nserver_ip = \"10.100.9.1\"\nprefix_len = 24\npool_start = \"10.100.9.100\"\npool_end = \"10.100.10.5\"\nhttp_root = \"/srv\"\n",
    )
    .unwrap();
    let out = run(
        AGENT,
        &["check-config", "--config", config.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 11, key `boot.pool_end`")
            && stderr.contains("outside the bridge's subnet"),
        "{stderr}"
    );
}
