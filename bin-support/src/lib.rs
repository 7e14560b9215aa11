//! What every metalmesh binary shares: the logging set-up ([`logging`]),
//! the rendering of command output as tables or JSON ([`output`]) and the
//! format negotiation of `/metrics` ([`exposition`]).

pub mod exposition;
pub mod logging;
pub mod output;

pub use logging::{LogArgs, LogFormat};
pub use output::{OutputFormat, render_table};
