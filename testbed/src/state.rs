//! What a running testbed consists of, persisted in its run directory so that
//! every later command (`status`, `exec`, `kill`, `start`, `down`) works from
//! the same facts the `up` that built it used.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::daemon::DaemonSpec;
use crate::error::Error;
use crate::plan::Plan;

/// Version of the state file format; bumped when fields change meaning.
pub(crate) const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct State {
    pub version: u32,
    pub plan: Plan,
    /// Daemons of each node or machine, in start order.
    pub daemons: BTreeMap<String, Vec<DaemonSpec>>,
}

impl State {
    pub(crate) fn load(path: &Path) -> Result<Option<State>, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let state: State = serde_json::from_str(&text).map_err(|e| Error::BadState {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        if state.version != STATE_VERSION {
            return Err(Error::BadState {
                path: path.to_path_buf(),
                detail: format!(
                    "format version {} (this build reads {STATE_VERSION})",
                    state.version
                ),
            });
        }
        Ok(Some(state))
    }

    /// Writes atomically (temp file + rename) so a crash never leaves half a file.
    pub(crate) fn save(&self, path: &Path) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::BadState {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }
}
