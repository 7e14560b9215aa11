//! The dataplane's three inputs merged into the intents it renders: the
//! tenant networks (the intents file, then the API's network records, see
//! [`super::networks`]), the routed ports of allocated machines,
//! and the tenant routes learned over BGP (EVPN type 5). Each source is a
//! watch; the merged intents are sent only when they change.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::intent::{Intents, RemoteIntent};
use crate::machines::core::MachinePorts;

/// A remote tenant route learned over BGP, for the VRF of its VNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedRemote {
    pub vni: u32,
    pub remote: RemoteIntent,
}

/// The operator's intents, with machine ports joined to their VRFs and
/// learned remotes added to the VRF of their VNI (an operator's remote for
/// the same prefix wins; a remote for a VNI no VRF has is not rendered).
pub fn merge(operator: &Intents, machines: &MachinePorts, learned: &[LearnedRemote]) -> Intents {
    let mut merged = operator.clone();
    for (vrf, port) in machines {
        if let Some(target) = merged.vrfs.iter_mut().find(|v| &v.name == vrf)
            && !target.ports.iter().any(|p| p.name == port.name)
        {
            target.ports.push(port.clone());
        }
    }
    for learned in learned {
        if let Some(target) = merged.vrfs.iter_mut().find(|v| v.vni == learned.vni)
            && !target
                .remotes
                .iter()
                .any(|r| r.prefix == learned.remote.prefix)
            // A /32 routed here stays here.
            && !target
                .ports
                .iter()
                .any(|p| learned.remote.prefix.len == 32 && p.addresses.contains(&learned.remote.prefix.address))
        {
            target.remotes.push(learned.remote.clone());
        }
    }
    merged
}

/// Keeps the merged intents current.
pub async fn run(
    mut operator: watch::Receiver<Intents>,
    mut machines: watch::Receiver<MachinePorts>,
    mut learned: watch::Receiver<Vec<LearnedRemote>>,
    merged_tx: Arc<watch::Sender<Intents>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let merged = merge(
            &operator.borrow_and_update(),
            &machines.borrow_and_update(),
            &learned.borrow_and_update(),
        );
        merged_tx.send_if_modified(|current| {
            let changed = *current != merged;
            *current = merged;
            changed
        });
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            changed = operator.changed() => changed?,
            changed = machines.changed() => changed?,
            changed = learned.changed() => changed?,
        }
    }
}
