//! The agent's local admin API: newline-delimited JSON over a unix socket,
//! one request and one response per line. The `metalmesh-agent` subcommands
//! (`status`, `lldp neighbors`, `ports`, …) are its client.

pub mod client;
pub mod protocol;
pub mod server;

pub use protocol::{AgentStatus, Request, Response};
