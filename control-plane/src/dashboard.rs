//! The mesh dashboard on the admin port: `/` (one static page, vanilla JS,
//! no build step), which polls `/api/overview` (the mesh's traffic from the
//! agents' summaries, every agent's convergence, and the service policy
//! each listed service gets) and asks `/api/delegate` for the dtab
//! playground, `/api/policies` for the stored service policies and
//! `/api/policies/explain` for why a service gets its policy (issue #18).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use ecsmesh_dtab::Path;
use ecsmesh_policy::ServicePolicy;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::agents::AgentView;
use crate::grpc::policy::{Explanation, PolicyAdmin, explain};
use crate::http::AdminState;
use crate::limits::MAX_SERVICE_NAME_BYTES;
use crate::store::{Policies, Stored};
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
    let policies = s.admin.policies.entries();
    let services = listed(&mesh.services, MAX_LISTED_SERVICES, &policies);
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

/// The `max` busiest services (by requests/s), in name order, each with
/// the stored policy it gets.
fn listed<'a>(
    services: &'a BTreeMap<String, Stats>,
    max: usize,
    policies: &Policies,
) -> Vec<ServiceView<'a>> {
    let mut views: Vec<ServiceView> = services
        .iter()
        .map(|(name, stats)| ServiceView {
            name,
            stats,
            policy: None,
        })
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
    for view in &mut views {
        // Names agents report are logical names; one that is not a path
        // gets no policy (an agent would not route it either).
        view.policy = Path::read(view.name)
            .ok()
            .and_then(|service| PolicyMatch::of(&explain(policies, service)));
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
    /// The stored policy this service gets; `null`: the agents' defaults.
    policy: Option<PolicyMatch>,
}

/// Which stored policy applies: its prefix and version.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct PolicyMatch {
    prefix: String,
    version: u64,
}

