//! The leaf's HTTP boot server (port 8070): per-machine iPXE scripts and the
//! kernel, initramfs and images, streamed from disk with HEAD, Range and
//! ETag/If-None-Match support. Every request is logged.

mod counters;
mod files;
pub mod installer_api;
mod ipxe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

pub use counters::{HttpCounters, HttpRoute, RouteCounters, STATUS_CLASSES};
pub use ipxe::IpxeSettings;

/// What the HTTP boot server serves.
#[derive(Debug, Clone)]
pub struct HttpBootConfig {
    pub listen: SocketAddr,
    /// Directory behind `/boot/…`.
    pub root: PathBuf,
    /// Directory behind `/images/…`: the images this leaf downloaded,
    /// named by checksum.
    pub image_cache: Option<PathBuf>,
    pub ipxe: IpxeSettings,
    /// Where installer API calls go; `None`: the API answers 503.
    pub machines: Option<installer_api::InstallerSender>,
    /// Where requests and streamed bytes are counted.
    pub counters: Arc<HttpCounters>,
    /// Connections one source address may hold open at once; more are
    /// closed at accept (a machine needs a few: scripts, files, the
    /// installer API).
    pub max_connections_per_source: usize,
    /// How long a request body may take to arrive in full.
    pub body_deadline: Duration,
}

/// The body deadline the agent uses.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct AppState {
    root: PathBuf,
    ipxe: IpxeSettings,
    machines: Option<installer_api::InstallerSender>,
    counters: Arc<HttpCounters>,
    /// What `files::serve` serves here, for the byte counters.
    files: HttpRoute,
}

pub fn router(config: &HttpBootConfig) -> Router {
    let state = Arc::new(AppState {
        root: config.root.clone(),
        ipxe: config.ipxe.clone(),
        machines: config.machines.clone(),
        counters: Arc::clone(&config.counters),
        files: HttpRoute::Boot,
    });
    let images = config.image_cache.as_ref().map(|cache| {
        Router::new()
            .route("/images/{*path}", get(files::serve))
            .with_state(Arc::new(AppState {
                root: cache.clone(),
                ipxe: config.ipxe.clone(),
                machines: None,
                counters: Arc::clone(&config.counters),
                files: HttpRoute::Images,
            }))
    });
    let boot = Router::new()
        .route("/v1/machines/register", post(installer_api::register))
        .route(
            "/v1/machines/{uuid}/heartbeat",
            post(installer_api::heartbeat),
        )
        .route("/v1/machines/{uuid}/events", post(installer_api::event))
        .route(
            "/v1/machines/{uuid}/phone-home",
            post(installer_api::phone_home),
        )
        .route("/ipxe/{mac}", get(ipxe::script))
        .route("/boot/{*path}", get(files::serve))
        // Refuse large bodies before buffering them (boot files are GETs).
        .layer(axum::extract::DefaultBodyLimit::max(
            metalmesh_installer::api::MAX_BODY_BYTES,
        ))
        .with_state(state);
    images
        .map_or(boot.clone(), |images| boot.merge(images))
        .layer(middleware::from_fn_with_state(
            config.body_deadline,
            body_deadline,
        ))
        .layer(middleware::from_fn(tenant_gateway_serves_phone_home_only))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&config.counters),
            access_log,
        ))
}

/// Reads a request's body within the deadline: a client trickling its body
/// holds no handler (and no machine's lock) open; 408 instead.
async fn body_deadline(State(deadline): State<Duration>, request: Request, next: Next) -> Response {
    use axum::response::IntoResponse as _;
    let (parts, body) = request.into_parts();
    let limit = metalmesh_installer::api::MAX_BODY_BYTES;
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => (
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {limit} bytes\n"),
        )
            .into_response(),
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            format!("request body not received within {deadline:?}\n"),
        )
            .into_response(),
    }
}

/// The leaf's address on routed machine ports: tenants reach the leaf
/// there, for phone-home only.
pub const TENANT_GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 0, 1);

