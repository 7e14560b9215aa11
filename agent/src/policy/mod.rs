//! The leaf's own packet filter: what machines and tenants may reach on the
//! switch, as nftables tables the agent owns (`inet mm-leaf`, and `bridge
//! mm-pxe` where boot services run), applied atomically with `nft -f` and
//! repaired when they drift.
//!
//! - Machines on the provisioning bridge reach only DHCP, TFTP and the HTTP
//!   boot server (and ICMP) on the leaf, never each other (its ports are
//!   isolated bridge ports, and frames between two of them are dropped by
//!   the filter too) and
//!   never anything beyond the leaf (no forwarding from or to the bridge);
//!   a machine port cannot answer as a DHCP server.
//! - Routed machine ports (allocated machines, in a tenant VRF) reach only
//!   phone-home at 169.254.0.1 on the HTTP port, and ICMP to it; the HTTP
//!   server answers nothing but phone-home on that address
//!   (`metalmesh_provisioning::http`).
//! - VXLAN (UDP 4789) is accepted only on fabric ports and, when an
//!   underlay range is configured, only from it.
//!
//! Everything else (fabric, management, the leaf's own traffic) is left as
//! it is: the policy closes the leaf to machines and tenants, it is not the
//! switch's whole firewall. Drops are counted in the ruleset
//! (`nft list table inet mm-leaf`).

pub mod bindings;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::dataplane::Intents;

/// The inet table.
pub const TABLE: &str = "mm-leaf";
/// The bridge table (on the provisioning bridge).
pub const BRIDGE_TABLE: &str = "mm-pxe";
/// Where the leaf answers on routed machine ports.
pub const GATEWAY: &str = "169.254.0.1";
/// How often the applied ruleset is compared with the kernel's.
/// (Ports joining the provisioning bridge are isolated within this too.)
const DRIFT_CHECK: Duration = Duration::from_secs(2);

/// What the ruleset is rendered from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyInputs {
    /// The provisioning bridge and the leaf's boot service ports
    /// (DHCP, TFTP, HTTP), where boot services run.
    pub provisioning: Option<Provisioning>,
    /// Routed machine ports (every port of every tenant VRF the
    /// guardrails accept) and the addresses their machine may send from.
    pub tenant_ports: BTreeMap<String, Vec<std::net::Ipv4Addr>>,
    /// The provisioning bridge's ports and their interface indexes, as the
    /// kernel has them.
    pub pxe_ports: BTreeMap<String, u32>,
    /// Which MAC and address each port is bound to (anti-spoofing); `None`:
    /// ports are not bound (no boot services), nothing is filtered by
    /// source.
    pub bindings: Option<BTreeMap<String, bindings::Binding>>,
    /// Ports VXLAN may arrive on; empty: any port.
    pub fabric_ports: Vec<String>,
    /// Source prefixes VXLAN may come from; empty: any.
    pub underlay: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioning {
    pub bridge: String,
    pub dhcp_port: u16,
    pub tftp_port: u16,
    pub http_port: u16,
}

