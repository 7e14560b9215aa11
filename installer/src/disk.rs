//! Disks: wiping old contents, and streaming an image onto a disk while
//! checking its SHA-256.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// How a disk is wiped before a machine waits for (or after it leaves) an
/// allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WipeMode {
    /// Zeroes the first and last MiB: partition tables (MBR, GPT and its
    /// backup) and the signatures of filesystems, RAID and LVM, so nothing
    /// old is found or booted. The rest of the old data stays on the disk,
    /// readable by whoever reads the raw device. Seconds, whatever the size.
    #[default]
    Signatures,
    /// Asks the device to discard every block in a way that guarantees
    /// zeroes on later reads (`fallocate` punch-hole: unmap / TRIM, or
    /// write-zeroes offload). Quick on SSDs and thin volumes; where the
    /// device cannot guarantee zeroes, falls back to `zero`.
    Discard,
    /// Zeroes every byte (`fallocate` zero-range: the device's write-zeroes
    /// offload where it has one, else zeroes written by the installer).
    /// Takes as long as writing the whole disk.
    Zero,
}

impl WipeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WipeMode::Signatures => "signatures",
            WipeMode::Discard => "discard",
            WipeMode::Zero => "zero",
        }
    }
}

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

/// Wipes a disk as `mode` says and flushes it; returns the mode carried out
/// (`discard` falls back to `zero` where the device cannot guarantee
/// zeroes).
pub fn wipe(path: &Path, mode: WipeMode) -> Result<WipeMode, DiskError> {
    match mode {
        WipeMode::Signatures => wipe_signatures(path).map(|()| mode),
        WipeMode::Discard => {
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io(path))?;
            let size = capacity(path)?;
            let flags = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
            match fallocate(&file, flags, size) {
                Ok(()) => {
                    file.sync_all().map_err(io(path))?;
                    Ok(WipeMode::Discard)
                }
                Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => {
                    zero(path).map(|()| WipeMode::Zero)
                }
                Err(errno) => Err(DiskError::Io {
                    path: path.display().to_string(),
                    source: errno.into(),
                }),
            }
        }
        WipeMode::Zero => zero(path).map(|()| mode),
    }
}

fn fallocate(file: &File, flags: nix::fcntl::FallocateFlags, size: u64) -> nix::Result<()> {
    let len = i64::try_from(size).map_err(|_| nix::errno::Errno::EFBIG)?;
    nix::fcntl::fallocate(file.as_raw_fd(), flags, 0, len)
}

/// Every byte zeroed: the device's offload, or zeroes written in 4 MiB
/// pieces where there is none.
fn zero(path: &Path) -> Result<(), DiskError> {
    let size = capacity(path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let flags = nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE
        | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
    if fallocate(&file, flags, size).is_err() {
        let zeros = vec![0u8; 4 << 20];
        file.seek(SeekFrom::Start(0)).map_err(io(path))?;
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n]).map_err(io(path))?;
            left -= n as u64;
        }
    }
    file.sync_all().map_err(io(path))
}

/// Zeroes the first and last MiB of a disk and flushes it.
fn wipe_signatures(path: &Path) -> Result<(), DiskError> {
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
        wipe_signatures(path)?;
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
    fn discard_and_zero_leave_nothing_of_the_old_data() {
        for mode in [WipeMode::Discard, WipeMode::Zero] {
            let file = disk(5 * 1024 * 1024 + 17);
            let done = wipe(file.path(), mode).unwrap();
            // A file on tmpfs or ext4 can punch holes: no fallback needed.
            assert_eq!(done, mode);
            let bytes = std::fs::read(file.path()).unwrap();
            assert_eq!(
                bytes.len(),
                5 * 1024 * 1024 + 17,
                "{mode:?} changed the size"
            );
            assert!(bytes.iter().all(|b| *b == 0), "{mode:?} left old data");
        }
    }

    #[test]
    fn wipe_zeroes_both_ends_only() {
        let file = disk(4 * 1024 * 1024);
        assert_eq!(
            wipe(file.path(), WipeMode::Signatures).unwrap(),
            WipeMode::Signatures
        );
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
