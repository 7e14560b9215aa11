//! `status`: what is running and how the fabric's BGP sessions stand, read
//! live from the daemons (FRR's own JSON), as a table or as JSON.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use metalmesh_bin_support::render_table;
use serde::{Deserialize, Serialize};

use crate::Testbed;
use crate::plan::{MachineKind, Role};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub run_dir: String,
    pub nodes: Vec<NodeStatus>,
    pub machines: Vec<MachineStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: Role,
    pub namespace: String,
    pub loopback: Ipv4Addr,
    pub asn: Option<u32>,
    pub rack: Option<u32>,
    pub daemons: Vec<DaemonStatus>,
    pub bgp: Vec<BgpSession>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub name: String,
    pub pid: Option<i32>,
    pub running: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpSession {
    /// The peer: for unnumbered sessions, the local interface it runs on.
    pub peer: String,
    /// FRR's session state (`Established`, `Active`, `Connect`, …), or `Down`
    /// when the node's BGP daemon does not answer.
    pub state: String,
    /// Peer's ASN once known.
    pub remote_as: Option<u32>,
    /// Prefixes received from the peer.
    pub prefixes_received: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineStatus {
    pub name: String,
    pub rack: u32,
    pub kind: MachineKind,
    pub mac: String,
    pub uuid: String,
    pub leaf: String,
    pub switch_port: String,
    pub namespace: Option<String>,
    pub console_log: Option<String>,
    pub running: bool,
}

impl Status {
    /// (Established, expected) over every session of every node.
    pub fn bgp_counts(&self) -> (usize, usize) {
        let sessions = self.nodes.iter().flat_map(|n| &n.bgp);
        let total = sessions.clone().count();
        let up = sessions.filter(|s| s.state == "Established").count();
        (up, total)
    }

    pub fn node(&self, name: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mut rows = vec![vec![
            "NODE".to_string(),
            "ROLE".into(),
            "LOOPBACK".into(),
            "ASN".into(),
            "DAEMONS".into(),
            "BGP".into(),
        ]];
        for node in &self.nodes {
            let daemons = node
                .daemons
                .iter()
                .map(|d| format!("{}{}", d.name, if d.running { "" } else { "(down)" }))
                .collect::<Vec<_>>()
                .join(",");
            let bgp = node
                .bgp
                .iter()
                .map(|s| format!("{}={}", s.peer, s.state))
                .collect::<Vec<_>>()
                .join(" ");
            rows.push(vec![
                node.name.clone(),
                node.role.to_string(),
                node.loopback.to_string(),
                node.asn
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into()),
                if daemons.is_empty() {
                    "-".into()
                } else {
                    daemons
                },
                bgp,
            ]);
        }
        out.push_str(&render_table(rows));
        if !self.machines.is_empty() {
            out.push('\n');
            let mut rows = vec![vec![
                "MACHINE".to_string(),
                "RACK".into(),
                "KIND".into(),
                "MAC".into(),
                "PORT".into(),
                "RUNNING".into(),
            ]];
            for m in &self.machines {
                rows.push(vec![
                    m.name.clone(),
                    m.rack.to_string(),
                    m.kind.to_string(),
                    m.mac.clone(),
                    format!("{}:{}", m.leaf, m.switch_port),
                    if m.running { "yes" } else { "no" }.into(),
                ]);
            }
            out.push_str(&render_table(rows));
        }
        let (up, total) = self.bgp_counts();
        let _ = writeln!(out, "\nBGP sessions Established: {up}/{total}");
        out
    }
}

/// Sessions as FRR reports them in `show bgp summary json`.
pub(crate) fn parse_frr_summary(json: &str) -> Option<Vec<BgpSession>> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let peers = value.get("ipv4Unicast")?.get("peers")?.as_object()?;
    Some(
        peers
            .iter()
            .map(|(peer, info)| BgpSession {
                peer: peer.clone(),
                state: info
                    .get("state")
                    .and_then(|s| s.as_str())
                    .unwrap_or("Unknown")
                    .to_string(),
                remote_as: info
                    .get("remoteAs")
                    .and_then(|a| a.as_u64())
                    .and_then(|a| u32::try_from(a).ok()),
                prefixes_received: info.get("pfxRcd").and_then(|p| p.as_u64()),
            })
            .collect(),
    )
}

