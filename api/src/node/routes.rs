//! The REST surface (`/v1`, JSON). Every route needs a bearer token; errors
//! are `{"error": …, "field": …}` with a 4xx status for the caller's
//! mistakes (401 no or bad token, 403 not allowed, 404, 409 conflict or
//! nothing available) and 5xx for ours.

use crate::node::auth::{AuthError, LoginInfo, Principal, UserRole, Verifier};
use crate::node::catalog::{ImageView, NewImage, NewSize, PartitionView, SizeView, SwitchView};
use crate::node::ipam::{IpView, NewIp};
use crate::node::journal::Entry;
use crate::node::machines::{AllocationRequest, MachineFilter, MachineView, NewReservation};
use crate::node::service::{Api, ApiError, NetworkView, NewNetwork, NewProject, ProjectView};
use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
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
    paths(
        login_info, whoami, machines, machine, allocate, free, reserve, unreserve, switches, switch,
        partitions, projects, create_project, networks, create_network, images, create_image,
        delete_image, sizes, create_size, delete_size, ips, acquire_ip, release_ip, audit
    ),
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
        .route("/v1/auth", get(login_info))
        .route("/v1/whoami", get(whoami))
        .route("/v1/machines", get(machines))
        .route("/v1/machines/allocate", post(allocate))
        .route("/v1/machines/{uuid}", get(machine))
        .route("/v1/machines/{uuid}/free", post(free))
        .route(
            "/v1/machines/{uuid}/reservation",
            put(reserve).delete(unreserve),
        )
        .route("/v1/switches", get(switches))
        .route("/v1/switches/{name}", get(switch))
        .route("/v1/partitions", get(partitions))
        .route("/v1/projects", get(projects).post(create_project))
        .route("/v1/networks", get(networks).post(create_network))
        .route("/v1/images", get(images).post(create_image))
        .route("/v1/images/{name}", axum::routing::delete(delete_image))
        .route("/v1/sizes", get(sizes).post(create_size))
        .route("/v1/sizes/{name}", axum::routing::delete(delete_size))
        .route("/v1/ips", get(ips).post(acquire_ip))
        .route("/v1/ips/{address}", axum::routing::delete(release_ip))
        .route("/v1/audit", get(audit))
        .route("/", get(super::web::to_index))
        .route("/ui", get(super::web::to_index))
        .route("/ui/", get(super::web::index))
        .route("/ui/app.js", get(super::web::script))
        .route("/ui/style.css", get(super::web::style))
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

fn created<T: Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

/// What every route may answer besides its own: the caller's token.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Refused {
    /// No, malformed, forged, expired, wrong-audience or wrong-issuer token.
    #[response(status = 401)]
    Unauthenticated(ApiError),
    /// Not allowed to the caller's role or projects.
    #[response(status = 403)]
    Forbidden(ApiError),
    /// The identity provider cannot be reached.
    #[response(status = 503)]
    ProviderDown(ApiError),
}

/// `GET /v1/auth` (no token needed: the CLI asks where to log in).
#[utoipa::path(get, path = "/v1/auth", security(()), responses((status = 200, body = LoginInfo)))]
async fn login_info(State(state): Shared) -> Response {
    json(state.verifier.login_info())
}

#[utoipa::path(get, path = "/v1/whoami", responses((status = 200, body = Principal), Refused))]
async fn whoami(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    Ok(json(principal(&state, &headers).await?))
}

