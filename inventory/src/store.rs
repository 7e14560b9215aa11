//! The node-local replica: every record of the mesh in one SQLite file (WAL,
//! synchronous writes), with a change feed subsystems subscribe to.
//!
//! Opening refuses, with the path in the error, a file that is not a healthy
//! SQLite database or that carries a newer schema than this build knows;
//! nothing is ever reset silently.

use crate::clock::Clock;
use crate::digest::{DigestIndex, OriginDigest, RootDigest};
use crate::record::{Record, RecordKey, RecordKind, Version};
use crate::replica::Replica;
use crate::trust::keyring::TrustCounters;
use crate::trust::{Keyring, KnownNode, Signer, Trust};
use rusqlite::{Connection, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// The schema this build writes. Migrations below bring older files up.
pub const SCHEMA_VERSION: i64 = 2;
/// Changes buffered per subscriber before it is told it lagged.
const CHANGE_FEED_DEPTH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("inventory store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("inventory store {path} is corrupt ({detail}); refusing to reset it")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "inventory store {path} has schema version {found}; this build reads up to {SCHEMA_VERSION} (refusing to touch it)"
    )]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("record {id} refused: {reason}")]
    Invalid { id: String, reason: String },
    #[error("inventory store {path}: cannot make it owner-only: {source}")]
    Mode {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The store; cheap to clone (shared handle).
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    origin: String,
    clock: Clock,
    state: Mutex<State>,
    changes: broadcast::Sender<Record>,
}

#[derive(Debug)]
struct State {
    connection: Connection,
    digest: DigestIndex,
    /// In a mesh: what this node signs with and checks others against.
    /// Without, records stay unsigned and nothing is taken from others.
    trust: Option<StoreTrust>,
}

#[derive(Debug)]
struct StoreTrust {
    signer: Signer,
    keyring: Keyring,
}

impl Store {
    /// Opens (creating if missing) the store at `path` for the node
    /// `origin`, outside any mesh: its records are not signed and it takes
    /// none from other nodes.
    pub fn open(path: &Path, origin: &str) -> Result<Store, StoreError> {
        Store::open_inner(path, origin)
    }

    /// Opens the store of a mesh node. Every stored record is checked again
    /// (signature, writer, revocation): this node's own records that fail
    /// are signed anew (a file from before signatures, or a renewed key),
    /// others' are deleted and counted (the mesh brings the genuine ones
    /// back). Then this node's `node` record is written, and when its key
    /// changed, every record of its own is rewritten under the new key.
    pub fn open_signed(path: &Path, trust: Trust) -> Result<Store, StoreError> {
        let origin = trust.keyring.own_name().to_string();
        let store = Store::open_inner(path, &origin)?;
        store.install_trust(trust)?;
        Ok(store)
    }