/// Sessions as a native leaf's agent reports them (`bgp neighbors -o json`).
pub(crate) fn parse_agent_neighbors(json: &str) -> Option<Vec<BgpSession>> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let peers = value.as_array()?;
    Some(
        peers
            .iter()
            .map(|peer| BgpSession {
                peer: peer["remote"]["interface"]
                    .as_str()
                    .or_else(|| peer["remote"]["address"].as_str())
                    .unwrap_or_default()
                    .to_string(),
                state: peer["state"].as_str().unwrap_or("Unknown").to_string(),
                remote_as: peer["remote_as"]
                    .as_u64()
                    .and_then(|a| u32::try_from(a).ok()),
                prefixes_received: peer["received"].as_array().map(|families| {
                    families
                        .iter()
                        .filter_map(|f| f.get(1).and_then(serde_json::Value::as_u64))
                        .sum()
                }),
            })
            .collect(),
    )
}

impl Testbed {
    fn agent_bgp_sessions(&self, leaf: &str) -> Option<Vec<BgpSession>> {
        let binary = crate::agent::binary().ok()?;
        let socket = crate::agent::socket(&self.run, leaf);
        let output = std::process::Command::new(binary)
            .arg("--socket")
            .arg(&socket)
            .args(["bgp", "neighbors", "-o", "json"])
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        parse_agent_neighbors(&String::from_utf8_lossy(&output.stdout))
    }

    /// Reads the live status of every node and machine.
    pub fn status(&self) -> Status {
        let plan = &self.state.plan;
        let mut nodes = Vec::new();
        for node in &plan.nodes {
            let daemons: Vec<DaemonStatus> = self
                .daemons_of(&node.name)
                .iter()
                .map(|d| {
                    let pid = d.running_pid();
                    DaemonStatus {
                        name: d.name.clone(),
                        pid,
                        running: pid.is_some(),
                    }
                })
                .collect();
            let bgpd_running = daemons.iter().any(|d| d.name == "bgpd" && d.running);
            let native = node.leaf_bgp == Some(crate::topology::LeafBgp::Native);
            let agent_running = daemons.iter().any(|d| d.name == "agent" && d.running);
            let live = if bgpd_running {
                self.vtysh(&node.name, "show bgp summary json")
                    .ok()
                    .and_then(|json| parse_frr_summary(&json))
            } else if native && agent_running {
                self.agent_bgp_sessions(&node.name)
            } else {
                None
            };
            // Every configured session is listed, live or not, so a dead
            // daemon shows up as sessions Down rather than as no sessions.
            let bgp = node
                .bgp_interfaces
                .iter()
                .filter(|_| node.runs_frr() || native)
                .map(|interface| {
                    live.as_ref()
                        .and_then(|sessions| sessions.iter().find(|s| &s.peer == interface))
                        .cloned()
                        .unwrap_or_else(|| BgpSession {
                            peer: interface.clone(),
                            state: "Down".into(),
                            remote_as: None,
                            prefixes_received: None,
                        })
                })
                .collect();
            nodes.push(NodeStatus {
                name: node.name.clone(),
                role: node.role,
                namespace: node.namespace(),
                loopback: node.loopback,
                asn: node.asn,
                rack: node.rack,
                daemons,
                bgp,
            });
        }
        let namespaces = crate::sys::list_netns().unwrap_or_default();
        let machines = plan
            .machines
            .iter()
            .map(|m| {
                let (namespace, console_log, running) = match m.kind {
                    MachineKind::Netns => {
                        let ns = crate::plan::namespace_of(&m.name);
                        let running = namespaces.contains(&ns);
                        (Some(ns), None, running)
                    }
                    MachineKind::Vm => (
                        None,
                        Some(self.run.console_log(&m.name).display().to_string()),
                        self.daemons_of(&m.name)
                            .iter()
                            .any(|d| d.running_pid().is_some()),
                    ),
                };
                MachineStatus {
                    name: m.name.clone(),
                    rack: m.rack,
                    kind: m.kind,
                    mac: m.mac.clone(),
                    uuid: m.uuid.clone(),
                    leaf: m.leaf.clone(),
                    switch_port: m.switch_port.clone(),
                    namespace,
                    console_log,
                    running,
                }
            })
            .collect();
        Status {
            run_dir: self.run.root.display().to_string(),
            nodes,
            machines,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frr_unnumbered_summary() {
        let json = r#"{"ipv4Unicast":{"routerId":"10.255.0.1","as":4200000001,
            "peers":{"spine1":{"remoteAs":4210000000,"state":"Established","pfxRcd":3},
                     "spine2":{"state":"Active"}}}}"#;
        let sessions = parse_frr_summary(json).unwrap();
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[0].peer, "spine1");
        assert_eq!(sessions[0].state, "Established");
        assert_eq!(sessions[0].remote_as, Some(4_210_000_000));
        assert_eq!(sessions[1].state, "Active");
        assert!(parse_frr_summary("{}").is_none());
        assert!(parse_frr_summary("not json").is_none());
    }
}
