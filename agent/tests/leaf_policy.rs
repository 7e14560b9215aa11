//! The leaf closed to machines and tenants (the agent's nftables policy),
//! in the testbed with two namespace machines on one leaf: in provisioning
//! they get DHCP, TFTP and HTTP boot and register, but cannot reach each
//! other, the leaf's other listeners or anything beyond the leaf; once
//! allocated, a machine on its routed port reaches phone-home at
//! 169.254.0.1 and ICMP to it, and nothing else of the leaf (the HTTP
//! server answers it phone-home only). Every refusal is checked against a
//! positive control from the fabric side and against the drop counters of
//! the agent's own rules. A table deleted by hand comes back.
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
    let before = common::nft_dropped("bridge", "mm-pxe", "forward");
    assert!(
        !ping("m1-1", &other),
        "provisioning machines reach each other"
    );
    assert!(common::nft_dropped("bridge", "mm-pxe", "forward") > before);

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
}
