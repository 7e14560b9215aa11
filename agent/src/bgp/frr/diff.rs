//! The smallest set of line edits that turns FRR's running configuration
//! into the wanted one, touching only the lines the agent owns, and the
//! `vtysh` commands that make them. Nothing is ever rewritten whole: a
//! machine or a VRF added or removed is one `network` line, one instance,
//! one `vni` line, so no session is reset and no other route moves.

use std::fmt;

use super::intent::FrrIntent;
use super::running::{Config, Line};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Remove,
}

/// One line added or removed inside the contexts `path` (outermost first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub op: Op,
    pub path: Vec<String>,
    pub line: String,
}

impl fmt::Display for Edit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.op {
            Op::Add => '+',
            Op::Remove => '-',
        };
        write!(f, "{sign} ")?;
        for context in &self.path {
            write!(f, "{context} / ")?;
        }
        write!(f, "{}", self.line)
    }
}

/// The edits from `running` to `desired`: removals (innermost and last
/// lines first, a VRF's `vni` before its instance), then additions in the
/// desired order.
pub fn edits(intent: &FrrIntent, desired: &Config, running: &Config) -> Vec<Edit> {
    let mut removals = Vec::new();
    let mut whole = Vec::new();
    for line in running.lines.iter().rev() {
        match desired.top(&line.text) {
            None if intent.owns_context(&line.text) => whole.push(Edit {
                op: Op::Remove,
                path: Vec::new(),
                line: line.text.clone(),
            }),
            None if line.text.starts_with("vrf ") => remove_owned(
                intent,
                &mut vec![line.text.as_str()],
                line,
                None,
                &mut removals,
            ),
            None => {}
            Some(wanted) => remove_owned(
                intent,
                &mut vec![line.text.as_str()],
                line,
                Some(wanted),
                &mut removals,
            ),
        }
    }
    // A VRF's VNI goes before its BGP instance (FRR refuses the other order
    // while the L3VNI is configured).
    removals.sort_by_key(|e| !e.path.first().is_some_and(|p| p.starts_with("vrf ")));
    removals.extend(whole);
    let mut additions = Vec::new();
    for line in &desired.lines {
        add_missing(
            &mut vec![line.text.as_str()],
            line,
            running.top(&line.text),
            &mut additions,
        );
    }
    removals.extend(additions);
    removals
}

/// Owned lines of `have` (at `path`) that `wanted` lacks, children first.
fn remove_owned<'a>(
    intent: &FrrIntent,
    path: &mut Vec<&'a str>,
    have: &'a Line,
    wanted: Option<&Line>,
    out: &mut Vec<Edit>,
) {
    for child in have.children.iter().rev() {
        let wanted_child = wanted.and_then(|w| w.child(&child.text));
        if child.children.is_empty() {
            if wanted_child.is_none() && intent.owns_line(path, &child.text) {
                out.push(Edit {
                    op: Op::Remove,
                    path: path.iter().map(|s| s.to_string()).collect(),
                    line: child.text.clone(),
                });
            }
        } else {
            path.push(child.text.as_str());
            remove_owned(intent, path, child, wanted_child, out);
            path.pop();
        }
    }
}

/// Lines of `wanted` (at `path`) that `have` lacks, in order.
fn add_missing<'a>(
    path: &mut Vec<&'a str>,
    wanted: &'a Line,
    have: Option<&Line>,
    out: &mut Vec<Edit>,
) {
    for child in &wanted.children {
        let have_child = have.and_then(|h| h.child(&child.text));
        if child.children.is_empty() {
            if have_child.is_none() {
                out.push(Edit {
                    op: Op::Add,
                    path: path.iter().map(|s| s.to_string()).collect(),
                    line: child.text.clone(),
                });
            }
        } else {
            path.push(child.text.as_str());
            add_missing(path, child, have_child, out);
            path.pop();
        }
    }
}

/// The command that leaves the context `context`.
fn exit_of(context: &str) -> &'static str {
    if context.starts_with("address-family ") {
        "exit-address-family"
    } else if context.starts_with("vrf ") {
        "exit-vrf"
    } else {
        "exit"
    }
}

/// The negation of a configuration line.
fn negated(line: &str) -> String {
    match line.strip_prefix("no ") {
        Some(positive) => positive.to_string(),
        None => format!("no {line}"),
    }
}