    fn open_inner(path: &Path, origin: &str) -> Result<Store, StoreError> {
        let sqlite = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let connection = Connection::open(path).map_err(sqlite)?;
        // The first statement that reads the file tells a non-database apart.
        let check: String = connection
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(|source| StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: source.to_string(),
            })?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: check,
            });
        }
        // It holds secrets this node keeps for its machines: owner only
        // (SQLite gives its journal files the database file's mode).
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Err(source) =
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            {
                return Err(StoreError::Mode {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        let found: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sqlite)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found,
            });
        }
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(sqlite)?;
        migrate(&connection, found).map_err(sqlite)?;

        let clock = Clock::new();
        let now = crate::clock::now_version();
        let mut digest = DigestIndex::default();
        {
            let mut statement = connection
                .prepare("SELECT kind, key, origin, version FROM records")
                .map_err(sqlite)?;
            let mut rows = statement.query([]).map_err(sqlite)?;
            while let Some(row) = rows.next().map_err(sqlite)? {
                let (id, origin_of_row, version) = id_row(path, row)?;
                if origin_of_row == origin {
                    clock.observe(version, now);
                }
                digest.add(&origin_of_row, &id, version);
            }
        }
        let (changes, _) = broadcast::channel(CHANGE_FEED_DEPTH);
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                origin: origin.to_string(),
                clock,
                state: Mutex::new(State {
                    connection,
                    digest,
                    trust: None,
                }),
                changes,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The name this node writes its records under.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// Every record stored or replaced from now on, local or received.
    /// A subscriber that falls more than a few thousand changes behind gets
    /// `Lagged` and should re-read what it needs with [`Store::list`].
    pub fn subscribe(&self) -> broadcast::Receiver<Record> {
        self.inner.changes.subscribe()
    }

    /// Writes this node's own record, with a fresh version, unless the stored
    /// value is already `value` (then nothing is written or gossiped).
    /// Returns the record if it was written.
    pub fn put_local(
        &self,
        kind: RecordKind,
        key: &str,
        value: Option<String>,
    ) -> Result<Option<Record>, StoreError> {
        let id = RecordKey::new(kind, key);
        let mut state = self.lock();
        let current = self.get_locked(&state, &id)?;
        match &current {
            // Every peer would refuse the write, and replicas would never
            // agree again: one writer per key.
            Some(current) if current.origin != self.inner.origin => {
                return Err(StoreError::Invalid {
                    id: id.to_string(),
                    reason: format!("the key belongs to {}", current.origin),
                });
            }
            Some(current) if current.value == value => return Ok(None),
            None if value.is_none() => return Ok(None),
            _ => {}
        }
        // Past the stored version too: it may have been written while this
        // node's clock ran ahead further than the clock now follows.
        let now = crate::clock::now_version();
        let version = self
            .inner
            .clock
            .next(now)
            .max(current.map_or(0, |c| c.version.saturating_add(1)));
        let mut record = Record {
            id,
            origin: self.inner.origin.clone(),
            version,
            value,
            signature: Vec::new(),
        };
        if let Some(trust) = &state.trust {
            trust.signer.sign(&mut record);
        }
        let applied = self.apply_locked(&mut state, vec![record], Source::Local, now)?;
        drop(state);
        if applied.is_empty() {
            // Cannot happen: the version is past the stored one.
            return Err(StoreError::Invalid {
                id: format!("{kind}/{key}"),
                reason: "the stored version could not be superseded".into(),
            });
        }
        self.publish(&applied);
        Ok(applied.into_iter().next())
    }

    /// Serialises `value` as the JSON of this node's record.
    pub fn put_local_json<T: serde::Serialize>(
        &self,
        kind: RecordKind,
        key: &str,
        value: &T,
    ) -> Result<Option<Record>, StoreError> {
        let text = serde_json::to_string(value).map_err(|error| StoreError::Invalid {
            id: format!("{kind}/{key}"),
            reason: error.to_string(),
        })?;
        self.put_local(kind, key, Some(text))
    }

    pub fn get(&self, id: &RecordKey) -> Result<Option<Record>, StoreError> {
        let state = self.lock();
        self.get_locked(&state, id)
    }

    /// Records of one kind (or all), tombstones included, ordered by kind and key.
    pub fn list(&self, kind: Option<RecordKind>) -> Result<Vec<Record>, StoreError> {
        let state = self.lock();
        let sqlite = |source| self.sqlite(source);
        let mut statement = state
            .connection
            .prepare(
                "SELECT kind, key, origin, version, value, signature FROM records
                 WHERE ?1 IS NULL OR kind = ?1 ORDER BY kind, key",
            )
            .map_err(sqlite)?;
        let mut rows = statement
            .query(params![kind.as_ref().map(RecordKind::as_str)])
            .map_err(sqlite)?;
        let mut records = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite)? {
            records.push(self.record_row(row)?);
        }
        Ok(records)
    }

    /// Keys of this node's live (not deleted) records of `kind`.
    pub fn own_live_keys(&self, kind: RecordKind) -> Result<Vec<String>, StoreError> {
        let state = self.lock();
        let sqlite = |source| self.sqlite(source);
        let mut statement = state
            .connection
            .prepare_cached(
                "SELECT key FROM records
                 WHERE origin = ?1 AND kind = ?2 AND value IS NOT NULL ORDER BY key",
            )
            .map_err(sqlite)?;
        let keys = statement
            .query_map(params![self.inner.origin, kind.as_str()], |row| row.get(0))
            .map_err(sqlite)?
            .collect::<Result<Vec<String>, _>>()
            .map_err(sqlite)?;
        Ok(keys)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (every write is one transaction), so a poisoned lock is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sqlite(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.inner.path.clone(),
            source,
        }
    }

    fn record_row(&self, row: &rusqlite::Row<'_>) -> Result<Record, StoreError> {
        let (id, origin, version) = id_row(&self.inner.path, row)?;
        let value: Option<String> = row.get(4).map_err(|e| self.sqlite(e))?;
        let signature: Option<Vec<u8>> = row.get(5).map_err(|e| self.sqlite(e))?;
        Ok(Record {
            id,
            origin,
            version,
            value,
            signature: signature.unwrap_or_default(),
        })
    }

    fn get_locked(&self, state: &State, id: &RecordKey) -> Result<Option<Record>, StoreError> {
        let mut statement = state
            .connection
            .prepare_cached(
                "SELECT kind, key, origin, version, value, signature FROM records
                 WHERE kind = ?1 AND key = ?2",
            )
            .map_err(|e| self.sqlite(e))?;
        let mut rows = statement
            .query(params![id.kind.as_str(), id.key])
            .map_err(|e| self.sqlite(e))?;
        match rows.next().map_err(|e| self.sqlite(e))? {
            Some(row) => Ok(Some(self.record_row(row)?)),
            None => Ok(None),
        }
    }

    /// Stores what supersedes the stored records, in one transaction.
    fn apply_locked(
        &self,
        state: &mut State,
        mut records: Vec<Record>,
        source: Source,
        now: Version,
    ) -> Result<Vec<Record>, StoreError> {
        crate::replica::keys_first(&mut records);
        let mut winners: Vec<(Option<Record>, Record)> = Vec::new();
        for record in records {
            record.validate().map_err(|reason| StoreError::Invalid {
                id: record.id.to_string(),
                reason,
            })?;
            // A record may appear twice in one batch; compare against the
            // newest seen so far.
            let previous = match winners.iter().rposition(|(_, new)| new.id == record.id) {
                Some(index) => Some(winners[index].1.clone()),
                None => self.get_locked(state, &record.id)?,
            };
            if previous.as_ref().is_some_and(|old| !record.supersedes(old)) {
                continue;
            }
            if source == Source::Received {
                let origin_records = state
                    .digest
                    .origins()
                    .get(&record.origin)
                    .map_or(0, |digest| digest.count);
                let Some(trust) = state.trust.as_mut() else {
                    tracing::warn!(record = %record.id, origin = %record.origin,
                        "received record refused: this store is not part of a mesh");
                    continue;
                };
                match crate::replica::admit(
                    &mut trust.keyring,
                    previous.as_ref(),
                    &record,
                    now,
                    origin_records,
                ) {
                    // Learned at once: the batch's next records may be
                    // signed by the key a node record brings.
                    Ok(lesson) => trust.keyring.learn(lesson),
                    Err(reason) if reason.is_transient() => {
                        tracing::debug!(record = %record.id, origin = %record.origin, %reason, "received record refused");
                        continue;
                    }
                    Err(reason) => {
                        tracing::warn!(record = %record.id, origin = %record.origin, %reason, "received record refused");
                        continue;
                    }
                }
            }
            winners.push((previous, record));
        }
        if winners.is_empty() {
            return Ok(Vec::new());
        }
        let transaction = state.connection.transaction().map_err(|e| self.sqlite(e))?;
        {
            let mut upsert = transaction
                .prepare_cached(
                    "INSERT INTO records (kind, key, origin, version, value, signature)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (kind, key) DO UPDATE SET
                         origin = excluded.origin, version = excluded.version,
                         value = excluded.value, signature = excluded.signature",
                )
                .map_err(|e| self.sqlite(e))?;
            for (_, record) in &winners {
                upsert
                    .execute(params![
                        record.id.kind.as_str(),
                        record.id.key,
                        record.origin,
                        // SQLite integers are signed: the version's bits are
                        // stored as they are (versions past 2038 read back
                        // negative in SQL, which never orders by them).
                        record.version as i64,
                        record.value,
                        (!record.signature.is_empty()).then_some(record.signature.as_slice()),
                    ])
                    .map_err(|e| self.sqlite(e))?;
            }
        }
        transaction.commit().map_err(|e| self.sqlite(e))?;
        let mut applied = Vec::with_capacity(winners.len());
        for (old, new) in winners {
            state.digest.replace(old.as_ref(), &new);
            applied.push(new);
        }
        Ok(applied)
    }

    /// Installs (or, after the node's certificate was renewed, replaces)
    /// what this store signs with and checks against; see
    /// [`Store::open_signed`]. A replaced keyring keeps the nodes and
    /// revocations it had learned.
    pub fn install_trust(&self, trust: Trust) -> Result<(), StoreError> {
        let Trust {
            signer,
            mut keyring,
            node_record,
        } = trust;
        if keyring.own_name() != self.inner.origin {
            return Err(StoreError::Invalid {
                id: format!("node/{}", keyring.own_name()),
                reason: format!("this store belongs to {}", self.inner.origin),
            });
        }
        let mut state = self.lock();
        if let Some(previous) = state.trust.take() {
            keyring.adopt_learned(&previous.keyring);
        }
        let mut records = self.all_records_locked(&state)?;
        crate::replica::keys_first(&mut records);
        let mut own_to_sign = Vec::new();
        let mut others_to_drop = Vec::new();
        for record in records {
            match keyring.verify(&record, 0) {
                Ok(lesson) => keyring.learn(lesson),
                Err(_) if record.origin == self.inner.origin => own_to_sign.push(record),
                Err(refusal) => {
                    tracing::warn!(record = %record.id, origin = %record.origin, %refusal,
                        "stored record fails its check; deleted (the mesh brings back genuine ones)");
                    keyring.count_dropped_on_load();
                    others_to_drop.push(record);
                }
            }
        }
        state.trust = Some(StoreTrust { signer, keyring });
        self.delete_locked(&mut state, &others_to_drop)?;
        let now = crate::clock::now_version();
        let mut rewritten = Vec::with_capacity(own_to_sign.len());
        for old in own_to_sign {
            let version = self
                .inner
                .clock
                .next(now)
                .max(old.version.saturating_add(1));
            let mut record = Record {
                version,
                signature: Vec::new(),
                ..old
            };
            if let Some(trust) = &state.trust {
                trust.signer.sign(&mut record);
            }
            rewritten.push(record);
        }
        if !rewritten.is_empty() {
            tracing::info!(
                count = rewritten.len(),
                "own records signed anew (a store from before signatures, or a new node key)"
            );
        }
        let applied = self.apply_locked(&mut state, rewritten, Source::Local, now)?;
        drop(state);
        self.publish(&applied);
        self.put_local_json(RecordKind::Node, &self.inner.origin.clone(), &node_record)?;
        Ok(())
    }

    /// Keeps `value` under `key` in this node only (never replicated, never
    /// in a digest); `None` deletes it.
    pub fn put_local_secret(&self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        let state = self.lock();
        let result = match value {
            Some(value) => state.connection.execute(
                "INSERT INTO secrets (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            ),
            None => state
                .connection
                .execute("DELETE FROM secrets WHERE key = ?1", params![key]),
        };
        result.map(|_| ()).map_err(|e| self.sqlite(e))
    }

    pub fn local_secret(&self, key: &str) -> Result<Option<String>, StoreError> {
        let state = self.lock();
        let mut statement = state
            .connection
            .prepare_cached("SELECT value FROM secrets WHERE key = ?1")
            .map_err(|e| self.sqlite(e))?;
        let mut rows = statement.query(params![key]).map_err(|e| self.sqlite(e))?;
        match rows.next().map_err(|e| self.sqlite(e))? {
            Some(row) => Ok(Some(row.get(0).map_err(|e| self.sqlite(e))?)),
            None => Ok(None),
        }
    }

    /// Takes in records from outside the mesh's own traffic (a revocation
    /// an operator hands to this node): checked like received records;
    /// returns those stored.
    pub fn import(&self, records: Vec<Record>) -> Result<Vec<Record>, StoreError> {
        let mut store = self.clone();
        store.apply(records, crate::clock::now_version())
    }

    /// What this store refused, by reason; `None` outside a mesh.
    /// Live records (not tombstones) by kind.
    pub fn count_by_kind(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let state = self.lock();
        let sqlite = |source| self.sqlite(source);
        let mut statement = state
            .connection
            .prepare_cached(
                "SELECT kind, COUNT(*) FROM records WHERE value IS NOT NULL GROUP BY kind ORDER BY kind",
            )
            .map_err(sqlite)?;
        let mut rows = statement.query([]).map_err(sqlite)?;
        let mut counts = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite)? {
            let kind: String = row.get(0).map_err(sqlite)?;
            let count: i64 = row.get(1).map_err(sqlite)?;
            counts.push((kind, u64::try_from(count).unwrap_or(0)));
        }
        Ok(counts)
    }

    pub fn trust_counters(&self) -> Option<TrustCounters> {
        self.lock().trust.as_ref().map(|t| t.keyring.counters())
    }

    /// What the keyring knows of node `name` (its role, keys, addresses).
    pub fn known_node(&self, name: &str) -> Option<KnownNode> {
        self.lock()
            .trust
            .as_ref()
            .and_then(|t| t.keyring.node(name).cloned())
    }

    /// Revoked nodes and when they were revoked.
    pub fn revoked(&self) -> BTreeMap<String, Version> {
        self.lock()
            .trust
            .as_ref()
            .map(|t| t.keyring.revoked().clone())
            .unwrap_or_default()
    }

    fn all_records_locked(&self, state: &State) -> Result<Vec<Record>, StoreError> {
        let sqlite = |source| self.sqlite(source);
        let mut statement = state
            .connection
            .prepare("SELECT kind, key, origin, version, value, signature FROM records")
            .map_err(sqlite)?;
        let mut rows = statement.query([]).map_err(sqlite)?;
        let mut records = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite)? {
            records.push(self.record_row(row)?);
        }
        Ok(records)
    }

    fn delete_locked(&self, state: &mut State, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let transaction = state.connection.transaction().map_err(|e| self.sqlite(e))?;
        {
            let mut delete = transaction
                .prepare_cached("DELETE FROM records WHERE kind = ?1 AND key = ?2")
                .map_err(|e| self.sqlite(e))?;
            for record in records {
                delete
                    .execute(params![record.id.kind.as_str(), record.id.key])
                    .map_err(|e| self.sqlite(e))?;
            }
        }
        transaction.commit().map_err(|e| self.sqlite(e))?;
        for record in records {
            state
                .digest
                .remove(&record.origin, &record.id, record.version);
        }
        Ok(())
    }

    fn publish(&self, applied: &[Record]) {
        for record in applied {
            // No subscribers is fine.
            let _ = self.inner.changes.send(record.clone());
        }
    }
}

