//! Serves the admin API on a unix socket from the agent's published state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::protocol::{AgentStatus, MAX_REQUEST_BYTES, Request, Response};
use crate::lldp::LldpSnapshot;
use crate::supervisor::Health;
use crate::switch::{Port, SwitchRecord};

/// A client idle this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most admin connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// What the admin API reads from.
#[derive(Debug, Clone)]
pub struct AgentView {
    /// How tenant VRFs are rendered in this kernel.
    pub kernel_mode: crate::dataplane::KernelMode,
    /// The DHCP lease store, when boot services run.
    pub lease_db: Option<PathBuf>,
    pub dhcp_counters: Arc<std::sync::Mutex<Option<metalmesh_provisioning::dhcp::DhcpCounters>>>,
    pub started: std::time::Instant,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub lldp_patterns: Vec<String>,
    pub switch: watch::Receiver<Option<SwitchRecord>>,
    pub ports: watch::Receiver<Option<Vec<Port>>>,
    pub lldp: watch::Receiver<LldpSnapshot>,
    pub health: Health,
}

impl AgentView {
    pub fn answer(&self, request: &Request) -> Response {
        match request {
            Request::Status => {
                let lldp = self.lldp.borrow().clone();
                Response::Status(Box::new(AgentStatus {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    kernel_mode: self.kernel_mode,
                    pid: std::process::id(),
                    uptime_secs: self.started.elapsed().as_secs(),
                    config: self.config_path.display().to_string(),
                    state_dir: self.state_dir.display().to_string(),
                    switch: self.switch.borrow().clone(),
                    lldp_port_patterns: self.lldp_patterns.clone(),
                    lldp_ports: lldp.ports,
                    lldp_neighbors: lldp.neighbors.len(),
                    lldp_counters: lldp.counters,
                    dhcp_counters: self.dhcp_counters.lock().ok().and_then(|c| c.clone()),
                    subsystems: self.health.snapshot(),
                }))
            }
            Request::LldpNeighbors => Response::LldpNeighbors(self.lldp.borrow().clone()),
            Request::Ports => Response::Ports(self.ports.borrow().clone().unwrap_or_default()),
            Request::Leases => match &self.lease_db {
                None => Response::Error {
                    message: "boot services are not configured on this switch ([boot])".into(),
                },
                // A second connection reads the store; WAL lets it run beside the server.
                Some(path) => match metalmesh_provisioning::dhcp::service::read_leases(path) {
                    Ok(leases) => Response::Leases(leases),
                    Err(error) => Response::Error {
                        message: error.to_string(),
                    },
                },
            },
        }
    }
}

/// Binds the socket, replacing a stale one left by a crashed agent but
/// refusing to steal one a live agent still answers on.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another agent is already serving the admin socket {}",
                path.display()
            );
        }
        tokio::fs::remove_file(path)
            .await
            .map_err(|e| anyhow::anyhow!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind admin socket {}: {e}", path.display()))?;
    // Owner and group only: the admin API is not for every local user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

pub async fn serve(
    listener: Arc<UnixListener>,
    view: AgentView,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!("admin API: too many connections; refusing one");
            continue;
        };
        let view = view.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if let Err(error) = connection(stream, &view, cancel).await {
                tracing::debug!(%error, "admin connection ended");
            }
            drop(permit);
        });
    }
}

async fn connection(
    stream: UnixStream,
    view: &AgentView,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    // The limit is reset per request, so one line can never exceed it.
    let mut lines = AsyncReadExt::take(BufReader::new(read), MAX_REQUEST_BYTES as u64 + 1);
    let mut line = Vec::new();
    loop {
        line.clear();
        lines.set_limit(MAX_REQUEST_BYTES as u64 + 1);
        let read = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            read = tokio::time::timeout(
                IDLE_TIMEOUT,
                lines.read_until(b'\n', &mut line),
            ) => read,
        };
        let n = match read {
            Ok(result) => result?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let response = if line.len() > MAX_REQUEST_BYTES {
            Response::Error {
                message: format!("request longer than {MAX_REQUEST_BYTES} bytes"),
            }
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(request) => view.answer(&request),
                Err(error) => Response::Error {
                    message: format!("bad request: {error}"),
                },
            }
        };
        let mut bytes = serde_json::to_vec(&response).unwrap_or_else(|e| {
            format!("{{\"response\":\"error\",\"body\":{{\"message\":\"{e}\"}}}}").into_bytes()
        });
        bytes.push(b'\n');
        // A client that does not read its answers loses its connection.
        match tokio::time::timeout(IDLE_TIMEOUT, write.write_all(&bytes)).await {
            Ok(result) => result?,
            Err(_) => return Ok(()),
        }
        if line.len() > MAX_REQUEST_BYTES {
            return Ok(());
        }
    }
}
