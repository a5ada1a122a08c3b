//! The admin server (default `$HOST_IP:9990`): `/metrics`, `/ready`,
//! `/live`, `/admin/dtab` (the dtab in force and its version),
//! `/admin/delegator?path=…&dtab=…` (the delegation tree, with the
//! endpoints at each leaf) and `/admin/policies[?service=/svc/x]` (also
//! `/policies`: the service policies in force, each as stored and as
//! applied over the configured defaults, and which one a service gets).

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
        .route("/admin/policies", get(policies))
        .route("/policies", get(policies))
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
    let table = s.routes.load();
    s.metrics.set_clients(table.clients());
    s.metrics
        .policies
        .set(i64::try_from(table.policies.len()).unwrap_or(i64::MAX));
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

#[derive(Debug, Deserialize)]
struct PoliciesQuery {
    #[serde(default)]
    service: Option<String>,
}

/// The policies in force: each prefix with its store version, the
/// document as stored, and what the agent applies (the document over its
/// defaults); with `service`, the one that service gets and why.
async fn policies(State(s): State<AdminState>, Query(q): Query<PoliciesQuery>) -> Response {
    let table = s.routes.load();
    let listed: Vec<_> = table
        .policies
        .iter()
        .map(|(prefix, p)| {
            let stored = p.source.as_ref().map(|src| {
                serde_json::from_str::<serde_json::Value>(&src.canonical)
                    .unwrap_or_else(|_| serde_json::Value::String(src.canonical.clone()))
            });
            serde_json::json!({
                "prefix": prefix.to_string(),
                "version": p.source.as_ref().map(|src| src.version),
                "policy": stored,
                "applied": applied(p),
            })
        })
        .collect();
    let mut out = serde_json::json!({
        "mesh_version": table.version,
        "defaults": applied(&table.policies.default),
        "policies": listed,
    });
    if let Some(service) = q.service {
        let path = match Path::read(&service) {
            Ok(p) => p,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(serde_json::json!({ "error": format!("invalid service name: {e}") })),
                )
                    .into_response();
            }
        };
        let p = table.policies.matching(&path);
        out["match"] = serde_json::json!({
            "service": path.to_string(),
            "prefix": p.prefix().map(ToString::to_string),
            "version": p.source.as_ref().map(|src| src.version),
        });
    }
    Json(out).into_response()
}

/// What the agent applies for one policy, every field resolved.
fn applied(p: &crate::policy::Policy) -> serde_json::Value {
    use ecsmesh_agent_balance::Strategy;
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let b = &p.target.balancer;
    let a = &b.failure_accrual;
    let accrual = match a.success_rate {
        Some(sr) => serde_json::json!({
            "kind": "successRate", "success_rate": sr.rate, "requests": sr.requests,
            "backoff_min_ms": ms(a.backoff_min), "backoff_max_ms": ms(a.backoff_max),
        }),
        None => serde_json::json!({
            "kind": "consecutiveFailures", "failures": a.consecutive_failures,
            "backoff_min_ms": ms(a.backoff_min), "backoff_max_ms": ms(a.backoff_max),
        }),
    };
    let backoff = match p.backoff {
        None => serde_json::Value::Null,
        Some(ecsmesh_policy::Backoff::Constant(d)) => {
            serde_json::json!({ "kind": "constant", "delay_ms": ms(d) })
        }
        Some(ecsmesh_policy::Backoff::Jittered { min, max }) => {
            serde_json::json!({ "kind": "jittered", "min_ms": ms(min), "max_ms": ms(max) })
        }
    };
    serde_json::json!({
        "total_timeout_ms": ms(p.total_timeout),
        "attempt_timeout_ms": ms(p.attempt_timeout),
        "max_attempts": p.max_attempts,
        "retry_budget_balance": p.budget.balance(),
        "backoff": backoff,
        "classifier": format!("{:?}", p.classifier),
        "grpc_classifier": p.grpc.is_some(),
        "balancer": match b.strategy {
            Strategy::PeakEwma => serde_json::json!({ "kind": "ewma", "decay_ms": ms(b.decay) }),
            Strategy::RoundRobin => serde_json::json!({ "kind": "roundRobin" }),
            Strategy::LeastRequests => serde_json::json!({ "kind": "leastLoaded" }),
        },
        "failure_accrual": accrual,
        "max_concurrent_requests": (b.max_concurrent > 0).then_some(b.max_concurrent),
        "zone_aware": p.target.zone_aware,
    })
}
