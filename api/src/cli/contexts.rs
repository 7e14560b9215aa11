//! `metalmesh login` and contexts: where the API is, the CA of its
//! certificate and a token, saved per context in
//! `$XDG_CONFIG_HOME/metalmesh/config` (default `~/.config/metalmesh/config`,
//! mode 0600: it holds tokens). Flags and `METALMESH_*` variables override
//! the current context.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub api: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    pub token: String,
}

/// The config file's path.
pub fn path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(
            std::env::var_os("HOME")
                .ok_or_else(|| anyhow::anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))?,
        )
        .join(".config"),
    };
    Ok(base.join("metalmesh").join("config"))
}

impl CliConfig {
    /// The file at `path`, or an empty configuration if there is none.
    pub fn load(path: &Path) -> anyhow::Result<CliConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(CliConfig::default()),
            Err(error) => Err(anyhow::anyhow!("{}: {error}", path.display())),
        }
    }

    /// Writes the file whole (a new file renamed over the old), owner-only.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = path
            .parent()
            .ok_or_else(|| anyhow::anyhow!("{} has no directory", path.display()))?;
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let staged = path.with_extension("new");
        let text = toml::to_string(self)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&staged)
            .map_err(|e| anyhow::anyhow!("{}: {e}", staged.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&staged, path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The context in use: `name`, or the current one.
    pub fn context(&self, name: Option<&str>) -> Option<&Context> {
        self.contexts.get(name.or(self.current.as_deref())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_round_trip_owner_only_and_the_current_one_is_used() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("metalmesh/config");
        let mut config = CliConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config, CliConfig::default());
        config.contexts.insert(
            "lab".into(),
            Context {
                api: "https://api.lab:8443".into(),
                ca: Some("/etc/ca.pem".into()),
                token: "t1".into(),
            },
        );
        config.current = Some("lab".into());
        config.save(&path).unwrap_or_else(|e| panic!("{e}"));
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = CliConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, config);
        assert_eq!(back.context(None).map(|c| c.token.as_str()), Some("t1"));
        assert!(back.context(Some("prod")).is_none());
        std::fs::write(&path, "current = 1\n").unwrap_or_else(|e| panic!("{e}"));
        let error = CliConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("config"), "{error}");
    }
}
