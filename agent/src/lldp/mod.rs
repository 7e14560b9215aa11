//! LLDP on the switch ports: what the switch announces and which neighbours
//! it hears. The protocol logic is the I/O-free [`machine`]; [`task`] drives
//! it with raw sockets, link events and timers.

pub mod machine;
pub mod task;

pub use machine::{Counters, GoneReason, LldpMachine, LocalSystem, Neighbor, Settings};
pub use task::LldpSnapshot;
