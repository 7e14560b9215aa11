//! Every metalmesh configuration file is TOML, read into typed structs with
//! `#[serde(deny_unknown_fields)]` so typos are errors. This crate turns the
//! parser's errors into one line naming the file, the line and the key, and
//! lets validators point at the line of the value they reject.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The text of a loaded file, kept to map byte spans to lines.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Source {
            path: path.to_path_buf(),
            text,
        })
    }

    /// Parses the whole file into `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|error| ConfigError::Invalid {
            path: self.path.clone(),
            message: describe(&self.text, &error),
        })
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        line_of(&self.text, offset)
    }

    /// An error about the value at `span` (from `toml::Spanned`), naming its line and key.
    pub fn error_at(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl std::fmt::Display,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            message: format!("line {}, key `{key}`: {message}", self.line_of(span.start)),
        }
    }

    /// An error about the file as a whole (a missing key, a cross-field rule).
    pub fn error(&self, key: &str, message: impl std::fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            message: format!("key `{key}`: {message}"),
        }
    }
}

/// 1-based line number of a byte offset in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |prefix| prefix.bytes().filter(|b| *b == b'\n').count())
        + 1
}

/// Renders a TOML error as "line N, key `k`: message" without the
/// multi-line source excerpt, so it fits one line of a CLI error.
pub fn describe(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().to_string();
    match error.span() {
        Some(span) => {
            let line = line_of(text, span.start);
            let key = text
                .lines()
                .nth(line.saturating_sub(1))
                .and_then(|l| l.split('=').next())
                .map(|k| {
                    k.trim()
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .trim()
                })
                .filter(|k| !k.is_empty());
            match key {
                Some(key) => format!("line {line}, key `{key}`: {message}"),
                None => format!("line {line}: {message}"),
            }
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Example {
        name: String,
        port: toml::Spanned<u16>,
    }

    fn source(text: &str) -> Source {
        Source {
            path: PathBuf::from("/etc/example.toml"),
            text: text.to_string(),
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let error = source("name = \"a\"\nport = 1\nprot = 1\n")
            .parse::<Example>()
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("/etc/example.toml: line 3, key `prot`"),
            "{text}"
        );
    }

    #[test]
    fn wrong_type_is_named_with_its_line() {
        let error = source("name = \"a\"\n\nport = \"http\"\n")
            .parse::<Example>()
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 3, key `port`"), "{error}");
    }

    #[test]
    fn validators_point_at_the_value() {
        let src = source("name = \"a\"\nport = 0\n");
        let parsed: Example = src.parse().unwrap();
        let error = src
            .error_at(parsed.port.span(), "port", "must not be 0")
            .to_string();
        assert_eq!(
            error,
            "/etc/example.toml: line 2, key `port`: must not be 0"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let error = Source::read(Path::new("/nonexistent/agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/agent.toml"), "{error}");
    }
}
