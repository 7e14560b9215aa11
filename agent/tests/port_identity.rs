//! A machine's identity is its switch port: an attacker on a namespace
//! machine beside a victim on the same leaf tries everything it can from
//! its own port — a DHCPREQUEST under the victim's MAC, the victim's
//! address by gratuitous ARP and as its source, the victim's UUID over
//! LLDP, registration, heartbeats and events as the victim, a UUID nobody
//! announces — and every attempt is refused, while the victim registers,
//! is allocated, installed and routed on its own port, and the attacker's
//! port never joins a VRF.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{nic, uuid};
use metalmesh_testbed::testing::{Guard, eventually, in_netns, ok, run, script};

const VICTIM_MAC: &str = "52:54:00:6d:01:01";
const ATTACKER_MAC: &str = "52:54:00:6d:01:02";

fn machine(guard: &Guard, id: &str) -> serde_json::Value {
    let out = common::agent(&guard.run_dir, &["machines", "-o", "json"]);
    let machines: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    machines
        .into_iter()
        .find(|m| m["uuid"] == id)
        .unwrap_or_default()
}

fn bindings(run_dir: &Path) -> serde_json::Value {
    let path = run_dir.join("nodes/leaf1/agent/state/port-bindings.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default()).unwrap_or_default()
}

fn address(namespace: &str, nic: &str) -> Option<String> {
    in_netns(namespace, &["ip", "-4", "-o", "addr", "show", "dev", nic])
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
}

/// `curl -X POST` from `namespace` (bound to `source` when given): the
/// status (000 when no connection) and the body.
fn post(namespace: &str, source: Option<&str>, url: &str, body: &str) -> (String, String) {
    let mut args = vec![
        "netns",
        "exec",
        namespace,
        "curl",
        "-s",
        "--connect-timeout",
        "3",
        "--max-time",
        "8",
        "-w",
        "\n%{http_code}",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
    ];
    if let Some(source) = source {
        args.extend(["--interface", source]);
    }
    args.push(url);
    let out = run("ip", &args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (status.to_string(), body.to_string())
}

/// A DHCPREQUEST for `ip` under `chaddr`, broadcast from `namespace`'s
/// `nic` with the sender's own MAC on the wire.
fn dhcp_request(namespace: &str, nic: &str, chaddr: &str, ip: &str) {
    let program = r#"
import socket, struct, sys
nic, chaddr, ip = sys.argv[1], bytes.fromhex(sys.argv[2].replace(':', '')), socket.inet_aton(sys.argv[3])
packet = struct.pack('!BBBBIHH4s4s4s4s16s64s128s', 1, 1, 6, 0, 0x6d6d0001, 0, 0x8000,
                     b'\0' * 4, b'\0' * 4, b'\0' * 4, b'\0' * 4, chaddr.ljust(16, b'\0'), b'', b'')
packet += b'\x63\x82\x53\x63' + bytes([53, 1, 3, 50, 4]) + ip + b'\xff'
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, nic.encode())
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(('0.0.0.0', 68))
for _ in range(3):
    s.sendto(packet, ('255.255.255.255', 67))
"#;
    ok(&run(
        "ip",
        &[
            "netns", "exec", namespace, "python3", "-c", program, nic, chaddr, ip,
        ],
    ));
}

#[test]
fn an_attacker_beside_the_victim_cannot_take_its_identity() {
    let guard = Guard::new();
    script("build-os-image", &[]);
    let _testbed = metalmesh_testbed::testing::up(&guard.run_dir, 1, 2, 0);
    common::tenant_a(&guard.run_dir, &guard.scratch);
    let victim = uuid(1, 1);
    let leaf = "http://10.100.1.1:8070";

    // The victim registers; its port is bound to its MAC and lease.
    common::start_installer(&guard.scratch, 1, 1);
    assert!(
        eventually(
            Duration::from_secs(60),
            || machine(&guard, &victim)["state"] == "Waiting"
        ),
        "the victim is not Waiting: {}",
        std::fs::read_to_string(guard.scratch.join("m1-1.log")).unwrap_or_default()
    );
    let victim_nic = nic("mm-m1-1");
    let victim_ip = address("mm-m1-1", &victim_nic).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || bindings(&guard.run_dir)["m1-1"]
            ["mac"]
            == VICTIM_MAC),
        "m1-1 not bound: {}",
        bindings(&guard.run_dir)
    );
    assert_eq!(machine(&guard, &victim)["port"], "m1-1");
    let attacker = nic("mm-m1-2");

    // From its unbound port: a DHCPREQUEST under the victim's MAC, the
    // victim's address by gratuitous ARP and as a TCP source.
    let before = common::nft_dropped("bridge", "mm-pxe", "prerouting");
    dhcp_request("mm-m1-2", &attacker, VICTIM_MAC, &victim_ip);
    // The DHCP server knows the request came in on the attacker's port
    // (the leaf's filter marks it) while the victim's lease is bound to
    // m1-1: not answered, counted.
    assert!(
        eventually(Duration::from_secs(5), || {
            let out = common::agent(&guard.run_dir, &["status", "-o", "json"]);
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            status["dhcp_counters"]["wrong_port"].as_u64() >= Some(3)
        }),
        "the victim's MAC from another port was not refused as such"
    );
    ok(&run(
        "ip",
        &[
            "-n",
            "mm-m1-2",
            "addr",
            "add",
            &format!("{victim_ip}/24"),
            "dev",
            &attacker,
        ],
    ));
    ok(&run(
        "ip",
        &["-n", "mm-m1-2", "link", "set", &attacker, "up"],
    ));
    let _ = run(
        "ip",
        &[
            "netns", "exec", "mm-m1-2", "busybox", "arping", "-U", "-c", "2", "-I", &attacker,
            "-s", &victim_ip, &victim_ip,
        ],
    );
    let (status, body) = post(
        "mm-m1-2",
        Some(&victim_ip),
        &format!("{leaf}/v1/machines/{victim}/heartbeat"),
        "{}",
    );
    assert_eq!(
        status, "000",
        "a heartbeat from the victim's address got through: {body}"
    );
    assert!(
        common::nft_dropped("bridge", "mm-pxe", "prerouting") > before,
        "nothing dropped by the anti-spoofing rules"
    );
    ok(&run(
        "ip",
        &["-n", "mm-m1-2", "addr", "flush", "dev", &attacker],
    ));
    assert_eq!(bindings(&guard.run_dir)["m1-1"]["mac"], VICTIM_MAC);
    assert!(bindings(&guard.run_dir).get("m1-2").is_none());

    // The attacker's own installer, claiming the victim's UUID: it gets a
    // lease of its own (its port bound to its MAC), announces the victim's
    // UUID over LLDP, registers and reports as the victim.
    let disk = common::disk(&guard.scratch, "m1-2");
    metalmesh_testbed::testing::spawn_detached_in(
        "mm-m1-2",
        &[
            common::installer().as_os_str(),
            "--simulate".as_ref(),
            "--uuid".as_ref(),
            victim.as_ref(),
            "--disk".as_ref(),
            disk.as_os_str(),
            "--work-dir".as_ref(),
            guard.scratch.join("m1-2.work").as_os_str(),
            "--heartbeat-ms".as_ref(),
            "500".as_ref(),
        ],
        &guard.scratch.join("m1-2.log"),
    );
    assert!(
        eventually(Duration::from_secs(30), || bindings(&guard.run_dir)["m1-2"]
            ["mac"]
            == ATTACKER_MAC),
        "the attacker's port not bound to its own MAC: {}",
        bindings(&guard.run_dir)
    );
    assert!(
        eventually(Duration::from_secs(30), || {
            machine(&guard, &victim)["duplicate_uuid"] == true
        }),
        "the victim's UUID on two ports is not flagged: {}",
        machine(&guard, &victim)
    );
    assert!(
        eventually(Duration::from_secs(30), || std::fs::read_to_string(
            guard.scratch.join("m1-2.log")
        )
        .unwrap_or_default()
        .contains("403")),
        "the attacker's registration as the victim was not refused: {}",
        std::fs::read_to_string(guard.scratch.join("m1-2.log")).unwrap_or_default()
    );
    let attacker_ip = address("mm-m1-2", &attacker).unwrap();
    for (call, body) in [
        ("heartbeat", "{}".to_string()),
        (
            "events",
            r#"{"event":"Crashed","message":"forged"}"#.to_string(),
        ),
    ] {
        let (status, answer) = post(
            "mm-m1-2",
            Some(&attacker_ip),
            &format!("{leaf}/v1/machines/{victim}/{call}"),
            &body,
        );
        assert_eq!(status, "403", "{call} as the victim: {answer}");
    }
    // A UUID nobody announces cannot be registered (retry later), and the
    // victim's cannot be allocated while another port claims it.
    let stranger = "6d6d0000-0000-4000-8000-0000000000aa";
    let registration = format!(
        r#"{{"hardware":{{"uuid":"{stranger}","cpus":1,"memory_bytes":1073741824,"disks":[{{"name":"vda","size_bytes":10737418240}}],"nics":[{{"name":"{attacker}","mac":"{ATTACKER_MAC}","up":true}}]}}}}"#
    );
    let (status, answer) = post(
        "mm-m1-2",
        Some(&attacker_ip),
        &format!("{leaf}/v1/machines/register"),
        &registration,
    );
    assert_eq!(status, "503", "a UUID nobody announces: {answer}");
    let out = common::allocate_local(
        &guard.run_dir,
        &victim,
        "10.0.1.11",
        "web-1",
        &["--ssh-key", "ssh-ed25519 AAAAC3NzaVictimKey victim@alpha"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("several ports"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The attacker powers off; once its LLDP claim expires the victim is
    // allocated, installed and routed on its own port.
    let _ = run("pkill", &["-9", "-f", "m1-2.work"]);
    assert!(
        eventually(Duration::from_secs(40), || {
            machine(&guard, &victim)["duplicate_uuid"] != true
        }),
        "the flag stays after the claim expired: {}",
        machine(&guard, &victim)
    );
    ok(&common::allocate_local(
        &guard.run_dir,
        &victim,
        "10.0.1.11",
        "web-1",
        &["--ssh-key", "ssh-ed25519 AAAAC3NzaVictimKey victim@alpha"],
    ));
    // While the victim installs, the attacker (on its own lease) asks for
    // the victim's installation: refused, no keys.
    let (status, answer) = post(
        "mm-m1-2",
        Some(&attacker_ip),
        &format!("{leaf}/v1/machines/{victim}/heartbeat"),
        "{}",
    );
    assert_eq!(status, "403", "{answer}");
    assert!(!answer.contains("VictimKey"), "{answer}");
    assert!(
        eventually(
            Duration::from_secs(90),
            || machine(&guard, &victim)["state"] == "Phoned Home"
        ),
        "the victim did not phone home: {}",
        std::fs::read_to_string(guard.scratch.join("m1-1.log")).unwrap_or_default()
    );
    let rules = in_netns("mm-leaf1", &["ip", "rule", "show"]);
    assert!(rules.contains("iif m1-1 lookup 1001"), "{rules}");
    assert!(
        !rules.contains("iif m1-2"),
        "the attacker's port joined a VRF: {rules}"
    );
    let events = common::events(&guard.run_dir, &victim);
    assert!(
        !events.iter().any(|e| e == "Crashed"),
        "a forged event reached the victim: {events:?}"
    );

    // The operator sees the bindings and releases the attacker's port.
    let shown = ok(&common::agent(&guard.run_dir, &["port", "bindings"]));
    assert!(
        shown.contains(VICTIM_MAC) && shown.contains(ATTACKER_MAC),
        "{shown}"
    );
    let said = ok(&common::agent(&guard.run_dir, &["port", "unbind", "m1-2"]));
    assert!(said.contains("binding removed"), "{said}");
    let listed: serde_json::Value = serde_json::from_str(&ok(&common::agent(
        &guard.run_dir,
        &["port", "bindings", "-o", "json"],
    )))
    .unwrap();
    assert!(
        listed.get("m1-2").is_none() && listed["m1-1"]["mac"] == VICTIM_MAC,
        "{listed}"
    );
}
