//! The read-only TFTP server: one listening socket, one task and socket per
//! transfer (RFC 1350 §4: the server answers from a new port), option
//! negotiation (RFC 2347/2348/2349/7440), windowed sending with
//! retransmission, and files streamed block by block from disk.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::packet::{Packet, code};
use super::window::{Ack, Window};
use crate::root::{PathError, resolve};

const DEFAULT_BLKSIZE: usize = 512;
const MAX_BLKSIZE: usize = 65464;
const MAX_WINDOW: u16 = 64;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
use super::window::MAX_RETRIES;

#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Directory files are served from; nothing outside it is reachable.
    pub root: PathBuf,
    pub listen: SocketAddr,
    /// Interface to bind to (the provisioning bridge), if any.
    pub interface: Option<String>,
    pub max_transfers: usize,
    /// Transfers one source address may run at once ("Server busy" beyond).
    pub max_transfers_per_source: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TftpCounters {
    pub requests: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub refused: AtomicU64,
    pub malformed: AtomicU64,
    pub bytes_sent: AtomicU64,
}

/// The TFTP error code for a refused name.
fn error_code(error: &PathError) -> u16 {
    match error {
        PathError::NotFound => code::FILE_NOT_FOUND,
        PathError::RootUnavailable => code::NOT_DEFINED,
        _ => code::ACCESS_VIOLATION,
    }
}

/// The options this server agrees to, in the order the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: usize,
    pub windowsize: u16,
    pub timeout: Duration,
    pub acknowledged: Vec<(String, String)>,
}

pub fn negotiate(options: &[(String, String)], file_size: u64) -> Negotiated {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: DEFAULT_TIMEOUT,
        acknowledged: Vec::new(),
    };
    for (name, value) in options {
        let Ok(number) = value.parse::<u64>() else {
            continue;
        };
        match name.as_str() {
            "blksize" if number >= 8 => {
                n.blksize = (number as usize).min(MAX_BLKSIZE);
                n.acknowledged.push((name.clone(), n.blksize.to_string()));
            }
            "windowsize" if number >= 1 => {
                n.windowsize = (number.min(u64::from(MAX_WINDOW))) as u16;
                n.acknowledged
                    .push((name.clone(), n.windowsize.to_string()));
            }
            "timeout" if (1..=255).contains(&number) => {
                n.timeout = Duration::from_secs(number);
                n.acknowledged.push((name.clone(), number.to_string()));
            }
            "tsize" => n.acknowledged.push((name.clone(), file_size.to_string())),
            _ => {}
        }
    }
    n
}

/// Runs the server until cancelled.
pub async fn serve(
    config: TftpConfig,
    counters: Arc<TftpCounters>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let socket = bind(config.listen, config.interface.as_deref())?;
    tracing::info!(listen = %config.listen, root = %config.root.display(), "TFTP server running");
    let slots = Arc::new(Semaphore::new(config.max_transfers));
    let per_source = crate::per_source::OpenPerSource::default();
    let root = Arc::new(config.root.clone());
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, peer) = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            received = socket.recv_from(&mut buf) => received?,
        };
        let request = match Packet::decode(&buf[..n]) {
            Ok(Packet::ReadRequest {
                filename,
                mode,
                options,
            }) => ReadRequest {
                filename,
                mode,
                options,
            },
            Ok(Packet::WriteRequest { filename, .. }) => {
                counters.requests.fetch_add(1, Ordering::Relaxed);
                counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, %filename, "TFTP write request refused");
                send_error(
                    &socket,
                    peer,
                    code::ACCESS_VIOLATION,
                    "Access violation: read-only server",
                )
                .await;
                continue;
            }
            // An error is never answered (RFC 1350); stray data, ACKs and
            // option ACKs belong to no transfer of this port.
            Ok(Packet::Error { .. }) => continue,
            Ok(_) => {
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                send_error(
                    &socket,
                    peer,
                    code::ILLEGAL_OPERATION,
                    "Illegal TFTP operation",
                )
                .await;
                continue;
            }
            Err(error) => {
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, %error, "malformed TFTP request");
                continue;
            }
        };
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let local = SocketAddr::new(config.listen.ip(), 0);
        let interface = config.interface.clone();
        let counters = Arc::clone(&counters);
        let root = Arc::clone(&root);
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            send_error(&socket, peer, code::NOT_DEFINED, "Server busy").await;
            continue;
        };
        let Some(source_slot) = per_source.acquire(peer.ip(), config.max_transfers_per_source)
        else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "TFTP request refused: too many transfers from this source");
            send_error(&socket, peer, code::NOT_DEFINED, "Server busy").await;
            continue;
        };
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let result = match bind(local, interface.as_deref()) {
                Ok(transfer_socket) => {
                    tokio::select! {
                        () = cancel.cancelled() => Ok(()),
                        r = transfer(&transfer_socket, peer, request, &root, &counters) => r,
                    }
                }
                Err(error) => Err(Failure::Failed(error.to_string())),
            };
            match result {
                Ok(()) => {}
                Err(Failure::Refused(reason)) => {
                    tracing::info!(%peer, %reason, "TFTP request refused");
                }
                Err(Failure::Failed(error)) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, %error, "TFTP transfer failed");
                }
            }
            drop(permit);
            drop(source_slot);
        });
    }
}

