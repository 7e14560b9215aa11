//! `metalmesh`: the operators' and users' command line.

use clap::{Parser, Subcommand};
use metalmesh_api::cli::ca::{self, CaCommand};
use metalmesh_api::cli::resources::{
    self, Connection, ContextCommand, ImageCommand, IpCommand, MachineCommand, NetworkCommand,
    PartitionCommand, ProjectCommand, SizeCommand, SwitchCommand,
};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "metalmesh", version, about = "metalmesh command line")]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The mesh certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Machines: list, describe, events, allocate, free, reserve.
    Machine {
        #[command(subcommand)]
        command: Box<MachineCommand>,
    },
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    Network {
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// Addresses acquired on their own.
    Ip {
        #[command(subcommand)]
        command: IpCommand,
    },
    /// OS images (leaves download them from their URL).
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Machine sizes (hardware bounds).
    Size {
        #[command(subcommand)]
        command: SizeCommand,
    },
    Switch {
        #[command(subcommand)]
        command: SwitchCommand,
    },
    Partition {
        #[command(subcommand)]
        command: PartitionCommand,
    },
    /// Who the API takes you for.
    Whoami,
    /// The web view's address, logged in as this context (the address
    /// carries the token: open it, do not share it).
    Web,
    /// Save `--api`, `--ca` and a token (`--token`, or `--device` to log in
    /// with the identity provider) as a context, checked against the API
    /// first, and make it the current one.
    Login {
        #[arg(long = "as", default_value = "default")]
        name: String,
        /// Log in with the identity provider's device flow: open the page
        /// shown, enter the code, and the CLI gets the token.
        #[arg(long)]
        device: bool,
        /// The longest wait for the approval (with --device).
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Saved contexts.
    Context {
        #[command(subcommand)]
        command: ContextCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let connection = &cli.connection;
    let result = match cli.command {
        Command::Ca { command } => ca::run(command),
        Command::Machine { command } => resources::machine(connection, *command),
        Command::Project { command } => resources::project(connection, command),
        Command::Network { command } => resources::network(connection, command),
        Command::Ip { command } => resources::ip(connection, command),
        Command::Image { command } => resources::image(connection, command),
        Command::Size { command } => resources::size(connection, command),
        Command::Switch { command } => resources::switch(connection, command),
        Command::Partition { command } => resources::partition(connection, command),
        Command::Whoami => resources::whoami(connection),
        Command::Web => resources::web(connection),
        Command::Login {
            name,
            device,
            timeout_secs,
        } => resources::login(
            connection,
            &name,
            device.then(|| std::time::Duration::from_secs(timeout_secs)),
        ),
        Command::Context { command } => resources::context(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("metalmesh: {error:#}");
            ExitCode::from(resources::exit_code(&error))
        }
    }
}
