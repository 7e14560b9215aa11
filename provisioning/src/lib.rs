//! Boot services run by the leaf agent for its rack: DHCPv4 ([`dhcp`]),
//! TFTP ([`tftp`]) and HTTP boot ([`http`]). The machine lifecycle and the
//! in-machine installer join them here.

pub mod dhcp;
pub mod http;
pub mod root;
pub mod tftp;
