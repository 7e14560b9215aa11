//! The leaf closed to machines and tenants (the agent's nftables policy),
//! in the testbed with two namespace machines on one leaf: in provisioning
//! they get DHCP, TFTP and HTTP boot and register, but cannot reach each
//! other, the leaf's other listeners or anything beyond the leaf; once
//! allocated, a machine on its routed port reaches phone-home at
//! 169.254.0.1 and ICMP to it, and nothing else of the leaf (the HTTP
//! server answers it phone-home only), and only from its own address; a
//! crafted VXLAN packet into another tenant from a machine never reaches
//! it (tcpdump on the tenant's bridge; the same packet from the fabric
//! does).
//! Every refusal is checked against a positive control from the fabric side
//! and against the drop counters of the agent's own rules. A table deleted
//! by hand comes back, and so does the provisioning bridge (with its
//! address, its provisioning port and DHCP and TFTP on it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::uuid;
use metalmesh_testbed::testing::{Guard, eventually, in_netns, ok, ping, run, script};

fn state(guard: &Guard, id: &str) -> String {
    let out = common::agent(&guard.run_dir, &["machines", "-o", "json"]);
    let machines: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    machines
        .into_iter()
        .find(|m| m["uuid"] == id)
        .and_then(|m| m["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Whether a TCP connection from `namespace` to `address:port` is accepted
/// within 3 s (curl: an HTTP answer of any status counts as connected).
fn tcp_connects(namespace: &str, address: &str, port: u16) -> bool {
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            namespace,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--connect-timeout",
            "3",
            "--max-time",
            "5",
            &format!("http://{address}:{port}/"),
        ],
    );
    // 7: refused, 28: timed out; anything else means a connection.
    !matches!(out.status.code(), Some(7) | Some(28))
}

fn http_status(namespace: &str, url: &str) -> String {
    in_netns(
        namespace,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            url,
        ],
    )
    .trim()
    .to_string()
}

/// `ip -4 -o addr` of a namespace machine's NIC, without the prefix length.
fn address_of(namespace: &str) -> String {
    let out = in_netns(
        namespace,
        &["ip", "-4", "-o", "addr", "show", "scope", "global"],
    );
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_default()
        .to_string()
}

/// Sends five VXLAN packets from `namespace` to `vtep`: VNI `vni`, inner
/// Ethernet to `router_mac`, inner ICMP echo 10.0.2.8 → 10.0.2.9.
fn crafted_vxlan(namespace: &str, vtep: &str, vni: u32, router_mac: &str) {
    let program = r#"
import socket, struct, sys
vtep, vni, mac = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3].replace(':', ''))
def checksum(data):
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xffff)
    total += total >> 16
    return ~total & 0xffff
icmp = struct.pack('!BBHHH', 8, 0, 0, 0x6d6d, 1) + b'metalmesh'
icmp = icmp[:2] + struct.pack('!H', checksum(icmp)) + icmp[4:]
src, dst = socket.inet_aton('10.0.2.8'), socket.inet_aton('10.0.2.9')
header = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, src, dst)
header = header[:10] + struct.pack('!H', checksum(header)) + header[12:]
frame = mac + bytes.fromhex('020000000099') + b'\x08\x00' + header + icmp
packet = struct.pack('!BBHI', 0x08, 0, 0, vni << 8) + frame
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(packet, (vtep, 4789))
"#;
    let vni = vni.to_string();
    let _ = run(
        "ip",
        &[
            "netns", "exec", namespace, "python3", "-c", program, vtep, &vni, router_mac,
        ],
    );
}

/// Whether tcpdump on tenant B's bridge in leaf1 sees the crafted inner
/// packet while `send` runs.
fn tenant_b_sees(send: impl FnOnce()) -> bool {
    let capture = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            "mm-leaf1",
            "timeout",
            "6",
            "tcpdump",
            "-i",
            "mm-br10002",
            "-n",
            "-l",
            "-c",
            "1",
            "icmp and dst host 10.0.2.9",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // tcpdump needs a moment to open its capture.
    std::thread::sleep(Duration::from_secs(2));
    send();
    let out = capture.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("10.0.2.9")
}