fn bind(address: SocketAddr, interface: Option<&str>) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    if let Some(interface) = interface {
        socket.bind_device(Some(interface.as_bytes()))?;
    }
    socket.bind(&address.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

async fn send_error(socket: &UdpSocket, peer: SocketAddr, code: u16, message: &str) {
    let packet = Packet::Error {
        code,
        message: message.to_string(),
    };
    let _ = socket.send_to(&packet.encode(), peer).await;
}

/// A read request, the only packet that starts a transfer.
struct ReadRequest {
    filename: String,
    mode: String,
    options: Vec<(String, String)>,
}

/// Why a transfer did not complete.
enum Failure {
    /// The request was answered with an error (counted as refused).
    Refused(String),
    /// The transfer broke off (counted as failed).
    Failed(String),
}

impl From<String> for Failure {
    fn from(error: String) -> Failure {
        Failure::Failed(error)
    }
}

async fn transfer(
    socket: &UdpSocket,
    peer: SocketAddr,
    request: ReadRequest,
    root: &Path,
    counters: &TftpCounters,
) -> Result<(), Failure> {
    let ReadRequest {
        filename,
        mode,
        options,
    } = request;
    if mode != "octet" && mode != "netascii" {
        send_error(
            socket,
            peer,
            code::ILLEGAL_OPERATION,
            "Only octet and netascii modes",
        )
        .await;
        counters.refused.fetch_add(1, Ordering::Relaxed);
        return Err(Failure::Refused(format!("mode {mode} refused")));
    }
    let path = match resolve(root, &filename) {
        Ok(path) => path,
        Err(error) => {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            let message = match error {
                PathError::NotFound => "File not found".to_string(),
                other => format!("Access violation: {other}"),
            };
            send_error(socket, peer, error_code(&error), &message).await;
            return Err(Failure::Refused(format!("{filename}: {error}")));
        }
    };
    let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let n = negotiate(&options, size);
    tracing::debug!(%peer, file = %filename, size, blksize = n.blksize, window = n.windowsize, "TFTP read");
    let mut buf = vec![0u8; 4 + MAX_BLKSIZE + 4];
    if !n.acknowledged.is_empty() {
        let oack = Packet::OptionAck {
            options: n.acknowledged.clone(),
        }
        .encode();
        let mut acked = false;
        for _ in 0..MAX_RETRIES {
            socket
                .send_to(&oack, peer)
                .await
                .map_err(|e| e.to_string())?;
            let deadline = tokio::time::Instant::now() + n.timeout;
            if wait_ack(socket, peer, &mut buf, deadline, |block| block == 0)
                .await?
                .is_some()
            {
                acked = true;
                break;
            }
        }
        if !acked {
            return Err(Failure::Failed(
                "client never acknowledged the options".into(),
            ));
        }
    }
    let mut window = Window::new(size, n.blksize, n.windowsize);
    let mut data = vec![0u8; n.blksize];
    while !window.is_done() {
        for block in window.to_send() {
            let offset = (block - 1) * n.blksize as u64;
            let len = (size.saturating_sub(offset)).min(n.blksize as u64) as usize;
            file.read_exact_at(&mut data[..len], offset)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let packet = Packet::Data {
                block: Window::wire(block),
                data: data[..len].to_vec(),
            }
            .encode();
            socket
                .send_to(&packet, peer)
                .await
                .map_err(|e| e.to_string())?;
            counters.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
        }
        // ACKs the window does not accept (stale, duplicate) are ignored,
        // not answered with the window again: resending on them would send
        // every later block twice, and a peer repeating old ACKs must not
        // keep the transfer alive.
        let deadline = tokio::time::Instant::now() + n.timeout;
        match wait_ack(socket, peer, &mut buf, deadline, |wire| {
            window.accepts(wire)
        })
        .await?
        {
            Some(wire) => {
                let outcome = window.on_ack(wire);
                debug_assert_ne!(outcome, Ack::Ignored);
            }
            None => {
                if !window.on_timeout() {
                    return Err(Failure::Failed(format!(
                        "{filename}: client stopped acknowledging"
                    )));
                }
            }
        }
    }
    counters.completed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Waits until `deadline` for an ACK from `peer` that `wanted` accepts
/// (others are ignored); `None` on timeout. Errors end the transfer.
async fn wait_ack(
    socket: &UdpSocket,
    peer: SocketAddr,
    buf: &mut [u8],
    deadline: tokio::time::Instant,
    wanted: impl Fn(u16) -> bool,
) -> Result<Option<u16>, String> {
    loop {
        let received = tokio::time::timeout_at(deadline, socket.recv_from(buf)).await;
        let (n, from) = match received {
            Err(_) => return Ok(None),
            Ok(result) => result.map_err(|e| e.to_string())?,
        };
        if from != peer {
            // RFC 1350: a packet from a stranger gets an error, the transfer goes on.
            let _ = socket
                .send_to(
                    &Packet::Error {
                        code: 5,
                        message: "Unknown transfer ID".into(),
                    }
                    .encode(),
                    from,
                )
                .await;
            continue;
        }
        match Packet::decode(&buf[..n]) {
            Ok(Packet::Ack { block }) if wanted(block) => return Ok(Some(block)),
            Ok(Packet::Error { code, message }) => {
                return Err(format!("client aborted: {code} {message}"));
            }
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn receive(socket: &UdpSocket, within: Duration) -> Option<(Packet, SocketAddr)> {
        let mut buf = [0u8; 2048];
        let (n, from) = tokio::time::timeout(within, socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some((Packet::decode(&buf[..n]).ok()?, from))
    }

    /// A server on loopback for `root`; stops when the guard drops.
    async fn start(root: &Path) -> (SocketAddr, Arc<TftpCounters>, tokio_util::sync::DropGuard) {
        start_with(root, 4, 4).await
    }

    async fn start_with(
        root: &Path,
        max_transfers: usize,
        max_transfers_per_source: usize,
    ) -> (SocketAddr, Arc<TftpCounters>, tokio_util::sync::DropGuard) {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let counters = Arc::new(TftpCounters::default());
        let cancel = CancellationToken::new();
        let guard = cancel.clone().drop_guard();
        tokio::spawn(serve(
            TftpConfig {
                root: root.to_path_buf(),
                listen,
                interface: None,
                max_transfers,
                max_transfers_per_source,
            },
            Arc::clone(&counters),
            cancel,
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        (listen, counters, guard)
    }

    /// One source runs at most its share of transfers: beyond it, "Server
    /// busy" though the server has slots left.
    #[tokio::test]
    async fn transfers_per_source_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![7u8; 64 * 1024]).unwrap();
        let (listen, counters, _stop) = start_with(dir.path(), 8, 2).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let read = Packet::ReadRequest {
            filename: "f".into(),
            mode: "octet".into(),
            options: Vec::new(),
        };
        let mut busy = 0;
        let mut data = 0;
        for _ in 0..3 {
            client.send_to(&read.encode(), listen).await.unwrap();
            match receive(&client, Duration::from_secs(1)).await {
                Some((Packet::Data { .. }, from)) => {
                    assert_ne!(from, listen);
                    data += 1;
                }
                Some((
                    Packet::Error {
                        code: code::NOT_DEFINED,
                        message,
                    },
                    _,
                )) => {
                    assert!(message.contains("busy"), "{message}");
                    busy += 1;
                }
                other => panic!("unexpected answer {other:?}"),
            }
        }
        assert_eq!((data, busy), (2, 1));
        assert_eq!(counters.refused.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn only_read_requests_start_transfers() {
        let dir = tempfile::tempdir().unwrap();
        let (listen, counters, _stop) = start(dir.path()).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let second = Duration::from_secs(1);
        // An error is not answered; a stray ACK is told it is illegal.
        let error = Packet::Error {
            code: 0,
            message: "x".into(),
        };
        client.send_to(&error.encode(), listen).await.unwrap();
        assert_eq!(receive(&client, Duration::from_millis(300)).await, None);
        client
            .send_to(&Packet::Ack { block: 1 }.encode(), listen)
            .await
            .unwrap();
        let (answer, from) = receive(&client, second).await.unwrap();
        assert!(matches!(
            answer,
            Packet::Error {
                code: code::ILLEGAL_OPERATION,
                ..
            }
        ));
        assert_eq!(from, listen, "answered from a transfer port");
        let write = Packet::WriteRequest {
            filename: "f".into(),
            mode: "octet".into(),
        };
        client.send_to(&write.encode(), listen).await.unwrap();
        let (answer, _) = receive(&client, second).await.unwrap();
        assert!(matches!(
            answer,
            Packet::Error {
                code: code::ACCESS_VIOLATION,
                ..
            }
        ));
        assert_eq!(counters.requests.load(Ordering::Relaxed), 1);
        assert_eq!(counters.refused.load(Ordering::Relaxed), 1);
        assert_eq!(counters.failed.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_windowed_client_reporting_a_gap_gets_the_window_again_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![7u8; 10 * 512]).unwrap();
        let (listen, _counters, _stop) = start(dir.path()).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let request = Packet::ReadRequest {
            filename: "f".into(),
            mode: "octet".into(),
            options: vec![("windowsize".into(), "4".into())],
        };
        client.send_to(&request.encode(), listen).await.unwrap();
        let second = Duration::from_secs(1);
        let (oack, tid) = receive(&client, second).await.unwrap();
        assert!(matches!(oack, Packet::OptionAck { .. }));
        let ack = |block| Packet::Ack { block }.encode();
        client.send_to(&ack(0), tid).await.unwrap();
        for block in 1..=4u16 {
            let (data, _) = receive(&client, second).await.unwrap();
            assert!(matches!(data, Packet::Data { block: b, .. } if b == block));
        }
        // Block 1 "lost": the client ACKs 0 again and gets the window at
        // once (well before the 2 s timeout)...
        client.send_to(&ack(0), tid).await.unwrap();
        let (data, _) = receive(&client, Duration::from_millis(500)).await.unwrap();
        assert!(matches!(data, Packet::Data { block: 1, .. }));
        for _ in 2..=4 {
            receive(&client, second).await.unwrap();
        }
        // ...but only once per window.
        client.send_to(&ack(0), tid).await.unwrap();
        assert_eq!(receive(&client, Duration::from_millis(400)).await, None);
    }

    #[tokio::test]
    async fn duplicate_acks_resend_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![7u8; 3 * 512 + 10]).unwrap();
        let (listen, counters, _stop) = start(dir.path()).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let request = Packet::ReadRequest {
            filename: "f".into(),
            mode: "octet".into(),
            options: vec![],
        };
        client.send_to(&request.encode(), listen).await.unwrap();
        let second = Duration::from_secs(1);
        let (first, tid) = receive(&client, second).await.unwrap();
        assert!(matches!(first, Packet::Data { block: 1, .. }));
        let ack = |block| Packet::Ack { block }.encode();
        // A delayed duplicate of ACK 1 arrives with the first.
        client.send_to(&ack(1), tid).await.unwrap();
        client.send_to(&ack(1), tid).await.unwrap();
        let (next, _) = receive(&client, second).await.unwrap();
        assert!(matches!(next, Packet::Data { block: 2, .. }));
        // Block 2 is not sent a second time for the duplicate ACK.
        assert_eq!(
            receive(&client, Duration::from_millis(400)).await,
            None,
            "a block was resent for a duplicate ACK"
        );
        for block in 2..=4u16 {
            client.send_to(&ack(block), tid).await.unwrap();
            if block < 4 {
                let (data, _) = receive(&client, second).await.unwrap();
                assert!(matches!(data, Packet::Data { block: b, .. } if b == block + 1));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(counters.completed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn option_negotiation() {
        let opts = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let n = negotiate(
            &opts(&[
                ("blksize", "1468"),
                ("tsize", "0"),
                ("windowsize", "16"),
                ("timeout", "3"),
                ("foo", "1"),
            ]),
            12345,
        );
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 16);
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(n.acknowledged.len(), 4);
        assert!(n.acknowledged.contains(&("tsize".into(), "12345".into())));
        let n = negotiate(
            &opts(&[
                ("blksize", "100000"),
                ("windowsize", "999"),
                ("timeout", "0"),
            ]),
            1,
        );
        assert_eq!(n.blksize, MAX_BLKSIZE);
        assert_eq!(n.windowsize, MAX_WINDOW);
        assert_eq!(n.timeout, DEFAULT_TIMEOUT);
        assert!(
            negotiate(&opts(&[("blksize", "4")]), 1)
                .acknowledged
                .is_empty()
        );
    }
}
