//! Logging set-up shared by every metalmesh binary.
//!
//! Every daemon and tool logs through [`tracing`]. The filter comes from
//! `RUST_LOG` (default: the binary's own default level), and the output format
//! from `--log-format` or `METALMESH_LOG_FORMAT`: `human` for a terminal,
//! `json` (one object per line) for log shippers. Logs always go to standard
//! error so that standard output stays machine-readable for `-o json`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// How log lines are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured when standard error is a terminal.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Command-line options every binary flattens into its own arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log output format.
    #[arg(long, global = true, value_enum, env = "METALMESH_LOG_FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// Installs the global subscriber. `default_directive` applies when `RUST_LOG`
/// is unset or empty (for example `"info"` for daemons, `"warn"` for CLIs).
///
/// Calling it twice is harmless: the second call keeps the first subscriber,
/// which matters for tests that run several commands in one process.
pub fn init(args: &LogArgs, default_directive: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => EnvFilter::new(value),
        _ => EnvFilter::new(default_directive),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let result = match args.log_format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A subscriber already set (tests) is fine; anything else is reported once.
    if let Err(error) = result {
        tracing::debug!(%error, "tracing subscriber already installed");
    }
}