impl Replica for Store {
    type Error = StoreError;

    fn root_digest(&self) -> RootDigest {
        self.lock().digest.root()
    }

    fn origin_digests(&self) -> BTreeMap<String, OriginDigest> {
        self.lock().digest.origins().clone()
    }

    fn versions_of(&self, origin: &str) -> Result<Vec<(RecordKey, Version)>, StoreError> {
        let state = self.lock();
        let mut statement = state
            .connection
            .prepare_cached("SELECT kind, key, origin, version FROM records WHERE origin = ?1")
            .map_err(|e| self.sqlite(e))?;
        let mut rows = statement.query([origin]).map_err(|e| self.sqlite(e))?;
        let mut versions = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.sqlite(e))? {
            let (id, _, version) = id_row(&self.inner.path, row)?;
            versions.push((id, version));
        }
        Ok(versions)
    }

    fn records(&self, ids: &[RecordKey]) -> Result<Vec<Record>, StoreError> {
        let state = self.lock();
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(record) = self.get_locked(&state, id)? {
                found.push(record);
            }
        }
        Ok(found)
    }

    /// Records from other nodes. Refused (dropped with a log line and
    /// counted, the rest still applied): what [`crate::replica::admit`]
    /// refuses (limits, one writer per key, signature, writer rules,
    /// revocation), and records claiming to be this node's for a key it
    /// holds. A record of this node's that it does not hold, signed with
    /// this node's own key, is taken back (a node that lost its database
    /// recovers its records from its peers); `put_local` versions the
    /// node's next write of that key past it.
    fn apply(&mut self, records: Vec<Record>, now: Version) -> Result<Vec<Record>, StoreError> {
        let mut state = self.lock();
        let mut accepted = Vec::with_capacity(records.len());
        for record in records {
            if record.origin == self.inner.origin
                && let Some(held) = self.get_locked(&state, &record.id)?
            {
                // This node's own record coming back (gossip echoes what
                // it spread) is expected; one newer than this node ever
                // wrote is not.
                if record.version > held.version {
                    tracing::warn!(record = %record.id, origin = %record.origin,
                        version = record.version, held = held.version,
                        reason = "claims to be a newer version of this node's record",
                        "received record refused");
                } else {
                    tracing::trace!(record = %record.id, "own record echoed back");
                }
                continue;
            }
            accepted.push(record);
        }
        let applied = self.apply_locked(&mut state, accepted, Source::Received, now)?;
        drop(state);
        self.publish(&applied);
        Ok(applied)
    }
}