#[utoipa::path(
    get,
    path = "/v1/machines",
    params(MachineFilter),
    responses(
        (status = 200, body = Vec<MachineView>),
        (status = 400, description = "unknown filter", body = ApiError),
        Refused,
    )
)]
async fn machines(
    State(state): Shared,
    headers: HeaderMap,
    filter: Result<Query<MachineFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    let Query(filter) = filter.map_err(|rejection| ApiError::new(400, rejection.body_text()))?;
    let list = state.api.machines(&who, &filter);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        list.to_json(),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/machines/{uuid}",
    params(("uuid" = String, Path, description = "machine UUID")),
    responses(
        (status = 200, body = MachineView),
        (status = 404, description = "not found", body = ApiError),
        Refused,
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
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "a retry with the same key (by the same caller) returns the same machine")),
    responses(
        (status = 200, body = MachineView),
        (status = 404, description = "no such network, image, size or partition", body = ApiError),
        (status = 400, description = "malformed body or bad value", body = ApiError),
        (status = 409, description = "conflict or nothing available", body = ApiError),
        (status = 502, description = "no agent could be reached", body = ApiError),
        (status = 504, description = "the agent did not answer in time; the allocation may still complete", body = ApiError),
        Refused,
    )
)]
async fn allocate(
    State(state): Shared,
    headers: HeaderMap,
    request: Result<Json<AllocationRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    let request = body(request)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::field("Idempotency-Key", "1-255 printable characters"))?
                .to_string(),
        ),
    };
    // On its own task: a client that hangs up does not cancel an
    // allocation half way (after its agent committed).
    let task = tokio::spawn(async move { state.api.allocate(&who, request, key.as_deref()).await });
    match task.await {
        Ok(answer) => Ok(json(answer?)),
        Err(error) => Err(ApiError::new(500, error.to_string())),
    }
}

#[utoipa::path(
    post,
    path = "/v1/machines/{uuid}/free",
    params(("uuid" = String, Path, description = "machine UUID")),
    responses(
        (status = 200, body = MachineView),
        (status = 404, description = "not found", body = ApiError),
        (status = 409, description = "not allocated, or locked", body = ApiError),
        (status = 502, description = "the machine's agent did not answer", body = ApiError),
        Refused,
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
    put,
    path = "/v1/machines/{uuid}/reservation",
    params(("uuid" = String, Path, description = "machine UUID")),
    request_body = NewReservation,
    responses(
        (status = 200, body = MachineView),
        (status = 400, description = "malformed body or bad value", body = ApiError),
        (status = 404, description = "no such machine or project", body = ApiError),
        Refused,
    )
)]
async fn reserve(
    State(state): Shared,
    headers: HeaderMap,
    Path(uuid): Path<String>,
    new: Result<Json<NewReservation>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    let new = body(new)?;
    Ok(json(state.api.reserve(&who, &uuid, new)?))
}

#[utoipa::path(
    delete,
    path = "/v1/machines/{uuid}/reservation",
    params(("uuid" = String, Path, description = "machine UUID")),
    responses(
        (status = 200, body = MachineView),
        (status = 404, description = "no such machine or no reservation", body = ApiError),
        Refused,
    )
)]
async fn unreserve(
    State(state): Shared,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    Ok(json(state.api.unreserve(&who, &uuid)?))
}

#[utoipa::path(get, path = "/v1/switches", responses((status = 200, body = Vec<SwitchView>), Refused))]
async fn switches(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    Ok(json(state.api.switches(&who)?))
}

#[utoipa::path(
    get,
    path = "/v1/switches/{name}",
    params(("name" = String, Path, description = "switch name")),
    responses(
        (status = 200, body = SwitchView),
        (status = 404, description = "not found", body = ApiError),
        Refused,
    )
)]
async fn switch(
    State(state): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    Ok(json(state.api.switch(&who, &name)?))
}

#[utoipa::path(get, path = "/v1/partitions", responses((status = 200, body = Vec<PartitionView>), Refused))]
async fn partitions(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    principal(&state, &headers).await?;
    Ok(json(state.api.partitions()?))
}

#[utoipa::path(get, path = "/v1/projects", responses((status = 200, body = Vec<ProjectView>), Refused))]
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
        (status = 409, description = "exists", body = ApiError),
        Refused,
    )
)]
async fn create_project(
    State(state): Shared,
    headers: HeaderMap,
    new: Result<Json<NewProject>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    let new = body(new)?;
    Ok(created(state.api.create_project(&who, new)?))
}

