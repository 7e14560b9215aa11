//! `metalmesh-testbed`: a whole virtual data center on one Linux host.
//!
//! Spines, leaves, an exit router and an API node live in network namespaces
//! named `mm-<node>`, cabled with veth pairs; routers run FRR with BGP
//! unnumbered; machines are namespaces or qemu VMs that PXE-boot from their
//! leaf's provisioning bridge. The same library drives the CLI, `scripts/demo`,
//! the integration tests and the benchmarks.
//!
//! ```no_run
//! use metalmesh_testbed::{Testbed, Topology, Overrides, Quiet};
//! let topology = Topology::load(None, &Overrides { racks: Some(2), ..Default::default() })?;
//! let testbed = Testbed::up("/run/metalmesh-testbed", &topology, &mut Quiet)?;
//! testbed.wait_converged(std::time::Duration::from_secs(60), &mut Quiet)?;
//! Testbed::down("/run/metalmesh-testbed", &mut Quiet)?;
//! # Ok::<(), metalmesh_testbed::Error>(())
//! ```

mod agent;
pub mod api;
mod build;
mod daemon;
mod error;
mod frr;
pub mod issuer;
mod plan;
mod qemu;
mod state;
mod status;
mod sys;
pub mod testing;
mod topology;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use agent::{AGENT_BIN_ENV, METRICS_PORT as AGENT_METRICS_PORT};
pub use build::DownReport;
pub use daemon::DaemonSpec;
pub use error::Error;
pub use nix::sys::signal::Signal;
pub use plan::{Machine, MachineKind, Node, Plan, Role, RunDir};
pub use status::{BgpSession, MachineStatus, NodeStatus, Status};
pub use topology::{LeafBgp, Overrides, Topology, TopologyError};

use state::State;

/// Default run directory: state, configs, sockets, logs and disks.
pub const DEFAULT_RUN_DIR: &str = "/run/metalmesh-testbed";

/// Receives human-readable progress lines while the testbed works.
pub trait Progress {
    fn step(&mut self, message: &str);
}

/// Discards progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Progress for Quiet {
    fn step(&mut self, _message: &str) {}
}

/// A testbed that is up.
#[derive(Debug)]
pub struct Testbed {
    run: RunDir,
    state: State,
}

impl Testbed {
    /// Builds the data center. Fails, leaving nothing behind, if a testbed is
    /// already up or any step fails.
    pub fn up(
        run_dir: impl Into<PathBuf>,
        topology: &Topology,
        progress: &mut dyn Progress,
    ) -> Result<Testbed, Error> {
        build::up(RunDir::new(run_dir), topology, progress)
    }

    /// Opens the testbed that is up in `run_dir`.
    pub fn open(run_dir: impl Into<PathBuf>) -> Result<Testbed, Error> {
        let run = RunDir::new(run_dir);
        match State::load(&run.state_file())? {
            Some(state) => Ok(Testbed { run, state }),
            None => Err(Error::NotUp {
                run_dir: run.root.clone(),
            }),
        }
    }

    /// Removes everything any testbed created. Succeeds when nothing is up.
    pub fn down(
        run_dir: impl Into<PathBuf>,
        progress: &mut dyn Progress,
    ) -> Result<DownReport, Error> {
        build::down(&RunDir::new(run_dir), progress)
    }

    /// Waits until every BGP session of the fabric is Established.
    pub fn wait_converged(
        &self,
        timeout: Duration,
        progress: &mut dyn Progress,
    ) -> Result<(), Error> {
        build::wait_converged(self, timeout, progress)
    }

    pub fn plan(&self) -> &Plan {
        &self.state.plan
    }

    pub fn run_dir(&self) -> &Path {
        self.run.path()
    }

    /// Every daemon's `/metrics`: `(node, namespace, URL)` of each leaf's
    /// agent and, with `api`, the API node's (reached inside the namespace).
    pub fn metrics_endpoints(&self) -> Vec<(String, String, String)> {
        let plan = &self.state.plan;
        let mut endpoints = Vec::new();
        for node in &plan.nodes {
            let url = match node.role {
                Role::Leaf => format!("http://{}:{}/metrics", node.loopback, agent::METRICS_PORT),
                Role::Api if plan.topology.api => {
                    format!("http://127.0.0.1:{}/metrics", api::API_METRICS_PORT)
                }
                _ => continue,
            };
            endpoints.push((node.name.clone(), node.namespace(), url));
        }
        endpoints
    }

    /// Daemons of a node or machine, in start order.
    pub fn daemons_of(&self, name: &str) -> &[DaemonSpec] {
        self.state.daemons.get(name).map_or(&[], Vec::as_slice)
    }

