//! Disks: wiping what identifies old contents, and streaming an image onto
//! a disk while checking its SHA-256.

use sha2::{Digest, Sha256};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Bytes zeroed at each end of a disk: partition tables (MBR, GPT and its
/// backup), and the superblocks and signatures of filesystems, RAID and LVM.
const WIPE_BYTES: u64 = 1024 * 1024;
/// Progress is reported at least every this many bytes.
const PROGRESS_STEP: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("image checksum mismatch: expected {expected}, got {actual}; the disk was wiped again")]
    Checksum { expected: String, actual: String },
    #[error("image of {size} bytes does not fit on {path} ({capacity} bytes)")]
    TooLarge {
        path: String,
        size: u64,
        capacity: u64,
    },
    #[error("image stream: {0}")]
    Stream(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Size of a disk or disk-image file.
pub fn capacity(path: &Path) -> Result<u64, DiskError> {
    let mut file = OpenOptions::new().read(true).open(path).map_err(io(path))?;
    file.seek(SeekFrom::End(0)).map_err(io(path))
}

/// Zeroes the first and last MiB of a disk and flushes it.
pub fn wipe(path: &Path) -> Result<(), DiskError> {
    let size = capacity(path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let zeros = vec![0u8; WIPE_BYTES.min(size) as usize];
    file.seek(SeekFrom::Start(0)).map_err(io(path))?;
    file.write_all(&zeros).map_err(io(path))?;
    if size > WIPE_BYTES {
        let tail = WIPE_BYTES.min(size - WIPE_BYTES);
        file.seek(SeekFrom::Start(size - tail)).map_err(io(path))?;
        file.write_all(&zeros[..tail as usize]).map_err(io(path))?;
    }
    file.sync_all().map_err(io(path))
}

/// Copies `image` (of `size` bytes, if known) onto the disk at `path`,
/// hashing as it goes; on any failure (checksum, stream, disk) the disk is
/// wiped so nothing half-written can boot. `progress(written, total)` is called now and then.
pub fn write_image(
    image: &mut impl Read,
    size: Option<u64>,
    path: &Path,
    expected_sha256: &str,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<u64, DiskError> {
    let capacity = capacity(path)?;
    if let Some(size) = size
        && size > capacity
    {
        return Err(DiskError::TooLarge {
            path: path.display().to_string(),
            size,
            capacity,
        });
    }
    let result = stream(image, size, path, capacity, expected_sha256, &mut progress);
    if result.is_err() {
        // Whatever was written must not boot; a failed wipe is the worse
        // news and is reported instead.
        wipe(path)?;
    }
    result
}

fn stream(
    image: &mut impl Read,
    size: Option<u64>,
    path: &Path,
    capacity: u64,
    expected_sha256: &str,
    progress: &mut impl FnMut(u64, Option<u64>),
) -> Result<u64, DiskError> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1024 * 1024];
    let mut written: u64 = 0;
    let mut next_report = PROGRESS_STEP;
    loop {
        let n = image
            .read(&mut buffer)
            .map_err(|e| DiskError::Stream(e.to_string()))?;
        if n == 0 {
            break;
        }
        if written + n as u64 > capacity {
            return Err(DiskError::TooLarge {
                path: path.display().to_string(),
                size: written + n as u64,
                capacity,
            });
        }
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n]).map_err(io(path))?;
        written += n as u64;
        if written >= next_report {
            progress(written, size);
            next_report += PROGRESS_STEP;
        }
    }
    if let Some(size) = size
        && written != size
    {
        return Err(DiskError::Stream(format!(
            "image ended after {written} of {size} bytes"
        )));
    }
    file.sync_all().map_err(io(path))?;
    drop(file);
    let actual = hex(&hasher.finalize());
    if !actual.eq_ignore_ascii_case(expected_sha256.trim()) {
        return Err(DiskError::Checksum {
            expected: expected_sha256.trim().to_lowercase(),
            actual,
        });
    }
    progress(written, size);
    Ok(written)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(size: usize) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), vec![0xabu8; size]).unwrap();
        file
    }

    #[test]
    fn wipe_zeroes_both_ends_only() {
        let file = disk(4 * 1024 * 1024);
        wipe(file.path()).unwrap();
        let bytes = std::fs::read(file.path()).unwrap();
        let mib = 1024 * 1024;
        assert!(bytes[..mib].iter().all(|b| *b == 0));
        assert!(bytes[bytes.len() - mib..].iter().all(|b| *b == 0));
        assert!(bytes[mib..bytes.len() - mib].iter().all(|b| *b == 0xab));
    }

    #[test]
    fn image_is_written_and_checked() {
        let file = disk(8 * 1024 * 1024);
        let image: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sum = hex(&Sha256::digest(&image));
        let written = write_image(
            &mut image.as_slice(),
            Some(image.len() as u64),
            file.path(),
            &sum,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(written, image.len() as u64);
        assert_eq!(
            &std::fs::read(file.path()).unwrap()[..image.len()],
            &image[..]
        );

        let error = write_image(
            &mut image.as_slice(),
            None,
            file.path(),
            &"0".repeat(64),
            |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(error, DiskError::Checksum { .. }), "{error}");
        // Nothing bootable is left behind.
        assert!(
            std::fs::read(file.path()).unwrap()[..1024 * 1024]
                .iter()
                .all(|b| *b == 0)
        );

        // An image that ends early is an error and leaves nothing either.
        let short = write_image(
            &mut image.as_slice(),
            Some(image.len() as u64 + 1),
            file.path(),
            &sum,
            |_, _| {},
        )
        .unwrap_err();
        assert!(short.to_string().contains("ended after"), "{short}");
        assert!(
            std::fs::read(file.path()).unwrap()[..1024 * 1024]
                .iter()
                .all(|b| *b == 0)
        );

        let small = disk(1024);
        assert!(matches!(
            write_image(
                &mut image.as_slice(),
                Some(image.len() as u64),
                small.path(),
                &sum,
                |_, _| {}
            ),
            Err(DiskError::TooLarge { .. })
        ));
    }
}
