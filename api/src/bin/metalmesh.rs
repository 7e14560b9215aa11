//! `metalmesh`: the operators' and users' command line.

use clap::{Parser, Subcommand};
use metalmesh_api::cli::ca::{self, CaCommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "metalmesh", version, about = "metalmesh command line")]
struct Cli {
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ca { command } => ca::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("metalmesh: {error:#}");
            ExitCode::FAILURE
        }
    }
}
