//! OS images by URL: an `image` record (written by the API node, signed
//! with its key) names an image, its URL and its SHA-256. On the first
//! allocation that asks for it this leaf downloads it, checks the checksum
//! while writing, and keeps it under the checksum in its image cache
//! (`<state_dir>/images/<sha256>.img`), which the leaf's HTTP server serves
//! at `/images/` to installers. Nobody copies images onto switches; a tampered or
//! truncated download is never served (it is not renamed into place).
//!
//! The download happens before the allocation reaches the machine core
//! (the core's owner task never waits for the network): [`spawn_gate`]
//! sits between the callers (admin socket, mesh) and the core.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metalmesh_inventory::{RecordKey, RecordKind, Store, model};
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::machines::core::MachineError;
use crate::machines::task::{CommandRequest, OperatorCommand};
use crate::supervisor::Supervisor;

/// Time to connect to the image server, and the longest wait for one read.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// After a minute, a download slower than this on average is given up: a
/// server trickling bytes must not hold the image's download for ever.
const MIN_BYTES_PER_SEC: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {name}: the API's record is unreadable: {reason}")]
    BadRecord { name: String, reason: String },
    #[error("image {name}: {url} is not an http:// or https:// URL")]
    BadUrl { name: String, url: String },
    #[error("image {name}: downloading {url}: {reason}")]
    Download {
        name: String,
        url: String,
        reason: String,
    },
    #[error("image {name}: {url} is larger than this leaf takes ({limit} bytes)")]
    TooLarge {
        name: String,
        url: String,
        limit: u64,
    },
    #[error("image {name}: {url} has SHA-256 {actual}, its record says {expected}")]
    Checksum {
        name: String,
        url: String,
        expected: String,
        actual: String,
    },
    #[error("image {name}: writing {path}: {reason}")]
    Write {
        name: String,
        path: String,
        reason: String,
    },
}

/// The path of a downloaded image with checksum `sha256`.
pub fn cached_path(cache_dir: &Path, sha256: &str) -> PathBuf {
    cache_dir.join(format!("{sha256}.img"))
}

/// The API's record of image `name`, if there is one.
pub fn image_record(store: &Store, name: &str) -> Result<Option<model::Image>, ImageError> {
    let bad = |reason: String| ImageError::BadRecord {
        name: name.to_string(),
        reason,
    };
    let Some(value) = store
        .get(&RecordKey::new(RecordKind::Image, name))
        .map_err(|e| bad(e.to_string()))?
        .and_then(|record| record.value)
    else {
        return Ok(None);
    };
    let image: model::Image = serde_json::from_str(&value).map_err(|e| bad(e.to_string()))?;
    if image.sha256.len() != 64 || !image.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!("`{}` is not a SHA-256", image.sha256)));
    }
    Ok(Some(model::Image {
        sha256: image.sha256.to_lowercase(),
        ..image
    }))
}

