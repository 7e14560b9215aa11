//! The machines, IP records and switches' racks of the replica, parsed
//! once and kept current from the store's change feed: listing, picking
//! candidates and finding addresses in use then cost a walk over memory,
//! not 10,000 JSON documents.

use metalmesh_inventory::model::{Ip, Machine};
use metalmesh_inventory::{Record, RecordKind, Store, Version};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// One machine record: its version and value.
#[derive(Debug, Clone)]
pub struct Indexed {
    pub version: Version,
    pub machine: Arc<Machine>,
}

#[derive(Debug, Default)]
pub struct MachineIndex {
    /// By record key (`<switch>/<uuid>`).
    by_key: RwLock<HashMap<String, Indexed>>,
    /// Switch name → rack, from the switch records.
    racks: RwLock<HashMap<String, String>>,
    /// IP records by address, with their versions.
    ips: RwLock<HashMap<String, (Version, Ip)>>,
}

impl MachineIndex {
    /// Every machine record now.
    pub fn snapshot(&self) -> Vec<Indexed> {
        self.by_key
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Switch name → rack.
    pub fn racks(&self) -> HashMap<String, String> {
        self.racks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Every IP record now, with its version.
    pub fn ips(&self) -> Vec<(Version, Ip)> {
        self.ips
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn apply_ip(&self, record: &Record) {
        let mut ips = self
            .ips
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match record
            .value
            .as_deref()
            .and_then(|v| serde_json::from_str::<Ip>(v).ok())
        {
            Some(ip) => {
                ips.insert(record.id.key.clone(), (record.version, ip));
            }
            None => {
                ips.remove(&record.id.key);
            }
        }
    }

    fn apply_switch(&self, record: &Record) {
        let mut racks = self
            .racks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match record
            .value
            .as_deref()
            .and_then(|v| serde_json::from_str::<metalmesh_inventory::model::Switch>(v).ok())
        {
            Some(switch) => {
                racks.insert(switch.name, switch.rack);
            }
            None => {
                racks.remove(&record.id.key);
            }
        }
    }

    fn apply(&self, record: &Record) {
        let mut map = self
            .by_key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let parsed = record
            .value
            .as_deref()
            .and_then(|v| serde_json::from_str::<Machine>(v).ok());
        match parsed {
            Some(machine) => {
                map.insert(
                    record.id.key.clone(),
                    Indexed {
                        version: record.version,
                        machine: Arc::new(machine),
                    },
                );
            }
            None => {
                map.remove(&record.id.key);
            }
        }
    }

    fn reload(&self, store: &Store) -> Result<(), metalmesh_inventory::StoreError> {
        for record in store.list(Some(RecordKind::Switch))? {
            self.apply_switch(&record);
        }
        self.ips
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        for record in store.list(Some(RecordKind::Ip))? {
            self.apply_ip(&record);
        }
        let records = store.list(Some(RecordKind::Machine))?;
        let mut fresh = HashMap::with_capacity(records.len());
        for record in records {
            if let Some(machine) = record
                .value
                .as_deref()
                .and_then(|v| serde_json::from_str::<Machine>(v).ok())
            {
                fresh.insert(
                    record.id.key.clone(),
                    Indexed {
                        version: record.version,
                        machine: Arc::new(machine),
                    },
                );
            }
        }
        *self
            .by_key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// Loads the store's machines now, then follows its changes until
    /// `cancel` (a lagging feed reloads everything).
    pub fn follow(self: &Arc<Self>, store: Store, cancel: CancellationToken) {
        let mut changes = store.subscribe();
        if let Err(error) = self.reload(&store) {
            tracing::error!(%error, "loading machines");
        }
        let index = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    () = cancel.cancelled() => return,
                    change = changes.recv() => change,
                };
                match change {
                    Ok(record) if record.id.kind == RecordKind::Machine => index.apply(&record),
                    Ok(record) if record.id.kind == RecordKind::Switch => {
                        index.apply_switch(&record)
                    }
                    Ok(record) if record.id.kind == RecordKind::Ip => index.apply_ip(&record),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let reloaded =
                            metalmesh_inventory::store::blocking(|| index.reload(&store));
                        if let Err(error) = reloaded {
                            tracing::error!(%error, "reloading machines");
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}
