//! The installer API (`/v1/machines/…`): what machines' installers and
//! installed systems call. Each call becomes an [`InstallerRequest`] for the
//! agent's machine lifecycle, which answers with a [`Directive`] or an error.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::{mpsc, oneshot};

use super::AppState;
use metalmesh_installer::api::{Directive, EventReport, Registration};

/// One call from a machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallerCall {
    Register(Box<Registration>),
    Heartbeat { uuid: String },
    Event { uuid: String, report: EventReport },
    PhoneHome { uuid: String },
}

/// Why the machine lifecycle refused a call; this module alone turns it
/// into an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RefusalKind {
    /// The request makes no sense (an event an installer may not report).
    Invalid,
    /// The caller may not speak for that machine.
    Forbidden,
    /// No such machine.
    Unknown,
    /// Not now (the machine is not in a state that allows it).
    Conflict,
    /// The leaf manages as many machines as it can.
    Full,
    /// The leaf could not do it (its store refused the write).
    Internal,
    /// Not yet: what identifies the caller is still being learned (its
    /// port binding, its LLDP announcement); the caller retries.
    NotYet,
}

impl RefusalKind {
    fn status(self) -> StatusCode {
        match self {
            RefusalKind::Invalid => StatusCode::BAD_REQUEST,
            RefusalKind::Forbidden => StatusCode::FORBIDDEN,
            RefusalKind::Unknown => StatusCode::NOT_FOUND,
            RefusalKind::Conflict => StatusCode::CONFLICT,
            RefusalKind::Full => StatusCode::INSUFFICIENT_STORAGE,
            RefusalKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            RefusalKind::NotYet => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A refusal and its reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

#[derive(Debug)]
pub struct InstallerRequest {
    pub call: InstallerCall,
    /// Where the call came from (its DHCP lease names the MAC).
    pub peer: IpAddr,
    pub reply: oneshot::Sender<Result<Directive, Refusal>>,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn valid_uuid(uuid: &str) -> bool {
    uuid.len() == 36
        && uuid.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// A machine UUID as the agent keys machines: checked and lower case.
fn machine_uuid(raw: &str) -> Result<String, Box<Response>> {
    let uuid = raw.to_lowercase();
    if valid_uuid(&uuid) {
        Ok(uuid)
    } else {
        Err(Box::new(refuse(
            StatusCode::BAD_REQUEST,
            format!("`{raw}` is not a UUID"),
        )))
    }
}

async fn forward(state: &AppState, peer: SocketAddr, call: InstallerCall) -> Response {
    let Some(machines) = &state.machines else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this leaf does not manage machines",
        );
    };
    let (reply, answer) = oneshot::channel();
    let request = InstallerRequest {
        call,
        peer: peer.ip(),
        reply,
    };
    if machines.send(request).await.is_err() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the machine lifecycle is restarting",
        );
    }
    match answer.await {
        Ok(Ok(directive)) => Json(directive).into_response(),
        Ok(Err(refusal)) => refuse(refusal.kind.status(), refusal.message),
        Err(_) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the machine lifecycle is restarting",
        ),
    }
}

/// The JSON body (its size is limited by the router before it is read).
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|error| {
        Box::new(refuse(
            StatusCode::BAD_REQUEST,
            format!("malformed request: {error}"),
        ))
    })
}

pub(super) async fn register(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let mut registration: Registration = match parse(&body) {
        Ok(registration) => registration,
        Err(response) => return *response,
    };
    registration.hardware.uuid = match machine_uuid(&registration.hardware.uuid) {
        Ok(uuid) => uuid,
        Err(response) => return *response,
    };
    forward(
        &state,
        peer,
        InstallerCall::Register(Box::new(registration)),
    )
    .await
}

pub(super) async fn heartbeat(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(uuid): Path<String>,
) -> Response {
    let uuid = match machine_uuid(&uuid) {
        Ok(uuid) => uuid,
        Err(response) => return *response,
    };
    forward(&state, peer, InstallerCall::Heartbeat { uuid }).await
}

pub(super) async fn event(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(uuid): Path<String>,
    body: Bytes,
) -> Response {
    let uuid = match machine_uuid(&uuid) {
        Ok(uuid) => uuid,
        Err(response) => return *response,
    };
    let report: EventReport = match parse(&body) {
        Ok(report) => report,
        Err(response) => return *response,
    };
    forward(&state, peer, InstallerCall::Event { uuid, report }).await
}

pub(super) async fn phone_home(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(uuid): Path<String>,
) -> Response {
    let uuid = match machine_uuid(&uuid) {
        Ok(uuid) => uuid,
        Err(response) => return *response,
    };
    forward(&state, peer, InstallerCall::PhoneHome { uuid }).await
}

/// Where the HTTP server sends installer calls.
pub type InstallerSender = mpsc::Sender<InstallerRequest>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_checked() {
        assert!(valid_uuid("6d6d0000-0000-4000-8000-000001000001"));
        assert!(!valid_uuid("6d6d0000-0000-4000-8000-00000100000"));
        assert!(!valid_uuid("6d6d0000x0000-4000-8000-000001000001"));
        assert!(!valid_uuid("../../../../etc/passwd-aaaaaaaaaaaaaa"));
    }
}
