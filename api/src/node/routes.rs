//! The REST surface (`/v1`, JSON). Every route needs a bearer token; errors
//! are `{"error": …, "field": …}` with a 4xx status for the caller's
//! mistakes (401 no or bad token, 403 not allowed, 404, 409 conflict or
//! nothing available) and 5xx for ours.

use crate::node::auth::{AuthError, Principal, UserRole, Verifier};
use crate::node::journal::Entry;
use crate::node::service::{
    AllocationRequest, Api, ApiError, MachineView, NetworkView, NewNetwork, NewProject,
    ProjectView, SwitchView,
};
use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use std::sync::Arc;
use utoipa::OpenApi as _;

#[derive(Debug)]
pub struct AppState {
    pub api: Api,
    pub verifier: Verifier,
}

type Shared = State<Arc<AppState>>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self)).into_response()
    }
}

/// The OpenAPI document, generated from the routes and types below.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "metalmesh API", description = "Bare-metal machines, networks and projects; every route needs an OIDC bearer token."),
    paths(whoami, machines, machine, allocate, free, switches, projects, create_project, networks, create_network, audit),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// `GET /v1/openapi.json` (no token needed: it describes, it reveals nothing).
async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/whoami", get(whoami))
        .route("/v1/machines", get(machines))
        .route("/v1/machines/allocate", post(allocate))
        .route("/v1/machines/{uuid}", get(machine))
        .route("/v1/machines/{uuid}/free", post(free))
        .route("/v1/switches", get(switches))
        .route("/v1/projects", get(projects).post(create_project))
        .route("/v1/networks", get(networks).post(create_network))
        .route("/v1/audit", get(audit))
        .fallback(|| async { ApiError::new(404, "no such route") })
        .with_state(state)
}

async fn principal(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AuthError::Missing);
    let result = match token {
        Ok(token) => state.verifier.verify(token.trim()).await,
        Err(error) => Err(error),
    };
    result.map_err(|error| {
        let status = match error {
            AuthError::Missing | AuthError::Invalid(_) => 401,
            AuthError::NoRole(_) => 403,
            AuthError::Provider(_) => 503,
        };
        ApiError::new(status, error.to_string())
    })
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(value)| value)
        .map_err(|rejection| ApiError::new(400, rejection.body_text()))
}

fn json<T: Serialize>(value: T) -> Response {
    Json(value).into_response()
}

#[utoipa::path(
    get,
    path = "/v1/whoami",
    responses(
        (status = 200, body = Principal),
        (status = 401, description = "no or bad token", body = ApiError),
        (status = 403, description = "not allowed", body = ApiError),
        (status = 503, description = "the identity provider cannot be reached", body = ApiError),
    )
)]
async fn whoami(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    Ok(json(principal(&state, &headers).await?))
}

#[utoipa::path(
    get,
    path = "/v1/machines",
    responses(
        (status = 200, body = Vec<MachineView>),
        (status = 401, description = "no or bad token", body = ApiError),
        (status = 403, description = "not allowed", body = ApiError),
        (status = 503, description = "the identity provider cannot be reached", body = ApiError),
    )
)]
async fn machines(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    Ok(json(state.api.machines(&who)?))
}

#[utoipa::path(
    get,
    path = "/v1/machines/{uuid}",
    params(("uuid" = String, Path, description = "machine UUID")),
    responses(
        (status = 200, body = MachineView),
        (status = 404, description = "not found", body = ApiError),
        (status = 401, description = "no or bad token", body = ApiError),
        (status = 403, description = "not allowed", body = ApiError),
        (status = 503, description = "the identity provider cannot be reached", body = ApiError),
    )
)]
async fn machine(
    State(state): Shared,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    Ok(json(state.api.machine(&who, &uuid)?))
}

#[utoipa::path(
    post,
    path = "/v1/machines/allocate",
    request_body = AllocationRequest,
    responses(
        (status = 200, body = MachineView),
        (status = 404, description = "no such network", body = ApiError),
        (status = 400, description = "malformed body or bad value", body = ApiError),
        (status = 409, description = "conflict or nothing available", body = ApiError),
        (status = 502, description = "the machine's agent did not answer", body = ApiError),
        (status = 401, description = "no or bad token", body = ApiError),
        (status = 403, description = "not allowed", body = ApiError),
        (status = 503, description = "the identity provider cannot be reached", body = ApiError),
    )
)]
async fn allocate(
    State(state): Shared,
    headers: HeaderMap,
    request: Result<Json<AllocationRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    let request = body(request)?;
    Ok(json(state.api.allocate(&who, request).await?))
}

