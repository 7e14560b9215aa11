//! The agent's speaker with numbered neighbours of other implementations:
//! GoBGP originates an EVPN type-5 route into a tenant VNI (our leaf
//! installs it in the tenant's table) and an IPv6 route; BIRD exchanges
//! IPv4 and IPv6 unicast with us (it learns our loopback and GoBGP's IPv6
//! route, we learn its routes). Then a peer that sends malformed UPDATEs
//! (a raw TCP session speaking bytes made here) gets treat-as-withdraw or
//! a NOTIFICATION as RFC 7606 says, and the other sessions are unaffected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use metalmesh_testbed::testing::{Guard, eventually, in_netns, ip, run};

const AGENT: &str = env!("CARGO_BIN_EXE_metalmesh-agent");
const LEAF_AS: u32 = 4_200_000_009;
const GOBGP_AS: u32 = 65100;
const BIRD_AS: u32 = 65200;
const RAW_AS: u32 = 65300;

/// A child process killed when the test ends, however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Namespace `mm-bgpx-<peer>` joined to the leaf's by a veth pair with
/// IPv4 /30 and IPv6 /64 addresses (leaf side `.1`/`::1`).
fn link(peer: &str, v4: u8) {
    let ns = format!("mm-bgpx-{peer}");
    ip(&["netns", "add", &ns]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    ip(&[
        "link",
        "add",
        &format!("bx-{peer}"),
        "netns",
        "mm-bgpx-leaf",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &ns,
    ]);
    for (namespace, dev, host) in [
        ("mm-bgpx-leaf", format!("bx-{peer}"), 1),
        (ns.as_str(), "eth0".to_string(), 2),
    ] {
        run(
            "ip",
            &[
                "netns",
                "exec",
                namespace,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
            ],
        );
        ip(&[
            "-n",
            namespace,
            "addr",
            "add",
            &format!("10.99.{v4}.{host}/30"),
            "dev",
            &dev,
        ]);
        ip(&[
            "-n",
            namespace,
            "addr",
            "add",
            &format!("fd00:99:{v4}::{host}/64"),
            "dev",
            &dev,
            "nodad",
        ]);
        ip(&["-n", namespace, "link", "set", &dev, "up"]);
    }
}

fn agent_config(dir: &Path) -> String {
    format!(
        r#"state_dir = {state:?}
[switch]
name = "bgpx"
loopback = "10.255.0.9"
asn = {LEAF_AS}
chassis_mac = "02:00:00:00:00:09"
[lldp]
enabled = false
[admin]
socket = {socket:?}
[bgp]
backend = "native"
hold_time_secs = 9
[[bgp.neighbor]]
address = "10.99.0.2"
remote_as = {GOBGP_AS}
families = ["ipv4", "evpn"]
[[bgp.neighbor]]
address = "fd00:99:0::2"
remote_as = {GOBGP_AS}
families = ["ipv6"]
[[bgp.neighbor]]
address = "10.99.1.2"
remote_as = {BIRD_AS}
families = ["ipv4"]
[[bgp.neighbor]]
address = "fd00:99:1::2"
remote_as = {BIRD_AS}
families = ["ipv6"]
[[bgp.neighbor]]
address = "10.99.2.2"
remote_as = "external"
passive = true
"#,
        state = dir.join("state"),
        socket = dir.join("agent.sock"),
    )
}

fn gobgp_config() -> String {
    format!(
        r#"[global.config]
  as = {GOBGP_AS}
  router-id = "10.99.0.2"
  port = 179
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.99.0.1"
    peer-as = {LEAF_AS}
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "l2vpn-evpn"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "fd00:99:0::1"
    peer-as = {LEAF_AS}
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
"#
    )
}

fn bird_config() -> String {
    format!(
        r#"router id 10.99.1.2;
log stderr all;
protocol device {{ }}
protocol static static4 {{ ipv4; route 10.88.0.0/24 blackhole; }}
protocol static static6 {{ ipv6; route fd00:88::/48 blackhole; }}
protocol bgp leaf4 {{
  local 10.99.1.2 as {BIRD_AS};
  neighbor 10.99.1.1 as {LEAF_AS};
  ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
protocol bgp leaf6 {{
  local fd00:99:1::2 as {BIRD_AS};
  neighbor fd00:99:1::1 as {LEAF_AS};
  ipv6 {{ import all; export where source = RTS_STATIC; }};
}}
"#
    )
}

fn agent_cli(dir: &Path, args: &[&str]) -> serde_json::Value {
    let socket = dir.join("agent.sock");
    let out = Command::new(AGENT)
        .arg("--socket")
        .arg(&socket)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn established(dir: &Path, remote: &str) -> bool {
    let socket = dir.join("agent.sock");
    let Ok(out) = Command::new(AGENT)
        .arg("--socket")
        .arg(&socket)
        .args(["bgp", "neighbors", "-o", "json"])
        .output()
    else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|peers| {
        peers.as_array().is_some_and(|peers| {
            peers
                .iter()
                .any(|p| p["remote"]["address"] == remote && p["state"] == "Established")
        })
    })
}

fn routes(dir: &Path, family: &str) -> Vec<String> {
    agent_cli(dir, &["bgp", "routes", "--family", family, "-o", "json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route"].as_str().unwrap().to_string())
        .collect()
}

// --- a peer made of bytes ---------------------------------------------

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0xff; 16];
    out.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

fn open_message() -> Vec<u8> {
    // Version 4, AS, hold 30, id 10.99.2.2, capabilities: MP IPv4 unicast, 4-octet AS.
    let mut body = vec![4];
    body.extend_from_slice(&(RAW_AS as u16).to_be_bytes());
    body.extend_from_slice(&30u16.to_be_bytes());
    body.extend_from_slice(&[10, 99, 2, 2]);
    let capabilities = [&[1u8, 4, 0, 1, 0, 1][..], &[65, 4], &RAW_AS.to_be_bytes()].concat();
    body.push(capabilities.len() as u8 + 2);
    body.push(2);
    body.push(capabilities.len() as u8);
    body.extend_from_slice(&capabilities);
    message(1, &body)
}

fn update(attributes: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
    body.extend_from_slice(attributes);
    body.extend_from_slice(nlri);
    message(2, &body)
}

fn good_attributes() -> Vec<u8> {
    [
        &[0x40u8, 1, 1, 0][..],
        &[0x40, 2, 6, 2, 1],
        &RAW_AS.to_be_bytes(),
        &[0x40, 3, 4, 10, 99, 2, 2],
    ]
    .concat()
}

/// Reads messages until one of `kind` arrives (or the connection ends).
fn read_until(stream: &mut TcpStream, kind: u8) -> Option<Vec<u8>> {
    for _ in 0..50 {
        let mut header = [0u8; 19];
        stream.read_exact(&mut header).ok()?;
        let len = u16::from_be_bytes([header[16], header[17]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(19)];
        stream.read_exact(&mut body).ok()?;
        if header[18] == kind {
            return Some(body);
        }
    }
    None
}

#[test]
fn gobgp_bird_and_a_malformed_peer() {
    let guard = Guard::new();
    ip(&["netns", "add", "mm-bgpx-leaf"]);
    ip(&["-n", "mm-bgpx-leaf", "link", "set", "lo", "up"]);
    ip(&[
        "-n",
        "mm-bgpx-leaf",
        "addr",
        "add",
        "10.255.0.9/32",
        "dev",
        "lo",
    ]);
    link("gobgp", 0);
    link("bird", 1);
    // The malformed peer is this test process: the veth's far end stays in
    // the host namespace (removed with the leaf's namespace).
    ip(&[
        "link",
        "add",
        "mm-bgpx-raw",
        "type",
        "veth",
        "peer",
        "name",
        "bx-raw",
        "netns",
        "mm-bgpx-leaf",
    ]);
    ip(&["addr", "add", "10.99.2.2/30", "dev", "mm-bgpx-raw"]);
    ip(&["link", "set", "mm-bgpx-raw", "up"]);
    ip(&[
        "-n",
        "mm-bgpx-leaf",
        "addr",
        "add",
        "10.99.2.1/30",
        "dev",
        "bx-raw",
    ]);
    ip(&["-n", "mm-bgpx-leaf", "link", "set", "bx-raw", "up"]);
    // A second subnet on the same link: 10.99.3.2 is no configured neighbour.
    ip(&["addr", "add", "10.99.3.2/30", "dev", "mm-bgpx-raw"]);
    ip(&[
        "-n",
        "mm-bgpx-leaf",
        "addr",
        "add",
        "10.99.3.1/30",
        "dev",
        "bx-raw",
    ]);

    // The leaf: the agent, with a tenant VRF of VNI 10001 and no ports.
    let dir = guard.scratch.join("leaf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("agent.toml"), agent_config(&dir)).unwrap();
    let _agent = Daemon(
        Command::new("ip")
            .args(["netns", "exec", "mm-bgpx-leaf", AGENT, "run", "--config"])
            .arg(dir.join("agent.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(guard.scratch.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(eventually(Duration::from_secs(10), || dir
        .join("agent.sock")
        .exists()));
    let intents = guard.scratch.join("intents.toml");
    std::fs::write(
        &intents,
        "[[vrf]]\nname = \"tenant-a\"\nvni = 10001\ntable = 1001\nprefixes = [\"10.0.1.0/24\"]\n",
    )
    .unwrap();
    let out = Command::new(AGENT)
        .arg("--socket")
        .arg(dir.join("agent.sock"))
        .args(["dataplane", "apply", intents.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // GoBGP.
    let gobgp_conf = guard.scratch.join("gobgpd.toml");
    std::fs::write(&gobgp_conf, gobgp_config()).unwrap();
    let _gobgpd = Daemon(
        Command::new("ip")
            .args(["netns", "exec", "mm-bgpx-gobgp", "gobgpd", "-f"])
            .arg(&gobgp_conf)
            .args(["--api-hosts", "127.0.0.1:50061", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(guard.scratch.join("gobgpd.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    // BIRD.
    let bird_conf = guard.scratch.join("bird.conf");
    std::fs::write(&bird_conf, bird_config()).unwrap();
    let bird_socket = guard.scratch.join("bird.ctl");
    let _bird = Daemon(
        Command::new("ip")
            .args(["netns", "exec", "mm-bgpx-bird", "bird", "-f", "-c"])
            .arg(&bird_conf)
            .arg("-s")
            .arg(&bird_socket)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(guard.scratch.join("bird.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    for remote in ["10.99.0.2", "fd00:99::2", "10.99.1.2", "fd00:99:1::2"] {
        assert!(
            eventually(Duration::from_secs(30), || established(&dir, remote)),
            "session with {remote} not Established; agent log:\n{}",
            std::fs::read_to_string(guard.scratch.join("agent.log")).unwrap_or_default()
        );
    }

    // GoBGP originates a type-5 route into VNI 10001 and an IPv6 route.
    let gobgp = |args: &[&str]| {
        let mut full = vec!["netns", "exec", "mm-bgpx-gobgp", "gobgp", "-p", "50061"];
        full.extend_from_slice(args);
        let out = run("ip", &full);
        assert!(
            out.status.success(),
            "gobgp {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    gobgp(&[
        "global",
        "rib",
        "-a",
        "evpn",
        "add",
        "prefix",
        "10.0.9.0/24",
        "etag",
        "0",
        "rd",
        "10.99.0.2:10001",
        "rt",
        "65100:10001",
        "gw",
        "0.0.0.0",
        "label",
        "10001",
        "encap",
        "vxlan",
        "router-mac",
        "02:00:00:00:99:02",
    ]);
    gobgp(&["global", "rib", "-a", "ipv6", "add", "fd00:77::/48"]);
    assert!(
        eventually(Duration::from_secs(10), || {
            in_netns("mm-bgpx-leaf", &["ip", "route", "show", "table", "1001"])
                .contains("10.0.9.0/24 via 10.99.0.2")
        }),
        "GoBGP's type-5 route not in the tenant table: {}\n{:?}",
        in_netns("mm-bgpx-leaf", &["ip", "route", "show", "table", "1001"]),
        routes(&dir, "evpn")
    );
    let evpn = agent_cli(&dir, &["bgp", "routes", "--family", "evpn", "-o", "json"]);
    let path = &evpn[0]["paths"][0];
    assert_eq!(evpn[0]["vni"], 10001, "{evpn}");
    assert_eq!(path["router_mac"], "02:00:00:00:99:02", "{evpn}");
    assert_eq!(path["next_hop"], "10.99.0.2", "{evpn}");

    // BIRD: learns our loopback (IPv4) and GoBGP's IPv6 route through us;
    // we learn its static routes of both families.
    let birdc = |command: &str| {
        let out = run("birdc", &["-s", bird_socket.to_str().unwrap(), command]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        eventually(Duration::from_secs(10), || {
            let v4 = birdc("show route protocol leaf4");
            let v6 = birdc("show route protocol leaf6 all");
            v4.contains("10.255.0.9/32") && v6.contains("fd00:77::/48")
        }),
        "BIRD did not learn our routes:\n{}\n{}",
        birdc("show route protocol leaf4"),
        birdc("show route protocol leaf6 all")
    );
    let v6 = birdc("show route fd00:77::/48 all");
    assert!(
        v6.contains(&format!("BGP.as_path: {LEAF_AS} {GOBGP_AS}")),
        "{v6}"
    );
    assert!(eventually(Duration::from_secs(10), || {
        routes(&dir, "ipv4").contains(&"10.88.0.0/24".to_string())
            && routes(&dir, "ipv6").contains(&"fd00:88::/48".to_string())
    }));
    // GoBGP hears BIRD's IPv6 route through us as well.
    assert!(eventually(Duration::from_secs(10), || gobgp(&[
        "global", "rib", "-a", "ipv6"
    ])
    .contains("fd00:88::/48")));

    // Who may connect: from an address that is no configured neighbour,
    // the connection is closed before anything is read or sent.
    let mut stranger = None;
    assert!(eventually(Duration::from_secs(10), || {
        stranger =
            TcpStream::connect_timeout(&"10.99.3.1:179".parse().unwrap(), Duration::from_secs(1))
                .ok();
        stranger.is_some()
    }));
    let mut stranger = stranger.unwrap();
    assert_eq!(stranger.local_addr().unwrap().ip().to_string(), "10.99.3.2");
    stranger
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stranger.write_all(&open_message());
    let mut buffer = [0u8; 64];
    assert!(
        matches!(stranger.read(&mut buffer), Ok(0) | Err(_)),
        "an unconfigured address got an answer"
    );
    let peers = agent_cli(&dir, &["bgp", "neighbors", "-o", "json"]);
    assert!(!peers.to_string().contains("10.99.3.2"), "{peers}");

    // A malformed peer: a raw TCP session from this process, over a veth
    // whose host end is the neighbour address 10.99.2.2.
    let mut tcp = None;
    assert!(eventually(Duration::from_secs(10), || {
        tcp = TcpStream::connect_timeout(&"10.99.2.1:179".parse().unwrap(), Duration::from_secs(1))
            .ok();
        tcp.is_some()
    }));
    let mut tcp = tcp.unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(&open_message()).unwrap();
    read_until(&mut tcp, 1).expect("the agent's OPEN");
    tcp.write_all(&message(4, &[])).unwrap();
    read_until(&mut tcp, 4).expect("the agent's KEEPALIVE");
    assert!(eventually(Duration::from_secs(5), || established(
        &dir,
        "10.99.2.2"
    )));
    // 1. A route, accepted.
    tcp.write_all(&update(&good_attributes(), &[24, 10, 66, 1]))
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || routes(&dir, "ipv4")
        .contains(&"10.66.1.0/24".to_string())));
    // 2. The same route with an ORIGIN of bad length: treat-as-withdraw.
    let bad_origin = [&[0x40u8, 1, 2, 0, 0][..], &good_attributes()[4..]].concat();
    tcp.write_all(&update(&bad_origin, &[24, 10, 66, 1]))
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || !routes(&dir, "ipv4")
        .contains(&"10.66.1.0/24".to_string())));
    assert!(
        established(&dir, "10.99.2.2"),
        "treat-as-withdraw keeps the session"
    );
    // 3. No AS_PATH (a missing well-known attribute): treat-as-withdraw too.
    tcp.write_all(&update(&good_attributes(), &[24, 10, 66, 2]))
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || routes(&dir, "ipv4")
        .contains(&"10.66.2.0/24".to_string())));
    let no_as_path = [&[0x40u8, 1, 1, 0][..], &[0x40, 3, 4, 10, 99, 2, 2]].concat();
    tcp.write_all(&update(&no_as_path, &[24, 10, 66, 2]))
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || !routes(&dir, "ipv4")
        .contains(&"10.66.2.0/24".to_string())));
    assert!(established(&dir, "10.99.2.2"));
    // 4. An unknown attribute claiming to be well-known: treat-as-withdraw.
    tcp.write_all(&update(&good_attributes(), &[24, 10, 66, 3]))
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || routes(&dir, "ipv4")
        .contains(&"10.66.3.0/24".to_string())));
    let unknown = [&good_attributes()[..], &[0x40, 200, 1, 0]].concat();
    tcp.write_all(&update(&unknown, &[24, 10, 66, 3])).unwrap();
    assert!(eventually(Duration::from_secs(5), || !routes(&dir, "ipv4")
        .contains(&"10.66.3.0/24".to_string())));
    assert!(established(&dir, "10.99.2.2"));
    // 5. Truncated NLRI (a /24 with one octet): the session is reset with
    //    an UPDATE-message NOTIFICATION.
    tcp.write_all(&update(&good_attributes(), &[24, 10]))
        .unwrap();
    let notification = read_until(&mut tcp, 3).expect("a NOTIFICATION");
    assert_eq!(notification[0], 3, "UPDATE message error: {notification:?}");
    assert!(eventually(Duration::from_secs(5), || !established(
        &dir,
        "10.99.2.2"
    )));

    // The other sessions never noticed.
    for remote in ["10.99.0.2", "fd00:99::2", "10.99.1.2", "fd00:99:1::2"] {
        assert!(established(&dir, remote), "{remote}");
    }
    let neighbors = agent_cli(&dir, &["bgp", "neighbors", "-o", "json"]);
    for peer in neighbors.as_array().unwrap().iter().take(4) {
        assert_eq!(peer["stats"]["established_transitions"], 1, "{peer}");
    }
    assert!(
        in_netns("mm-bgpx-leaf", &["ip", "route", "show", "table", "1001"]).contains("10.0.9.0/24")
    );
}