#[utoipa::path(get, path = "/v1/networks", responses((status = 200, body = Vec<NetworkView>), Refused))]
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
        (status = 409, description = "exists, overlaps, or nothing left", body = ApiError),
        Refused,
    )
)]
async fn create_network(
    State(state): Shared,
    headers: HeaderMap,
    new: Result<Json<NewNetwork>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    let new = body(new)?;
    Ok(created(state.api.create_network(&who, new).await?))
}

#[utoipa::path(get, path = "/v1/images", responses((status = 200, body = Vec<ImageView>), Refused))]
async fn images(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    principal(&state, &headers).await?;
    Ok(json(state.api.images()?))
}

#[utoipa::path(
    post,
    path = "/v1/images",
    request_body = NewImage,
    responses(
        (status = 201, body = ImageView),
        (status = 400, description = "malformed body or bad value", body = ApiError),
        (status = 409, description = "exists", body = ApiError),
        Refused,
    )
)]
async fn create_image(
    State(state): Shared,
    headers: HeaderMap,
    new: Result<Json<NewImage>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    let new = body(new)?;
    Ok(created(state.api.create_image(&who, new)?))
}

#[utoipa::path(
    delete,
    path = "/v1/images/{name}",
    params(("name" = String, Path, description = "image name")),
    responses(
        (status = 200, body = ImageView),
        (status = 404, description = "not found", body = ApiError),
        Refused,
    )
)]
async fn delete_image(
    State(state): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    Ok(json(state.api.delete_image(&who, &name)?))
}

#[utoipa::path(get, path = "/v1/sizes", responses((status = 200, body = Vec<SizeView>), Refused))]
async fn sizes(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    principal(&state, &headers).await?;
    let sizes: Vec<SizeView> = state.api.sizes().into_iter().map(SizeView::from).collect();
    Ok(json(sizes))
}

#[utoipa::path(
    post,
    path = "/v1/sizes",
    request_body = NewSize,
    responses(
        (status = 201, body = SizeView),
        (status = 400, description = "malformed body or bad value", body = ApiError),
        (status = 409, description = "exists", body = ApiError),
        Refused,
    )
)]
async fn create_size(
    State(state): Shared,
    headers: HeaderMap,
    new: Result<Json<NewSize>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    let new = body(new)?;
    Ok(created(state.api.create_size(&who, new)?))
}

#[utoipa::path(
    delete,
    path = "/v1/sizes/{name}",
    params(("name" = String, Path, description = "size name")),
    responses(
        (status = 200, body = SizeView),
        (status = 404, description = "not found", body = ApiError),
        Refused,
    )
)]
async fn delete_size(
    State(state): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    Ok(json(state.api.delete_size(&who, &name)?))
}

#[utoipa::path(get, path = "/v1/ips", responses((status = 200, body = Vec<IpView>), Refused))]
async fn ips(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    Ok(json(state.api.ips(&who)))
}

#[utoipa::path(
    post,
    path = "/v1/ips",
    request_body = NewIp,
    responses(
        (status = 201, body = IpView),
        (status = 400, description = "malformed body or bad value", body = ApiError),
        (status = 404, description = "no such network", body = ApiError),
        (status = 409, description = "in use, outside the network, or none left", body = ApiError),
        Refused,
    )
)]
async fn acquire_ip(
    State(state): Shared,
    headers: HeaderMap,
    new: Result<Json<NewIp>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    let new = body(new)?;
    Ok(created(state.api.acquire_ip(&who, new).await?))
}

#[utoipa::path(
    delete,
    path = "/v1/ips/{address}",
    params(("address" = String, Path, description = "the address")),
    responses(
        (status = 200, body = IpView),
        (status = 404, description = "not found", body = ApiError),
        (status = 409, description = "a machine holds it", body = ApiError),
        Refused,
    )
)]
async fn release_ip(
    State(state): Shared,
    headers: HeaderMap,
    Path(address): Path<String>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    Ok(json(state.api.release_ip(&who, &address)?))
}

#[utoipa::path(get, path = "/v1/audit", responses((status = 200, body = Vec<Entry>), Refused))]
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
