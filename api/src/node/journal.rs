//! The API node's own file (`<state_dir>/api.db`, SQLite): the audit log of
//! every change — who, what, when, result — and the idempotency keys of
//! allocations. Everything else the API knows is in the mesh replica, so a
//! replaced node rebuilds from the mesh.

use crate::node::auth::Principal;
use rusqlite::{Connection, params};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const SCHEMA_VERSION: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{path} has schema version {found}; this build reads up to {SCHEMA_VERSION}")]
    Newer { path: PathBuf, found: i64 },
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    connection: Mutex<Connection>,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Entry {
    /// Milliseconds since the Unix epoch.
    pub time: u64,
    pub subject: String,
    pub action: String,
    pub target: String,
    pub result: String,
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let sqlite = |source| JournalError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let connection = Connection::open(path).map_err(sqlite)?;
        let found: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sqlite)?;
        if found > SCHEMA_VERSION {
            return Err(JournalError::Newer {
                path: path.to_path_buf(),
                found,
            });
        }
        if found < 1 {
            connection
                .execute_batch(
                    "PRAGMA journal_mode = WAL;
                     BEGIN;
                     CREATE TABLE audit (
                         id INTEGER PRIMARY KEY,
                         time INTEGER NOT NULL,
                         subject TEXT NOT NULL,
                         action TEXT NOT NULL,
                         target TEXT NOT NULL,
                         result TEXT NOT NULL
                     );
                     PRAGMA user_version = 1;
                     COMMIT;",
                )
                .map_err(sqlite)?;
        }
        if found < 2 {
            connection
                .execute_batch(
                    "BEGIN;
                     CREATE TABLE idempotency (
                         subject TEXT NOT NULL,
                         key TEXT NOT NULL,
                         machine TEXT NOT NULL,
                         time INTEGER NOT NULL,
                         PRIMARY KEY (subject, key)
                     );
                     PRAGMA user_version = 2;
                     COMMIT;",
                )
                .map_err(sqlite)?;
        }
        Ok(Journal {
            path: path.to_path_buf(),
            connection: Mutex::new(connection),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends an entry; a failure to write is logged (the change itself
    /// already happened in the mesh).
    pub fn record(&self, who: &Principal, action: &str, target: &str, result: &str) {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let written = self.lock().execute(
            "INSERT INTO audit (time, subject, action, target, result) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![time, who.subject, action, target, result],
        );
        if let Err(error) = written {
            tracing::error!(path = %self.path.display(), %error, %action, %target, "audit entry not written");
        }
        tracing::info!(subject = %who.subject, %action, %target, %result, "audit");
    }

    /// The machine an allocation with idempotency key `key` of `subject`
    /// gave (keys are per subject: one user cannot replay another's).
    pub fn idempotent(&self, subject: &str, key: &str) -> Result<Option<String>, JournalError> {
        use rusqlite::OptionalExtension as _;
        self.lock()
            .query_row(
                "SELECT machine FROM idempotency WHERE subject = ?1 AND key = ?2",
                params![subject, key],
                |row| row.get(0),
            )
            .optional()
            .map_err(|source| JournalError::Sqlite {
                path: self.path.clone(),
                source,
            })
    }

    pub fn remember(&self, subject: &str, key: &str, machine: &str) -> Result<(), JournalError> {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO idempotency (subject, key, machine, time) VALUES (?1, ?2, ?3, ?4)",
                params![subject, key, machine, time],
            )
            .map(|_| ())
            .map_err(|source| JournalError::Sqlite {
                path: self.path.clone(),
                source,
            })
    }

    /// The newest `limit` entries, newest first.
    pub fn entries(&self, limit: u32) -> Result<Vec<Entry>, JournalError> {
        let sqlite = |source| JournalError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let connection = self.lock();
        let mut statement = connection
            .prepare(
                "SELECT time, subject, action, target, result FROM audit ORDER BY id DESC LIMIT ?1",
            )
            .map_err(sqlite)?;
        let rows = statement
            .query_map(params![limit], |row| {
                Ok(Entry {
                    time: row.get::<_, i64>(0)? as u64,
                    subject: row.get(1)?,
                    action: row.get(2)?,
                    target: row.get(3)?,
                    result: row.get(4)?,
                })
            })
            .map_err(sqlite)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sqlite)
    }
}
