//! The admin server (default `$HOST_IP:9990`): `/metrics`, `/ready`,
//! `/live`, `/admin/dtab` (the dtab in force and its version) and
//! `/admin/delegator?path=…&dtab=…` (the delegation tree, with the
//! endpoints at each leaf).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use ecsmesh_dtab::{Dtab, Path, json};
use ecsmesh_state::MeshNamer;
use serde::Deserialize;
use tokio::sync::watch;

use crate::control::ControlStatus;
use crate::metrics::Metrics;
use crate::routes::Routes;

#[derive(Debug, Clone)]
pub struct AdminState {
    pub routes: Arc<Routes>,
    pub status: watch::Receiver<ControlStatus>,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "ok\n" }))
        .route("/admin/dtab", get(dtab))
        .route("/admin/delegator", get(delegator))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    {
        let status = s.status.borrow();
        s.metrics.control_connected.set(i64::from(status.connected));
        s.metrics
            .snapshot_version
            .set(i64::try_from(status.version).unwrap_or(i64::MAX));
        s.metrics
            .last_update_age_seconds
            .set(status.last_update.map_or(0.0, |t| {
                Instant::now().saturating_duration_since(t).as_secs_f64()
            }));
    }
    s.metrics.set_clients(s.routes.load().clients());
    (
        [(header::CONTENT_TYPE, ecsmesh_metrics::CONTENT_TYPE)],
        s.metrics.encode(),
    )
}

/// Ready once a mesh state is in force (from the controller or from disk).
async fn ready(State(s): State<AdminState>) -> Response {
    let status = s.status.borrow().clone();
    if status.version > 0 {
        let from = if status.from_disk {
            "saved snapshot"
        } else {
            "controller"
        };
        (
            StatusCode::OK,
            format!("ready: version {} from the {from}\n", status.version),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first mesh state\n",
        )
            .into_response()
    }
}

async fn dtab(State(s): State<AdminState>) -> impl IntoResponse {
    let table = s.routes.load();
    let status = s.status.borrow().clone();
    Json(serde_json::json!({
        "namespace": s.routes.settings.namespace,
        "version": table.version,
        "epoch": table.epoch,
        "connected": status.connected,
        "controller": status.controller,
        "from_disk": status.from_disk,
        "dtab": table.dtab.to_string(),
        "dentries": json::dtab(&table.dtab),
    }))
}

#[derive(Debug, Deserialize)]
struct DelegatorQuery {
    path: String,
    #[serde(default)]
    dtab: String,
}

async fn delegator(State(s): State<AdminState>, Query(q): Query<DelegatorQuery>) -> Response {
    let bad = |msg: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": msg })),
        )
            .into_response()
    };
    let table = s.routes.load();
    let path = match Path::read(&q.path) {
        Ok(p) => p,
        Err(e) => return bad(format!("invalid path: {e}")),
    };
    let dtab = if q.dtab.trim().is_empty() {
        Dtab::clone(&table.dtab)
    } else {
        match Dtab::read(&q.dtab) {
            Ok(extra) => table.dtab.concat(&extra),
            Err(e) => return bad(format!("invalid dtab: {e}")),
        }
    };
    match ecsmesh_dtab::delegate(&dtab, &path) {
        Ok(tree) => Json(serde_json::json!({
            "result": tree.result().to_string(),
            "tree": ecsmesh_state::json::delegation_with_endpoints(&tree, MeshNamer::new(&table.mesh)),
        }))
        .into_response(),
        Err(e) => bad(e.to_string()),
    }
}