    /// Namespace of a node or a namespace machine.
    pub fn namespace_of(&self, name: &str) -> Result<String, Error> {
        if let Some(node) = self.state.plan.node(name) {
            return Ok(node.namespace());
        }
        if let Some(machine) = self.state.plan.machine(name) {
            if machine.kind == MachineKind::Netns {
                return Ok(plan::namespace_of(&machine.name));
            }
            return Err(Error::Unsupported {
                what: format!(
                    "`{name}` is a qemu machine: it has no namespace; use `metalmesh-testbed console {name}`"
                ),
            });
        }
        Err(self.unknown_node(name))
    }

    fn unknown_node(&self, name: &str) -> Error {
        let plan = &self.state.plan;
        let known: Vec<&str> = plan
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .chain(
                plan.machines
                    .iter()
                    .filter(|m| m.kind == MachineKind::Netns)
                    .map(|m| m.name.as_str()),
            )
            .collect();
        Error::UnknownNode {
            name: name.to_string(),
            known: known.join(", "),
        }
    }

    /// A command that runs `argv` inside a node's namespace, with the
    /// environment the node's tools expect (`vtysh` finds the node's FRR).
    pub fn exec_command(&self, name: &str, argv: &[String]) -> Result<Command, Error> {
        let namespace = self.namespace_of(name)?;
        let Some((program, args)) = argv.split_first() else {
            return Err(Error::Unsupported {
                what: "exec needs a command: metalmesh-testbed exec NODE -- CMD [ARGS...]".into(),
            });
        };
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &namespace, program]);
        if program == frr::VTYSH && self.daemons_of(name).iter().any(|d| d.name == "bgpd") {
            command.arg("--vty_socket").arg(self.run.frr_dir(name));
        }
        command
            .args(args)
            .env("METALMESH_TESTBED_DIR", self.run.path())
            .env("METALMESH_NODE", name);
        // The leaf's agent CLI finds its own agent.
        if self.daemons_of(name).iter().any(|d| d.name == "agent") {
            command.env("METALMESH_AGENT_SOCKET", agent::socket(&self.run, name));
        }
        Ok(command)
    }

    /// Admin socket of a leaf's agent.
    pub fn agent_socket(&self, leaf: &str) -> PathBuf {
        agent::socket(&self.run, leaf)
    }

    /// Runs a vtysh command on a node's FRR and returns its output.
    pub fn vtysh(&self, node: &str, command: &str) -> Result<String, Error> {
        let dir = self.run.frr_dir(node);
        let dir = dir.display().to_string();
        sys::run(frr::VTYSH, &["--vty_socket", &dir, "-c", command])
    }

    /// Stops a node's (or qemu machine's) daemons with `signal`, or only
    /// the one named `daemon`.
    pub fn kill(&self, name: &str, daemon: Option<&str>, signal: Signal) -> Result<usize, Error> {
        let daemons = self.daemons_for_control(name, daemon)?;
        let mut stopped = 0;
        for daemon in daemons.iter().rev() {
            if daemon.running_pid().is_some() {
                daemon.stop(signal)?;
                stopped += 1;
            }
        }
        Ok(stopped)
    }

    /// Starts a node's (or qemu machine's) daemons again with the same
    /// configuration and state.
    pub fn start(&self, name: &str, daemon: Option<&str>) -> Result<usize, Error> {
        let daemons = self.daemons_for_control(name, daemon)?;
        let mut started = 0;
        for daemon in daemons {
            if daemon.running_pid().is_none() {
                daemon.start()?;
                started += 1;
            }
        }
        Ok(started)
    }

    fn daemons_for_control(
        &self,
        name: &str,
        only: Option<&str>,
    ) -> Result<Vec<&DaemonSpec>, Error> {
        let plan = &self.state.plan;
        if plan.node(name).is_none() && plan.machine(name).is_none() {
            return Err(self.unknown_node(name));
        }
        let all = self.daemons_of(name);
        if all.is_empty() {
            return Err(Error::Unsupported {
                what: format!("`{name}` runs no daemons"),
            });
        }
        let daemons: Vec<&DaemonSpec> = all
            .iter()
            .filter(|d| only.is_none_or(|o| d.name == o))
            .collect();
        if daemons.is_empty() {
            let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
            return Err(Error::Unsupported {
                what: format!(
                    "`{name}` runs no daemon `{}`; it runs: {}",
                    only.unwrap_or_default(),
                    names.join(", ")
                ),
            });
        }
        Ok(daemons)
    }

    /// A qemu machine's console: its log file and interactive socket.
    pub fn console(&self, machine: &str) -> Result<(PathBuf, PathBuf), Error> {
        let plan = &self.state.plan;
        match plan.machine(machine) {
            Some(m) if m.kind == MachineKind::Vm => Ok((
                self.run.console_log(machine),
                self.run.console_socket(machine),
            )),
            Some(_) => Err(Error::Unsupported {
                what: format!(
                    "`{machine}` is a namespace machine without a serial console; use `metalmesh-testbed exec {machine} -- sh`"
                ),
            }),
            None => Err(Error::UnknownMachine {
                name: machine.to_string(),
                known: plan
                    .machines
                    .iter()
                    .filter(|m| m.kind == MachineKind::Vm)
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}
