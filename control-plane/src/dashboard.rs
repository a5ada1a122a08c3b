//! The mesh dashboard on the admin port: `/` (one static page, vanilla JS,
//! no build step), which polls `/api/overview` (the mesh's traffic from the
//! agents' summaries, and every agent's convergence) and asks
//! `/api/delegate` for the dtab playground.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::agents::AgentView;
use crate::http::AdminState;
use crate::traffic::Stats;

const PAGE: &str = include_str!("dashboard.html");

/// The window rates are computed over, unless the page asks for another.
const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
const MIN_WINDOW: Duration = Duration::from_secs(5);

/// Services listed in `/api/overview`: the busiest ones, so the answer
/// stays small however many names agents report (the count is of all).
pub const MAX_LISTED_SERVICES: usize = 1_000;

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

#[derive(Debug, Deserialize)]
pub struct OverviewQuery {
    /// Seconds.
    window: Option<u64>,
}

pub async fn overview(State(s): State<AdminState>, Query(q): Query<OverviewQuery>) -> Response {
    let window = q
        .window
        .map_or(DEFAULT_WINDOW, Duration::from_secs)
        .clamp(MIN_WINDOW, crate::agents::TRAFFIC_HISTORY);
    let current = s.publisher.current();
    let (mesh, agents) = s.agents.traffic_view(window, current.version);
    let services = listed(&mesh.services, MAX_LISTED_SERVICES);
    Json(Overview {
        version: current.version,
        epoch: s.publisher.epoch(),
        window_seconds: mesh.window_seconds,
        namespaces: current.state.dtabs.keys().collect(),
        summary: Summary {
            services: mesh.services.len(),
            agents: agents.len(),
            converged_agents: agents.iter().filter(|a| a.converged).count(),
            stats: &mesh.total,
        },
        services,
        agents: &agents,
        replica: replica(&s),
    })
    .into_response()
}

/// The `max` busiest services (by requests/s), in name order.
fn listed(services: &BTreeMap<String, Stats>, max: usize) -> Vec<ServiceView<'_>> {
    let mut views: Vec<ServiceView> = services
        .iter()
        .map(|(name, stats)| ServiceView { name, stats })
        .collect();
    if views.len() > max {
        views.sort_by(|a, b| {
            b.stats
                .requests_per_second
                .total_cmp(&a.stats.requests_per_second)
                .then_with(|| a.name.cmp(b.name))
        });
        views.truncate(max);
        views.sort_by(|a, b| a.name.cmp(b.name));
    }
    views
}

/// `/api/overview`'s answer.
#[derive(Serialize)]
struct Overview<'a> {
    version: u64,
    epoch: &'a str,
    window_seconds: f64,
    namespaces: Vec<&'a String>,
    summary: Summary<'a>,
    services: Vec<ServiceView<'a>>,
    agents: &'a [AgentView],
    /// With replicas: this one's part, and the leader's address. The
    /// agents and traffic shown are this replica's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<ReplicaView>,
}

#[derive(Serialize)]
struct ReplicaView {
    role: &'static str,
    leader: Option<String>,
}

fn replica(s: &AdminState) -> Option<ReplicaView> {
    let me = s.me.as_ref()?;
    let role = s.role.borrow();
    Some(ReplicaView {
        role: role.name(),
        leader: role.leader(me).map(|h| h.address.clone()),
    })
}

/// The mesh totals (the page's cards).
#[derive(Serialize)]
struct Summary<'a> {
    services: usize,
    agents: usize,
    converged_agents: usize,
    #[serde(flatten)]
    stats: &'a Stats,
}

#[derive(Serialize)]
struct ServiceView<'a> {
    name: &'a str,
    #[serde(flatten)]
    stats: &'a Stats,
}

#[derive(Debug, Deserialize)]
pub struct DelegateQuery {
    #[serde(default = "default_namespace")]
    namespace: String,
    path: String,
    #[serde(default)]
    dtab: String,
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// The playground: the admin API's `Delegate`, over HTTP for the page.
pub async fn delegate(State(s): State<AdminState>, Query(q): Query<DelegateQuery>) -> Response {
    match s.admin.delegation(&q.namespace, &q.path, &q.dtab) {
        Ok((tree, result)) => Json(json!({ "result": result, "tree": tree })).into_response(),
        Err(status) => {
            let code = match status.code() {
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                    StatusCode::BAD_REQUEST
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, Json(json!({ "error": status.message() }))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: Vec<ServiceView<'_>>) -> Vec<&str> {
        v.into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn the_busiest_services_are_listed_in_name_order() {
        let stats = |rps: f64| Stats {
            requests_per_second: rps,
            ..Stats::default()
        };
        let services: BTreeMap<String, Stats> = [("/svc/a", 1.0), ("/svc/b", 5.0), ("/svc/c", 3.0)]
            .into_iter()
            .map(|(n, r)| (n.to_owned(), stats(r)))
            .collect();
        assert_eq!(names(listed(&services, 2)), ["/svc/b", "/svc/c"]);
        assert_eq!(names(listed(&services, 5)), ["/svc/a", "/svc/b", "/svc/c"]);
    }
}
