//! Who may write what: the one table every replica (the SQLite store, the
//! in-memory replica of the simulation, the fuzzer) checks a record against
//! once its signature has named the writer's role.
//!
//! | kind | written by | key |
//! |---|---|---|
//! | switch | leaf | the leaf's own name |
//! | port, machine, lease | leaf | `<leaf>/…` |
//! | project, network, ip, image, size, partition, allocation-intent, reservation | api | free |
//! | node | any node | the node's own name |
//! | revocation | the mesh CA (origin [`CA_ORIGIN`]) | the revoked node's name |
//!
//! A kind this build does not know has no rule here: it is stored and
//! relayed on the strength of its signature alone (see `docs/design/inventory.md`).

use crate::record::RecordKind;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The origin of records signed by the mesh CA's own key. No node
/// certificate may carry this name.
pub const CA_ORIGIN: &str = "mesh-ca";

/// What a node is, as its certificate states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A leaf switch agent: writes its rack's inventory.
    Leaf,
    /// The API node: writes the tenant-facing records.
    Api,
    /// A person's tool: may join and send commands, writes no records but
    /// its node record.
    Operator,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Leaf, Role::Api, Role::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leaf => "leaf",
            Role::Api => "api",
            Role::Operator => "operator",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a record's key must relate to its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRule {
    /// The key is the origin's name.
    IsOrigin,
    /// The key is `<origin>/<something>`.
    UnderOrigin,
    /// Any key.
    Free,
}

/// The writers of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writers {
    /// Roles whose certificates may sign it; empty for CA-signed kinds.
    pub roles: &'static [Role],
    pub key: KeyRule,
    /// Signed by the mesh CA's key under [`CA_ORIGIN`], not by a node.
    pub by_ca: bool,
}

pub const LEAF_ONLY: &[Role] = &[Role::Leaf];
pub const API_ONLY: &[Role] = &[Role::Api];
pub const ANY_NODE: &[Role] = &[Role::Leaf, Role::Api, Role::Operator];

/// The rule of `kind`; `None` for a kind this build does not know.
pub fn writers(kind: RecordKind) -> Option<Writers> {
    let node = |roles, key| {
        Some(Writers {
            roles,
            key,
            by_ca: false,
        })
    };
    match kind {
        RecordKind::Switch => node(LEAF_ONLY, KeyRule::IsOrigin),
        RecordKind::Port | RecordKind::Machine | RecordKind::Lease => {
            node(LEAF_ONLY, KeyRule::UnderOrigin)
        }
        RecordKind::Project
        | RecordKind::Network
        | RecordKind::Ip
        | RecordKind::Image
        | RecordKind::Size
        | RecordKind::Partition
        | RecordKind::AllocationIntent
        | RecordKind::Reservation => node(API_ONLY, KeyRule::Free),
        RecordKind::Node => node(ANY_NODE, KeyRule::IsOrigin),
        RecordKind::Revocation => Some(Writers {
            roles: &[],
            key: KeyRule::Free,
            by_ca: true,
        }),
        RecordKind::Other(_) => None,
    }
}

/// Why a writer may not write a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriterRefusal {
    #[error("a {role} may not write {kind} records")]
    Role { role: Role, kind: RecordKind },
    #[error("{kind} records of {origin} must be keyed {expected}")]
    Key {
        kind: RecordKind,
        origin: String,
        expected: String,
    },
    #[error("{kind} records are signed by the mesh CA only")]
    CaOnly { kind: RecordKind },
    #[error("only {kind} records may be written under {CA_ORIGIN}")]
    NotByCa { kind: RecordKind },
}

/// Checks that a node of `role` named `origin` may write `kind` under `key`.
/// Kinds this build does not know pass (their signature is all it can check).
pub fn check(kind: RecordKind, key: &str, origin: &str, role: Role) -> Result<(), WriterRefusal> {
    let Some(rule) = writers(kind) else {
        return Ok(());
    };
    if rule.by_ca {
        return Err(WriterRefusal::CaOnly { kind });
    }
    if !rule.roles.contains(&role) {
        return Err(WriterRefusal::Role { role, kind });
    }
    let fits = match rule.key {
        KeyRule::IsOrigin => key == origin,
        KeyRule::UnderOrigin => key
            .strip_prefix(origin)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty()),
        KeyRule::Free => true,
    };
    if fits {
        Ok(())
    } else {
        Err(WriterRefusal::Key {
            kind,
            origin: origin.to_string(),
            expected: match rule.key {
                KeyRule::IsOrigin => format!("{origin:?}"),
                _ => format!("\"{origin}/…\""),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_write_their_own_rack_only() {
        assert!(check(RecordKind::Switch, "leaf1", "leaf1", Role::Leaf).is_ok());
        assert!(check(RecordKind::Switch, "leaf2", "leaf1", Role::Leaf).is_err());
        assert!(check(RecordKind::Lease, "leaf1/aa:bb", "leaf1", Role::Leaf).is_ok());
        for key in ["leaf2/aa:bb", "leaf1", "leaf1/", "leaf10/aa"] {
            assert!(
                check(RecordKind::Lease, key, "leaf1", Role::Leaf).is_err(),
                "{key}"
            );
        }
        assert!(check(RecordKind::Network, "n1", "leaf1", Role::Leaf).is_err());
        assert!(check(RecordKind::Machine, "api/x", "api", Role::Api).is_err());
    }

    #[test]
    fn the_api_writes_tenant_records_and_nobody_writes_revocations() {
        assert!(check(RecordKind::AllocationIntent, "m-1", "api", Role::Api).is_ok());
        assert!(check(RecordKind::Project, "p", "op", Role::Operator).is_err());
        for role in Role::ALL {
            assert!(check(RecordKind::Revocation, "leaf1", "x", role).is_err());
            assert!(check(RecordKind::Node, "x", "x", role).is_ok());
        }
        let future = RecordKind::from_name("flavor").unwrap();
        assert!(check(future, "anything", "leaf1", Role::Leaf).is_ok());
        assert!(RecordKind::Network.is_api_owned());
        assert!(!RecordKind::Lease.is_api_owned());
    }
}
