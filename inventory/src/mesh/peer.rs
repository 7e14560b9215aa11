//! A mesh member's identity as SWIM sees it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// `name` is the node's mesh name (also its certificate's DNS name), `addr`
/// where its mesh endpoint listens, and `bump` tells successive lives of the
/// same node apart: it starts at the node's start time in milliseconds, so a
/// restarted node is newer than the one the others may still remember as
/// down, and grows by one when SWIM declared this life down and it rejoins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
    pub bump: u64,
}

impl Peer {
    /// A stand-in for a seed known only by address: SWIM accepts an
    /// announcement addressed to any identity with the receiver's address.
    pub fn seed(addr: SocketAddr) -> Peer {
        Peer {
            name: String::new(),
            addr,
            bump: 0,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}@{}", self.name, self.addr)
        }
    }
}

impl foca::Identity for Peer {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Peer {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A newer life of the same node takes its address over; a node of
    /// another name never does, whatever it claims: the first member known
    /// at an address keeps it (each sender's own address is checked against
    /// its certificate before SWIM sees it, see `service`).
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.name == adversary.name && self.bump > adversary.bump
    }
}