/// Downloads images named in `image` records into the cache, one download
/// per checksum at a time however many allocations ask for it.
#[derive(Debug, Clone)]
pub struct ImageCache {
    pub cache_dir: PathBuf,
    pub store: Store,
    /// The largest image this leaf downloads.
    pub max_bytes: u64,
    downloads: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl ImageCache {
    pub fn new(cache_dir: PathBuf, store: Store, max_bytes: u64) -> ImageCache {
        remove_partial_downloads(&cache_dir);
        ImageCache {
            cache_dir,
            store,
            max_bytes,
            downloads: Arc::default(),
        }
    }

    /// Makes sure image `name` is servable if the API defines it: a name
    /// with no record is left to the images directory (rack-local images).
    pub async fn ensure(&self, name: &str) -> Result<(), ImageError> {
        let store = self.store.clone();
        let owned = name.to_string();
        let record = metalmesh_inventory::store::blocking(move || image_record(&store, &owned))?;
        let Some(image) = record else { return Ok(()) };
        let path = cached_path(&self.cache_dir, &image.sha256);
        if path.exists() {
            return Ok(());
        }
        let lock = {
            let mut downloads = self
                .downloads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(downloads.entry(image.sha256.clone()).or_default())
        };
        let _one_download = lock.lock().await;
        if path.exists() {
            // Another allocation downloaded it while this one waited.
            return Ok(());
        }
        let max_bytes = self.max_bytes;
        let started = std::time::Instant::now();
        let size = tokio::task::spawn_blocking(move || download(&image, &path, max_bytes))
            .await
            .map_err(|e| ImageError::Download {
                name: name.to_string(),
                url: String::new(),
                reason: e.to_string(),
            })??;
        tracing::info!(
            image = name,
            bytes = size,
            secs = started.elapsed().as_secs_f64(),
            "image downloaded and verified"
        );
        Ok(())
    }
}

/// Streams `image.url` into `<path>.part`, hashing as it writes; renamed
/// to `path` only when the checksum matches (and synced first). Any failure
/// removes the partial file.
fn download(image: &model::Image, path: &Path, max_bytes: u64) -> Result<u64, ImageError> {
    let (name, url) = (image.id.clone(), image.url.clone());
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ImageError::BadUrl { name, url });
    }
    let fetch_error = |reason: String| ImageError::Download {
        name: name.clone(),
        url: url.clone(),
        reason,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    // Written beside the served directory, never in it: a half download is
    // never handed out; one file per process.
    let partial = partial_dir(dir).join(format!(
        "{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("image"),
        std::process::id()
    ));
    let write_error = |error: std::io::Error| ImageError::Write {
        name: name.clone(),
        path: partial.display().to_string(),
        reason: error.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(write_error)?;
    std::fs::create_dir_all(partial_dir(dir)).map_err(write_error)?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout_read(READ_TIMEOUT)
        .build();
    let response = agent
        .get(&url)
        .call()
        .map_err(|e| fetch_error(e.to_string()))?;
    let declared: Option<u64> = response
        .header("Content-Length")
        .and_then(|v| v.parse().ok());
    if declared.is_some_and(|length| length > max_bytes) {
        return Err(ImageError::TooLarge {
            name,
            url,
            limit: max_bytes,
        });
    }
    let result = (|| {
        let mut file = std::fs::File::create(&partial).map_err(write_error)?;
        let mut body = response.into_reader().take(max_bytes + 1);
        let mut hasher = sha2::Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        let mut total = 0u64;
        let started = std::time::Instant::now();
        loop {
            let elapsed = started.elapsed();
            if elapsed > Duration::from_secs(60)
                && total < elapsed.as_secs().saturating_mul(MIN_BYTES_PER_SEC)
            {
                return Err(fetch_error(format!(
                    "{total} bytes in {} s: slower than {} KiB/s",
                    elapsed.as_secs(),
                    MIN_BYTES_PER_SEC >> 10
                )));
            }
            let n = body
                .read(&mut buffer)
                .map_err(|e| fetch_error(e.to_string()))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > max_bytes {
                return Err(ImageError::TooLarge {
                    name: name.clone(),
                    url: url.clone(),
                    limit: max_bytes,
                });
            }
            hasher.update(&buffer[..n]);
            file.write_all(&buffer[..n]).map_err(write_error)?;
        }
        if declared.is_some_and(|length| length != total) {
            return Err(fetch_error(format!(
                "the body ended after {total} of {} bytes",
                declared.unwrap_or_default()
            )));
        }
        let actual = hex(&hasher.finalize());
        if actual != image.sha256 {
            return Err(ImageError::Checksum {
                name: name.clone(),
                url: url.clone(),
                expected: image.sha256.clone(),
                actual,
            });
        }
        file.sync_all().map_err(write_error)?;
        std::fs::rename(&partial, path).map_err(write_error)?;
        Ok(total)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Where downloads in progress are written: beside the cache directory.
fn partial_dir(cache_dir: &Path) -> PathBuf {
    let mut name = cache_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    cache_dir.with_file_name(name)
}

/// Removes downloads a stopped agent left half done.
pub fn remove_partial_downloads(cache_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(partial_dir(cache_dir)) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Passes operator commands on to the machine core; an allocation first
/// waits for its image (each on its own task, so a long download holds up
/// neither listings nor other allocations). A download that fails answers
/// the caller with the reason and never reaches the core.
pub fn spawn_gate(
    supervisor: &mut Supervisor,
    cache: ImageCache,
    callers: mpsc::Receiver<CommandRequest>,
    core: mpsc::Sender<CommandRequest>,
) {
    let callers = Arc::new(tokio::sync::Mutex::new(callers));
    supervisor.spawn("image-gate", move |cancel: CancellationToken| {
        let (callers, core, cache) = (Arc::clone(&callers), core.clone(), cache.clone());
        async move {
            let mut callers = callers.lock().await;
            loop {
                let request = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    request = callers.recv() => match request { Some(r) => r, None => return Ok(()) },
                };
                let OperatorCommand::Allocate { request: wanted, .. } = &request.command else {
                    if core.send(request).await.is_err() {
                        return Ok(());
                    }
                    continue;
                };
                let image = wanted.image.clone();
                let (core, cache) = (core.clone(), cache.clone());
                tokio::spawn(async move {
                    match cache.ensure(&image).await {
                        Ok(()) => {
                            let _ = core.send(request).await;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "image not available");
                            let _ = request
                                .reply
                                .send(Err(MachineError::UnknownImage(error.to_string())));
                        }
                    }
                });
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server on loopback answering `body` with the given
    /// Content-Length.
    fn serve_once(body: Vec<u8>, declared: usize) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(&body);
            }
        });
        format!("http://{addr}/image.img")
    }

    fn image(url: String, body: &[u8]) -> model::Image {
        model::Image {
            id: "debian".into(),
            url,
            sha256: hex(&sha2::Sha256::digest(body)),
            description: String::new(),
        }
    }

    #[test]
    fn a_download_is_kept_only_when_its_checksum_matches() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let body = b"an operating system".to_vec();
        let good = image(serve_once(body.clone(), body.len()), &body);
        let path = cached_path(&dir.path().join("images"), &good.sha256);
        assert_eq!(
            download(&good, &path, 1 << 20).ok(),
            Some(body.len() as u64)
        );
        assert_eq!(std::fs::read(&path).ok(), Some(body.clone()));

        // The server hands out something else than the record names.
        let mut tampered = image(serve_once(b"tampered bytes".to_vec(), 14), &body);
        tampered.sha256 = hex(&sha2::Sha256::digest(b"another image"));
        let path = cached_path(&dir.path().join("images"), &tampered.sha256);
        let error = download(&tampered, &path, 1 << 20).unwrap_err();
        assert!(matches!(error, ImageError::Checksum { .. }), "{error}");
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("images"))
                .map(|d| d.count())
                .ok(),
            Some(1)
        );
    }

    #[test]
    fn a_truncated_or_oversized_download_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let body = vec![7u8; 4096];
        let truncated = image(serve_once(body[..100].to_vec(), body.len()), &body);
        let path = cached_path(&dir.path().join("images"), &truncated.sha256);
        let error = download(&truncated, &path, 1 << 20).unwrap_err();
        assert!(matches!(error, ImageError::Download { .. }), "{error}");
        assert!(!path.exists());

        let large = image(serve_once(body.clone(), body.len()), &body);
        let error = download(&large, &path, 1000).unwrap_err();
        assert!(matches!(error, ImageError::TooLarge { .. }), "{error}");

        let bad = image("file:///etc/passwd".into(), &body);
        let error = download(&bad, &path, 1000).unwrap_err();
        assert!(matches!(error, ImageError::BadUrl { .. }), "{error}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("images"))
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );
    }
}
