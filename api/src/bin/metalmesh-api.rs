//! `metalmesh-api`: the API node.

use clap::{Parser, Subcommand};
use metalmesh_api::node::config::ApiConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "metalmesh-api", version, about = "metalmesh API node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API.
    Run {
        #[arg(long, default_value = "/etc/metalmesh/api.toml")]
        config: PathBuf,
        /// Write this process's id here (removed on exit).
        #[arg(long)]
        pidfile: Option<PathBuf>,
    },
    /// Check the configuration and exit.
    CheckConfig {
        #[arg(long, default_value = "/etc/metalmesh/api.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::CheckConfig { config } => ApiConfig::load(&config).map(|_| ()).map_err(Into::into),
        Command::Run { config, pidfile } => run(&config, pidfile.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "metalmesh-api stopped");
            eprintln!("metalmesh-api: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, pidfile: Option<&std::path::Path>) -> anyhow::Result<()> {
    let config = ApiConfig::load(path)?;
    if let Some(pidfile) = pidfile {
        std::fs::write(pidfile, format!("{}\n", std::process::id()))
            .map_err(|e| anyhow::anyhow!("{}: {e}", pidfile.display()))?;
    }
    let result = serve(config);
    if let Some(pidfile) = pidfile {
        let _ = std::fs::remove_file(pidfile);
    }
    result
}

fn serve(config: ApiConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            stop.cancel();
        });
        metalmesh_api::node::run(config, cancel).await
    })
}
