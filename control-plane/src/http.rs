//! The admin HTTP server (default :9991): the dashboard (`/`, with its
//! `/api/*` data), `/metrics`, `/ready`, `/live`, `/agents`.
//!
//! `/api/*`, `/agents` and `/leader` show dtabs, service policies, endpoints
//! and agents, as the gRPC reads do, so they follow `admin_reads`
//! ([`read_gate`]); the page itself, the metrics and the probes stay open.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;

use crate::agents::Agents;
use crate::dashboard;
use crate::grpc::admin::AdminService;
use crate::metrics::Metrics;
use crate::publish::Publisher;

#[derive(Debug, Clone)]
pub struct AdminState {
    pub publisher: Arc<Publisher>,
    pub agents: Arc<Agents>,
    pub metrics: Arc<Metrics>,
    /// The dtab admin API (the playground's delegation).
    pub admin: AdminService,
    pub role: tokio::sync::watch::Receiver<crate::leader::Role>,
    /// This replica's lease identity, when replicas elect a leader.
    pub me: Option<crate::leader::Holder>,
}

pub fn router(state: AdminState) -> Router {
    let reads = Router::new()
        .route("/api/overview", get(dashboard::overview))
        .route("/api/delegate", get(dashboard::delegate))
        .route("/api/policies", get(dashboard::policies))
        .route("/api/policies/explain", get(dashboard::explain_policy))
        .route("/agents", get(agents))
        .route("/leader", get(leader))
        .route_layer(middleware::from_fn_with_state(state.clone(), read_gate));
    Router::new()
        .route("/", get(dashboard::page))
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "ok\n" }))
        .merge(reads)
        .with_state(state)
}

/// `admin_reads` on this port: 401 without the bearer token, 403 with a
/// wrong one (the dtab API's rule; [`AdminService::authorize_http_read`]).
async fn read_gate(State(s): State<AdminState>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match s.admin.authorize_http_read(authorization) {
        Ok(()) => next.run(request).await,
        Err(status) => {
            let code = if status.code() == tonic::Code::PermissionDenied {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNAUTHORIZED
            };
            (
                code,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(serde_json::json!({ "error": status.message() })),
            )
                .into_response()
        }
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let current = s.publisher.current().version;
    let agents = s.agents.list();
    s.metrics.set_traffic_services(s.agents.traffic_services());
    s.metrics.set_agents(
        agents.len(),
        agents.iter().map(|a| {
            (
                a.instance_id.clone(),
                current.saturating_sub(a.acked_version),
            )
        }),
    );
    (
        [(header::CONTENT_TYPE, ecsmesh_metrics::CONTENT_TYPE)],
        s.metrics.encode(),
    )
}

/// Ready once the first mesh state is published (every source synced).
async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    let version = s.publisher.current().version;
    if version > 0 {
        (StatusCode::OK, format!("ready: version {version}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first sync of every source\n".to_owned(),
        )
    }
}

async fn agents(State(s): State<AdminState>) -> impl IntoResponse {
    let current = s.publisher.current();
    Json(serde_json::json!({
        "version": current.version,
        "epoch": s.publisher.epoch(),
        "agents": s.agents.list(),
    }))
}

/// This replica's part in the leader election.
async fn leader(State(s): State<AdminState>) -> impl IntoResponse {
    let holder =
        |h: &crate::leader::Holder| serde_json::json!({ "id": h.id, "address": h.address });
    let role = s.role.borrow().clone();
    Json(serde_json::json!({
        "role": role.name(),
        "elected": s.me.is_some(),
        "me": s.me.as_ref().map(holder),
        "leader": s.me.as_ref().and_then(|me| role.leader(me)).map(holder),
    }))
}
