//! The metalmesh BGP speaker: an I/O-free session state machine, RIBs and best
//! path selection for IPv4/IPv6 unicast and L2VPN EVPN, with unnumbered peers.
//! It knows neither the agent nor the inventory: kernel route installation
//! and configuration come in through traits and types defined here.
//!
//! Layers, from the wire up: `rustbgpd_wire` (the codec, pinned),
//! [`update`] (UPDATEs to routes and back, RFC 7606 error handling),
//! [`session`] (one peer's FSM), [`rib`] (paths, best path, ECMP),
//! [`speaker`] (sessions + RIB + Adj-RIB-Out), and the tokio driver.

pub mod driver;
pub mod evpn;
pub mod rib;
pub mod route;
pub mod session;
pub mod speaker;
pub mod update;

pub use route::{Family, NextHop, Path, PeerId, RouteKey, Source};
pub use speaker::{Input, LocalRoute, Output, PeerConfig, Remote, Speaker};