fn set_elements(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    names
        .into_iter()
        .map(|n| format!("\"{}\"", n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `nft -f` script: each table created empty, deleted and written
/// whole in one transaction, so a reader never sees half a policy.
pub fn render(inputs: &PolicyInputs) -> String {
    let mut out = String::new();
    let http_port = inputs.provisioning.as_ref().map_or(8070, |p| p.http_port);
    let _ = writeln!(out, "table inet {TABLE} {{}}\ndelete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");
    let _ = writeln!(out, "  set tenant_ports {{\n    type ifname");
    if !inputs.tenant_ports.is_empty() {
        let _ = writeln!(
            out,
            "    elements = {{ {} }}",
            set_elements(inputs.tenant_ports.keys())
        );
    }
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "  chain input {{");
    let _ = writeln!(
        out,
        "    type filter hook input priority filter; policy accept;"
    );
    if let Some(p) = &inputs.provisioning {
        let _ = writeln!(out, "    iifname \"{}\" jump provisioning", p.bridge);
    }
    let _ = writeln!(out, "    iifname @tenant_ports jump tenant");
    // In VRF-device mode a routed port's packets reach the input hook with
    // their VRF device as input interface: anything arriving in a tenant
    // VRF is a tenant's.
    let _ = writeln!(out, "    iifname \"mm-vrf*\" jump tenant");
    let _ = writeln!(out, "    udp dport 4789 jump vxlan");
    let _ = writeln!(out, "  }}");
    // A routed machine sends only from its own addresses, to the leaf and
    // through it (before routing; in VRF-device mode this hook still sees
    // the port, not the VRF), so an address identifies a port here too.
    let _ = writeln!(out, "  chain tenant_sources {{");
    let _ = writeln!(
        out,
        "    type filter hook prerouting priority -150; policy accept;"
    );
    for (port, addresses) in &inputs.tenant_ports {
        if addresses.is_empty() {
            let _ = writeln!(out, "    iifname \"{port}\" counter drop");
        } else {
            let _ = writeln!(
                out,
                "    iifname \"{port}\" ip saddr != {{ {} }} counter drop",
                addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let _ = writeln!(out, "    iifname \"{port}\" meta nfproto ipv6 counter drop");
        }
    }
    let _ = writeln!(out, "  }}");
    if let Some(p) = &inputs.provisioning {
        let _ = writeln!(out, "  chain provisioning {{");
        let _ = writeln!(out, "    ct state established,related accept");
        let _ = writeln!(
            out,
            "    udp dport {{ {}, {} }} accept",
            p.dhcp_port, p.tftp_port
        );
        let _ = writeln!(out, "    tcp dport {} accept", p.http_port);
        let _ = writeln!(out, "    icmp type echo-request accept");
        // Neighbour and router discovery on the bridge.
        // By number: a switch without /etc/protocols cannot resolve the name.
        let _ = writeln!(out, "    meta l4proto 58 accept");
        let _ = writeln!(out, "    counter drop");
        let _ = writeln!(out, "  }}");
    }
    let _ = writeln!(out, "  chain tenant {{");
    let _ = writeln!(out, "    ct state established,related accept");
    let _ = writeln!(out, "    ip daddr {GATEWAY} tcp dport {http_port} accept");
    let _ = writeln!(out, "    ip daddr {GATEWAY} icmp type echo-request accept");
    let _ = writeln!(out, "    counter drop");
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "  chain vxlan {{");
    if !inputs.fabric_ports.is_empty() {
        let _ = writeln!(
            out,
            "    iifname != {{ {} }} counter drop",
            set_elements(&inputs.fabric_ports)
        );
    }
    if !inputs.underlay.is_empty() {
        let _ = writeln!(
            out,
            "    ip saddr != {{ {} }} counter drop",
            inputs.underlay.join(", ")
        );
    }
    let _ = writeln!(out, "    accept");
    let _ = writeln!(out, "  }}");
    if let Some(p) = &inputs.provisioning {
        // The provisioning network ends at the leaf.
        let _ = writeln!(out, "  chain forward {{");
        let _ = writeln!(
            out,
            "    type filter hook forward priority filter; policy accept;"
        );
        let _ = writeln!(out, "    iifname \"{}\" counter drop", p.bridge);
        let _ = writeln!(out, "    oifname \"{}\" counter drop", p.bridge);
        let _ = writeln!(out, "  }}");
    }
    let _ = writeln!(out, "}}");
    if let Some(p) = &inputs.provisioning {
        let _ = writeln!(
            out,
            "table bridge {BRIDGE_TABLE} {{}}\ndelete table bridge {BRIDGE_TABLE}"
        );
        let _ = writeln!(out, "table bridge {BRIDGE_TABLE} {{");
        let _ = writeln!(out, "  set pxe_ports {{\n    type ifname");
        if !inputs.pxe_ports.is_empty() {
            let _ = writeln!(
                out,
                "    elements = {{ {} }}",
                set_elements(inputs.pxe_ports.keys())
            );
        }
        let _ = writeln!(out, "  }}");
        render_port_marks(&mut out, &inputs.pxe_ports, p.dhcp_port);
        if let Some(bound) = &inputs.bindings {
            let ports: BTreeSet<String> = inputs.pxe_ports.keys().cloned().collect();
            render_anti_spoofing(&mut out, &ports, bound);
        }
        // Machines talk to the leaf only, never to each other: nothing
        // arriving on a port of the provisioning bridge is forwarded.
        let _ = writeln!(out, "  chain forward {{");
        let _ = writeln!(
            out,
            "    type filter hook forward priority filter; policy accept;"
        );
        let _ = writeln!(out, "    iifname @pxe_ports counter drop");
        let _ = writeln!(out, "  }}");
        // A machine port never answers as a DHCP server.
        let _ = writeln!(out, "  chain input {{");
        let _ = writeln!(
            out,
            "    type filter hook input priority filter; policy accept;"
        );
        let _ = writeln!(
            out,
            "    iifname @pxe_ports udp sport {} counter drop",
            p.dhcp_port
        );
        let _ = writeln!(out, "  }}");
        let _ = writeln!(out, "}}");
    }
    out
}

/// DHCP requests carry the port they came in on to the DHCP server as their
/// packet mark (`metalmesh_provisioning::dhcp::service::port_mark`): the
/// server ties leases, quotas and rate limits to ports, which a client
/// cannot choose.
fn render_port_marks(out: &mut String, ports: &BTreeMap<String, u32>, dhcp_port: u16) {
    use metalmesh_provisioning::dhcp::service::port_mark;
    let marks: Vec<String> = ports
        .iter()
        .filter_map(|(name, index)| port_mark(*index).map(|mark| format!("\"{name}\" : {mark:#x}")))
        .collect();
    if marks.len() < ports.len() {
        tracing::warn!(
            "ports with an interface index above 65535 are not marked: their DHCP requests are not tied to them"
        );
    }
    let _ = writeln!(out, "  chain port_marks {{");
    let _ = writeln!(
        out,
        "    type filter hook prerouting priority filter - 10; policy accept;"
    );
    if !marks.is_empty() {
        let _ = writeln!(
            out,
            "    udp dport {dhcp_port} meta mark set iifname map {{ {} }}",
            marks.join(", ")
        );
    }
    let _ = writeln!(out, "  }}");
}

/// Per port of the provisioning bridge: a bound port may send only from
/// its MAC and its leased address (DHCP and ARP probes from 0.0.0.0 too),
/// so an address identifies a port; an unbound port only DHCP and ARP
/// probes, until its first lease binds it. Dropped before the bridge
/// learns the frame's source, so nobody can poison its table either.
fn render_anti_spoofing(
    out: &mut String,
    ports: &BTreeSet<String>,
    bound: &BTreeMap<String, bindings::Binding>,
) {
    let bound_macs: BTreeSet<String> = bound.values().map(|b| b.mac.to_ascii_lowercase()).collect();
    let _ = writeln!(out, "  set bound_macs {{\n    type ether_addr");
    if !bound_macs.is_empty() {
        let _ = writeln!(
            out,
            "    elements = {{ {} }}",
            bound_macs.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "  chain prerouting {{");
    let _ = writeln!(
        out,
        "    type filter hook prerouting priority filter; policy accept;"
    );
    for port in ports {
        match bound.get(port) {
            Some(binding) => {
                let _ = writeln!(
                    out,
                    "    iifname \"{port}\" ether saddr != {} counter drop",
                    binding.mac.to_ascii_lowercase()
                );
                let allowed = match binding.ip {
                    Some(ip) => format!("{{ 0.0.0.0, {ip} }}"),
                    None => "0.0.0.0".to_string(),
                };
                let _ = writeln!(
                    out,
                    "    iifname \"{port}\" arp saddr ip != {allowed} counter drop"
                );
                let _ = writeln!(
                    out,
                    "    iifname \"{port}\" ip saddr != {allowed} counter drop"
                );
            }
            None => {
                // Not even DHCP under a MAC bound elsewhere: the bridge
                // would learn it on this port.
                let _ = writeln!(
                    out,
                    "    iifname \"{port}\" ether saddr @bound_macs counter drop"
                );
                let _ = writeln!(
                    out,
                    "    iifname \"{port}\" arp saddr ip != 0.0.0.0 counter drop"
                );
                let _ = writeln!(
                    out,
                    "    iifname \"{port}\" ip protocol != udp counter drop"
                );
                let _ = writeln!(out, "    iifname \"{port}\" udp dport != 67 counter drop");
            }
        }
    }
    let _ = writeln!(out, "  }}");
}

/// What binds ports to machines: the bindings, the DHCP leases, and the
/// signal that a lease was bound.
#[derive(Debug, Clone)]
pub struct Identity {
    pub bindings: bindings::PortBindings,
    pub leases: metalmesh_provisioning::dhcp::service::LeaseIndex,
    pub lease_bound: std::sync::Arc<tokio::sync::Notify>,
}

/// The JSON array an iproute2 tool prints with `-j` (`ip`, `bridge`);
/// empty when it fails or prints nothing (a bridge that does not exist yet).
async fn iproute2_json(program: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await;
    out.ok()
        .and_then(|out| serde_json::from_slice(&out.stdout).ok())
        .unwrap_or_default()
}

/// The ports of `bridge` and their interface indexes (`ip -j -d link show
/// master BRIDGE`). Ports not yet isolated are isolated on the way: the
/// bridge then forwards nothing between two machine ports (the filter's
/// forward rule is the second line of that defence).
async fn bridge_ports(bridge: &str) -> BTreeMap<String, u32> {
    let links = iproute2_json("ip", &["-j", "-d", "link", "show", "master", bridge]).await;
    let mut ports = BTreeMap::new();
    for link in &links {
        let (Some(name), Some(index)) = (
            link["ifname"].as_str(),
            link["ifindex"].as_u64().and_then(|i| u32::try_from(i).ok()),
        ) else {
            continue;
        };
        if link["linkinfo"]["info_slave_data"]["isolated"] != serde_json::Value::Bool(true) {
            isolate(name).await;
        }
        ports.insert(name.to_string(), index);
    }
    ports
}

/// `bridge link set dev PORT isolated on`.
async fn isolate(port: &str) {
    let out = tokio::process::Command::new("bridge")
        .args(["link", "set", "dev", port, "isolated", "on"])
        .kill_on_drop(true)
        .output()
        .await;
    match out {
        Ok(out) if out.status.success() => tracing::info!(%port, "provisioning port isolated"),
        Ok(out) => {
            tracing::warn!(%port, error = %String::from_utf8_lossy(&out.stderr).trim(), "provisioning port not isolated")
        }
        Err(error) => {
            tracing::warn!(%port, %error, "provisioning port not isolated (bridge from iproute2 missing?)")
        }
    }
}

/// The policy's tables as the kernel lists them (for drift checks).
async fn listing(bridge: bool) -> anyhow::Result<String> {
    let mut text = nft(&["-s", "list", "table", "inet", TABLE], None).await?;
    if bridge {
        text.push_str(&nft(&["-s", "list", "table", "bridge", BRIDGE_TABLE], None).await?);
    }
    Ok(text)
}

async fn nft(args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("nft: {e} (is nftables installed?)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        if let Some(input) = input {
            stdin.write_all(input.as_bytes()).await?;
        }
        drop(stdin);
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("nft {} took longer than 10 s", args.join(" ")))??;
    if !out.status.success() {
        anyhow::bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The routed ports of the intents and their machines' addresses. A VRF the
/// guardrails refuse (an uplink as a port…) is left out, so a bad intent
/// can never put an uplink behind the tenant rules.
fn tenant_ports(
    intents: &Intents,
    guardrails: &crate::dataplane::Guardrails,
) -> BTreeMap<String, Vec<std::net::Ipv4Addr>> {
    // Every named port counts as existing: whether it does is the
    // reconciler's concern; filtering it costs nothing.
    let facts = crate::dataplane::KernelFacts {
        interfaces: intents
            .vrfs
            .iter()
            .flat_map(|vrf| vrf.ports.iter().map(|p| p.name.clone()))
            .collect(),
        foreign_tables: BTreeSet::new(),
    };
    let (accepted, _) = crate::dataplane::validate(intents, &facts, guardrails);
    accepted
        .iter()
        .flat_map(|vrf| {
            vrf.ports
                .iter()
                .map(|p| (p.name.clone(), p.addresses.clone()))
        })
        .collect()
}

/// Applies the policy whenever its inputs change and puts it back when
/// someone else changed or removed it.
pub async fn run(
    base: PolicyInputs,
    guardrails: std::sync::Arc<crate::dataplane::Guardrails>,
    mut intents: watch::Receiver<Intents>,
    identity: Option<Identity>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let bridge = base.provisioning.is_some();
    let mut applied: Option<(PolicyInputs, String)> = None;
    let mut check = tokio::time::interval(DRIFT_CHECK);
    loop {
        let mut inputs = base.clone();
        inputs.tenant_ports = tenant_ports(&intents.borrow_and_update(), &guardrails);
        if let Some(p) = &base.provisioning {
            inputs.pxe_ports = bridge_ports(&p.bridge).await;
            if let Some(identity) = &identity {
                let ports: BTreeSet<String> = inputs.pxe_ports.keys().cloned().collect();
                let learned = bindings::learned_macs(&p.bridge, &ports).await;
                match identity
                    .bindings
                    .learn(&identity.leases.entries(), &learned)
                {
                    Ok((changed, conflicts)) => {
                        if changed {
                            tracing::info!("port bindings changed");
                        }
                        for conflict in conflicts {
                            tracing::warn!(%conflict, "port binding");
                        }
                    }
                    Err(error) => tracing::error!(%error, "port bindings not stored"),
                }
                inputs.bindings = Some(identity.bindings.all());
            }
        }
        let current = listing(bridge).await.ok();
        let fresh = match (&applied, &current) {
            (Some((was, listed)), Some(now)) => *was == inputs && listed == now,
            _ => false,
        };
        if !fresh {
            if applied.as_ref().is_some_and(|(was, _)| *was == inputs) {
                tracing::warn!("the leaf's packet filter was changed by hand; putting it back");
            }
            match nft(&["-f", "-"], Some(&render(&inputs))).await {
                Ok(_) => {
                    let listed = listing(bridge).await.unwrap_or_default();
                    tracing::info!(
                        tenant_ports = inputs.tenant_ports.len(),
                        "leaf packet filter applied"
                    );
                    applied = Some((inputs, listed));
                }
                Err(error) => {
                    tracing::error!(%error, "leaf packet filter not applied; retrying");
                    applied = None;
                }
            }
        }
        let lease_bound = async {
            match &identity {
                Some(identity) => {
                    identity.lease_bound.notified().await;
                    // The lease index follows the store's commit.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            changed = intents.changed() => changed?,
            () = lease_bound => {}
            _ = check.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioning_tenant_and_fabric_rules() {
        let inputs = PolicyInputs {
            provisioning: Some(Provisioning {
                bridge: "mm-pxe".into(),
                dhcp_port: 67,
                tftp_port: 69,
                http_port: 8070,
            }),
            tenant_ports: [
                ("m1-1".to_string(), vec!["10.0.1.11".parse().unwrap()]),
                ("m1-2".to_string(), vec![]),
            ]
            .into(),
            pxe_ports: [("m1-3".to_string(), 7), ("m1-4".to_string(), 8)].into(),
            bindings: Some(
                [(
                    "m1-3".to_string(),
                    bindings::Binding {
                        mac: "52:54:00:6D:01:03".into(),
                        ip: Some("10.100.1.103".parse().unwrap()),
                    },
                )]
                .into(),
            ),
            fabric_ports: vec!["spine1".into(), "spine2".into()],
            underlay: vec!["10.255.0.0/16".into()],
        };
        let script = render(&inputs);
        for expected in [
            "delete table inet mm-leaf\n",
            "elements = { \"m1-1\", \"m1-2\" }",
            "iifname \"mm-pxe\" jump provisioning",
            "udp dport { 67, 69 } accept",
            "tcp dport 8070 accept",
            "ip daddr 169.254.0.1 tcp dport 8070 accept",
            "iifname \"mm-vrf*\" jump tenant",
            "iifname \"m1-1\" ip saddr != { 10.0.1.11 } counter drop",
            "iifname \"m1-1\" meta nfproto ipv6 counter drop",
            "iifname \"m1-2\" counter drop",
            "iifname != { \"spine1\", \"spine2\" } counter drop",
            "ip saddr != { 10.255.0.0/16 } counter drop",
            "iifname \"mm-pxe\" counter drop",
            "table bridge mm-pxe {",
            "elements = { \"m1-3\", \"m1-4\" }",
            "iifname \"m1-3\" ether saddr != 52:54:00:6d:01:03 counter drop",
            "iifname \"m1-3\" ip saddr != { 0.0.0.0, 10.100.1.103 } counter drop",
            "iifname \"m1-3\" arp saddr ip != { 0.0.0.0, 10.100.1.103 } counter drop",
            "iifname \"m1-4\" ether saddr @bound_macs counter drop",
            "elements = { 52:54:00:6d:01:03 }",
            "iifname \"m1-4\" ip protocol != udp counter drop",
            "iifname \"m1-4\" udp dport != 67 counter drop",
            "iifname @pxe_ports udp sport 67 counter drop",
            "udp dport 67 meta mark set iifname map { \"m1-3\" : 0x4d4d0007, \"m1-4\" : 0x4d4d0008 }",
        ] {
            assert!(script.contains(expected), "{expected} missing:\n{script}");
        }
    }

    #[test]
    fn a_vrf_the_guardrails_refuse_puts_no_port_behind_the_tenant_rules() {
        let intents: Intents = toml::from_str(
            r#"
[[vrf]]
name = "good"
vni = 1
table = 1001
prefixes = ["10.0.1.0/24"]
[[vrf.port]]
name = "m1-1"
addresses = ["10.0.1.11"]
[[vrf]]
name = "bad"
vni = 2
table = 1002
prefixes = ["10.0.2.0/24"]
[[vrf.port]]
name = "spine1"
"#,
        )
        .unwrap();
        let guardrails = crate::dataplane::Guardrails {
            refused_ports: ["spine1".to_string()].into(),
            ..Default::default()
        };
        let ports = tenant_ports(&intents, &guardrails);
        assert_eq!(ports.keys().collect::<Vec<_>>(), ["m1-1"]);
    }

    #[test]
    fn without_boot_services_there_is_no_bridge_table() {
        let script = render(&PolicyInputs::default());
        assert!(!script.contains("bridge"), "{script}");
        assert!(!script.contains("elements"), "{script}");
        assert!(script.contains("chain tenant"), "{script}");
        // Every port may carry VXLAN when no fabric port is known.
        assert!(!script.contains("iifname !="), "{script}");
    }
}
