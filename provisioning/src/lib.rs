//! Boot services run by the leaf agent for its rack: DHCPv4 ([`dhcp`]),
//! TFTP ([`tftp`]) and HTTP boot ([`http`]), and the machine lifecycle state
//! machine ([`lifecycle`]). The in-machine installer joins them here.

pub mod dhcp;
pub mod http;
pub mod installer;
pub mod lifecycle;
pub mod root;
pub mod router_advert;
pub mod tftp;
