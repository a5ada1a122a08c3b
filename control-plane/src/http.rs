//! The admin HTTP server (default :9991): the dashboard (`/`, with its
//! `/api/*` data), `/metrics`, `/ready`, `/live`, `/agents`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
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
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/api/overview", get(dashboard::overview))
        .route("/api/delegate", get(dashboard::delegate))
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "ok\n" }))
        .route("/agents", get(agents))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let current = s.publisher.current().version;
    let agents = s.agents.list();
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