fn id_row(
    path: &Path,
    row: &rusqlite::Row<'_>,
) -> Result<(RecordKey, String, Version), StoreError> {
    let sqlite = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let kind: String = row.get(0).map_err(sqlite)?;
    let key: String = row.get(1).map_err(sqlite)?;
    let origin: String = row.get(2).map_err(sqlite)?;
    let version: i64 = row.get(3).map_err(sqlite)?;
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let kind = RecordKind::from_name(&kind)
        .ok_or_else(|| corrupt(format!("malformed record kind {kind:?}")))?;
    Ok((RecordKey { kind, key }, origin, version as u64))
}

/// Where records being stored come from: this node's own writes (checked
/// by `put_local`), or other nodes (checked by the mesh's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Local,
    Received,
}

/// Brings a file from schema `found` to [`SCHEMA_VERSION`], one step per
/// version, each in its own transaction.
fn migrate(connection: &Connection, found: i64) -> rusqlite::Result<()> {
    if found < 1 {
        connection.execute_batch(
            "BEGIN;
             CREATE TABLE records (
                 kind TEXT NOT NULL,
                 key TEXT NOT NULL,
                 origin TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 value TEXT,
                 PRIMARY KEY (kind, key)
             );
             CREATE INDEX records_by_origin ON records (origin);
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
    }
    if found < 2 {
        // Records of schema 1 are unsigned: a mesh node signs its own anew
        // when it opens the file, and drops the others' (see `open_signed`).
        // `secrets` holds what this node keeps and never replicates.
        connection.execute_batch(
            "BEGIN;
             ALTER TABLE records ADD COLUMN signature BLOB;
             CREATE TABLE secrets (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             PRAGMA user_version = 2;
             COMMIT;",
        )?;
    }
    Ok(())
}

/// Runs `work` that touches SQLite (and so may wait for the disk) without
/// holding up the other tasks of a multi-threaded runtime.
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::Role;
    use crate::trust::test_support::{TestCa, node_record, signed};

    #[test]
    fn local_writes_version_once_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.db");
        let store = Store::open(&path, "leaf1").unwrap();
        // Owner-only: it keeps this node's secrets.
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        store.put_local_secret("machine/u1", Some("keys")).unwrap();
        assert_eq!(
            store.local_secret("machine/u1").unwrap().as_deref(),
            Some("keys")
        );
        let mut feed = store.subscribe();
        let first = store
            .put_local(RecordKind::Switch, "leaf1", Some("{\"a\":1}".into()))
            .unwrap()
            .unwrap();
        assert_eq!(feed.try_recv().unwrap(), first);
        // Same value: nothing written, nothing announced.
        assert!(
            store
                .put_local(RecordKind::Switch, "leaf1", Some("{\"a\":1}".into()))
                .unwrap()
                .is_none()
        );
        assert!(feed.try_recv().is_err());
        let digest = store.root_digest();
        drop(store);

        let store = Store::open(&path, "leaf1").unwrap();
        assert_eq!(store.root_digest(), digest);
        // Kept, and never a record: not in the digest, not in a listing.
        assert_eq!(
            store.local_secret("machine/u1").unwrap().as_deref(),
            Some("keys")
        );
        let second = store
            .put_local(RecordKind::Switch, "leaf1", Some("{\"a\":2}".into()))
            .unwrap()
            .unwrap();
        assert!(second.version > first.version);
        // A deletion is a tombstone that replicates.
        let gone = store
            .put_local(RecordKind::Switch, "leaf1", None)
            .unwrap()
            .unwrap();
        assert_eq!(gone.value, None);
        assert_eq!(store.list(None).unwrap(), vec![gone]);
    }

    /// A signed store for `leaf1` that knows `leaf2` (and its signer).
    fn leaf1_knowing_leaf2(dir: &Path, ca: &TestCa) -> (Store, Trust) {
        let mut store =
            Store::open_signed(&dir.join("s.db"), ca.trust("leaf1", Role::Leaf)).unwrap();
        let leaf2 = ca.trust("leaf2", Role::Leaf);
        let now = crate::clock::now_version();
        assert_eq!(
            store
                .apply(vec![node_record(&leaf2, 1)], now)
                .unwrap()
                .len(),
            1
        );
        (store, leaf2)
    }

    #[test]
    fn remote_records_apply_only_when_newer() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let (mut store, leaf2) = leaf1_knowing_leaf2(dir.path(), &ca);
        let sign = |record: Record| {
            let mut record = record;
            leaf2.signer.sign(&mut record);
            record
        };
        let record = |version, value: &str| {
            signed(
                &leaf2,
                RecordKind::Port,
                "leaf2/swp1",
                "leaf2",
                version,
                Some(value),
            )
        };
        assert_eq!(
            store
                .apply(vec![record(5, "b")], crate::clock::now_version())
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .apply(vec![record(4, "a")], crate::clock::now_version())
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .apply(vec![record(5, "b")], crate::clock::now_version())
                .unwrap()
                .is_empty()
        );
        // Within one batch the newest wins.
        let applied = store
            .apply(
                vec![record(7, "c"), record(6, "x")],
                crate::clock::now_version(),
            )
            .unwrap();
        assert_eq!(applied.len(), 1);
        assert_eq!(
            store
                .get(&record(0, "").id)
                .unwrap()
                .unwrap()
                .value
                .as_deref(),
            Some("c")
        );
        // Refused, the rest of a batch still applied: a version far in the
        // future, a record claiming this node, a key changing writer.
        let future = sign(Record {
            version: crate::clock::now_version() + (3600 << 32),
            ..record(8, "d")
        });
        let mine = sign(Record {
            id: RecordKey::new(RecordKind::Switch, "leaf1"),
            origin: "leaf1".into(),
            ..record(9, "e")
        });
        let stolen = sign(Record {
            origin: "leaf3".into(),
            ..record(10, "f")
        });
        store
            .put_local(RecordKind::Switch, "leaf1", Some("{}".into()))
            .unwrap();
        let overflow = sign(Record {
            version: u64::MAX,
            ..record(8, "d")
        });
        assert!(
            store
                .apply(
                    vec![future, mine, stolen, overflow],
                    crate::clock::now_version()
                )
                .unwrap()
                .is_empty()
        );
        // Its port and its node record.
        assert_eq!(store.versions_of("leaf2").unwrap().len(), 2);
        // This node cannot take a key another node writes either.
        let error = store
            .put_local(RecordKind::Port, "leaf2/swp1", Some("{}".into()))
            .unwrap_err();
        assert!(error.to_string().contains("belongs to leaf2"), "{error}");
    }

    #[test]
    fn own_live_keys_skip_tombstones_and_other_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let (mut store, leaf2) = leaf1_knowing_leaf2(dir.path(), &ca);
        for port in ["leaf1/swp1", "leaf1/swp2"] {
            store
                .put_local(RecordKind::Port, port, Some("{}".into()))
                .unwrap();
        }
        store
            .put_local(RecordKind::Port, "leaf1/swp2", None)
            .unwrap();
        store
            .put_local(RecordKind::Lease, "leaf1/aa", Some("{}".into()))
            .unwrap();
        store
            .apply(
                vec![signed(
                    &leaf2,
                    RecordKind::Port,
                    "leaf2/swp1",
                    "leaf2",
                    1,
                    Some("{}"),
                )],
                crate::clock::now_version(),
            )
            .unwrap();
        assert_eq!(
            store.own_live_keys(RecordKind::Port).unwrap(),
            vec!["leaf1/swp1".to_string()]
        );
    }

    #[test]
    fn a_node_that_lost_its_database_takes_its_records_back() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let credentials = ca.credentials("leaf1", Role::Leaf);
        let trust = || Trust::from_credentials(&credentials).unwrap();
        let before = Store::open_signed(&dir.path().join("old.db"), trust()).unwrap();
        let port = before
            .put_local(RecordKind::Port, "leaf1/swp1", Some("{}".into()))
            .unwrap()
            .unwrap();
        // A peer replays it to the node's fresh, empty database, with one
        // planted in its name (signed by another node's key) that it refuses.
        let leaf2 = ca.trust("leaf2", Role::Leaf);
        let planted = signed(
            &leaf2,
            RecordKind::Machine,
            "leaf1/m1",
            "leaf1",
            9,
            Some("{\"routed\":true}"),
        );
        let mut after = Store::open_signed(&dir.path().join("new.db"), trust()).unwrap();
        assert_eq!(
            after
                .apply(
                    vec![node_record(&leaf2, 1), port.clone(), planted.clone()],
                    crate::clock::now_version()
                )
                .unwrap()
                .into_iter()
                .filter(|r| r.origin == "leaf1")
                .collect::<Vec<_>>(),
            vec![port.clone()]
        );
        assert_eq!(after.get(&planted.id).unwrap(), None);
        assert_eq!(after.trust_counters().unwrap().unknown_signer, 1);
        // Held now: a second copy is refused, and the next write wins.
        assert!(
            after
                .apply(vec![port.clone()], crate::clock::now_version())
                .unwrap()
                .is_empty()
        );
        let gone = after
            .put_local(RecordKind::Port, "leaf1/swp1", None)
            .unwrap()
            .unwrap();
        assert!(gone.supersedes(&port));
    }

    #[test]
    fn opening_signed_checks_every_stored_record_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let ca = TestCa::new();
        // A store written outside the mesh (or before signatures): its own
        // records are signed anew, with new versions, when it joins.
        let unsigned = Store::open(&path, "leaf1").unwrap();
        let old = unsigned
            .put_local(RecordKind::Port, "leaf1/swp1", Some("{}".into()))
            .unwrap()
            .unwrap();
        assert!(old.signature.is_empty());
        drop(unsigned);
        let (store, leaf2) = {
            let mut store = Store::open_signed(&path, ca.trust("leaf1", Role::Leaf)).unwrap();
            let leaf2 = ca.trust("leaf2", Role::Leaf);
            let now = crate::clock::now_version();
            store
                .apply(
                    vec![
                        node_record(&leaf2, 1),
                        signed(
                            &leaf2,
                            RecordKind::Port,
                            "leaf2/swp1",
                            "leaf2",
                            2,
                            Some("{}"),
                        ),
                    ],
                    now,
                )
                .unwrap();
            (store, leaf2)
        };
        let resigned = store.get(&old.id).unwrap().unwrap();
        assert!(resigned.supersedes(&old) && !resigned.signature.is_empty());
        assert!(
            store
                .get(&RecordKey::new(RecordKind::Node, "leaf1"))
                .unwrap()
                .is_some()
        );
        drop(store);
        // Someone edits the file: the tampered record goes, the rest stays.
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE records SET value = '{\"up\":false}' WHERE key = 'leaf2/swp1'",
                [],
            )
            .unwrap();
        let store = Store::open_signed(&path, ca.trust("leaf1", Role::Leaf)).unwrap();
        assert_eq!(
            store
                .get(&RecordKey::new(RecordKind::Port, "leaf2/swp1"))
                .unwrap(),
            None
        );
        assert_eq!(store.trust_counters().unwrap().dropped_on_load, 1);
        assert!(store.known_node("leaf2").is_some());
        drop(leaf2);
    }

    #[test]
    fn a_key_written_while_the_clock_ran_far_ahead_is_still_superseded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::open(&path, "leaf1").unwrap();
        let ahead = Record {
            id: RecordKey::new(RecordKind::Port, "leaf1/swp1"),
            origin: "leaf1".into(),
            version: crate::clock::now_version() + (3600 << 32),
            value: Some("{\"old\":1}".into()),
            signature: Vec::new(),
        };
        store
            .apply_locked(
                &mut store.lock(),
                vec![ahead.clone()],
                Source::Local,
                crate::clock::now_version(),
            )
            .unwrap();
        drop(store);
        // Restarted with a correct clock: other keys get versions peers
        // accept, and the skewed key is still superseded.
        let store = Store::open(&path, "leaf1").unwrap();
        let other = store
            .put_local(RecordKind::Port, "leaf1/swp2", Some("{}".into()))
            .unwrap()
            .unwrap();
        assert!(other.version <= crate::clock::now_version() + crate::clock::MAX_DRIFT_VERSION);
        let newer = store
            .put_local(RecordKind::Port, "leaf1/swp1", Some("{\"new\":1}".into()))
            .unwrap()
            .unwrap();
        assert!(newer.supersedes(&ahead));
    }

    #[test]
    fn versions_past_2038_are_stored_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::open(&path, "leaf1").unwrap();
        // 2040-01-01 in NTP64 form: above i64::MAX.
        let version = 2_208_988_800u64 << 32;
        assert!(i64::try_from(version).is_err());
        let record = Record {
            id: RecordKey::new(RecordKind::Port, "leaf2/swp1"),
            origin: "leaf2".into(),
            version,
            value: Some("{}".into()),
            signature: Vec::new(),
        };
        store
            .apply_locked(
                &mut store.lock(),
                vec![record.clone()],
                Source::Local,
                crate::clock::now_version(),
            )
            .unwrap();
        drop(store);
        let store = Store::open(&path, "leaf1").unwrap();
        assert_eq!(store.get(&record.id).unwrap(), Some(record));
    }

    #[test]
    fn corrupt_and_newer_files_are_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
        let error = Store::open(&garbage, "leaf1").unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("garbage.db"), "{error}");
        assert_eq!(std::fs::read(&garbage).unwrap(), vec![0x5a; 8192]);

        let newer = dir.path().join("newer.db");
        Connection::open(&newer)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99;")
            .unwrap();
        let error = Store::open(&newer, "leaf1").unwrap_err();
        assert!(
            matches!(error, StoreError::NewerSchema { found: 99, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("newer.db"), "{error}");
    }
}