/// `vtysh -c` commands applying `edits`: into configuration mode, each
/// edit inside its contexts (shared with the edit before where they agree),
/// and out again.
pub fn commands(edits: &[Edit]) -> Vec<String> {
    let mut out = vec!["configure terminal".to_string()];
    let mut open: Vec<&str> = Vec::new();
    for edit in edits {
        let common = open
            .iter()
            .zip(&edit.path)
            .take_while(|(a, b)| **a == b.as_str())
            .count();
        while open.len() > common {
            if let Some(context) = open.pop() {
                out.push(exit_of(context).to_string());
            }
        }
        for context in &edit.path[common..] {
            out.push(context.clone());
            open.push(context.as_str());
        }
        out.push(match edit.op {
            Op::Add => edit.line.clone(),
            Op::Remove => negated(&edit.line),
        });
    }
    while let Some(context) = open.pop() {
        out.push(exit_of(context).to_string());
    }
    out.push("end".to_string());
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::bgp::frr::intent::Tenant;

    fn intent() -> FrrIntent {
        FrrIntent {
            asn: 4_200_000_003,
            router_id: Ipv4Addr::new(10, 255, 0, 3),
            fabric_ports: vec!["spine1".into()],
            hold_time_secs: 3,
            tenants: Vec::new(),
        }
    }

    /// What FRR would print for `config` (plus operator lines).
    fn printed(config: &Config, extra: &str) -> Config {
        let mut text = String::from("frr defaults datacenter\n!\n");
        fn write(line: &Line, depth: usize, text: &mut String) {
            text.push_str(&" ".repeat(depth));
            text.push_str(&line.text);
            text.push('\n');
            for child in &line.children {
                write(child, depth + 1, text);
            }
        }
        for line in &config.lines {
            write(line, 0, &mut text);
            text.push_str("exit\n!\n");
        }
        text.push_str(extra);
        Config::parse(&text)
    }

    #[test]
    fn an_empty_frr_gets_everything_and_a_synced_one_nothing() {
        let intent = intent();
        let desired = intent.desired(Some("datacenter"));
        let all = edits(
            &intent,
            &desired,
            &Config::parse("frr defaults datacenter\n"),
        );
        assert!(all.iter().all(|e| e.op == Op::Add));
        assert_eq!(all.len(), 8, "{all:#?}");
        assert!(edits(&intent, &desired, &printed(&desired, "")).is_empty());
    }

    #[test]
    fn a_machine_added_or_removed_is_one_line() {
        let mut intent = intent();
        intent.tenants = vec![Tenant {
            vni: 100,
            addresses: vec![Ipv4Addr::new(10, 0, 1, 11)],
        }];
        let before = printed(&intent.desired(Some("datacenter")), "");
        intent.tenants[0]
            .addresses
            .push(Ipv4Addr::new(10, 0, 1, 12));
        let desired = intent.desired(Some("datacenter"));
        let added = edits(&intent, &desired, &before);
        assert_eq!(
            added.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            [
                "+ router bgp 4200000003 vrf mm-vrf100 / address-family ipv4 unicast / network 10.0.1.12/32"
            ]
        );
        assert_eq!(
            commands(&added),
            [
                "configure terminal",
                "router bgp 4200000003 vrf mm-vrf100",
                "address-family ipv4 unicast",
                "network 10.0.1.12/32",
                "exit-address-family",
                "exit",
                "end"
            ]
        );
        let after = printed(&desired, "");
        intent.tenants[0].addresses.remove(0);
        let removed = edits(&intent, &intent.desired(Some("datacenter")), &after);
        assert_eq!(
            removed.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            [
                "- router bgp 4200000003 vrf mm-vrf100 / address-family ipv4 unicast / network 10.0.1.11/32"
            ]
        );
        assert!(commands(&removed).contains(&"no network 10.0.1.11/32".to_string()));
    }

    #[test]
    fn a_tenant_removed_loses_its_vni_then_its_instance_and_nothing_else() {
        let mut intent = intent();
        intent.tenants = vec![
            Tenant {
                vni: 100,
                addresses: vec![Ipv4Addr::new(10, 0, 1, 11)],
            },
            Tenant {
                vni: 200,
                addresses: Vec::new(),
            },
        ];
        let operator = "router bgp 4200000003 vrf mgmt\n bgp router-id 1.1.1.1\nexit\nvrf blue\n vni 9\nexit-vrf\n";
        let before = printed(&intent.desired(Some("datacenter")), operator);
        intent.tenants.remove(0);
        let removed = edits(&intent, &intent.desired(Some("datacenter")), &before);
        assert_eq!(
            removed.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            [
                "- vrf mm-vrf100 / vni 100",
                "- router bgp 4200000003 vrf mm-vrf100"
            ]
        );
        assert_eq!(
            commands(&removed),
            [
                "configure terminal",
                "vrf mm-vrf100",
                "no vni 100",
                "exit-vrf",
                "no router bgp 4200000003 vrf mm-vrf100",
                "end"
            ]
        );
    }

    #[test]
    fn stale_fabric_ports_go_and_operator_neighbours_stay() {
        let intent = intent();
        let desired = intent.desired(Some("datacenter"));
        let mut running = printed(&desired, "");
        let router = running
            .lines
            .iter_mut()
            .find(|l| l.text == "router bgp 4200000003")
            .unwrap();
        router.children.insert(
            4,
            Line::leaf("neighbor oldport interface peer-group mm-fabric"),
        );
        router
            .children
            .insert(0, Line::leaf("neighbor 192.0.2.1 remote-as 65000"));
        let edits = edits(&intent, &desired, &running);
        assert_eq!(
            edits.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            ["- router bgp 4200000003 / neighbor oldport interface peer-group mm-fabric"]
        );
        assert_eq!(
            negated("no bgp ebgp-requires-policy"),
            "bgp ebgp-requires-policy"
        );
    }
}
