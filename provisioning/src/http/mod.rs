//! The leaf's HTTP boot server (port 8070): per-machine iPXE scripts and the
//! kernel, initramfs and images, streamed from disk with HEAD, Range and
//! ETag/If-None-Match support. Every request is logged.

mod files;
pub mod installer_api;
mod ipxe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

pub use ipxe::IpxeSettings;

/// What the HTTP boot server serves.
#[derive(Debug, Clone)]
pub struct HttpBootConfig {
    pub listen: SocketAddr,
    /// Directory behind `/boot/…`.
    pub root: PathBuf,
    pub ipxe: IpxeSettings,
    /// Where installer API calls go; `None`: the API answers 503.
    pub machines: Option<installer_api::InstallerSender>,
}

#[derive(Debug)]
struct AppState {
    root: PathBuf,
    ipxe: IpxeSettings,
    machines: Option<installer_api::InstallerSender>,
}

pub fn router(config: &HttpBootConfig) -> Router {
    let state = Arc::new(AppState {
        root: config.root.clone(),
        ipxe: config.ipxe.clone(),
        machines: config.machines.clone(),
    });
    Router::new()
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
            crate::installer::api::MAX_BODY_BYTES,
        ))
        .layer(middleware::from_fn(access_log))
        .with_state(state)
}

/// Serves until cancelled.
pub async fn serve(config: HttpBootConfig, cancel: CancellationToken) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(listen = %config.listen, root = %config.root.display(), "HTTP boot server running");
    axum::serve(
        listener,
        router(&config).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { cancel.cancelled().await })
    .await
}

async fn access_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
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
