//! `metalmesh-agent`: the leaf-switch daemon (`run`) and the commands that
//! query it over its admin socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use metalmesh_agent::admin::AgentStatus;
use metalmesh_agent::admin::client::{AdminClient, DataplaneDiff, MeshMembers, MeshRecords};
use metalmesh_agent::config::{DEFAULT_ADMIN_SOCKET, DEFAULT_CONFIG, Loaded};
use metalmesh_agent::dataplane::desired::NextHop;
use metalmesh_agent::lldp::LldpSnapshot;
use metalmesh_agent::run::{RunOptions, run};
use metalmesh_agent::switch::Port;
use metalmesh_bin_support::{LogArgs, OutputFormat, render_table};
use metalmesh_provisioning::dhcp::Lease;

/// The columns of machine tables (`machines`, `machine allocate|free`).
const MACHINE_COLUMNS: [&str; 7] = [
    "UUID",
    "PORT",
    "STATE",
    "LIVELINESS",
    "HOSTNAME",
    "IP",
    "FLAGS",
];

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A table's header row.
fn header(columns: &[&str]) -> Vec<String> {
    columns.iter().map(|c| c.to_string()).collect()
}
#[derive(Debug, Parser)]
#[command(
    name = "metalmesh-agent",
    version,
    about = "The metalmesh leaf-switch agent"
)]
struct Cli {
    /// Admin socket of the agent to query.
    #[arg(long, global = true, env = "METALMESH_AGENT_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    socket: PathBuf,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent.
    Run {
        #[arg(long, env = "METALMESH_AGENT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Write the agent's pid here (removed on clean exit).
        #[arg(long)]
        pidfile: Option<PathBuf>,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        #[arg(long, env = "METALMESH_AGENT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// The agent's state: switch identity, subsystems, counters.
    Status {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// LLDP.
    Lldp {
        #[command(subcommand)]
        command: LldpCommand,
    },
    /// Which machine each provisioning port is bound to (its identity).
    Port {
        #[command(subcommand)]
        command: PortCommand,
    },
    /// DHCP leases of the rack.
    Leases {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Tenant VRFs, VXLAN and routes on this switch.
    Dataplane {
        #[command(subcommand)]
        command: DataplaneCommand,
    },
    /// Tenant routes the agent maintains.
    Routes {
        /// Only this VRF's routes.
        #[arg(long)]
        vrf: Option<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// The switch's ports as the kernel reports them.
    Ports {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Machines cabled to this leaf.
    Machines {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// One machine: describe, events, allocate, free.
    Machine {
        #[command(subcommand)]
        command: MachineCommand,
    },
    /// The inventory mesh: members and replicated records.
    Mesh {
        #[command(subcommand)]
        command: MeshCommand,
    },
    /// The BGP speaker: sessions and routes.
    Bgp {
        #[command(subcommand)]
        command: BgpCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BgpCommand {
    /// One line per session: state, peer AS, uptime, prefixes received.
    Summary {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Each session in detail: negotiated capabilities, counters, last error.
    Neighbors {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Routes in the RIB with every path; `>` marks the best, `=` the
    /// equal-cost ones.
    Routes {
        /// Only the EVPN routes of this tenant VRF.
        #[arg(long)]
        vrf: Option<String>,
        /// Only this family: ipv4, ipv6 or evpn.
        #[arg(long)]
        family: Option<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

#[derive(Debug, Subcommand)]
enum MachineCommand {
    /// Hardware, port, state, allocation and flags.
    Describe {
        uuid: String,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Lifecycle events, newest first.
    Events {
        uuid: String,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Allocate a Waiting machine: it installs the image and joins the
    /// tenant VRF whose prefixes contain the IP.
    Allocate {
        uuid: String,
        #[arg(long)]
        image: String,
        #[arg(long)]
        ip: std::net::Ipv4Addr,
        #[arg(long)]
        hostname: String,
        /// An SSH public key for root (repeatable).
        #[arg(long = "ssh-key")]
        ssh_keys: Vec<String>,
        /// A file whose contents become the machine's user data.
        #[arg(long)]
        user_data: Option<PathBuf>,
        /// The tenant VRF; default: the one whose prefixes contain the IP.
        #[arg(long)]
        vrf: Option<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Free an allocated machine: it is reclaimed, wiped, and waits again.
    Free {
        uuid: String,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

#[derive(Debug, Subcommand)]
enum PortCommand {
    /// Each provisioning port's MAC and leased address.
    Bindings {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Forget a port's binding: the machine on it was moved or replaced.
    /// Its next lease binds the port again.
    Unbind { port: String },
}

#[derive(Debug, Subcommand)]
enum MeshCommand {
    /// Mesh members as this node sees them.
    Members {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Records in this node's replica.
    Records {
        /// Only records of this kind (switch, port, machine, lease, project, network, node, revocation, …).
        #[arg(long)]
        kind: Option<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Spread a revocation made by `metalmesh ca revoke` through the mesh:
    /// every node closes the revoked node's connections and refuses what
    /// it signs from then on.
    Revoke {
        /// The revocation file (`<ca-dir>/revoked/<node>.json`).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum DataplaneCommand {
    /// Load tenant intents from a file (format: docs/network.md).
    Apply { file: PathBuf },
    /// What the reconciler would change now (empty when in sync).
    Diff {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

#[derive(Debug, Subcommand)]
enum LldpCommand {
    /// Neighbours heard on the switch's ports.
    Neighbors {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Run { .. });
    metalmesh_bin_support::logging::init(&cli.log, if daemon { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("metalmesh-agent: cannot start runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if daemon {
                tracing::error!(error = format!("{error:#}"), "metalmesh-agent stopped");
            }
            eprintln!("metalmesh-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let admin = AdminClient::new(&cli.socket);
    match cli.command {
        Command::Run { config, pidfile } => run(RunOptions { config, pidfile }).await,
        Command::CheckConfig { config } => {
            let loaded = Loaded::load(&config)?;
            println!("{}: ok", loaded.source.path.display());
            Ok(())
        }
        Command::Status { output } => {
            let status = admin.status().await?;
            print(output, &status, status_table)
        }
        Command::Lldp {
            command: LldpCommand::Neighbors { output },
        } => {
            let snapshot = admin.lldp_neighbors().await?;
            print(output, &snapshot, neighbors_table)
        }
        Command::Port {
            command: PortCommand::Bindings { output },
        } => {
            let bindings = admin.port_bindings().await?;
            print(output, &bindings, |bindings| {
                let mut rows = vec![header(&["PORT", "MAC", "ADDRESS"])];
                rows.extend(bindings.iter().map(|(port, b)| {
                    vec![
                        port.clone(),
                        b.mac.clone(),
                        b.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    ]
                }));
                render_table(rows)
            })
        }
        Command::Port {
            command: PortCommand::Unbind { port },
        } => {
            if admin.port_unbind(&port).await? {
                println!("{port}: binding removed; its next lease binds it again");
            } else {
                println!("{port} was not bound");
            }
            Ok(())
        }
        Command::Leases { output } => {
            let leases = admin.leases().await?;
            print(output, &leases, |l| leases_table(l))
        }
        Command::Dataplane {
            command: DataplaneCommand::Apply { file },
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let intents: metalmesh_agent::dataplane::Intents =
                toml::from_str(&text).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: {}",
                        file.display(),
                        metalmesh_config::describe(&text, &e)
                    )
                })?;
            let rejected = admin.dataplane_apply(intents).await?;
            for r in &rejected {
                eprintln!("metalmesh-agent: VRF `{}` rejected: {}", r.vrf, r.reason);
            }
            println!("intents applied ({} VRF(s) rejected)", rejected.len());
            if rejected.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("some VRFs were rejected")
            }
        }
        Command::Dataplane {
            command: DataplaneCommand::Diff { output },
        } => {
            let DataplaneDiff { plan, rejected } = admin.dataplane_diff().await?;
            let value = serde_json::json!({ "plan": plan, "rejected": rejected });
            print(output, &value, |_| {
                let mut out = String::new();
                for o in &plan.remove {
                    out.push_str(&format!(
                        "- {}\n",
                        serde_json::to_string(o).unwrap_or_default()
                    ));
                }
                for o in &plan.add {
                    out.push_str(&format!(
                        "+ {}\n",
                        serde_json::to_string(o).unwrap_or_default()
                    ));
                }
                for r in &rejected {
                    out.push_str(&format!("! VRF {} rejected: {}\n", r.vrf, r.reason));
                }
                if out.is_empty() {
                    "in sync\n".to_string()
                } else {
                    out
                }
            })
        }
        Command::Routes { vrf, output } => {
            let routes = admin.routes(vrf).await?;
            print(output, &routes, |routes| {
                let mut rows = vec![header(&["VRF", "TABLE", "DESTINATION", "NEXT HOP"])];
                for r in routes.iter() {
                    rows.push(vec![
                        r.vrf.clone().unwrap_or_default(),
                        r.table.to_string(),
                        r.destination.clone(),
                        match &r.next_hop {
                            NextHop::Device { dev } => format!("dev {dev}"),
                            NextHop::ViaOnlink { via, dev } => {
                                format!("via {via} dev {dev} onlink")
                            }
                            NextHop::Unreachable => "unreachable".into(),
                        },
                    ]);
                }
                render_table(rows)
            })
        }
        Command::Machines { output } => {
            let machines = admin.machines().await?;
            print(output, &machines, |machines| {
                let mut rows = vec![header(&MACHINE_COLUMNS)];
                for m in machines.iter() {
                    rows.push(machine_row(m));
                }
                render_table(rows)
            })
        }
        Command::Machine { command } => machine_command(&admin, command).await,
        Command::Mesh {
            command: MeshCommand::Members { output },
        } => {
            let MeshMembers {
                node,
                members,
                health,
            } = admin.mesh_members().await?;
            let answer = serde_json::json!({ "node": node, "members": members, "health": health });
            print(output, &answer, |_| {
                let mut rows = vec![header(&["NAME", "ADDRESS", "STATE", "REFUSED"])];
                for member in &members {
                    let c = &member.counters;
                    rows.push(vec![
                        member.name.clone(),
                        member.addr.to_string(),
                        member.state.clone(),
                        (c.malformed
                            + c.impersonation
                            + c.connections_refused
                            + c.wrong_certificate)
                            .to_string(),
                    ]);
                }
                let mut text = format!(
                    "{} members besides {node}\n{}",
                    members.len(),
                    render_table(rows)
                );
                if let Some(records) = &health.records {
                    text.push_str(&format!(
                        "records refused: {} (unsigned {}, unknown signer {}, bad signature {}, wrong writer {}, revoked {}, over quota {}); kept without understanding: {}\n",
                        records.refused(),
                        records.unsigned,
                        records.unknown_signer,
                        records.bad_signature,
                        records.wrong_writer,
                        records.revoked,
                        records.over_quota,
                        records.opaque_stored
                    ));
                }
                if !health.revoked.is_empty() {
                    text.push_str(&format!("revoked: {}\n", health.revoked.join(", ")));
                }
                text
            })
        }
        Command::Mesh {
            command: MeshCommand::Records { kind, output },
        } => {
            let MeshRecords { records, revoked } = admin.mesh_records(kind).await?;
            let marked: Vec<serde_json::Value> = records
                .iter()
                .map(|record| {
                    let mut value = serde_json::to_value(record).unwrap_or_default();
                    value["revoked_origin"] = revoked.contains(&record.origin).into();
                    value
                })
                .collect();
            print(output, &marked, |_| {
                let mut rows = vec![header(&["KIND", "KEY", "ORIGIN", "VERSION", "BYTES"])];
                for record in records.iter() {
                    let origin = if revoked.contains(&record.origin) {
                        format!("{} (revoked)", record.origin)
                    } else {
                        record.origin.clone()
                    };
                    rows.push(vec![
                        record.id.kind.to_string(),
                        record.id.key.clone(),
                        origin,
                        record.version.to_string(),
                        record
                            .value
                            .as_ref()
                            .map_or_else(|| "deleted".to_string(), |v| v.len().to_string()),
                    ]);
                }
                render_table(rows)
            })
        }
        Command::Mesh {
            command: MeshCommand::Revoke { file },
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            let record: metalmesh_inventory::Record = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!("{} is not a revocation record: {e}", file.display())
            })?;
            let node = record.id.key.clone();
            let new = admin.mesh_revoke(record).await?;
            if new {
                println!("{node} revoked; spreading through the mesh");
            } else {
                println!("{node} was revoked already");
            }
            Ok(())
        }
        Command::Bgp { command } => bgp_command(&admin, command).await,
        Command::Ports { output } => {
            let ports = admin.ports().await?;
            print(output, &ports, |p| ports_table(p))
        }
    }
}

fn machine_row(record: &metalmesh_agent::machines::record::MachineRecord) -> Vec<String> {
    let m = &record.machine;
    let mut flags = Vec::new();
    if m.unknown_mac {
        flags.push("unknown-mac");
    }
    if m.crash_loop {
        flags.push("crash-loop");
    }
    if m.failed_machine_reclaim {
        flags.push("failed-reclaim");
    }
    if m.install_stalled {
        flags.push("install-stalled");
    }
    if m.reclaiming.is_some() {
        flags.push("reclaiming");
    }
    let allocation = m.allocation.as_ref();
    vec![
        m.uuid.clone(),
        m.port.clone().unwrap_or_default(),
        m.state.clone(),
        m.liveliness.clone(),
        allocation
            .map(|a| a.request.hostname.clone())
            .unwrap_or_default(),
        allocation
            .map(|a| a.request.ip.to_string())
            .unwrap_or_default(),
        flags.join(","),
    ]
}

async fn machine_command(admin: &AdminClient, command: MachineCommand) -> anyhow::Result<()> {
    let (machine, output, events_only) = match command {
        MachineCommand::Describe { uuid, output } => {
            (admin.machine_describe(uuid).await?, output, false)
        }
        MachineCommand::Events { uuid, output } => {
            (admin.machine_describe(uuid).await?, output, true)
        }
        MachineCommand::Allocate {
            uuid,
            image,
            ip,
            hostname,
            ssh_keys,
            user_data,
            vrf,
            output,
        } => {
            let user_data = match user_data {
                Some(path) => std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
                None => String::new(),
            };
            let allocation = metalmesh_inventory::model::AllocateRequest {
                project: None,
                image,
                ip,
                hostname,
                ssh_keys,
                user_data,
                vrf,
                tags: Vec::new(),
            };
            (
                admin.machine_allocate(uuid, allocation).await?,
                output,
                false,
            )
        }
        MachineCommand::Free { uuid, output } => (admin.machine_free(uuid).await?, output, false),
    };
    if events_only {
        return print(output, &machine.machine.events, |events| {
            let mut rows = vec![header(&["TIME", "EVENT", "MESSAGE"])];
            for event in events.iter() {
                rows.push(vec![
                    format_time_ms(event.time),
                    event.kind.name().to_string(),
                    event.message.clone(),
                ]);
            }
            render_table(rows)
        });
    }
    print(output, &machine, |m| {
        let mut text = render_table(vec![header(&MACHINE_COLUMNS), machine_row(m)]);
        if let Some(hw) = &m.machine.hardware {
            text.push_str(&format!(
                "\nhardware: {} {} serial {:?}, {} CPUs, {} MiB\n",
                hw.vendor,
                hw.product,
                hw.serial,
                hw.cpus,
                hw.memory_bytes >> 20
            ));
            for disk in &hw.disks {
                text.push_str(&format!(
                    "  disk {} {} bytes {} {}\n",
                    disk.name, disk.size_bytes, disk.model, disk.serial
                ));
            }
            for nic in &hw.nics {
                text.push_str(&format!(
                    "  nic {} {} {}\n",
                    nic.name,
                    nic.mac,
                    if nic.up { "up" } else { "down" }
                ));
            }
        }
        if let Some(event) = m.machine.events.first() {
            text.push_str(&format!(
                "last event: {} {} {}\n",
                format_time_ms(event.time),
                event.kind.name(),
                event.message
            ));
        }
        text
    })
}

fn format_time_ms(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn print<T: serde::Serialize>(
    format: OutputFormat,
    value: &T,
    table: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => print!("{}", table(value)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

fn status_table(s: &AgentStatus) -> String {
    let mut rows = vec![header(&["FIELD", "VALUE"])];
    let mut row = |k: &str, v: String| rows.push(vec![k.to_string(), v]);
    row("version", s.version.clone());
    row("kernel mode", format!("{:?}", s.kernel_mode));
    row("pid", s.pid.to_string());
    row("uptime", format!("{} s", s.uptime_secs));
    row("config", s.config.clone());
    row("state dir", s.state_dir.clone());
    if let Some(sw) = &s.switch {
        row("switch", sw.name.clone());
        row("partition", sw.partition.clone());
        row("rack", sw.rack.clone());
        row("loopback", sw.loopback.to_string());
        row("asn", sw.asn.to_string());
        row("chassis mac", sw.chassis_mac.clone());
        row(
            "ports",
            format!(
                "{} ({} up)",
                sw.ports.len(),
                sw.ports.iter().filter(|p| p.oper_up).count()
            ),
        );
    }
    row("lldp ports", s.lldp_ports.join(" "));
    row("lldp neighbors", s.lldp_neighbors.to_string());
    let c = &s.lldp_counters;
    row(
        "lldp frames",
        format!(
            "in {} out {} discarded {} oversized {}",
            c.frames_in, c.frames_out, c.frames_discarded, c.frames_oversized
        ),
    );
    if let Some(frr) = &s.frr {
        let state = match &frr.last_error {
            Some(error) => format!(
                "NOT IN SYNC ({} failed pass(es), retrying): {error}",
                frr.failures
            ),
            None if frr.in_sync => format!(
                "in sync ({} line(s) changed in {} pass(es))",
                frr.edits, frr.applies
            ),
            None => "starting".to_string(),
        };
        row("bgp frr", state);
    }
    for (name, h) in &s.subsystems {
        let state = if h.running { "running" } else { "stopped" };
        let error = h
            .last_error
            .as_deref()
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default();
        row(
            &format!("subsystem {name}"),
            format!("{state}, {} restarts{error}", h.restarts),
        );
    }
    render_table(rows)
}

fn neighbors_table(snapshot: &LldpSnapshot) -> String {
    let now = unix_now();
    let mut rows = vec![header(&[
        "PORT",
        "CHASSIS",
        "REMOTE PORT",
        "SYSTEM",
        "MGMT",
        "EXPIRES",
    ])];
    for n in &snapshot.neighbors {
        rows.push(vec![
            n.local_port.clone(),
            n.chassis_id.clone(),
            n.port_id.clone(),
            n.system_name.clone().unwrap_or_default(),
            n.management_addresses.join(","),
            format!("{} s", n.expires_at.saturating_sub(now)),
        ]);
    }
    render_table(rows)
}

fn leases_table(leases: &[Lease]) -> String {
    let now = unix_now();
    let mut rows = vec![header(&[
        "MAC", "IP", "PORT", "STATE", "EXPIRES", "CLIENT", "HOSTNAME",
    ])];
    for l in leases {
        rows.push(vec![
            l.mac.clone(),
            l.ip.to_string(),
            l.port.clone().unwrap_or_else(|| "-".into()),
            l.state.as_str().to_string(),
            format!("{} s", l.expires.saturating_sub(now)),
            l.client_kind.as_str().to_string(),
            l.hostname.clone().unwrap_or_default(),
        ]);
    }
    render_table(rows)
}

fn ports_table(ports: &[Port]) -> String {
    let mut rows = vec![header(&[
        "PORT", "IFINDEX", "MAC", "MTU", "ADMIN", "OPER", "SPEED",
    ])];
    for p in ports {
        rows.push(vec![
            p.name.clone(),
            p.ifindex.to_string(),
            p.mac.clone().unwrap_or_default(),
            p.mtu.map(|m| m.to_string()).unwrap_or_default(),
            if p.admin_up { "up" } else { "down" }.into(),
            p.oper_state.clone(),
            p.speed_mbps
                .map(|s| format!("{s} Mb/s"))
                .unwrap_or_default(),
        ]);
    }
    render_table(rows)
}

async fn bgp_command(admin: &AdminClient, command: BgpCommand) -> anyhow::Result<()> {
    match command {
        BgpCommand::Summary { output } => {
            let neighbors = admin.bgp_neighbors().await?;
            print(output, &neighbors, |n| {
                let mut rows = vec![header(&[
                    "NEIGHBOR", "STATE", "AS", "UP", "IPV4", "IPV6", "EVPN", "SENT",
                ])];
                for peer in &n.peers {
                    let received = |family| {
                        peer.received
                            .iter()
                            .find(|(f, _)| *f == family)
                            .map_or(0, |(_, count)| *count)
                            .to_string()
                    };
                    rows.push(vec![
                        peer.remote.to_string(),
                        format!("{:?}", peer.state),
                        peer.remote_as.map(|a| a.to_string()).unwrap_or_default(),
                        peer.established_secs
                            .map(|s| format!("{s}s"))
                            .unwrap_or_else(|| "-".into()),
                        received(metalmesh_bgp::Family::Ipv4Unicast),
                        received(metalmesh_bgp::Family::Ipv6Unicast),
                        received(metalmesh_bgp::Family::L2vpnEvpn),
                        peer.advertised.to_string(),
                    ]);
                }
                format!(
                    "AS {} router id {}\n{}",
                    n.asn,
                    n.router_id,
                    render_table(rows)
                )
            })
        }
        BgpCommand::Neighbors { output } => {
            let neighbors = admin.bgp_neighbors().await?;
            print(output, &neighbors.peers, |peers| {
                let mut out = String::new();
                for peer in peers.iter() {
                    out.push_str(&format!("neighbor {} ({:?})\n", peer.remote, peer.state));
                    if let (Some(local), Some(remote)) = (peer.local_address, peer.remote_address) {
                        out.push_str(&format!("  connection {local} -> {remote}\n"));
                    }
                    if let Some(n) = &peer.negotiated {
                        let families: Vec<String> =
                            n.families.iter().map(|f| f.to_string()).collect();
                        out.push_str(&format!(
                            "  remote AS {} id {}, hold {} s, families {}, extended next hop {}\n",
                            n.remote_as,
                            n.remote_id,
                            n.hold_time.as_secs(),
                            families.join(","),
                            n.extended_next_hop
                        ));
                    }
                    out.push_str(&format!(
                        "  messages in {} out {}, updates in {}, established {} time(s)\n",
                        peer.stats.messages_in,
                        peer.stats.messages_out,
                        peer.stats.updates_in,
                        peer.stats.established_transitions
                    ));
                    if let Some(error) = &peer.stats.last_error {
                        out.push_str(&format!("  last error: {error}\n"));
                    }
                }
                out
            })
        }
        BgpCommand::Routes {
            vrf,
            family,
            output,
        } => {
            let routes = admin.bgp_routes(family, vrf).await?;
            print(output, &routes, |routes| {
                let mut rows = vec![header(&["", "ROUTE", "VNI", "NEXT HOP", "FROM", "AS PATH"])];
                for route in routes.iter() {
                    for path in &route.paths {
                        let mark = if path.best {
                            ">"
                        } else if path.selected {
                            "="
                        } else {
                            ""
                        };
                        let as_path: Vec<String> =
                            path.as_path.iter().map(|a| a.to_string()).collect();
                        rows.push(vec![
                            mark.to_string(),
                            route.route.clone(),
                            route.vni.map(|v| v.to_string()).unwrap_or_default(),
                            path.next_hop.clone(),
                            path.from.clone(),
                            as_path.join(" "),
                        ]);
                    }
                }
                render_table(rows)
            })
        }
    }
}