impl PolicyMatch {
    fn of(e: &Explanation) -> Option<Self> {
        let (prefix, stored) = e.candidates.get(e.chosen?)?;
        Some(Self {
            prefix: prefix.to_string(),
            version: stored.as_ref()?.version,
        })
    }
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

/// A stored policy as the page shows it: the document both as its
/// canonical JSON text (the stored form, in its field order) and parsed.
fn policy_json(prefix: &str, stored: &Stored<ServicePolicy>) -> serde_json::Value {
    let canonical = stored.doc.canonical();
    json!({
        "prefix": prefix,
        "version": stored.version,
        "policy": serde_json::from_str::<serde_json::Value>(&canonical)
            .unwrap_or(serde_json::Value::Null),
        "canonical": canonical,
    })
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

/// `/api/policies`: every stored service policy (at most the store's
/// `max_policies`), by prefix.
pub async fn policies(State(s): State<AdminState>) -> Response {
    let all = s.admin.policies.entries();
    let listed: Vec<_> = all.iter().map(|(k, v)| policy_json(k, v)).collect();
    Json(json!({ "policies": listed })).into_response()
}

#[derive(Debug, Deserialize)]
pub struct ExplainQuery {
    #[serde(default)]
    service: Option<String>,
}

/// `/api/policies/explain?service=/svc/x`: the policy API's `Explain` for
/// the page, as the delegator explains a dtab: every prefix an agent looks
/// up for the name, most specific first, whether a policy is stored under
/// it and which one applies (the most specific stored), with that policy.
/// No stored prefix: the agents' defaults apply (`chosen` is `null`).
pub async fn explain_policy(
    State(s): State<AdminState>,
    Query(q): Query<ExplainQuery>,
) -> Response {
    let Some(service) = q.service.filter(|s| !s.is_empty()) else {
        return bad_request("pass a service name: ?service=/svc/name");
    };
    // Checked before it is parsed: the name is never quoted back, and a
    // parse error names an offset and one character.
    if service.len() > MAX_SERVICE_NAME_BYTES {
        return bad_request(&format!(
            "the service name is longer than {MAX_SERVICE_NAME_BYTES} bytes"
        ));
    }
    let e = match PolicyAdmin(s.admin.clone()).explanation(&service) {
        Ok(e) => e,
        Err(status) => return bad_request(&crate::limits::echo(status.message())),
    };
    Json(explanation_json(&e)).into_response()
}

fn explanation_json(e: &Explanation) -> serde_json::Value {
    let candidates: Vec<_> = e
        .candidates
        .iter()
        .enumerate()
        .map(|(i, (prefix, stored))| {
            json!({
                "prefix": prefix.to_string(),
                "stored": stored.is_some(),
                "version": stored.as_ref().map(|s| s.version),
                "chosen": e.chosen == Some(i),
            })
        })
        .collect();
    let chosen = e
        .chosen
        .and_then(|i| e.candidates.get(i))
        .and_then(|(prefix, stored)| Some(policy_json(&prefix.to_string(), stored.as_ref()?)));
    json!({
        "service": e.service.to_string(),
        "candidates": candidates,
        "chosen": chosen,
    })
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
        let none = Policies::new();
        assert_eq!(names(listed(&services, 2, &none)), ["/svc/b", "/svc/c"]);
        assert_eq!(
            names(listed(&services, 5, &none)),
            ["/svc/a", "/svc/b", "/svc/c"]
        );
    }

    fn stored(text: &str, version: u64) -> Stored<ServicePolicy> {
        Stored {
            doc: std::sync::Arc::new(ServicePolicy::parse(text).unwrap()),
            version,
        }
    }

    #[test]
    fn each_listed_service_shows_the_policy_it_gets() {
        let services: BTreeMap<String, Stats> =
            ["/svc/payments/v2", "/svc/other", "/x", "not a path"]
                .into_iter()
                .map(|n| (n.to_owned(), Stats::default()))
                .collect();
        let policies: Policies = [
            ("/svc".to_owned(), stored("zone_aware: false", 3)),
            (
                "/svc/payments".to_owned(),
                stored("timeouts: {total: 1s}", 7),
            ),
        ]
        .into();
        let shown: BTreeMap<&str, Option<PolicyMatch>> = listed(&services, 10, &policies)
            .into_iter()
            .map(|v| (v.name, v.policy))
            .collect();
        let at = |prefix: &str, version| {
            Some(PolicyMatch {
                prefix: prefix.to_owned(),
                version,
            })
        };
        assert_eq!(shown["/svc/payments/v2"], at("/svc/payments", 7));
        assert_eq!(shown["/svc/other"], at("/svc", 3));
        assert_eq!(shown["/x"], None);
        assert_eq!(shown["not a path"], None);
    }

    #[test]
    fn the_explanation_lists_candidates_and_the_chosen_policy() {
        let policies: Policies = [
            ("/svc".to_owned(), stored("zone_aware: false", 3)),
            (
                "/svc/payments".to_owned(),
                stored("timeouts: {total: 1s}", 7),
            ),
        ]
        .into();
        let e = explain(&policies, Path::read("/svc/payments/v2").unwrap());
        let v = explanation_json(&e);
        assert_eq!(v["service"], "/svc/payments/v2");
        let candidates: Vec<_> = v["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["prefix"].as_str().unwrap(),
                    c["stored"].as_bool().unwrap(),
                    c["version"].as_u64(),
                    c["chosen"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            candidates,
            [
                ("/svc/payments/v2", false, None, false),
                ("/svc/payments", true, Some(7), true),
                ("/svc", true, Some(3), false),
            ]
        );
        assert_eq!(v["chosen"]["prefix"], "/svc/payments");
        assert_eq!(v["chosen"]["version"], 7);
        let canonical = policies["/svc/payments"].doc.canonical();
        assert_eq!(v["chosen"]["canonical"], canonical.as_str());
        assert_eq!(
            v["chosen"]["policy"],
            serde_json::from_str::<serde_json::Value>(&canonical).unwrap()
        );
        let none = explanation_json(&explain(&policies, Path::read("/x").unwrap()));
        assert_eq!(none["chosen"], serde_json::Value::Null);
        assert_eq!(none["candidates"][0]["prefix"], "/x");
    }
}
