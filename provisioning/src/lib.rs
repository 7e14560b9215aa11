//! Boot services run by the leaf agent for its rack: DHCPv4 ([`dhcp`]),
//! TFTP ([`tftp`]) and HTTP boot with the installer API ([`http`]). The
//! in-machine installer is its own crate (`metalmesh-installer`), whose wire
//! types the installer API serves; the machine lifecycle is the agent's.

pub mod dhcp;
pub mod http;
pub mod per_source;
pub mod root;
pub mod router_advert;
pub mod tftp;
