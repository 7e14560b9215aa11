//! `metalmesh-agent`: the daemon that runs on every leaf switch.
//!
//! It composes the switch's services: link discovery ([`lldp`]), the switch's
//! own inventory ([`switch`]), the local admin API ([`admin`]), all run as
//! supervised tasks ([`supervisor`]) by [`run`]. Boot services, the machine
//! lifecycle, the dataplane, BGP and the inventory mesh join them as their
//! crates land. See `docs/agent.md`.

pub mod admin;
pub mod boot;
pub mod config;
pub mod dataplane;
pub mod lldp;
pub mod machines;
pub mod mesh;
pub mod netlink;
pub mod run;
pub mod supervisor;
pub mod switch;
