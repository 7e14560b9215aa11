//! What every metalmesh binary shares: the logging set-up ([`logging`]) and
//! the rendering of command output as tables or JSON ([`output`]).

pub mod logging;
pub mod output;

pub use logging::{LogArgs, LogFormat};
pub use output::{OutputFormat, render_table};
