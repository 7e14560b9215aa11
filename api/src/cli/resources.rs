//! The API's nouns and verbs on the command line: `machine`, `project`,
//! `network`, `switch`, `whoami`. Tables by default, `-o json` for
//! machines; the API's error message is printed as it is.

use crate::cli::client::{ApiClient, ClientError};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the API is and who is calling.
#[derive(Debug, Args)]
pub struct Connection {
    /// The API's URL, e.g. `https://api.example.com:8443`.
    #[arg(long, env = "METALMESH_API", global = true)]
    pub api: Option<String>,
    /// An OIDC token of the API's issuer.
    #[arg(long, env = "METALMESH_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The CA that signed the API's certificate (default: the system's).
    #[arg(long, env = "METALMESH_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// A saved context (`metalmesh login --context NAME`); default: the current one.
    #[arg(long, env = "METALMESH_CONTEXT", global = true)]
    pub context: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum MachineCommand {
    /// Machines: unallocated ones, and those of your projects.
    Ls,
    Describe {
        uuid: String,
    },
    /// Allocate a machine (any Waiting one, or `--machine`).
    Allocate {
        #[arg(long)]
        project: String,
        #[arg(long)]
        network: String,
        #[arg(long)]
        hostname: String,
        #[arg(long)]
        image: String,
        #[arg(long)]
        machine: Option<String>,
        #[arg(long)]
        rack: Option<String>,
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        #[arg(long = "ssh-key")]
        ssh_keys: Vec<String>,
        #[arg(long)]
        user_data: Option<PathBuf>,
        /// Wait until the machine phoned home, showing its progress.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Free a machine: it is wiped and returns to Waiting.
    Free {
        uuid: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    Ls,
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    Ls,
    /// A private network: prefix, VNI and table chosen by the API.
    Create {
        name: String,
        #[arg(long)]
        project: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SwitchCommand {
    Ls,
}

/// The client for `connection`: flags and `METALMESH_*` first, then the
/// saved context.
fn client(connection: &Connection) -> anyhow::Result<ApiClient> {
    let config = crate::cli::contexts::CliConfig::load(&crate::cli::contexts::path()?)?;
    let saved = config.context(connection.context.as_deref());
    if let (Some(name), None) = (&connection.context, saved) {
        anyhow::bail!("no context {name:?} (metalmesh login --context {name} …)");
    }
    let api = connection
        .api
        .clone()
        .or_else(|| saved.map(|c| c.api.clone()))
        .ok_or_else(|| anyhow::anyhow!("no API given (metalmesh login, --api or METALMESH_API)"))?;
    let token = connection
        .token
        .clone()
        .or_else(|| saved.map(|c| c.token.clone()))
        .ok_or_else(|| {
            anyhow::anyhow!("no token given (metalmesh login, --token or METALMESH_TOKEN)")
        })?;
    let ca = connection
        .ca
        .clone()
        .or_else(|| saved.and_then(|c| c.ca.clone()));
    Ok(ApiClient::new(&api, &token, ca.as_deref())?)
}

/// `metalmesh login`: checks the token against the API, then saves the
/// context and makes it the current one.
pub fn login(connection: &Connection, name: &str) -> anyhow::Result<()> {
    let api = connection
        .api
        .clone()
        .ok_or_else(|| anyhow::anyhow!("login needs --api (or METALMESH_API)"))?;
    let token = connection
        .token
        .clone()
        .ok_or_else(|| anyhow::anyhow!("login needs --token (or METALMESH_TOKEN)"))?;
    let ca = match &connection.ca {
        Some(path) => Some(
            std::fs::canonicalize(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    let me = ApiClient::new(&api, &token, ca.as_deref())?.get("/v1/whoami")?;
    let path = crate::cli::contexts::path()?;
    let mut config = crate::cli::contexts::CliConfig::load(&path)?;
    config.contexts.insert(
        name.to_string(),
        crate::cli::contexts::Context { api, ca, token },
    );
    config.current = Some(name.to_string());
    config.save(&path)?;
    println!(
        "logged in to context {name} as {} ({})",
        text(&me["subject"]),
        text(&me["role"])
    );
    Ok(())
}

/// `metalmesh context ls|use`.
pub fn context(command: ContextCommand) -> anyhow::Result<()> {
    let path = crate::cli::contexts::path()?;
    let mut config = crate::cli::contexts::CliConfig::load(&path)?;
    match command {
        ContextCommand::Ls => {
            for (name, context) in &config.contexts {
                let mark = if config.current.as_deref() == Some(name) {
                    "*"
                } else {
                    " "
                };
                println!("{mark} {name:<16} {}", context.api);
            }
        }
        ContextCommand::Use { name } => {
            if !config.contexts.contains_key(&name) {
                anyhow::bail!("no context {name:?}");
            }
            config.current = Some(name);
            config.save(&path)?;
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Saved contexts; `*` marks the current one.
    Ls,
    /// Make a saved context the current one.
    Use { name: String },
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A table of `columns` (header, JSON field) over `rows`.
fn table(rows: &[Value], columns: &[(&str, &str)]) -> String {
    let cells: Vec<Vec<String>> =
        std::iter::once(columns.iter().map(|(h, _)| h.to_string()).collect())
            .chain(
                rows.iter()
                    .map(|row| columns.iter().map(|(_, f)| text(&row[*f])).collect()),
            )
            .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| cells.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn show(connection: &Connection, value: &Value, columns: &[(&str, &str)]) {
    match connection.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Table => {
            let rows = match value {
                Value::Array(rows) => rows.clone(),
                one => vec![one.clone()],
            };
            print!("{}", table(&rows, columns));
        }
    }
}

const MACHINE_COLUMNS: [(&str, &str); 8] = [
    ("UUID", "uuid"),
    ("RACK", "rack"),
    ("PORT", "port"),
    ("STATE", "state"),
    ("LIVELINESS", "liveliness"),
    ("PROJECT", "project"),
    ("HOSTNAME", "hostname"),
    ("IP", "ip"),
];

pub fn machine(connection: &Connection, command: MachineCommand) -> anyhow::Result<()> {
    let api = client(connection)?;
    match command {
        MachineCommand::Ls => show(connection, &api.get("/v1/machines")?, &MACHINE_COLUMNS),
        MachineCommand::Describe { uuid } => {
            let machine = api.get(&format!("/v1/machines/{uuid}"))?;
            println!("{}", serde_json::to_string_pretty(&machine)?);
        }
        MachineCommand::Allocate {
            project,
            network,
            hostname,
            image,
            machine,
            rack,
            ip,
            ssh_keys,
            user_data,
            wait,
            timeout_secs,
        } => {
            let user_data = match user_data {
                Some(path) => std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                None => String::new(),
            };
            let body = json!({
                "project": project, "network": network, "hostname": hostname, "image": image,
                "machine": machine, "rack": rack, "ip": ip, "ssh_keys": ssh_keys, "user_data": user_data,
            });
            let allocated = api.post("/v1/machines/allocate", &body)?;
            let uuid = text(&allocated["uuid"]);
            eprintln!(
                "allocated {uuid} in rack {} with {}",
                text(&allocated["rack"]),
                text(&allocated["ip"])
            );
            // Without waiting, the allocation as the agent committed it (the
            // API's replica may not show it yet).
            let shown = if wait {
                wait_for(
                    &api,
                    &uuid,
                    "Phoned Home",
                    Duration::from_secs(timeout_secs),
                )?;
                api.get(&format!("/v1/machines/{uuid}"))?
            } else {
                allocated
            };
            show(connection, &shown, &MACHINE_COLUMNS);
        }
        MachineCommand::Free { uuid } => {
            let freed = api.post(&format!("/v1/machines/{uuid}/free"), &json!({}))?;
            show(connection, &freed, &MACHINE_COLUMNS);
        }
    }
    Ok(())
}

/// Polls a machine until its state is `state`, printing each new state.
fn wait_for(api: &ApiClient, uuid: &str, state: &str, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let machine = api.get(&format!("/v1/machines/{uuid}"))?;
        let now = text(&machine["state"]);
        if now != last {
            eprintln!("  {:>6.1} s  {now}", started.elapsed().as_secs_f64());
            last = now.clone();
        }
        if now == state {
            return Ok(());
        }
        if started.elapsed() > timeout {
            anyhow::bail!("{uuid} did not reach {state} within {timeout:?} (last: {now})");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn project(connection: &Connection, command: ProjectCommand) -> anyhow::Result<()> {
    let api = client(connection)?;
    let columns = [("ID", "id"), ("DESCRIPTION", "description")];
    match command {
        ProjectCommand::Ls => show(connection, &api.get("/v1/projects")?, &columns),
        ProjectCommand::Create { name, description } => show(
            connection,
            &api.post(
                "/v1/projects",
                &json!({"name": name, "description": description}),
            )?,
            &columns,
        ),
    }
    Ok(())
}

pub fn network(connection: &Connection, command: NetworkCommand) -> anyhow::Result<()> {
    let api = client(connection)?;
    let columns = [
        ("ID", "id"),
        ("NAME", "name"),
        ("PROJECT", "project"),
        ("PREFIXES", "prefixes"),
        ("VNI", "vni"),
    ];
    match command {
        NetworkCommand::Ls => show(connection, &api.get("/v1/networks")?, &columns),
        NetworkCommand::Create { name, project } => show(
            connection,
            &api.post("/v1/networks", &json!({"name": name, "project": project}))?,
            &columns,
        ),
    }
    Ok(())
}

pub fn switch(connection: &Connection, command: SwitchCommand) -> anyhow::Result<()> {
    let api = client(connection)?;
    match command {
        SwitchCommand::Ls => show(
            connection,
            &api.get("/v1/switches")?,
            &[
                ("NAME", "name"),
                ("RACK", "rack"),
                ("LOOPBACK", "loopback"),
                ("ASN", "asn"),
            ],
        ),
    }
    Ok(())
}

pub fn whoami(connection: &Connection) -> anyhow::Result<()> {
    let api = client(connection)?;
    let me = api.get("/v1/whoami")?;
    println!("{}", serde_json::to_string_pretty(&me)?);
    Ok(())
}

/// Exit code of an error: 2 for the caller's mistakes (4xx), 1 otherwise.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    match error
        .downcast_ref::<ClientError>()
        .and_then(ClientError::status)
    {
        Some(status) if (400..500).contains(&status) => 2,
        _ => 1,
    }
}
