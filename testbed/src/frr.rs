//! FRR configuration and command lines for the fabric's routers.
//!
//! Every router speaks eBGP with BGP unnumbered on its fabric interfaces: the
//! session runs over the IPv6 link-local address learnt from router
//! advertisements, and IPv4 routes carry IPv6 next hops (RFC 8950). Each node
//! announces its loopback /32; the exit router also originates a default
//! route and the API node's link.

use std::fmt::Write as _;
use std::path::Path;

use crate::daemon::DaemonSpec;
use crate::plan::{API_ADDRESS, Node, Role, RunDir};

/// FRR's daemon binaries, as installed by Debian's `frr` package.
pub(crate) const ZEBRA: &str = "/usr/lib/frr/zebra";
pub(crate) const BGPD: &str = "/usr/lib/frr/bgpd";
pub(crate) const VTYSH: &str = "vtysh";

/// Hold time of fabric sessions: short, so failures show up within seconds.
const KEEPALIVE_SECS: u32 = 1;
const HOLD_SECS: u32 = 3;

/// zebra's configuration: the host name only; interfaces are set up by the testbed.
pub(crate) fn zebra_conf(node: &Node) -> String {
    format!("hostname {}\nlog stdout informational\n!\n", node.name)
}

/// bgpd's configuration for a spine or the exit router; for a leaf with
/// `bgp = "frr"` only the daemon's start-up (its agent configures BGP
/// through vtysh, `[bgp] backend = "frr"`).
pub(crate) fn bgpd_conf(node: &Node) -> String {
    let mut conf = String::new();
    // `datacenter` defaults: fast timers, no eBGP policy requirement, multipath-relax.
    let _ = writeln!(conf, "frr defaults datacenter");
    let _ = writeln!(conf, "hostname {}", node.name);
    let _ = writeln!(conf, "log stdout informational");
    let _ = writeln!(conf, "!");
    if node.role == Role::Leaf {
        return conf;
    }
    let asn = node.asn.unwrap_or_default();
    let _ = writeln!(conf, "router bgp {asn}");
    let _ = writeln!(conf, " bgp router-id {}", node.loopback);
    let _ = writeln!(conf, " no bgp ebgp-requires-policy");
    let _ = writeln!(conf, " bgp bestpath as-path multipath-relax");
    let _ = writeln!(conf, " neighbor fabric peer-group");
    let _ = writeln!(conf, " neighbor fabric remote-as external");
    let _ = writeln!(conf, " neighbor fabric timers {KEEPALIVE_SECS} {HOLD_SECS}");
    let _ = writeln!(conf, " neighbor fabric advertisement-interval 0");
    for interface in &node.bgp_interfaces {
        let _ = writeln!(conf, " neighbor {interface} interface peer-group fabric");
    }
    let _ = writeln!(conf, " !");
    let _ = writeln!(conf, " address-family ipv4 unicast");
    let _ = writeln!(conf, "  network {}/32", node.loopback);
    if node.role == Role::Exit {
        let network = u32::from(API_ADDRESS) & !0b11;
        let _ = writeln!(conf, "  network {}/30", std::net::Ipv4Addr::from(network));
        let _ = writeln!(conf, "  neighbor fabric default-originate");
    }
    let _ = writeln!(conf, "  maximum-paths 16");
    let _ = writeln!(conf, " exit-address-family");
    if node.role != Role::Leaf {
        // Spines and the exit relay the leaves' EVPN routes (next hops,
        // the leaves' VTEPs, pass unchanged).
        let _ = writeln!(conf, " !");
        let _ = writeln!(conf, " address-family l2vpn evpn");
        let _ = writeln!(conf, "  neighbor fabric activate");
        let _ = writeln!(conf, " exit-address-family");
    }
    let _ = writeln!(conf, "!");
    conf
}

/// zebra and bgpd of one node, each daemonised inside the node's namespace
/// with its own pid file, zserv socket and vty directory under the run dir.
pub(crate) fn daemons(node: &Node, run: &RunDir) -> Vec<DaemonSpec> {
    let dir = run.frr_dir(&node.name);
    let zserv = dir.join("zserv.api");
    let spec = |daemon: &str, binary: &str| {
        let pidfile = dir.join(format!("{daemon}.pid"));
        let conf = dir.join(format!("{daemon}.conf"));
        DaemonSpec {
            name: daemon.to_string(),
            namespace: node.namespace(),
            argv: vec![
                binary.to_string(),
                "-d".into(),
                "-N".into(),
                node.namespace(),
                "-i".into(),
                path(&pidfile),
                "-z".into(),
                path(&zserv),
                "--vty_socket".into(),
                path(&dir),
                "-f".into(),
                path(&conf),
            ],
            pidfile,
            output: dir.join(format!("{daemon}.log")),
            detach: false,
        }
    };
    vec![spec("zebra", ZEBRA), spec("bgpd", BGPD)]
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;
    use crate::topology::Topology;

    #[test]
    fn spine_config_is_unnumbered_to_every_leaf() {
        let plan = Plan::new(&Topology::default());
        let conf = bgpd_conf(plan.node("spine1").unwrap());
        assert!(conf.contains(" neighbor leaf1 interface peer-group fabric\n"));
        assert!(conf.contains(" neighbor leaf2 interface peer-group fabric\n"));
        assert!(conf.contains("  network 10.255.1.1/32\n"), "{conf}");
        assert!(!conf.contains("default-originate"));
    }

    #[test]
    fn an_frr_leaf_gets_no_bgp_from_the_testbed() {
        let plan = Plan::new(&Topology::default());
        let conf = bgpd_conf(plan.node("leaf1").unwrap());
        assert!(conf.contains("frr defaults datacenter\n"));
        assert!(!conf.contains("router bgp"), "{conf}");
    }

    #[test]
    fn exit_announces_default_and_api_link() {
        let plan = Plan::new(&Topology::default());
        let conf = bgpd_conf(plan.node("exit").unwrap());
        assert!(conf.contains("  network 10.254.0.0/30\n"));
        assert!(conf.contains("default-originate"));
    }

    #[test]
    fn daemons_live_under_the_run_dir() {
        let plan = Plan::new(&Topology::default());
        let run = RunDir::new("/run/x");
        let specs = daemons(plan.node("spine1").unwrap(), &run);
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].namespace, "mm-spine1");
        assert!(
            specs[1]
                .argv
                .contains(&"/run/x/nodes/spine1/frr/bgpd.conf".to_string())
        );
    }
}
