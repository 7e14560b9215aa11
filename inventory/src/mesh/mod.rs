//! The gossip mesh: every node holds a full replica of all records and keeps
//! it in step with the others.
//!
//! - [`peer`]: SWIM identities.
//! - [`message`]: what nodes exchange, and its bounded wire codec.
//! - [`node`]: the I/O-free protocol (membership, dissemination,
//!   anti-entropy).

pub mod message;
pub mod node;
pub mod peer;
pub mod service;
pub mod tls;

pub use message::{Envelope, Message};
pub use node::{Action, Input, MeshNode, Timer, Tuning};
pub use peer::Peer;
