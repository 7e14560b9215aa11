//! `metalmesh-agent`: the daemon that runs on every leaf switch.
//!
//! It composes the switch's services: link discovery ([`lldp`]), the switch's
//! own inventory ([`switch`]), boot services ([`boot`]), the machines of the
//! rack ([`machines`]), the dataplane ([`dataplane`]), BGP ([`bgp`]), the inventory mesh
//! ([`mesh`]), the leaf's packet filter against machines and tenants
//! ([`policy`]) and the local admin API ([`admin`]), all run as supervised
//! tasks ([`supervisor`]) by [`run`]. See `docs/agent.md` and
//! `docs/design/agent.md`.

pub mod admin;
pub mod bgp;
pub mod boot;
pub mod config;
pub mod dataplane;
pub mod images;
pub mod lldp;
pub mod machines;
pub mod mesh;
pub mod metrics;
pub mod netlink;
pub mod policy;
pub mod run;
pub mod supervisor;
pub mod switch;
