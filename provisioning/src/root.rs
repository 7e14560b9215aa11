//! Confining requested file names to a served directory, for TFTP and HTTP.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("bad file name")]
    BadName,
    #[error("absolute paths are not served")]
    Absolute,
    #[error("path leaves the served directory")]
    Escapes,
    #[error("file not found")]
    NotFound,
    #[error("served directory unavailable")]
    RootUnavailable,
}

/// Maps a requested name to a regular file under `root`, refusing absolute
/// paths, `..`, and anything (symlinks included) that resolves outside it.
pub fn resolve(root: &Path, name: &str) -> Result<PathBuf, PathError> {
    if name.is_empty() || name.contains('\0') || name.contains('\\') {
        return Err(PathError::BadName);
    }
    let relative = Path::new(name);
    if relative.is_absolute() {
        return Err(PathError::Absolute);
    }
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(PathError::Escapes);
    }
    let root = root
        .canonicalize()
        .map_err(|_| PathError::RootUnavailable)?;
    let real = root
        .join(relative)
        .canonicalize()
        .map_err(|_| PathError::NotFound)?;
    if !real.starts_with(&root) {
        return Err(PathError::Escapes);
    }
    if !real.is_file() {
        return Err(PathError::NotFound);
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_confined_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("ipxe.efi"), b"x").unwrap();
        std::fs::write(root.join("sub/f"), b"x").unwrap();
        std::fs::write(dir.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link")).unwrap();
        assert!(resolve(&root, "ipxe.efi").is_ok());
        assert!(resolve(&root, "./sub/f").is_ok());
        assert_eq!(resolve(&root, "../secret"), Err(PathError::Escapes));
        assert_eq!(resolve(&root, "sub/../../secret"), Err(PathError::Escapes));
        assert_eq!(resolve(&root, "/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(resolve(&root, "link"), Err(PathError::Escapes));
        assert_eq!(resolve(&root, "a\\b"), Err(PathError::BadName));
        assert_eq!(resolve(&root, ""), Err(PathError::BadName));
        assert_eq!(resolve(&root, "missing"), Err(PathError::NotFound));
        assert_eq!(resolve(&root, "sub"), Err(PathError::NotFound));
    }
}