/// The local address a connection was accepted on.
#[derive(Debug, Clone, Copy)]
pub struct LocalAddr(pub SocketAddr);

/// On the tenant gateway only `POST /v1/machines/{uuid}/phone-home` is
/// answered: boot files, images, scripts and the rest of the installer API
/// are for the provisioning network, not for installed systems or anyone
/// who took over one.
async fn tenant_gateway_serves_phone_home_only(request: Request, next: Next) -> Response {
    use axum::response::IntoResponse as _;
    let on_gateway = request
        .extensions()
        .get::<LocalAddr>()
        .is_some_and(|local| local.0.ip() == std::net::IpAddr::V4(TENANT_GATEWAY));
    let phone_home = request.method() == axum::http::Method::POST
        && request
            .uri()
            .path()
            .strip_prefix("/v1/machines/")
            .and_then(|rest| rest.strip_suffix("/phone-home"))
            .is_some_and(|uuid| !uuid.contains('/'));
    if on_gateway && !phone_home {
        return (
            axum::http::StatusCode::FORBIDDEN,
            "only phone-home is served on the tenant gateway\n",
        )
            .into_response();
    }
    next.run(request).await
}

/// Serves until cancelled; open connections are dropped then.
///
/// Connections are served by hyper directly rather than `axum::serve`, to
/// accept HTTP/1 half-closes: simple clients (busybox `nc` in the installed
/// system's phone home) shut down their sending side after the request and
/// then wait for the answer, which hyper otherwise takes for an aborted
/// request, dropping the answer.
pub async fn serve(config: HttpBootConfig, cancel: CancellationToken) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(listen = %config.listen, root = %config.root.display(), "HTTP boot server running");
    serve_listener(listener, config, cancel).await
}

/// Serves phone-home on the tenant gateway inside one VRF device
/// (VRF-device mode): a socket in the default VRF does not see connections
/// that arrive in a tenant VRF, so each tenant VRF gets its own listener,
/// bound to the VRF and to the gateway address. Fails when the VRF device
/// does not exist (yet).
pub async fn serve_in_vrf(
    config: HttpBootConfig,
    vrf: &str,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let address = SocketAddr::new(TENANT_GATEWAY.into(), config.listen.port());
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind_device(Some(vrf.as_bytes()))?;
    // The gateway address appears with the VRF's first routed port.
    socket.set_freebind_v4(true)?;
    socket.bind(&address.into())?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(socket.into())?;
    tracing::info!(%vrf, listen = %address, "phone-home listener in tenant VRF running");
    serve_listener(listener, config, cancel).await
}

async fn serve_listener(
    listener: tokio::net::TcpListener,
    config: HttpBootConfig,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let mut make_service = router(&config).into_make_service_with_connect_info::<SocketAddr>();
    let mut connections = tokio::task::JoinSet::new();
    let open = crate::per_source::OpenPerSource::default();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(slot) = open.acquire(peer.ip(), config.max_connections_per_source) else {
            tracing::debug!(%peer, "HTTP connection refused: too many from this source");
            config.counters.refused_connection();
            continue;
        };
        let Ok(service) = make_service.call(peer).await;
        // Handlers learn which address the caller reached (the tenant
        // gateway answers phone-home only).
        let local = stream.local_addr().ok();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                if let Some(local) = local {
                    request.extensions_mut().insert(LocalAddr(local));
                }
                let mut service = service.clone();
                async move { service.call(request.map(axum::body::Body::new)).await }
            },
        );
        connections.spawn(async move {
            // A client must send its request head within 30 s: idle or
            // trickling connections are closed rather than kept forever.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .half_close(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "HTTP connection ended");
            }
            drop(slot);
        });
    }
}

