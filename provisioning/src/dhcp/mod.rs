//! The rack's DHCPv4 server: protocol logic ([`server`]), client kinds
//! ([`client`]), durable leases ([`leases`]), settings ([`settings`]) and the
//! socket loop ([`service`]).

pub mod client;
pub mod leases;
pub mod server;
pub mod service;
pub mod settings;

pub use client::ClientKind;
pub use leases::{Lease, LeaseState, LeaseStore};
pub use server::{DhcpCounters, DhcpEvent, DhcpServer, Origin};
pub use settings::{BootFiles, DhcpSettings};