#[utoipa::path(
    post,
    path = "/v1/machines/{uuid}/free",
    params(("uuid" = String, Path, description = "machine UUID")),
    responses(
        (status = 200, body = MachineView),
        (status = 404, description = "not found", body = ApiError),
        (status = 409, description = "conflict or nothing available", body = ApiError),
        (status = 502, description = "the machine's agent did not answer", body = ApiError),
        (status = 401, description = "no or bad token", body = ApiError),
        (status = 403, description = "not allowed", body = ApiError),
        (status = 503, description = "the identity provider cannot be reached", body = ApiError),
    )
)]
async fn free(
    State(state): Shared,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    Ok(json(state.api.free(&who, &uuid).await?))
}

#[utoipa::path(
    get,
    path = "/v1/switches",
    responses(
        (status = 200, body = Vec<SwitchView>),
        (status = 401, description = "no or bad token", body = ApiError),
        (status = 403, description = "not allowed", body = ApiError),
        (status = 503, description = "the identity provider cannot be reached", body = ApiError),
    )
)]
async fn switches(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    principal(&state, &headers).await?;
    Ok(json(state.api.switches()?))
}

#[utoipa::path(
    get,
    path = "/v1/projects",
    responses(
        (status = 200, body = Vec<ProjectView>),
        (status = 401, description = "no or bad token", body = ApiError),
        (status = 403, description = "not allowed", body = ApiError),
        (status = 503, description = "the identity provider cannot be reached", body = ApiError),
    )
)]
async fn projects(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    Ok(json(state.api.projects(&who)?))
}

#[utoipa::path(
    post,
    path = "/v1/projects",
    request_body = NewProject,
    responses(
        (status = 201, body = ProjectView),
        (status = 400, description = "malformed body or bad value", body = ApiError),
        (status = 409, description = "conflict or nothing available", body = ApiError),
        (status = 401, description = "no or bad token", body = ApiError),
        (status = 403, description = "not allowed", body = ApiError),
        (status = 503, description = "the identity provider cannot be reached", body = ApiError),
    )
)]
async fn create_project(
    State(state): Shared,
    headers: HeaderMap,
    new: Result<Json<NewProject>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    let new = body(new)?;
    let project = state.api.create_project(&who, new)?;
    Ok((StatusCode::CREATED, Json(project)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/networks",
    responses(
        (status = 200, body = Vec<NetworkView>),
        (status = 401, description = "no or bad token", body = ApiError),
        (status = 403, description = "not allowed", body = ApiError),
        (status = 503, description = "the identity provider cannot be reached", body = ApiError),
    )
)]
async fn networks(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    Ok(json(state.api.networks(&who)?))
}

#[utoipa::path(
    post,
    path = "/v1/networks",
    request_body = NewNetwork,
    responses(
        (status = 201, body = NetworkView),
        (status = 404, description = "no such project", body = ApiError),
        (status = 400, description = "malformed body or bad value", body = ApiError),
        (status = 409, description = "conflict or nothing available", body = ApiError),
        (status = 401, description = "no or bad token", body = ApiError),
        (status = 403, description = "not allowed", body = ApiError),
        (status = 503, description = "the identity provider cannot be reached", body = ApiError),
    )
)]
async fn create_network(
    State(state): Shared,
    headers: HeaderMap,
    new: Result<Json<NewNetwork>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    let new = body(new)?;
    let network = state.api.create_network(&who, new).await?;
    Ok((StatusCode::CREATED, Json(network)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    responses(
        (status = 200, body = Vec<Entry>),
        (status = 401, description = "no or bad token", body = ApiError),
        (status = 403, description = "not allowed", body = ApiError),
        (status = 503, description = "the identity provider cannot be reached", body = ApiError),
    )
)]
async fn audit(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    if who.role != UserRole::Admin {
        return Err(ApiError::new(403, "the audit log is for admins"));
    }
    let entries = state
        .api
        .journal
        .entries(1000)
        .map_err(|e| ApiError::new(500, e.to_string()))?;
    Ok(json(entries))
}
