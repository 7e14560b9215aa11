//! The API's nouns and verbs on the command line: `machine`, `project`,
//! `network`, `ip`, `image`, `size`, `switch`, `partition`, `whoami`.
//! Tables by default (`-o wide` for more columns), `-o json|yaml` for
//! scripts; the API's error message is printed as it is.

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
    /// A table with more columns.
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum MachineCommand {
    /// Machines: unallocated ones, and those of your projects.
    Ls {
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        partition: Option<String>,
        #[arg(long)]
        rack: Option<String>,
        #[arg(long)]
        size: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        tag: Option<String>,
    },
    /// Hardware, rack, port, state, liveliness, flags, allocation, events.
    Describe { uuid: String },
    /// A machine's events, newest first.
    Events { uuid: String },
    /// Allocate a machine (any Waiting one that fits, or `--machine`).
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
        partition: Option<String>,
        #[arg(long)]
        rack: Option<String>,
        #[arg(long)]
        size: Option<String>,
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        #[arg(long = "ssh-key")]
        ssh_keys: Vec<String>,
        #[arg(long)]
        user_data: Option<PathBuf>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Spread machines with this tag across racks.
        #[arg(long = "placement-tag")]
        placement_tags: Vec<String>,
        /// A retry with the same key returns the same machine.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait until the machine phoned home, showing its progress.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Free a machine: it is wiped and returns to Waiting.
    Free { uuid: String },
    /// Keep a machine for one project, or lock it (admins).
    Reserve {
        uuid: String,
        #[arg(long)]
        project: Option<String>,
        /// Neither allocated nor freed until unreserved.
        #[arg(long)]
        lock: bool,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Drop a machine's reservation or lock (admins).
    Unreserve { uuid: String },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    Ls,
    /// Define an image (admins): leaves download it from URL on first use.
    Create {
        name: String,
        #[arg(long)]
        url: String,
        #[arg(long)]
        sha256: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    #[command(alias = "delete")]
    Rm {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SizeCommand {
    Ls,
    /// Define a size (admins); memory and disk as bytes or with a unit
    /// (`64GiB`, `2TB`); disk is the sum of a machine's disks.
    Create {
        name: String,
        #[arg(long, default_value_t = 0)]
        min_cpus: u32,
        #[arg(long)]
        max_cpus: Option<u32>,
        #[arg(long, value_parser = parse_bytes, default_value = "0")]
        min_memory: u64,
        #[arg(long, value_parser = parse_bytes)]
        max_memory: Option<u64>,
        #[arg(long, value_parser = parse_bytes, default_value = "0")]
        min_disk: u64,
        #[arg(long, value_parser = parse_bytes)]
        max_disk: Option<u64>,
    },
    #[command(alias = "delete")]
    Rm {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum IpCommand {
    Ls,
    /// Acquire an address of a network for a project (kept until released).
    #[command(alias = "allocate")]
    Acquire {
        #[arg(long)]
        project: String,
        #[arg(long)]
        network: String,
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        #[arg(long, default_value = "")]
        name: String,
    },
    #[command(alias = "free")]
    Release {
        address: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PartitionCommand {
    /// Partitions and their racks, from the switches.
    Ls,
}

/// `123`, `4KiB`, `64GiB`, `2TB` as bytes.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 64GiB)"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("unknown unit {other:?} (B, KiB…TiB, KB…TB)")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
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
    /// A private network (prefix, VNI and table chosen by the API), or, by
    /// an admin, a shared or external one.
    Create {
        name: String,
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        shared: bool,
        #[arg(long)]
        external: bool,
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SwitchCommand {
    Ls,
    /// A switch's ports, their LLDP neighbours and machines.
    Describe {
        name: String,
    },
}

/// The client for `connection`: flags and `METALMESH_*` first, then the
/// saved context.
fn client(connection: &Connection) -> anyhow::Result<ApiClient> {
    let (api, token, ca) = resolve(connection)?;
    Ok(ApiClient::new(&api, &token, ca.as_deref())?)
}

/// The API, token and CA: from the flags or environment, else from the
/// saved context.
fn resolve(connection: &Connection) -> anyhow::Result<(String, String, Option<PathBuf>)> {
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
    Ok((api, token, ca))
}

/// `metalmesh web`: the web view's address with this context's token in
/// its fragment (which browsers never send to a server; the page moves it
/// to session storage at once). The token is checked first.
pub fn web(connection: &Connection) -> anyhow::Result<()> {
    let (api, token, _) = resolve(connection)?;
    client(connection)?.get("/v1/whoami")?;
    println!("{}/ui/#token={token}", api.trim_end_matches('/'));
    Ok(())
}

/// `metalmesh login`: takes the token given, or gets one with the device
/// flow (`device`: the longest wait for approval), checks it against the
/// API, then saves the context and makes it the current one.
pub fn login(connection: &Connection, name: &str, device: Option<Duration>) -> anyhow::Result<()> {
    let api = connection
        .api
        .clone()
        .ok_or_else(|| anyhow::anyhow!("login needs --api (or METALMESH_API)"))?;
    let ca = match &connection.ca {
        Some(path) => Some(
            std::fs::canonicalize(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    let token = match device {
        Some(timeout) => crate::cli::device_login::device_token(&api, ca.as_deref(), timeout)?,
        None => connection.token.clone().ok_or_else(|| {
            anyhow::anyhow!("login needs --device or --token (or METALMESH_TOKEN)")
        })?,
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

/// Prints `value`: a table of `columns` (`-o wide`: with `wide` after
/// them), or JSON or YAML.
fn show(connection: &Connection, value: &Value, columns: &[(&str, &str)], wide: &[(&str, &str)]) {
    match connection.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Yaml => print!("{}", yaml(value, 0)),
        Output::Table | Output::Wide => {
            let rows = match value {
                Value::Array(rows) => rows.clone(),
                one => vec![one.clone()],
            };
            let mut all = columns.to_vec();
            if connection.output == Output::Wide {
                all.extend_from_slice(wide);
            }
            print!("{}", table(&rows, &all));
        }
    }
}

/// `value` as YAML (strings quoted as JSON strings, which YAML reads).
fn yaml(value: &Value, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let scalar = |v: &Value| match v {
        Value::Null => "null".to_string(),
        other => other.to_string(),
    };
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                match item {
                    Value::Object(inner) if !inner.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n{}", yaml(item, indent + 2)));
                    }
                    Value::Array(inner) if !inner.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n{}", yaml(item, indent)));
                    }
                    other => out.push_str(&format!(
                        "{pad}{key}: {}\n",
                        scalar_or_empty(other, &scalar)
                    )),
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                let nested = yaml(item, indent + 2);
                match item {
                    Value::Object(inner) if !inner.is_empty() => {
                        // The first key on the dash's line.
                        out.push_str(&format!("{pad}- {}", nested.trim_start()));
                    }
                    Value::Array(inner) if !inner.is_empty() => {
                        out.push_str(&format!("{pad}-\n{nested}"));
                    }
                    other => out.push_str(&format!("{pad}- {}\n", scalar_or_empty(other, &scalar))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar_or_empty(other, &scalar))),
    }
    out
}

fn scalar_or_empty(value: &Value, scalar: &dyn Fn(&Value) -> String) -> String {
    match value {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => scalar(other),
    }
}

const MACHINE_COLUMNS: [(&str, &str); 9] = [
    ("UUID", "uuid"),
    ("RACK", "rack"),
    ("PORT", "port"),
    ("HARDWARE", "hardware_summary"),
    ("STATE", "state"),
    ("LIVELINESS", "liveliness"),
    ("PROJECT", "project"),
    ("HOSTNAME", "hostname"),
    ("IP", "ip"),
];

/// `4 CPU 16G 500G`: CPUs, memory and the sum of the disks (`512M` below a
/// GiB), for tables.
fn hardware_summary(machine: &Value) -> Value {
    let hardware = &machine["hardware"];
    if hardware.is_null() {
        return Value::Null;
    }
    let gib = |bytes: u64| {
        if bytes >= 1 << 30 {
            format!("{}G", (bytes + (1 << 29)) >> 30)
        } else {
            format!("{}M", (bytes + (1 << 19)) >> 20)
        }
    };
    let disks: u64 = hardware["disks"]
        .as_array()
        .map(|d| d.iter().filter_map(|d| d["size_bytes"].as_u64()).sum())
        .unwrap_or(0);
    Value::String(format!(
        "{} CPU {} {}",
        text(&hardware["cpus"]),
        gib(hardware["memory_bytes"].as_u64().unwrap_or(0)),
        gib(disks)
    ))
}

/// Machines with their hardware summarised for tables.
fn with_hardware_summary(machines: &Value) -> Value {
    let add = |m: &Value| {
        let mut m = m.clone();
        if let Some(object) = m.as_object_mut() {
            let summary = hardware_summary(&Value::Object(object.clone()));
            object.insert("hardware_summary".into(), summary);
        }
        m
    };
    match machines {
        Value::Array(rows) => Value::Array(rows.iter().map(add).collect()),
        one => add(one),
    }
}

const MACHINE_WIDE: [(&str, &str); 6] = [
    ("SIZE", "size"),
    ("PARTITION", "partition"),
    ("NETWORK", "network"),
    ("IMAGE", "image"),
    ("TAGS", "tags"),
    ("FLAGS", "flags"),
];

const EVENT_COLUMNS: [(&str, &str); 3] =
    [("TIME", "time"), ("EVENT", "event"), ("MESSAGE", "message")];

/// `key=value&…` of the given filters.
fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let encoded: Vec<String> = pairs
        .iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| format!("{key}={}", percent(v))))
        .collect();
    if encoded.is_empty() {
        String::new()
    } else {
        format!("?{}", encoded.join("&"))
    }
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

pub fn machine(connection: &Connection, command: MachineCommand) -> anyhow::Result<()> {
    let api = client(connection)?;
    let show_machine = |machine: &Value| match connection.output {
        Output::Table | Output::Wide => show(
            connection,
            &with_hardware_summary(machine),
            &MACHINE_COLUMNS,
            &MACHINE_WIDE,
        ),
        Output::Json | Output::Yaml => show(connection, machine, &MACHINE_COLUMNS, &MACHINE_WIDE),
    };
    match command {
        MachineCommand::Ls {
            project,
            partition,
            rack,
            size,
            state,
            tag,
        } => {
            let filter = query(&[
                ("project", &project),
                ("partition", &partition),
                ("rack", &rack),
                ("size", &size),
                ("state", &state),
                ("tag", &tag),
            ]);
            show_machine(&api.get(&format!("/v1/machines{filter}"))?);
        }
        MachineCommand::Describe { uuid } => {
            let machine = api.get(&format!("/v1/machines/{}", percent(&uuid)))?;
            match connection.output {
                Output::Json | Output::Yaml => show_machine(&machine),
                Output::Table | Output::Wide => print!("{}", describe(&machine)),
            }
        }
        MachineCommand::Events { uuid } => {
            let machine = api.get(&format!("/v1/machines/{}", percent(&uuid)))?;
            show(connection, &machine["events"], &EVENT_COLUMNS, &[]);
        }
        MachineCommand::Allocate {
            project,
            network,
            hostname,
            image,
            machine,
            partition,
            rack,
            size,
            ip,
            ssh_keys,
            user_data,
            tags,
            placement_tags,
            idempotency_key,
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
                "machine": machine, "partition": partition, "rack": rack, "size": size, "ip": ip,
                "ssh_keys": ssh_keys, "user_data": user_data, "tags": tags,
                "placement_tags": placement_tags,
            });
            let allocated =
                api.post_idempotent("/v1/machines/allocate", &body, idempotency_key.as_deref())?;
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
            show_machine(&shown);
        }
        MachineCommand::Free { uuid } => {
            show_machine(&api.post(&format!("/v1/machines/{}/free", percent(&uuid)), &json!({}))?);
        }
        MachineCommand::Reserve {
            uuid,
            project,
            lock,
            reason,
        } => {
            let body = json!({"project": project, "locked": lock, "reason": reason});
            show_machine(&api.put(
                &format!("/v1/machines/{}/reservation", percent(&uuid)),
                &body,
            )?);
        }
        MachineCommand::Unreserve { uuid } => {
            show_machine(&api.delete(&format!("/v1/machines/{}/reservation", percent(&uuid)))?);
        }
    }
    Ok(())
}

/// A machine for people: its fields, hardware and newest events.
fn describe(machine: &Value) -> String {
    let mut out = String::new();
    for (label, field) in [
        ("UUID", "uuid"),
        ("Partition", "partition"),
        ("Rack", "rack"),
        ("Switch", "switch"),
        ("Port", "port"),
        ("State", "state"),
        ("Liveliness", "liveliness"),
        ("Size", "size"),
        ("Flags", "flags"),
        ("Reservation", "reservation"),
        ("Project", "project"),
        ("Hostname", "hostname"),
        ("Network", "network"),
        ("IP", "ip"),
        ("Image", "image"),
        ("Tags", "tags"),
    ] {
        out.push_str(&format!("{label:<12} {}\n", text(&machine[field])));
    }
    let hardware = &machine["hardware"];
    if !hardware.is_null() {
        let disks: Vec<String> = hardware["disks"]
            .as_array()
            .map(|disks| {
                disks
                    .iter()
                    .map(|d| {
                        format!(
                            "{} {} GiB",
                            text(&d["name"]),
                            d["size_bytes"].as_u64().unwrap_or(0) >> 30
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let nics: Vec<String> = hardware["nics"]
            .as_array()
            .map(|nics| nics.iter().map(|n| text(&n["mac"])).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<12} {} CPUs, {} MiB memory, disks: {}, NICs: {}\n",
            "Hardware",
            text(&hardware["cpus"]),
            hardware["memory_bytes"].as_u64().unwrap_or(0) >> 20,
            disks.join(", "),
            nics.join(", ")
        ));
    }
    let events: Vec<Value> = machine["events"]
        .as_array()
        .map(|e| e.iter().take(10).cloned().collect())
        .unwrap_or_default();
    out.push_str("Events (newest first):\n");
    out.push_str(&table(&events, &EVENT_COLUMNS));
    out
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
    let shown = match command {
        ProjectCommand::Ls => api.get("/v1/projects")?,
        ProjectCommand::Create { name, description } => api.post(
            "/v1/projects",
            &json!({"name": name, "description": description}),
        )?,
    };
    show(connection, &shown, &columns, &[]);
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
    let wide = [
        ("TABLE", "table"),
        ("SHARED", "shared"),
        ("EXTERNAL", "external"),
    ];
    let shown = match command {
        NetworkCommand::Ls => api.get("/v1/networks")?,
        NetworkCommand::Create {
            name,
            project,
            shared,
            external,
            prefix,
        } => api.post(
            "/v1/networks",
            &json!({"name": name, "project": project, "shared": shared, "external": external, "prefix": prefix}),
        )?,
    };
    show(connection, &shown, &columns, &wide);
    Ok(())
}

pub fn ip(connection: &Connection, command: IpCommand) -> anyhow::Result<()> {
    let api = client(connection)?;
    let columns = [
        ("ADDRESS", "address"),
        ("NETWORK", "network"),
        ("PROJECT", "project"),
        ("NAME", "name"),
        ("MACHINE", "machine"),
    ];
    let shown = match command {
        IpCommand::Ls => api.get("/v1/ips")?,
        IpCommand::Acquire {
            project,
            network,
            ip,
            name,
        } => api.post(
            "/v1/ips",
            &json!({"project": project, "network": network, "ip": ip, "name": name}),
        )?,
        IpCommand::Release { address } => api.delete(&format!("/v1/ips/{}", percent(&address)))?,
    };
    show(connection, &shown, &columns, &[("ACQUIRED", "acquired")]);
    Ok(())
}

pub fn image(connection: &Connection, command: ImageCommand) -> anyhow::Result<()> {
    let api = client(connection)?;
    let columns = [
        ("NAME", "name"),
        ("URL", "url"),
        ("DESCRIPTION", "description"),
    ];
    let shown = match command {
        ImageCommand::Ls => api.get("/v1/images")?,
        ImageCommand::Create {
            name,
            url,
            sha256,
            description,
        } => api.post(
            "/v1/images",
            &json!({"name": name, "url": url, "sha256": sha256, "description": description}),
        )?,
        ImageCommand::Rm { name } => api.delete(&format!("/v1/images/{}", percent(&name)))?,
    };
    show(connection, &shown, &columns, &[("SHA256", "sha256")]);
    Ok(())
}

pub fn size(connection: &Connection, command: SizeCommand) -> anyhow::Result<()> {
    let api = client(connection)?;
    let columns = [
        ("NAME", "name"),
        ("MIN CPUS", "min_cpus"),
        ("MAX CPUS", "max_cpus"),
        ("MIN MEMORY", "min_memory_bytes"),
        ("MAX MEMORY", "max_memory_bytes"),
        ("MIN DISK", "min_disk_bytes"),
        ("MAX DISK", "max_disk_bytes"),
    ];
    let shown = match command {
        SizeCommand::Ls => api.get("/v1/sizes")?,
        SizeCommand::Create {
            name,
            min_cpus,
            max_cpus,
            min_memory,
            max_memory,
            min_disk,
            max_disk,
        } => api.post(
            "/v1/sizes",
            &json!({
                "name": name, "min_cpus": min_cpus, "max_cpus": max_cpus,
                "min_memory_bytes": min_memory, "max_memory_bytes": max_memory,
                "min_disk_bytes": min_disk, "max_disk_bytes": max_disk,
            }),
        )?,
        SizeCommand::Rm { name } => api.delete(&format!("/v1/sizes/{}", percent(&name)))?,
    };
    show(connection, &shown, &columns, &[]);
    Ok(())
}

pub fn partition(connection: &Connection, command: PartitionCommand) -> anyhow::Result<()> {
    let api = client(connection)?;
    match command {
        PartitionCommand::Ls => show(
            connection,
            &api.get("/v1/partitions")?,
            &[("NAME", "name"), ("RACKS", "racks")],
            &[],
        ),
    }
    Ok(())
}

pub fn switch(connection: &Connection, command: SwitchCommand) -> anyhow::Result<()> {
    let api = client(connection)?;
    let columns = [
        ("NAME", "name"),
        ("RACK", "rack"),
        ("LOOPBACK", "loopback"),
        ("ASN", "asn"),
    ];
    match command {
        SwitchCommand::Ls => show(
            connection,
            &api.get("/v1/switches")?,
            &columns,
            &[("PARTITION", "partition")],
        ),
        SwitchCommand::Describe { name } => {
            let switch = api.get(&format!("/v1/switches/{}", percent(&name)))?;
            match connection.output {
                Output::Json | Output::Yaml => show(connection, &switch, &columns, &[]),
                Output::Table | Output::Wide => {
                    print!("{}", table(std::slice::from_ref(&switch), &columns));
                    println!();
                    print!(
                        "{}",
                        table(
                            switch["ports"].as_array().map_or(&[][..], Vec::as_slice),
                            &[
                                ("PORT", "name"),
                                ("UP", "up"),
                                ("NEIGHBORS", "neighbors"),
                                ("MACHINE", "machine"),
                            ],
                        )
                    );
                }
            }
        }
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
