//! The records the API reads on every request, kept current from the
//! store's change feed: machines and IP records parsed once, and the small
//! kinds a view or a decision needs (switches, sizes, reservations,
//! networks, images, projects) as their JSON. Listing, picking candidates
//! and finding addresses in use then cost a walk over memory, not 10,000
//! JSON documents or an SQLite query.

use metalmesh_inventory::model::{Ip, Machine};
use metalmesh_inventory::{Record, RecordKind, Store, Version};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// One machine record: its version and value.
#[derive(Debug, Clone)]
pub struct Indexed {
    /// The record key (`<switch>/<uuid>`).
    pub key: Arc<str>,
    pub version: Version,
    pub machine: Arc<Machine>,
}

#[derive(Debug, Default)]
pub struct MachineIndex {
    /// By record key (`<switch>/<uuid>`).
    by_key: RwLock<HashMap<String, Indexed>>,
    /// IP records by address, with their versions.
    ips: RwLock<HashMap<String, (Version, Ip)>>,
    /// The small kinds by key: their JSON.
    small: RwLock<HashMap<RecordKind, HashMap<String, Arc<str>>>>,
    /// Bumped on every change to a small kind (views of machines depend on
    /// switches, sizes and reservations).
    generation: AtomicU64,
}

/// A record's value, parsed; `None` for a tombstone or an unreadable one.
fn parsed<T: for<'de> serde::Deserialize<'de>>(record: &Record) -> Option<T> {
    record
        .value
        .as_deref()
        .and_then(|v| serde_json::from_str(v).ok())
}

/// A machine record as the index keeps it.
fn indexed(record: &Record) -> Option<Indexed> {
    Some(Indexed {
        key: Arc::from(record.id.key.as_str()),
        version: record.version,
        machine: Arc::new(parsed::<Machine>(record)?),
    })
}

/// The kinds kept as JSON in [`MachineIndex::small`].
const SMALL_KINDS: [RecordKind; 6] = [
    RecordKind::Switch,
    RecordKind::Size,
    RecordKind::Reservation,
    RecordKind::Network,
    RecordKind::Image,
    RecordKind::Project,
];

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

    /// Every record of a small kind, parsed (unreadable ones left out).
    pub fn small<T: for<'de> serde::Deserialize<'de>>(&self, kind: RecordKind) -> Vec<T> {
        self.small
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&kind)
            .map(|records| {
                records
                    .values()
                    .filter_map(|value| serde_json::from_str(value).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Changes whenever a small kind changed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn apply_small(&self, record: &Record) {
        {
            let mut small = self
                .small
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let records = small.entry(record.id.kind).or_default();
            match &record.value {
                Some(value) => {
                    records.insert(record.id.key.clone(), Arc::from(value.as_str()));
                }
                None => {
                    records.remove(&record.id.key);
                }
            }
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
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
        match parsed(record) {
            Some(ip) => {
                ips.insert(record.id.key.clone(), (record.version, ip));
            }
            None => {
                ips.remove(&record.id.key);
            }
        }
    }

    fn apply(&self, record: &Record) {
        let mut map = self
            .by_key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match indexed(record) {
            Some(indexed) => {
                map.insert(record.id.key.clone(), indexed);
            }
            None => {
                map.remove(&record.id.key);
            }
        }
    }

    fn reload(&self, store: &Store) -> Result<(), metalmesh_inventory::StoreError> {
        // Fresh maps swapped in whole: a reader never sees them half full.
        let mut small: HashMap<RecordKind, HashMap<String, Arc<str>>> = HashMap::new();
        for kind in SMALL_KINDS {
            let records = small.entry(kind).or_default();
            for record in store.list(Some(kind))? {
                if let Some(value) = &record.value {
                    records.insert(record.id.key.clone(), Arc::from(value.as_str()));
                }
            }
        }
        *self
            .small
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = small;
        self.generation.fetch_add(1, Ordering::Relaxed);
        let mut ips = HashMap::new();
        for record in store.list(Some(RecordKind::Ip))? {
            if let Some(ip) = parsed(&record) {
                ips.insert(record.id.key.clone(), (record.version, ip));
            }
        }
        *self
            .ips
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ips;
        let records = store.list(Some(RecordKind::Machine))?;
        let mut fresh = HashMap::with_capacity(records.len());
        for record in records {
            if let Some(indexed) = indexed(&record) {
                fresh.insert(record.id.key.clone(), indexed);
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
                    Ok(record) if SMALL_KINDS.contains(&record.id.kind) => {
                        index.apply_small(&record)
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
