//! The API node (`metalmesh-api`): joins the inventory mesh with an `api`
//! certificate, serves the REST API over HTTPS to users holding OIDC tokens,
//! writes the API-owned records (projects, networks, IPs) into the mesh and
//! asks each machine's agent to commit its allocation.
//!
//! - [`config`]: `api.toml`, checked.
//! - [`auth`]: OIDC tokens → who is calling.
//! - [`service`]: what the API does, without HTTP.
//! - [`routes`]: the REST surface.
//! - [`index`]: the replica's machines, parsed once.
//! - [`journal`]: the audit log and idempotency keys.
//! - [`metrics`]: Prometheus metrics.
//! - [`web`]: the web view at `/ui/`.
//!
//! Who may reach it: HTTPS on `http.listen` (8443) from anyone with a token
//! of the configured issuer and audience; the mesh port only from nodes of
//! the mesh CA (see `metalmesh_inventory::mesh`).

pub mod auth;
pub mod catalog;
pub mod config;
pub mod index;
pub mod ipam;
pub mod journal;
pub mod machines;
pub mod metrics;
pub mod routes;
pub mod service;
pub mod web;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use metalmesh_inventory::Store;
use metalmesh_inventory::mesh::Tuning;
use metalmesh_inventory::mesh::service::{self as mesh, CredentialFiles, MeshSettings, MeshView};
use metalmesh_inventory::pki::NodeCredentials;
use metalmesh_inventory::trust::{Role, Trust};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use config::ApiConfig;

/// Runs the API node until `cancel`.
pub async fn run(config: ApiConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} owner-only", config.state_dir.display()))?;
    }
    let credentials = NodeCredentials::load(&config.mesh.ca, &config.mesh.cert, &config.mesh.key)
        .context("mesh credentials")?;
    credentials
        .check_node_name(&config.name)
        .context("mesh certificate")?;
    let trust = Trust::from_credentials(&credentials).context("mesh credentials")?;
    if trust.keyring.own_role() != Role::Api {
        anyhow::bail!(
            "the mesh certificate {} states the role {}, not api (issue it with `metalmesh ca issue --role api`)",
            config.mesh.cert.display(),
            trust.keyring.own_role()
        );
    }
    let store = Store::open_signed(&config.state_dir.join("inventory.db"), trust)?;
    let journal = journal::Journal::open(&config.state_dir.join("api.db"))?;
    let view = MeshView::default();
    let settings = MeshSettings {
        name: config.name.clone(),
        listen: config.mesh.listen,
        advertise: config.mesh.advertise,
        seeds: config.mesh.seeds.clone(),
        tuning: Tuning::default(),
        credential_files: Some(CredentialFiles {
            ca: config.mesh.ca.clone(),
            cert: config.mesh.cert.clone(),
            key: config.mesh.key.clone(),
        }),
        peer_byte_budget: mesh::PEER_BYTE_BUDGET,
    };
    // The API node answers no commands: it only asks.
    let (commands_tx, mut commands) = tokio::sync::mpsc::channel::<mesh::Command>(8);
    tokio::spawn(async move {
        while let Some(command) = commands.recv().await {
            let _ = command
                .reply
                .send(Err("the API node takes no commands".into()));
        }
    });
    let mesh_task = {
        let (store, view, cancel) = (store.clone(), view.clone(), cancel.clone());
        let credentials = Arc::new(credentials);
        tokio::spawn(async move {
            mesh::run(settings, credentials, store, view, commands_tx, cancel).await
        })
    };
    let api = service::Api::new(store.clone(), view, journal, config.tenant.clone());
    api.index.follow(store, cancel.clone());
    let metrics = Arc::new(metrics::ApiMetrics::new(Arc::clone(&api.index)));
    let metrics_task = {
        let (metrics, cancel, listen) =
            (Arc::clone(&metrics), cancel.clone(), config.metrics_listen);
        tokio::spawn(async move { metrics::serve(listen, metrics, cancel).await })
    };
    let state = Arc::new(routes::AppState {
        api,
        verifier: auth::Verifier::new(config.oidc.clone()),
    });
    let router = routes::router(state).layer(axum::middleware::from_fn_with_state(
        metrics,
        metrics::count,
    ));
    let served = serve(&config, router, cancel.clone()).await;
    cancel.cancel();
    match metrics_task.await {
        Ok(Err(error)) => {
            return Err(anyhow::anyhow!(
                "metrics on {}: {error}",
                config.metrics_listen
            ));
        }
        Err(error) => return Err(error.into()),
        Ok(Ok(())) => {}
    }
    cancel.cancel();
    mesh_task.await.context("mesh task")??;
    served
}

/// HTTPS with the configured certificate (TLS 1.2+), one task per connection.
async fn serve(
    config: &ApiConfig,
    router: axum::Router,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let chain = NodeCredentials::load(&config.mesh.ca, &config.tls_cert, &config.tls_key)
        .context("HTTPS certificate")?;
    if rustls::crypto::ring::sign::any_supported_type(&chain.key)
        .is_ok_and(|key| key.algorithm() == rustls::SignatureAlgorithm::ED25519)
    {
        tracing::warn!(
            cert = %config.tls_cert.display(),
            "the HTTPS key is Ed25519 (the mesh certificate's): the CLI connects, browsers cannot \
             open the web view; give [http] cert and key an ECDSA or RSA certificate \
             (metalmesh ca issue-https)"
        );
    }
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain.chain.clone(), chain.key.clone_key())
    .context("HTTPS certificate")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(listen = %config.listen, "API serving HTTPS");
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Answers leave at once: with Nagle's algorithm, a response's last
        // segment waits for the client's delayed ACK (40 ms on Linux).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "TCP_NODELAY not set");
        }
        let (acceptor, router) = (acceptor.clone(), router.clone());
        connections.spawn(async move {
            let stream = match tokio::time::timeout(
                Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = TowerToHyperService::new(router);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "HTTPS connection ended");
            }
        });
    }
}
