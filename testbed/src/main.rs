//! The `metalmesh-testbed` command line: a thin layer over the library.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use metalmesh_bin_support::OutputFormat;
use metalmesh_testbed::{Overrides, Progress, Signal, Testbed, Topology};

#[derive(Debug, Parser)]
#[command(
    name = "metalmesh-testbed",
    version,
    about = "A virtual metalmesh data center in network namespaces and qemu"
)]
struct Cli {
    /// Directory holding the testbed's state, configs, sockets, logs and disks.
    #[arg(long, global = true, env = "METALMESH_TESTBED_DIR", default_value = metalmesh_testbed::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    #[command(flatten)]
    log: metalmesh_bin_support::LogArgs,
    #[command(subcommand)]
    command: Command,
}

/// Who a token or a login approval is for.
#[derive(Debug, clap::Args)]
struct Who {
    #[arg(long)]
    subject: String,
    /// admin, edit or view.
    #[arg(long)]
    role: String,
    /// A project the subject is a member of (repeatable).
    #[arg(long = "project")]
    projects: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the data center and wait for the fabric to converge.
    Up {
        /// Number of racks (one leaf each).
        #[arg(long)]
        racks: Option<u32>,
        /// Number of spines.
        #[arg(long)]
        spines: Option<u32>,
        /// Namespace machines per rack.
        #[arg(long)]
        machines_per_rack: Option<u32>,
        /// qemu machines per rack (real PXE firmware, TCG).
        #[arg(long)]
        vm_machines: Option<u32>,
        /// BGP on every leaf: `frr`, or `native` (the agent's own speaker).
        #[arg(long, value_enum)]
        bgp: Option<metalmesh_testbed::LeafBgp>,
        /// TOML topology file; flags given on the command line override it.
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Also run the API node and the development OIDC issuer in `mm-api`.
        #[arg(long)]
        api: bool,
        /// Also run Prometheus (Debian's package) in `mm-api`, scraping the
        /// API node and every agent; implies `--api`. Its web UI answers on
        /// http://10.254.1.2:9090 from this host.
        #[arg(long)]
        prometheus: bool,
        /// Return as soon as everything is started, without waiting for BGP.
        #[arg(long)]
        no_wait: bool,
        /// Seconds to wait for every BGP session to be Established.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Remove everything the testbed created. Succeeds when nothing is up.
    Down,
    /// A token of the testbed's development OIDC issuer, for the API.
    Token {
        #[command(flatten)]
        who: Who,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        lifetime: i64,
    },
    /// The `export` lines that point the `metalmesh` CLI (on this host) at
    /// the testbed's API, and the OS image to define in it.
    Env,
    /// Approve a pending `metalmesh login --device` by its user code, as
    /// the testbed issuer's login page would.
    Approve {
        user_code: String,
        #[command(flatten)]
        who: Who,
    },
    /// Serve the development OIDC issuer (run by `up --api` in `mm-api`).
    #[command(hide = true)]
    Issuer {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        pidfile: PathBuf,
    },
    /// Show nodes, daemons, BGP sessions and machines.
    Status {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Run a command inside a node's (or namespace machine's) namespace.
    Exec {
        /// Node name without the `mm-` prefix: spine1, leaf1, exit, api, m1-1, …
        node: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Attach to a qemu machine's serial console (or print its log with --log).
    Console {
        machine: String,
        /// Print the console log and exit instead of attaching.
        #[arg(long)]
        log: bool,
    },
    /// Stop a node's daemons (agent, FRR) or a qemu machine, keeping its state.
    Kill {
        node: String,
        /// Only this daemon of the node (agent, zebra, bgpd, qemu).
        #[arg(long)]
        daemon: Option<String>,
        /// Signal to send: TERM, KILL, INT, HUP (with or without SIG).
        #[arg(long, default_value = "TERM", value_parser = parse_signal)]
        signal: Signal,
    },
    /// Start a node's daemons again after `kill`, with the same state.
    Start {
        node: String,
        /// Only this daemon of the node.
        #[arg(long)]
        daemon: Option<String>,
    },
}

fn parse_signal(text: &str) -> Result<Signal, String> {
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("unknown signal `{text}` (try TERM, KILL, INT, HUP)"))
}

/// Progress lines on standard error, so standard output stays parseable.
struct Stderr;

impl Progress for Stderr {
    fn step(&mut self, message: &str) {
        eprintln!("[testbed] {message}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    metalmesh_bin_support::logging::init(&cli.log, "warn");
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("metalmesh-testbed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let run_dir = cli.run_dir;
    match cli.command {
        Command::Up {
            racks,
            spines,
            machines_per_rack,
            vm_machines,
            bgp,
            topology,
            api,
            prometheus,
            no_wait,
            timeout,
        } => {
            let overrides = Overrides {
                racks,
                spines,
                machines_per_rack,
                vm_machines,
                leaf_bgp: bgp,
                api,
                prometheus,
                rack_vm_machines: Vec::new(),
            };
            let topology = Topology::load(topology.as_deref(), &overrides)?;
            Stderr.step(&format!(
                "bringing up {} racks, {} spines, {} namespace machines per rack, qemu machines {:?} (by rack) in {}",
                topology.racks,
                topology.spines,
                topology.machines_per_rack,
                topology.leaf_vm_machines,
                run_dir.display()
            ));
            let started = std::time::Instant::now();
            let testbed = Testbed::up(&run_dir, &topology, &mut Stderr)?;
            if !no_wait {
                testbed.wait_converged(Duration::from_secs(timeout), &mut Stderr)?;
            }
            Stderr.step(&format!("up in {:.1} s", started.elapsed().as_secs_f64()));
            print!("{}", testbed.status().to_table());
        }
        Command::Token {
            who:
                Who {
                    subject,
                    role,
                    projects,
                },
            lifetime,
        } => {
            let token = metalmesh_testbed::issuer::token(
                &metalmesh_testbed::api::issuer_dir(&run_dir),
                &metalmesh_testbed::issuer::TokenRequest {
                    subject,
                    role,
                    projects,
                    audience: metalmesh_testbed::issuer::AUDIENCE.into(),
                    lifetime_secs: lifetime,
                },
            )?;
            println!("{token}");
        }
        Command::Env => {
            for (name, value) in metalmesh_testbed::api::cli_env(&run_dir) {
                println!("export {name}={value}");
            }
        }
        Command::Approve {
            user_code,
            who:
                Who {
                    subject,
                    role,
                    projects,
                },
        } => {
            metalmesh_testbed::issuer::device::approve(
                &metalmesh_testbed::api::issuer_dir(&run_dir),
                &user_code,
                &subject,
                &role,
                &projects,
            )?;
            println!(
                "approved {} as {subject} ({role})",
                user_code.to_uppercase()
            );
        }
        Command::Issuer {
            dir,
            listen,
            pidfile,
        } => {
            std::fs::write(&pidfile, format!("{}\n", std::process::id()))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            runtime.block_on(metalmesh_testbed::issuer::serve(dir, listen))?;
        }
        Command::Down => {
            let report = Testbed::down(&run_dir, &mut Stderr)?;
            if report.namespaces.is_empty() && report.daemons == 0 {
                Stderr.step("nothing was up");
            } else {
                Stderr.step(&format!(
                    "down: stopped {} daemons, removed {} namespaces",
                    report.daemons,
                    report.namespaces.len()
                ));
            }
        }
        Command::Status { output } => {
            let status = Testbed::open(&run_dir)?.status();
            match output {
                OutputFormat::Table => print!("{}", status.to_table()),
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
            }
        }
        Command::Exec { node, command } => {
            let testbed = Testbed::open(&run_dir)?;
            let mut child = testbed.exec_command(&node, &command)?;
            let status = child
                .status()
                .with_context(|| format!("running {command:?} in {node}"))?;
            // Pass the command's own exit status through.
            return Ok(ExitCode::from(
                status.code().map_or(1, |c| c.clamp(0, 255) as u8),
            ));
        }
        Command::Console { machine, log } => {
            let testbed = Testbed::open(&run_dir)?;
            let (log_path, socket) = testbed.console(&machine)?;
            if log {
                let text = std::fs::read(&log_path)
                    .with_context(|| format!("reading {}", log_path.display()))?;
                std::io::stdout().write_all(&text)?;
            } else {
                attach(&socket, &machine)?;
            }
        }
        Command::Kill {
            node,
            daemon,
            signal,
        } => {
            let testbed = Testbed::open(&run_dir)?;
            let stopped = testbed.kill(&node, daemon.as_deref(), signal)?;
            Stderr.step(&format!("{node}: sent {signal} to {stopped} daemons"));
        }
        Command::Start { node, daemon } => {
            let testbed = Testbed::open(&run_dir)?;
            let started = testbed.start(&node, daemon.as_deref())?;
            Stderr.step(&format!("{node}: started {started} daemons"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Bridges the terminal to a machine's serial console socket until either side closes.
fn attach(socket: &std::path::Path, machine: &str) -> anyhow::Result<()> {
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {machine}'s console at {}", socket.display()))?;
    if std::io::stdin().is_terminal() {
        eprintln!("[testbed] attached to {machine}'s console; Ctrl-D or Ctrl-C to leave");
    }
    let mut from_console = stream.try_clone()?;
    let mut to_console = stream;
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        while let Ok(n) = from_console.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).is_err() || out.flush().is_err() {
                break;
            }
        }
    });
    let mut buf = [0u8; 4096];
    let mut stdin = std::io::stdin();
    while let Ok(n) = stdin.read(&mut buf) {
        if n == 0 || to_console.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to_console.shutdown(std::net::Shutdown::Both);
    let _ = reader.join();
    Ok(())
}
