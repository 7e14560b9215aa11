//! `metalmesh`: the operators' and users' command line.

use clap::{Parser, Subcommand};
use metalmesh_api::cli::ca::{self, CaCommand};
use metalmesh_api::cli::resources::{
    self, Connection, ContextCommand, MachineCommand, NetworkCommand, ProjectCommand, SwitchCommand,
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
    /// Machines: list, describe, allocate, free.
    Machine {
        #[command(subcommand)]
        command: MachineCommand,
    },
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    Network {
        #[command(subcommand)]
        command: NetworkCommand,
    },
    Switch {
        #[command(subcommand)]
        command: SwitchCommand,
    },
    /// Who the API takes you for.
    Whoami,
    /// Save `--api`, `--ca` and `--token` as a context (checked against the
    /// API first) and make it the current one.
    Login {
        #[arg(long = "as", default_value = "default")]
        name: String,
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
        Command::Machine { command } => resources::machine(connection, command),
        Command::Project { command } => resources::project(connection, command),
        Command::Network { command } => resources::network(connection, command),
        Command::Switch { command } => resources::switch(connection, command),
        Command::Whoami => resources::whoami(connection),
        Command::Login { name } => resources::login(connection, &name),
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
