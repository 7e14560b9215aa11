//! Durable lease storage: SQLite in WAL mode with `synchronous = FULL`, so a
//! committed lease survives `kill -9` and power loss. The server batches the
//! leases of several requests into one transaction (group commit) and sends
//! their ACKs only after it committed.

use std::net::Ipv4Addr;
use std::path::Path;

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use super::client::ClientKind;

/// Schema version this build writes; older files are migrated, newer refused.
const SCHEMA_VERSION: i64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Acknowledged: the address belongs to the client until `expires`.
    Bound,
    /// Given back by the client; kept so the client gets it again.
    Released,
    /// Ran out; reusable, but kept for the same client while the pool allows.
    Expired,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Bound => "bound",
            LeaseState::Released => "released",
            LeaseState::Expired => "expired",
        }
    }
    fn parse(text: &str) -> Option<Self> {
        match text {
            "bound" => Some(LeaseState::Bound),
            "released" => Some(LeaseState::Released),
            "expired" => Some(LeaseState::Expired),
            _ => None,
        }
    }
}

/// One client's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub state: LeaseState,
    /// Seconds since the Unix epoch.
    pub expires: u64,
    pub client_kind: ClientKind,
    pub hostname: Option<String>,
    pub updated: u64,
    /// The provisioning bridge port the lease was obtained on (from the
    /// leaf's packet mark); `None` when it is not known (relayed requests,
    /// no leaf policy, or a lease older than port tracking).
    #[serde(default)]
    pub port: Option<String>,
}

/// An address withdrawn after a DECLINE (someone else uses it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub ip: Ipv4Addr,
    pub until: u64,
    pub mac: String,
}

/// One change to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Lease(Lease),
    Quarantine(Quarantine),
    /// The lease of this MAC is gone (its address was quarantined).
    Forget {
        mac: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("lease store {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "lease store {path} has schema version {found}; this build reads up to {SCHEMA_VERSION} (refusing to touch it)"
    )]
    NewerSchema { path: String, found: i64 },
    #[error("lease store {path}: corrupt row: {detail}")]
    Corrupt { path: String, detail: String },
}

/// The SQLite lease store.
#[derive(Debug)]
pub struct LeaseStore {
    connection: Connection,
    path: String,
}

/// The file's schema version; a newer one than this build knows is refused.
fn schema_version(connection: &Connection, name: &str) -> Result<i64, StoreError> {
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|source| StoreError::Sqlite {
            path: name.to_string(),
            source,
        })?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: name.to_string(),
            found: version,
        });
    }
    Ok(version)
}

