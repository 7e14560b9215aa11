//! Tenant networks from the mesh: the API node's `network` records become
//! VRF intents beside the operator's intents file. The file stays for
//! rack-local use and wins a clash: a network whose name, VNI or table an
//! operator's VRF already uses is left out (and logged), so a leaf never
//! carries two tenants in one table.

use std::sync::Arc;

use metalmesh_inventory::{RecordKind, Store, model};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::intent::{Intents, Prefix, VrfIntent};

/// The VRF intent of a network record's value; `Err` says what is wrong.
pub fn vrf_of(network: &model::Network) -> Result<VrfIntent, String> {
    let prefixes = network
        .prefixes
        .iter()
        .map(|text| Prefix::try_from(text.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VrfIntent {
        name: network.id.clone(),
        vni: network.vni,
        table: network.vrf,
        prefixes,
        ports: Vec::new(),
        remotes: Vec::new(),
    })
}

/// Every live network record of the replica as a VRF intent (unreadable ones
/// logged and left out).
pub fn from_store(store: &Store) -> anyhow::Result<Vec<VrfIntent>> {
    let mut vrfs = Vec::new();
    for record in store.list(Some(RecordKind::Network))? {
        let Some(value) = record.value else { continue };
        let network = serde_json::from_str::<model::Network>(&value)
            .map_err(|e| e.to_string())
            .and_then(|network| vrf_of(&network));
        match network {
            Ok(vrf) => vrfs.push(vrf),
            Err(error) => {
                tracing::warn!(network = %record.id.key, %error, "network record left out");
            }
        }
    }
    Ok(vrfs)
}

/// The operator's intents plus the mesh's networks that do not clash with
/// them (same name, VNI or table), the operator's first.
pub fn tenant_intents(operator: &Intents, networks: &[VrfIntent]) -> (Intents, Vec<String>) {
    let mut merged = operator.clone();
    let mut left_out = Vec::new();
    for network in networks {
        let clash = merged
            .vrfs
            .iter()
            .find(|v| v.name == network.name || v.vni == network.vni || v.table == network.table);
        match clash {
            Some(vrf) => left_out.push(format!(
                "network {} clashes with VRF {} (name, VNI or table)",
                network.name, vrf.name
            )),
            None => merged.vrfs.push(network.clone()),
        }
    }
    (merged, left_out)
}

/// Follows the store's network records into `networks`.
pub async fn follow(
    store: Store,
    networks: Arc<watch::Sender<Vec<VrfIntent>>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut changes = store.subscribe();
    loop {
        let current = metalmesh_inventory::store::blocking(|| from_store(&store))?;
        networks.send_if_modified(|old| {
            let changed = *old != current;
            *old = current;
            changed
        });
        // Wait for a network change (or a lag, after which all is reread).
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                change = changes.recv() => match change {
                    Ok(record) if record.id.kind == RecordKind::Network => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            }
        }
    }
}

/// Keeps `tenant` (the operator's intents plus the mesh's networks) current.
pub async fn combine(
    mut operator: watch::Receiver<Intents>,
    mut networks: watch::Receiver<Vec<VrfIntent>>,
    tenant: Arc<watch::Sender<Intents>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let (merged, left_out) =
            tenant_intents(&operator.borrow_and_update(), &networks.borrow_and_update());
        for reason in left_out {
            tracing::warn!(%reason, "mesh network not rendered: the intents file wins");
        }
        tenant.send_if_modified(|current| {
            let changed = *current != merged;
            *current = merged;
            changed
        });
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            changed = operator.changed() => changed?,
            changed = networks.changed() => changed?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vrf(name: &str, vni: u32, table: u32) -> VrfIntent {
        VrfIntent {
            name: name.into(),
            vni,
            table,
            prefixes: Vec::new(),
            ports: Vec::new(),
            remotes: Vec::new(),
        }
    }

    #[test]
    fn the_intents_file_wins_a_clash() {
        let operator = Intents {
            vrfs: vec![vrf("tenant-a", 100, 1000)],
        };
        let networks = [
            vrf("n-1", 101, 1001),
            vrf("tenant-a", 102, 1002),
            vrf("n-2", 100, 1003),
            vrf("n-3", 103, 1000),
        ];
        let (merged, left_out) = tenant_intents(&operator, &networks);
        let names: Vec<&str> = merged.vrfs.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["tenant-a", "n-1"]);
        assert_eq!(left_out.len(), 3, "{left_out:?}");
    }

    #[test]
    fn a_network_record_becomes_a_vrf_or_a_reason() {
        let network = model::Network {
            id: "n-1".into(),
            name: "web".into(),
            project: Some("p".into()),
            prefixes: vec!["10.0.4.0/24".into()],
            vni: 104,
            vrf: 1004,
            shared: false,
            external: false,
        };
        let vrf = vrf_of(&network).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((vrf.vni, vrf.table, vrf.prefixes.len()), (104, 1004, 1));
        let broken = model::Network {
            prefixes: vec!["10.0.4.1/24".into()],
            ..network
        };
        assert!(vrf_of(&broken).unwrap_err().contains("host bits"));
    }
}