async fn access_log(
    State(counters): State<Arc<HttpCounters>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = HttpRoute::of_path(request.uri().path());
    let method = request.method().clone();
    let uri = request.uri().clone();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let range = request
        .headers()
        .get(axum::http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let response = next.run(request).await;
    counters.answered(route, response.status().as_u16());
    let length = response
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    tracing::info!(
        %peer, %method, %uri, status = response.status().as_u16(), length,
        range = range.as_deref().unwrap_or("-"),
        ms = started.elapsed().as_millis() as u64, "http"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalmesh_installer::api::Directive;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback address with a port nobody listens on.
    fn free_listen() -> SocketAddr {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        ([127, 0, 0, 1], port).into()
    }

    /// A server on `listen` serving the temporary directory, 4 connections
    /// per source, bodies within 300 ms.
    fn test_config(
        listen: SocketAddr,
        machines: Option<installer_api::InstallerSender>,
    ) -> HttpBootConfig {
        HttpBootConfig {
            listen,
            root: std::env::temp_dir(),
            image_cache: None,
            ipxe: IpxeSettings {
                base_url: format!("http://{listen}"),
                kernel: "vmlinuz".into(),
                initrd: "initramfs.img".into(),
                cmdline: String::new(),
                leaf: "leaf1".into(),
            },
            machines,
            counters: Arc::default(),
            max_connections_per_source: 4,
            body_deadline: Duration::from_millis(300),
        }
    }

    /// A client that half-closes after its request (as busybox `nc` does)
    /// still gets the answer of a call that takes a while.
    #[tokio::test]
    async fn half_closed_requests_are_answered() {
        let (machines, mut calls) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(call) = calls.recv().await {
                let call: installer_api::InstallerRequest = call;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = call.reply.send(Ok(Directive::Reboot));
            }
        });
        let listen = free_listen();
        let config = test_config(listen, Some(machines));
        let cancel = CancellationToken::new();
        let _stop = cancel.clone().drop_guard();
        tokio::spawn(serve(config, cancel));
        let mut stream = None;
        for _ in 0..50 {
            if let Ok(connected) = tokio::net::TcpStream::connect(listen).await {
                stream = Some(connected);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut stream = stream.expect("the server never listened");
        stream
            .write_all(
                b"POST /v1/machines/6d6d0000-0000-4000-8000-000001000001/phone-home HTTP/1.0\r\n\
                  Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            )
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer:?}");
        assert!(answer.contains("reboot"), "{answer:?}");
    }

    /// A server on a free loopback port with no installer API behind it.
    async fn limited_server() -> (SocketAddr, CancellationToken) {
        let listen = free_listen();
        let config = test_config(listen, None);
        let cancel = CancellationToken::new();
        tokio::spawn(serve(config, cancel.clone()));
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(listen).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (listen, cancel)
    }

    /// One source holds at most its share of connections; a freed one
    /// makes room again.
    #[tokio::test]
    async fn connections_per_source_are_capped() {
        let (listen, cancel) = limited_server().await;
        let _stop = cancel.drop_guard();
        // The readiness probe's connection may still be closing.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(tokio::net::TcpStream::connect(listen).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut fifth = tokio::net::TcpStream::connect(listen).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), fifth.read_to_end(&mut answer))
            .await
            .expect("the fifth connection was left open");
        assert!(
            read.is_err() || answer.is_empty(),
            "the fifth got an answer"
        );
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut again = tokio::net::TcpStream::connect(listen).await.unwrap();
        again
            .write_all(b"GET /ipxe/52:54:00:00:00:01 HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), again.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.0 "), "{answer:?}");
    }

    /// A body that trickles is answered 408 at the deadline.
    #[tokio::test]
    async fn a_trickled_body_is_cut_off() {
        let (listen, cancel) = limited_server().await;
        let _stop = cancel.drop_guard();
        let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
        stream
            .write_all(
                b"POST /v1/machines/register HTTP/1.1\r\nHost: leaf\r\n\
                  Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"hard",
            )
            .await
            .unwrap();
        let mut answer = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer))
            .await
            .expect("no answer within 3 s")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    }
}