impl LeaseStore {
    pub fn open(path: &Path) -> Result<LeaseStore, StoreError> {
        let name = path.display().to_string();
        let err = |source| StoreError::Sqlite {
            path: name.clone(),
            source,
        };
        let connection = Connection::open(path).map_err(err)?;
        // A corrupt file fails here, loudly and before anything is written
        // to it, instead of being reset.
        let check: String = connection
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(err)?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: name,
                detail: check,
            });
        }
        let version = schema_version(&connection, &name)?;
        if version < SCHEMA_VERSION {
            // Every step in one transaction: a file a step fails on (a
            // table that is not what its version says) is left exactly as
            // it was, and refused.
            let mut script = String::from("BEGIN;");
            if version < 1 {
                script.push_str(
                    "CREATE TABLE IF NOT EXISTS leases (
                         mac TEXT PRIMARY KEY,
                         ip TEXT NOT NULL UNIQUE,
                         state TEXT NOT NULL,
                         expires INTEGER NOT NULL,
                         client_kind TEXT NOT NULL,
                         hostname TEXT,
                         updated INTEGER NOT NULL
                     );
                     CREATE TABLE IF NOT EXISTS quarantine (
                         ip TEXT PRIMARY KEY,
                         until INTEGER NOT NULL,
                         mac TEXT NOT NULL
                     );",
                );
            }
            if version < 2 {
                // Version 2: the port a lease was obtained on.
                script.push_str("ALTER TABLE leases ADD COLUMN port TEXT;");
            }
            script.push_str(&format!("PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"));
            if let Err(error) = connection.execute_batch(&script) {
                let _ = connection.execute_batch("ROLLBACK;");
                return Err(err(error));
            }
        }
        // WAL only once the file is known good: switching rewrites its header.
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(err)?;
        Ok(LeaseStore {
            connection,
            path: name,
        })
    }

    /// Opens the file beside its running server, to read: nothing is
    /// checked, migrated or written. `None` while the server has not set up its
    /// tables yet; an error if the file does not exist.
    pub fn open_read_only(path: &Path) -> Result<Option<LeaseStore>, StoreError> {
        let name = path.display().to_string();
        let err = |source| StoreError::Sqlite {
            path: name.clone(),
            source,
        };
        let connection =
            Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(err)?;
        let version = schema_version(&connection, &name)?;
        // A file the server has not migrated yet is read once it has.
        Ok((version >= SCHEMA_VERSION).then_some(LeaseStore {
            connection,
            path: name,
        }))
    }

    fn error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    pub fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT mac, ip, state, expires, client_kind, hostname, updated, port FROM leases ORDER BY ip")
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, i64>(6)?,
                    row.get::<_, Option<String>>(7)?,
                ))
            })
            .map_err(|e| self.error(e))?;
        let mut leases = Vec::new();
        for row in rows {
            let (mac, ip, state, expires, kind, hostname, updated, port) =
                row.map_err(|e| self.error(e))?;
            let corrupt = |what: &str| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("lease of {mac}: bad {what}"),
            };
            leases.push(Lease {
                ip: ip.parse().map_err(|_| corrupt("ip"))?,
                state: LeaseState::parse(&state).ok_or_else(|| corrupt("state"))?,
                expires: u64::try_from(expires).map_err(|_| corrupt("expiry"))?,
                client_kind: ClientKind::parse(&kind).ok_or_else(|| corrupt("client kind"))?,
                hostname,
                updated: u64::try_from(updated).map_err(|_| corrupt("update time"))?,
                port,
                mac,
            });
        }
        Ok(leases)
    }

    pub fn quarantine(&self) -> Result<Vec<Quarantine>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT ip, until, mac FROM quarantine")
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (ip, until, mac) = row.map_err(|e| self.error(e))?;
            out.push(Quarantine {
                ip: ip.parse().map_err(|_| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("quarantined address {ip}"),
                })?,
                until: u64::try_from(until).unwrap_or(0),
                mac,
            });
        }
        Ok(out)
    }

    /// Applies the writes in one transaction; when this returns Ok they are on disk.
    pub fn commit(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.connection.transaction().map_err(err)?;
        for write in writes {
            match write {
                Write::Lease(l) => {
                    // An address moves to a new owner: the old row goes first.
                    tx.prepare_cached("DELETE FROM leases WHERE ip = ?1 AND mac <> ?2")
                        .and_then(|mut s| s.execute(params![l.ip.to_string(), l.mac]))
                        .map_err(err)?;
                    tx.prepare_cached(
                        "INSERT INTO leases (mac, ip, state, expires, client_kind, hostname, updated, port)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT(mac) DO UPDATE SET ip = excluded.ip, state = excluded.state,
                           expires = excluded.expires, client_kind = excluded.client_kind,
                           hostname = excluded.hostname, updated = excluded.updated,
                           port = excluded.port",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            l.mac,
                            l.ip.to_string(),
                            l.state.as_str(),
                            l.expires as i64,
                            l.client_kind.as_str(),
                            l.hostname,
                            l.updated as i64,
                            l.port
                        ])
                    })
                    .map_err(err)?;
                }
                Write::Quarantine(q) => {
                    tx.execute(
                        "INSERT INTO quarantine (ip, until, mac) VALUES (?1, ?2, ?3)
                         ON CONFLICT(ip) DO UPDATE SET until = excluded.until, mac = excluded.mac",
                        params![q.ip.to_string(), q.until as i64, q.mac],
                    )
                    .map_err(err)?;
                }
                Write::Forget { mac } => {
                    tx.execute("DELETE FROM leases WHERE mac = ?1", params![mac])
                        .map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)
    }

    /// The lease of one MAC.
    #[cfg(test)]
    fn lease_of(&self, mac: &str) -> Result<Option<Lease>, StoreError> {
        Ok(self.leases()?.into_iter().find(|l| l.mac == mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(mac: &str, ip: [u8; 4]) -> Lease {
        Lease {
            mac: mac.into(),
            ip: Ipv4Addr::from(ip),
            state: LeaseState::Bound,
            expires: 100,
            client_kind: ClientKind::Ipxe,
            hostname: Some("m1".into()),
            updated: 1,
            port: Some("swp1".into()),
        }
    }

    #[test]
    fn a_version_1_file_gains_ports_and_keeps_its_leases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE leases (mac TEXT PRIMARY KEY, ip TEXT NOT NULL UNIQUE,
                   state TEXT NOT NULL, expires INTEGER NOT NULL, client_kind TEXT NOT NULL,
                   hostname TEXT, updated INTEGER NOT NULL);
                 CREATE TABLE quarantine (ip TEXT PRIMARY KEY, until INTEGER NOT NULL, mac TEXT NOT NULL);
                 INSERT INTO leases VALUES ('aa', '10.0.0.10', 'bound', 100, 'ipxe', NULL, 1);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        // A reader waits for the server's migration instead of failing.
        assert!(LeaseStore::open_read_only(&path).unwrap().is_none());
        let mut store = LeaseStore::open(&path).unwrap();
        let old = store.lease_of("aa").unwrap().unwrap();
        assert_eq!((old.ip, old.port), (Ipv4Addr::new(10, 0, 0, 10), None));
        store
            .commit(&[Write::Lease(lease("aa", [10, 0, 0, 10]))])
            .unwrap();
        drop(store);
        let store = LeaseStore::open(&path).unwrap();
        assert_eq!(
            store.lease_of("aa").unwrap().unwrap().port.as_deref(),
            Some("swp1")
        );
    }

    #[test]
    fn leases_survive_reopen_and_addresses_move() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.db");
        {
            let mut store = LeaseStore::open(&path).unwrap();
            store
                .commit(&[
                    Write::Lease(lease("aa", [10, 0, 0, 10])),
                    Write::Lease(lease("bb", [10, 0, 0, 11])),
                    Write::Quarantine(Quarantine {
                        ip: Ipv4Addr::new(10, 0, 0, 12),
                        until: 50,
                        mac: "cc".into(),
                    }),
                ])
                .unwrap();
            // bb's address goes to cc: bb's row disappears.
            store
                .commit(&[Write::Lease(lease("cc", [10, 0, 0, 11]))])
                .unwrap();
        }
        let store = LeaseStore::open(&path).unwrap();
        let leases = store.leases().unwrap();
        assert_eq!(leases.len(), 2);
        assert_eq!(
            store.lease_of("cc").unwrap().unwrap().ip,
            Ipv4Addr::new(10, 0, 0, 11)
        );
        assert!(store.lease_of("bb").unwrap().is_none());
        assert_eq!(store.quarantine().unwrap().len(), 1);
        // Readers beside the server see the same leases.
        let reader = LeaseStore::open_read_only(&path).unwrap().unwrap();
        assert_eq!(reader.leases().unwrap(), leases);
        assert!(LeaseStore::open_read_only(&dir.path().join("none.db")).is_err());
        assert!(
            !dir.path().join("none.db").exists(),
            "a reader created the file"
        );
    }

    #[test]
    fn corrupt_and_newer_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
        assert!(LeaseStore::open(&garbage).is_err());
        assert_eq!(std::fs::read(&garbage).unwrap(), vec![0x42u8; 8192]);
        let newer = dir.path().join("newer.db");
        Connection::open(&newer)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99;")
            .unwrap();
        let error = LeaseStore::open(&newer).unwrap_err().to_string();
        assert!(error.contains("schema version 99"), "{error}");
    }
}
