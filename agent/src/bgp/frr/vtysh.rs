//! Talking to the switch's FRR through `vtysh`: its running configuration,
//! configuration commands (whose refusals `vtysh` reports as `%` lines,
//! sometimes with exit status 0) and the BGP summary.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use metalmesh_bgp::Family;
use metalmesh_bgp::session::{SessionStats, State};
use metalmesh_bgp::speaker::{PeerView, Remote};

use super::running::Config;

/// Longest a single `vtysh` call may take (a wedged FRR must not wedge the
/// agent's BGP task).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum FrrError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("vtysh did not answer within {0:?}")]
    Timeout(Duration),
    #[error("FRR is not running (vtysh: {0})")]
    NotRunning(String),
    #[error("FRR refused `{command}`: {message}")]
    Refused { command: String, message: String },
    #[error("vtysh failed ({status}): {output}")]
    Failed { status: String, output: String },
    #[error("FRR's answer to `{command}` is not what was expected: {reason}")]
    Unexpected { command: String, reason: String },
}

/// How to reach FRR: the `vtysh` program and, where FRR's daemons were
/// started with `--vty_socket`, that directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vtysh {
    pub program: PathBuf,
    pub vty_socket: Option<PathBuf>,
}

impl Vtysh {
    async fn run(&self, commands: &[String]) -> Result<String, FrrError> {
        let mut command = tokio::process::Command::new(&self.program);
        if let Some(dir) = &self.vty_socket {
            command.arg("--vty_socket").arg(dir);
        }
        for c in commands {
            command.arg("-c").arg(c);
        }
        command
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        let output = tokio::time::timeout(CALL_TIMEOUT, command.output())
            .await
            .map_err(|_| FrrError::Timeout(CALL_TIMEOUT))?
            .map_err(|source| FrrError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let all = format!("{stdout}{stderr}");
        if all.contains("failed to connect to any daemons") || all.contains("is not running") {
            let line = all
                .lines()
                .find(|l| l.contains("failed to connect") || l.contains("is not running"))
                .unwrap_or_default();
            return Err(FrrError::NotRunning(line.trim().to_string()));
        }
        if let Some(refusal) = refusal(commands, &all) {
            return Err(refusal);
        }
        if !output.status.success() {
            return Err(FrrError::Failed {
                status: output.status.to_string(),
                output: all.trim().to_string(),
            });
        }
        Ok(stdout)
    }

    pub async fn running_config(&self) -> Result<Config, FrrError> {
        let text = self.run(&["show running-config".to_string()]).await?;
        if !text.contains("Current configuration") && !text.contains("frr version") {
            return Err(FrrError::Unexpected {
                command: "show running-config".into(),
                reason: "no configuration in the answer".into(),
            });
        }
        Ok(Config::parse(&text))
    }

    /// bgpd's `frr defaults` profile (`show running-config` prints each
    /// daemon's, and they may differ).
    pub async fn bgpd_profile(&self) -> Result<Option<String>, FrrError> {
        let text = self.run(&["show running-config bgpd".to_string()]).await?;
        // Without bgpd, vtysh prints only its own lines (no `frr version`).
        if !text.contains("frr version") {
            return Err(FrrError::NotRunning("bgpd does not answer".into()));
        }
        Ok(Config::parse(&text).defaults_profile().map(str::to_string))
    }

    /// Runs configuration commands; the first refusal is an error.
    pub async fn configure(&self, commands: &[String]) -> Result<(), FrrError> {
        self.run(commands).await.map(|_| ())
    }

    /// The sessions of the default VRF, as the native speaker reports its own.
    pub async fn sessions(&self) -> Result<Vec<PeerView>, FrrError> {
        let command = "show bgp summary json".to_string();
        let text = self.run(std::slice::from_ref(&command)).await?;
        parse_summary(&text).map_err(|reason| FrrError::Unexpected { command, reason })
    }
}

/// The first `%` line of `output`, with the command it most likely answers
/// (vtysh does not say; its `%` lines come in command order).
fn refusal(commands: &[String], output: &str) -> Option<FrrError> {
    // vtysh warns in the same form when its own vtysh.conf is missing,
    // and goes on: that is not FRR refusing anything.
    let message = output.lines().find(|l| {
        let line = l.trim_start();
        line.starts_with('%') && !line.starts_with("% Can't open configuration file")
    })?;
    // Configuration commands other than entering/leaving contexts.
    let command = commands
        .iter()
        .find(|c| {
            !matches!(c.as_str(), "configure terminal" | "end")
                && !c.starts_with("exit")
                && !c.starts_with("show ")
        })
        .or(commands.first())
        .cloned()
        .unwrap_or_default();
    Some(FrrError::Refused {
        command,
        message: message.trim().to_string(),
    })
}

/// `show bgp summary json`: its address families' peers, merged per peer.
pub fn parse_summary(text: &str) -> Result<Vec<PeerView>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let mut peers: Vec<PeerView> = Vec::new();
    for (key, family) in [
        ("ipv4Unicast", Family::Ipv4Unicast),
        ("ipv6Unicast", Family::Ipv6Unicast),
        ("l2VpnEvpn", Family::L2vpnEvpn),
    ] {
        let Some(entries) = object
            .get(key)
            .and_then(|f| f.get("peers"))
            .and_then(|p| p.as_object())
        else {
            continue;
        };
        for (name, info) in entries {
            let remote = match name.parse::<IpAddr>() {
                Ok(address) => Remote::Address(address),
                Err(_) => Remote::Interface(name.clone()),
            };
            let index = match peers.iter().position(|p| p.remote == remote) {
                Some(index) => index,
                None => {
                    peers.push(PeerView {
                        id: metalmesh_bgp::PeerId(peers.len() as u32),
                        remote,
                        state: State::Idle,
                        remote_as: None,
                        remote_id: None,
                        remote_address: None,
                        local_address: None,
                        established_secs: None,
                        families: Vec::new(),
                        received: Vec::new(),
                        advertised: 0,
                        negotiated: None,
                        stats: SessionStats::default(),
                    });
                    peers.len() - 1
                }
            };
            let peer = &mut peers[index];
            peer.state = match info.get("state").and_then(|s| s.as_str()) {
                Some("Established") => State::Established,
                Some("Connect") => State::Connect,
                Some("Active") => State::Active,
                Some("OpenSent") => State::OpenSent,
                Some("OpenConfirm") => State::OpenConfirm,
                _ => State::Idle,
            };
            peer.remote_as = info
                .get("remoteAs")
                .and_then(|a| a.as_u64())
                .and_then(|a| u32::try_from(a).ok());
            peer.established_secs = (peer.state == State::Established)
                .then(|| info.get("peerUptimeMsec").and_then(|m| m.as_u64()))
                .flatten()
                .map(|ms| ms / 1000);
            peer.stats.messages_in = info.get("msgRcvd").and_then(|m| m.as_u64()).unwrap_or(0);
            peer.stats.messages_out = info.get("msgSent").and_then(|m| m.as_u64()).unwrap_or(0);
            peer.families.push(family);
            let received = info.get("pfxRcd").and_then(|p| p.as_u64()).unwrap_or(0);
            peer.received.push((family, received as usize));
            peer.advertised += info.get("pfxSnt").and_then(|p| p.as_u64()).unwrap_or(0) as usize;
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_merges_families_per_peer() {
        let json = r#"{
          "ipv4Unicast": {"routerId": "10.255.0.3", "as": 4200000003, "peers": {
            "spine1": {"remoteAs": 4200000000, "state": "Established", "peerUptimeMsec": 12500, "pfxRcd": 5, "pfxSnt": 2, "msgRcvd": 40, "msgSent": 41},
            "spine2": {"remoteAs": 4200000000, "state": "Active", "pfxRcd": 0}
          }},
          "l2VpnEvpn": {"peers": {
            "spine1": {"remoteAs": 4200000000, "state": "Established", "peerUptimeMsec": 12500, "pfxRcd": 3, "pfxSnt": 1}
          }}
        }"#;
        let peers = parse_summary(json).unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].remote, Remote::Interface("spine1".into()));
        assert_eq!(peers[0].state, State::Established);
        assert_eq!(peers[0].established_secs, Some(12));
        assert_eq!(
            peers[0].received,
            vec![(Family::Ipv4Unicast, 5), (Family::L2vpnEvpn, 3)]
        );
        assert_eq!(peers[0].advertised, 3);
        assert_eq!(peers[1].state, State::Active);
        assert_eq!(peers[1].established_secs, None);
        assert!(parse_summary("garbage").is_err());
        assert!(parse_summary("{}").unwrap().is_empty());
    }

    #[test]
    fn a_percent_line_is_a_refusal_even_with_status_zero() {
        let commands = vec![
            "configure terminal".to_string(),
            "router bgp 1".to_string(),
            "end".to_string(),
        ];
        let error = refusal(&commands, "% Malformed Route Target list\n").unwrap();
        assert!(error.to_string().contains("Malformed"), "{error}");
        assert!(refusal(&commands, "fine\n").is_none());
        let warning = "% Can't open configuration file /etc/frr/vtysh.conf due to 'No such file or directory'.\n";
        assert!(refusal(&commands, warning).is_none());
    }
}