#[test]
fn machines_and_tenants_reach_only_what_the_policy_allows() {
    let guard = Guard::new();
    script("build-os-image", &[]);
    let testbed = metalmesh_testbed::testing::up(&guard.run_dir, 1, 2, 0);
    common::tenant_a(&guard.run_dir, &guard.scratch);
    let leaf = testbed.plan().node("leaf1").unwrap().loopback.to_string();
    for index in [1, 2] {
        common::start_installer(&guard.scratch, 1, index);
    }
    // DHCP, TFTP-free simulated boot and the HTTP installer API work.
    for index in [1, 2] {
        let id = uuid(1, index);
        assert!(
            eventually(Duration::from_secs(60), || state(&guard, &id) == "Waiting"),
            "m1-{index} not Waiting through the policy: {}",
            std::fs::read_to_string(guard.scratch.join(format!("m1-{index}.log")))
                .unwrap_or_default()
        );
    }
    ok(&run(
        "ip",
        &[
            "netns", "exec", "mm-leaf1", "nft", "list", "table", "inet", "mm-leaf",
        ],
    ));

    // Positive control: the fabric side reaches the leaf's metrics.
    assert!(
        tcp_connects("mm-spine1", &leaf, 9469),
        "spine1 cannot reach the leaf's metrics"
    );
    // In provisioning: not the leaf's other listeners, not the fabric, not
    // the other machine.
    let before = common::nft_dropped("inet", "mm-leaf", "provisioning");
    assert!(
        !tcp_connects("mm-m1-1", &leaf, 9469),
        "a provisioning machine reaches the leaf's metrics"
    );
    assert!(common::nft_dropped("inet", "mm-leaf", "provisioning") > before);
    let before = common::nft_dropped("inet", "mm-leaf", "forward");
    assert!(
        !ping("m1-1", "10.255.1.1"),
        "a provisioning machine reaches a spine"
    );
    assert!(common::nft_dropped("inet", "mm-leaf", "forward") > before);
    let other = address_of("mm-m1-2");
    assert!(!other.is_empty());
    // Two layers: isolated bridge ports, and the filter's forward rule
    // (seen working while one port's isolation is turned off by hand,
    // which the agent then puts back).
    let isolated = |port: &str| {
        in_netns("mm-leaf1", &["bridge", "-d", "link", "show", "dev", port]).contains("isolated on")
    };
    assert!(
        eventually(Duration::from_secs(5), || isolated("m1-1")
            && isolated("m1-2")),
        "provisioning ports are not isolated"
    );
    assert!(
        !ping("m1-1", &other),
        "provisioning machines reach each other"
    );
    // (The agent isolates the port again within its 2 s check: turned off
    // again before each try.)
    let before = common::nft_dropped("bridge", "mm-pxe", "forward");
    assert!(
        eventually(Duration::from_secs(10), || {
            ok(&run(
                "ip",
                &[
                    "netns", "exec", "mm-leaf1", "bridge", "link", "set", "dev", "m1-1",
                    "isolated", "off",
                ],
            ));
            assert!(
                !ping("m1-1", &other),
                "provisioning machines reach each other without isolation"
            );
            common::nft_dropped("bridge", "mm-pxe", "forward") > before
        }),
        "nothing dropped by the bridge forward rule"
    );
    assert!(
        eventually(Duration::from_secs(5), || isolated("m1-1")),
        "the agent did not isolate the port again"
    );

    // Allocated: its routed port reaches phone-home and nothing else.
    let id = uuid(1, 1);
    ok(&common::allocate_local(
        &guard.run_dir,
        &id,
        "10.0.1.11",
        "web-1",
        &[],
    ));
    assert!(
        eventually(Duration::from_secs(90), || state(&guard, &id)
            == "Phoned Home"),
        "not Phoned Home through the policy: {}",
        std::fs::read_to_string(guard.scratch.join("m1-1.log")).unwrap_or_default()
    );
    assert!(
        ping("m1-1", "169.254.0.1"),
        "the gateway does not answer ICMP"
    );
    assert_eq!(
        http_status("mm-m1-1", "http://169.254.0.1:8070/boot/vmlinuz"),
        "403",
        "the tenant gateway serves boot files"
    );
    assert_eq!(
        http_status(
            "mm-m1-1",
            &format!("http://169.254.0.1:8070/v1/machines/{id}/heartbeat")
        ),
        "403",
        "the tenant gateway serves the installer API"
    );
    let before = common::nft_dropped("inet", "mm-leaf", "tenant");
    for (address, port) in [
        (leaf.as_str(), 9469),
        ("169.254.0.1", 9469),
        (leaf.as_str(), 179),
    ] {
        assert!(
            !tcp_connects("mm-m1-1", address, port),
            "a tenant port reaches {address}:{port} on the leaf"
        );
    }
    assert!(common::nft_dropped("inet", "mm-leaf", "tenant") > before);
    // A routed machine sends only from its own address: from another one
    // it reaches neither the gateway nor anything through the leaf.
    let nic = common::nic("mm-m1-1");
    ok(&run(
        "ip",
        &["-n", "mm-m1-1", "addr", "add", "10.0.1.99/32", "dev", &nic],
    ));
    let before = common::nft_dropped("inet", "mm-leaf", "tenant_sources");
    let spoofed = run(
        "ip",
        &[
            "netns",
            "exec",
            "mm-m1-1",
            "ping",
            "-c",
            "2",
            "-W",
            "1",
            "-I",
            "10.0.1.99",
            "169.254.0.1",
        ],
    );
    assert!(!spoofed.status.success(), "a spoofed source got an answer");
    assert!(
        common::nft_dropped("inet", "mm-leaf", "tenant_sources") > before,
        "nothing dropped by the tenant source rules"
    );
    ok(&run(
        "ip",
        &["-n", "mm-m1-1", "addr", "del", "10.0.1.99/32", "dev", &nic],
    ));
    assert!(
        ping("m1-1", "169.254.0.1"),
        "its own address stopped working"
    );

    // A crafted VXLAN packet into tenant B (its VNI, the leaf's router
    // MAC) from a tenant port or a provisioning port never reaches tenant
    // B; the same packet from the fabric does (the craft and the capture
    // work).
    let both = guard.scratch.join("two-tenants.toml");
    std::fs::write(
        &both,
        "[[vrf]]\nname = \"tenant-a\"\nvni = 10001\ntable = 1001\nprefixes = [\"10.0.1.0/24\"]\n\
         [[vrf]]\nname = \"tenant-b\"\nvni = 10002\ntable = 1002\nprefixes = [\"10.0.2.0/24\"]\n",
    )
    .unwrap();
    ok(&common::agent(
        &guard.run_dir,
        &["dataplane", "apply", both.to_str().unwrap()],
    ));
    assert!(eventually(Duration::from_secs(10), || in_netns(
        "mm-leaf1",
        &["ip", "-br", "link", "show"]
    )
    .contains("mm-br10002")));
    let octets: Vec<u8> = leaf.split('.').map(|o| o.parse().unwrap()).collect();
    let router_mac = format!(
        "02:6d:{:02x}:{:02x}:{:02x}:{:02x}",
        octets[0], octets[1], octets[2], octets[3]
    );
    let before = common::nft_dropped("inet", "mm-leaf", "tenant")
        + common::nft_dropped("inet", "mm-leaf", "provisioning");
    assert!(
        !tenant_b_sees(|| {
            crafted_vxlan("mm-m1-1", &leaf, 10002, &router_mac);
            crafted_vxlan("mm-m1-2", &leaf, 10002, &router_mac);
        }),
        "a crafted VXLAN packet from a machine reached tenant B"
    );
    assert!(
        common::nft_dropped("inet", "mm-leaf", "tenant")
            + common::nft_dropped("inet", "mm-leaf", "provisioning")
            >= before + 10,
        "the crafted VXLAN packets were not dropped by the policy"
    );
    assert!(
        tenant_b_sees(|| crafted_vxlan("mm-spine1", &leaf, 10002, &router_mac)),
        "the crafted VXLAN packet does not reach tenant B even from the fabric"
    );

    // Intents may not route an uplink or cover the leaf's own ranges.
    let intents = guard.scratch.join("bad-intents.toml");
    std::fs::write(
        &intents,
        "[[vrf]]\nname = \"tenant-a\"\nvni = 10001\ntable = 1001\nprefixes = [\"10.0.1.0/24\"]\n\
         [[vrf]]\nname = \"grab-uplink\"\nvni = 10003\ntable = 1003\nprefixes = [\"10.0.3.0/24\"]\n\
         [[vrf.port]]\nname = \"spine1\"\naddresses = [\"10.0.3.1\"]\n\
         [[vrf]]\nname = \"grab-provisioning\"\nvni = 10004\ntable = 1004\nprefixes = [\"10.100.1.0/25\"]\n",
    )
    .unwrap();
    let out = common::agent(
        &guard.run_dir,
        &["dataplane", "apply", intents.to_str().unwrap()],
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("VRF `grab-uplink` rejected: port `spine1` is an uplink"),
        "{said}"
    );
    assert!(
        said.contains("VRF `grab-provisioning` rejected: prefix 10.100.1.0/25 overlaps 10.100.1.0/24 (the provisioning subnet)"),
        "{said}"
    );
    assert!(!said.contains("`tenant-a` rejected"), "{said}");

    // The table deleted by hand is put back.
    ok(&run(
        "ip",
        &[
            "netns", "exec", "mm-leaf1", "nft", "delete", "table", "inet", "mm-leaf",
        ],
    ));
    assert!(
        eventually(Duration::from_secs(20), || run(
            "ip",
            &[
                "netns", "exec", "mm-leaf1", "nft", "list", "table", "inet", "mm-leaf"
            ]
        )
        .status
        .success()),
        "the deleted policy did not come back"
    );
    assert!(
        !tcp_connects("mm-m1-1", &leaf, 9469),
        "the restored policy lets the tenant port through"
    );

    // The provisioning bridge deleted by hand comes back with its address
    // and its port (m1-2, still in provisioning; not m1-1, routed), and the
    // boot services answer on it again.
    ok(&run("ip", &["-n", "mm-leaf1", "link", "del", "mm-pxe"]));
    assert!(
        eventually(Duration::from_secs(10), || {
            in_netns("mm-leaf1", &["ip", "-4", "addr", "show", "dev", "mm-pxe"])
                .contains("10.100.1.1/24")
                && in_netns("mm-leaf1", &["ip", "link", "show", "master", "mm-pxe"])
                    .contains("m1-2")
        }),
        "the provisioning bridge did not come back: {}",
        in_netns("mm-leaf1", &["ip", "-br", "link"])
    );
    assert!(
        !in_netns("mm-leaf1", &["ip", "link", "show", "master", "mm-pxe"]).contains("m1-1"),
        "the routed port was put back into the provisioning bridge"
    );
    assert!(
        ping("m1-1", "169.254.0.1"),
        "the routed machine lost its gateway"
    );
    let nic2 = common::nic("mm-m1-2");
    assert!(
        eventually(Duration::from_secs(20), || run(
            "ip",
            &[
                "netns",
                "exec",
                "mm-m1-2",
                "busybox",
                "udhcpc",
                "-i",
                &nic2,
                "-n",
                "-q",
                "-t",
                "2",
                "-T",
                "1",
                "-s",
                "/bin/true",
            ],
        )
        .status
        .success()),
        "no DHCP lease on the recreated bridge"
    );
    let tftp_copy = guard.scratch.join("after-bridge.kpxe");
    assert!(
        eventually(Duration::from_secs(10), || run(
            "ip",
            &[
                "netns",
                "exec",
                "mm-m1-2",
                "tftp",
                "10.100.1.1",
                "-m",
                "binary",
                "-c",
                "get",
                "undionly.kpxe",
                tftp_copy.to_str().unwrap(),
            ],
        )
        .status
        .success()
            && std::fs::metadata(&tftp_copy).is_ok_and(|m| m.len() > 0)),
        "no TFTP on the recreated bridge"
    );
}
