//! Read-only TFTP for the iPXE binaries firmware chain-loads.

pub mod packet;
pub mod service;
pub mod window;

pub use packet::Packet;
pub use service::{TftpConfig, TftpCounters, serve};
