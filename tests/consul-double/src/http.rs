//! The HTTP surface: Consul's routes, parameters, headers and answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::state::{Check, CheckDef, Dc, KvEntry, MAX_VALUE, Node, Registration, Service, Session};
use crate::{DoubleError, RequestRecord, Shared};

const DEFAULT_WAIT: Duration = Duration::from_mins(5);
const MAX_WAIT: Duration = Duration::from_mins(10);

type Shr = State<Arc<Shared>>;
type Pairs = Query<Vec<(String, String)>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/datacenters", get(datacenters))
        .route("/v1/catalog/register", put(catalog_register))
        .route("/v1/catalog/deregister", put(catalog_deregister))
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/agent/service/register", put(agent_register))
        .route("/v1/agent/service/deregister/{id}", put(agent_deregister))
        .route("/v1/agent/check/{action}/{id}", put(agent_check))
        .route("/v1/kv/", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/session/create", put(session_create))
        .route("/v1/session/renew/{id}", put(session_renew))
        .route("/v1/session/destroy/{id}", put(session_destroy))
        .route("/v1/session/info/{id}", get(session_info))
        .route("/v1/session/list", get(session_list))
        .route("/v1/status/leader", get(leader))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), guard))
        .with_state(shared)
}

fn text(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, message.to_owned()).into_response()
}

impl IntoResponse for DoubleError {
    fn into_response(self) -> Response {
        text(self.status, &self.message)
    }
}

fn json_body(value: &Value) -> Response {
    ([("content-type", "application/json")], value.to_string()).into_response()
}

/// Runs before every handler: records the request, then applies the
/// injected faults, ACLs, the datacenter and leader checks; delays the
/// answer when asked to.
async fn guard(State(shared): Shr, req: Request, next: Next) -> Response {
    let uri = req.uri().clone();
    let method = req.method().clone();
    shared.record(RequestRecord {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
    });
    let pairs = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let token = header_token(req.headers()).or_else(|| param("token").map(str::to_owned));
    let (refusal, delay) = {
        let mut st = shared.lock();
        let delay = st.faults.delay;
        let refusal = if let Some(required) = &st.faults.token
            && token.as_deref() != Some(required)
        {
            Some(match token {
                None => text(403, "Permission denied"),
                Some(_) => text(403, "ACL not found"),
            })
        } else if st.faults.fail_all {
            Some(text(500, "injected failure (consul-double)"))
        } else if st.faults.fail_next > 0 {
            st.faults.fail_next -= 1;
            Some(text(500, "injected failure (consul-double)"))
        } else if let Err(e) = st.dc_name(param("dc")) {
            Some(e.into_response())
        } else if param("stale").is_some() && param("consistent").is_some() {
            Some(text(
                400,
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            ))
        } else if !(st.faults.known_leader || method == Method::GET && param("stale").is_some()) {
            Some(text(500, "No cluster leader"))
        } else {
            None
        };
        (refusal, delay)
    };
    let response = match refusal {
        Some(r) => r,
        None => next.run(req).await,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
}

fn header_token(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers.get("x-consul-token").and_then(|v| v.to_str().ok()) {
        return Some(t.to_owned());
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

/// The query parameters Consul's endpoints take.
#[derive(Debug, Default)]
#[allow(clippy::struct_excessive_bools)] // Consul's flags, one for one
struct Params {
    dc: Option<String>,
    index: Option<u64>,
    wait: Option<Duration>,
    stale: bool,
    consistent: bool,
    passing: bool,
    tags: Vec<String>,
    recurse: bool,
    keys: bool,
    separator: Option<String>,
    raw: bool,
    cas: Option<u64>,
    acquire: Option<String>,
    release: Option<String>,
    flags: u64,
    note: Option<String>,
}

fn bad(message: impl Into<String>) -> DoubleError {
    DoubleError {
        status: 400,
        message: message.into(),
    }
}

fn flag(value: &str, name: &str) -> Result<bool, DoubleError> {
    match value {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(bad(format!("Invalid value for ?{name}"))),
    }
}

fn params(pairs: &[(String, String)]) -> Result<Params, DoubleError> {
    let mut p = Params::default();
    let number = |v: &str, what: &str| v.parse::<u64>().map_err(|_| bad(format!("Invalid {what}")));
    for (k, v) in pairs {
        match k.as_str() {
            "dc" => p.dc = Some(v.clone()).filter(|d| !d.is_empty()),
            "index" => p.index = Some(number(v, "index")?),
            "wait" => {
                p.wait = Some(crate::parse_duration(v).ok_or_else(|| bad("Invalid wait time"))?);
            }
            "stale" => p.stale = true,
            "consistent" => p.consistent = true,
            "passing" => p.passing = flag(v, "passing")?,
            "tag" => p.tags.push(v.clone()),
            "recurse" => p.recurse = true,
            "keys" => p.keys = true,
            "separator" => p.separator = Some(v.clone()),
            "raw" => p.raw = true,
            "cas" => p.cas = Some(number(v, "cas index")?),
            "acquire" => p.acquire = Some(v.clone()),
            "release" => p.release = Some(v.clone()),
            "flags" => p.flags = number(v, "flags")?,
            "note" => p.note = Some(v.clone()),
            "filter" | "near" | "node-meta" | "ns" | "partition" | "peer" | "cached" => {
                return Err(bad(format!("?{k} is not supported by consul-double")));
            }
            _ => {}
        }
    }
    Ok(p)
}

/// One read's answer, before the headers.
struct Reply {
    index: u64,
    status: StatusCode,
    body: Vec<u8>,
    content_type: &'static str,
}

impl Reply {
    fn json(index: u64, value: &Value) -> Self {
        Self {
            index,
            status: StatusCode::OK,
            body: value.to_string().into_bytes(),
            content_type: "application/json",
        }
    }

    fn not_found(index: u64) -> Self {
        Self {
            index,
            status: StatusCode::NOT_FOUND,
            body: Vec::new(),
            content_type: "text/plain",
        }
    }
}

/// Serves a blocking-capable read: with `?index=N` (N > 0), waits until
/// `read`'s index exceeds N, or `wait` (plus up to wait/16 of jitter)
/// passes, or an index reset abandons the query; then answers with the
/// `X-Consul-*` headers.
async fn blocking(
    shared: &Shared,
    p: &Params,
    read: impl Fn(&Dc, &str) -> Result<Reply, DoubleError>,
) -> Response {
    let min_index = p.index.filter(|&i| i > 0);
    let deadline = min_index.map(|_| {
        let wait = p.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
        let jitter = wait.mul_f64(fastrand::f64() / 16.0);
        Instant::now() + wait + jitter
    });
    let mut changes = shared.subscribe();
    let mut generation = None;
    loop {
        let (reply, faults, now_generation) = {
            let st = shared.lock();
            changes.borrow_and_update();
            let dc_name = match st.dc_name(p.dc.as_deref()) {
                Ok(d) => d,
                Err(e) => return e.into_response(),
            };
            let dc = match st.dc(&dc_name) {
                Ok(dc) => dc,
                Err(e) => return e.into_response(),
            };
            let reply = match read(dc, &dc_name) {
                Ok(r) => r,
                Err(e) => return e.into_response(),
            };
            (reply, st.faults.clone(), st.generation)
        };
        let abandoned = *generation.get_or_insert(now_generation) != now_generation;
        let done = match (min_index, deadline) {
            (Some(min), Some(deadline)) => {
                reply.index > min || abandoned || Instant::now() >= deadline
            }
            _ => true,
        };
        if done {
            return respond(reply, &faults, p);
        }
        if let Some(deadline) = deadline {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return text(500, "shutting down") },
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

fn respond(reply: Reply, faults: &crate::Faults, p: &Params) -> Response {
    let mut response = (reply.status, reply.body).into_response();
    let h = response.headers_mut();
    h.insert("content-type", HeaderValue::from_static(reply.content_type));
    if !faults.omit_index {
        let index = if faults.zero_index {
            0
        } else {
            // Consul never answers index 0: it would not block.
            reply.index.max(1)
        };
        h.insert("x-consul-index", HeaderValue::from(index));
    }
    let (leader, contact, consistency) = if p.stale {
        (faults.known_leader, faults.last_contact, "stale")
    } else if p.consistent {
        (true, Duration::ZERO, "consistent")
    } else {
        (true, Duration::ZERO, "leader")
    };
    h.insert(
        "x-consul-knownleader",
        HeaderValue::from_static(if leader { "true" } else { "false" }),
    );
    h.insert(
        "x-consul-lastcontact",
        HeaderValue::from(u64::try_from(contact.as_millis()).unwrap_or(u64::MAX)),
    );
    h.insert(
        "x-consul-effective-consistency",
        HeaderValue::from_static(consistency),
    );
    h.insert(
        "x-consul-default-acl-policy",
        HeaderValue::from_static("allow"),
    );
    response
}

/// What a write needs besides its datacenter.
struct Ctx {
    /// The node sessions and agent registrations use.
    default_node: String,
    session_ttl_min: Duration,
}

/// Runs a write on the request's datacenter and wakes blocked queries.
fn write<R>(
    shared: &Shared,
    dc: Option<&str>,
    f: impl FnOnce(&mut Dc, &Ctx) -> Result<R, DoubleError>,
) -> Result<R, DoubleError> {
    shared.write(|st| {
        let name = st.dc_name(dc)?;
        let ctx = Ctx {
            default_node: st.default_node(&name),
            session_ttl_min: st.session_ttl_min,
        };
        f(st.dc_mut(&name)?, &ctx)
    })
}

fn bool_answer(ok: bool) -> Response {
    json_body(&Value::Bool(ok))
}

fn decode_body<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, DoubleError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| DoubleError {
        status: 400,
        message: format!("Request decode failed: {e}"),
    })
}

// ---- JSON shapes ----

fn node_json(name: &str, n: &Node, dc: &str) -> Value {
    json!({
        "ID": n.id, "Node": name, "Address": n.address, "Datacenter": dc,
        "TaggedAddresses": n.tagged_addresses, "Meta": n.meta,
        "CreateIndex": n.create_index, "ModifyIndex": n.modify_index,
    })
}

fn service_json(s: &Service) -> Value {
    json!({
        "ID": s.id, "Service": s.name, "Tags": s.tags, "Address": s.address,
        "Meta": s.meta, "Port": s.port, "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": false,
        "CreateIndex": s.create_index, "ModifyIndex": s.modify_index,
    })
}

fn check_json(node: &str, c: &Check, tags: &[String]) -> Value {
    json!({
        "Node": node, "CheckID": c.id, "Name": c.name, "Status": c.status,
        "Notes": c.notes, "Output": c.output, "ServiceID": c.service_id,
        "ServiceName": c.service_name,
        "ServiceTags": if c.service_id.is_empty() { Vec::new() } else { tags.to_vec() },
        "CreateIndex": c.create_index, "ModifyIndex": c.modify_index,
    })
}

fn kv_json(key: &str, e: &KvEntry) -> Value {
    let mut v = json!({
        "LockIndex": e.lock_index, "Key": key, "Flags": e.flags,
        "Value": if e.value.is_empty() {
            Value::Null
        } else {
            base64::engine::general_purpose::STANDARD.encode(&e.value).into()
        },
        "CreateIndex": e.create_index, "ModifyIndex": e.modify_index,
    });
    if let Some(s) = &e.session {
        v["Session"] = s.clone().into();
    }
    v
}

fn session_json(s: &Session) -> Value {
    json!({
        "ID": s.id, "Name": s.name, "Node": s.node,
        "LockDelay": u64::try_from(s.lock_delay.as_nanos()).unwrap_or(u64::MAX),
        "Behavior": if s.delete { "delete" } else { "release" },
        "TTL": s.ttl_text, "NodeChecks": s.node_checks,
        "ServiceChecks": s.service_checks.iter().map(|id| json!({"ID": id})).collect::<Vec<_>>(),
        "CreateIndex": s.create_index, "ModifyIndex": s.modify_index,
    })
}

// ---- catalog and health ----

async fn catalog_services(State(shared): Shr, Query(q): Pairs) -> Response {
    let p = match params(&q) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    blocking(&shared, &p, |dc, _| {
        let services: BTreeMap<&str, Vec<&str>> = dc
            .service_tags()
            .into_iter()
            .map(|(name, tags)| (name, tags.into_iter().collect()))
            .collect();
        Ok(Reply::json(dc.catalog_index, &json!(services)))
    })
    .await
}

async fn datacenters(State(shared): Shr) -> Response {
    let names: Vec<String> = shared.lock().dcs.keys().cloned().collect();
    json_body(&json!(names))
}

async fn leader() -> Response {
    json_body(&json!("127.0.0.1:8300"))
}

async fn health_service(State(shared): Shr, Path(name): Path<String>, Query(q): Pairs) -> Response {
    let p = match params(&q) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    blocking(&shared, &p, |dc, dc_name| {
        let entries: Vec<Value> = dc
            .instances(&name)
            .into_iter()
            .filter(|(_, _, s, checks)| {
                let tagged = p.tags.iter().all(|want| {
                    s.tags.iter().any(|t| t.eq_ignore_ascii_case(want))
                });
                tagged && (!p.passing || checks.iter().all(|c| c.status == "passing"))
            })
            .map(|(node_name, node, s, checks)| {
                json!({
                    "Node": node_json(node_name, node, dc_name),
                    "Service": service_json(s),
                    "Checks": checks.iter().map(|c| check_json(node_name, c, &s.tags)).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(Reply::json(dc.health_index(&name), &Value::Array(entries)))
    })
    .await
}

async fn catalog_register(State(shared): Shr, Query(q): Pairs, body: Bytes) -> Response {
    let result = (|| {
        let r: Registration = decode_body(&body)?;
        let dc = q
            .iter()
            .find(|(k, _)| k == "dc")
            .map(|(_, v)| v.clone())
            .or_else(|| Some(r.datacenter.clone()));
        write(&shared, dc.as_deref(), |dc, _| dc.register(r))
    })();
    match result {
        Ok(()) => bool_answer(true),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Deregistration {
    node: String,
    datacenter: String,
    #[serde(rename = "ServiceID")]
    service_id: String,
    #[serde(rename = "CheckID")]
    check_id: String,
}

async fn catalog_deregister(State(shared): Shr, Query(q): Pairs, body: Bytes) -> Response {
    let result = (|| {
        let r: Deregistration = decode_body(&body)?;
        let dc = q
            .iter()
            .find(|(k, _)| k == "dc")
            .map(|(_, v)| v.clone())
            .or_else(|| Some(r.datacenter.clone()));
        write(&shared, dc.as_deref(), |dc, _| {
            dc.deregister(&r.node, Some(&r.service_id), Some(&r.check_id))
        })
    })();
    match result {
        Ok(()) => bool_answer(true),
        Err(e) => e.into_response(),
    }
}

// ---- agent ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct AgentService {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    tags: Option<Vec<String>>,
    address: String,
    port: u16,
    meta: Option<BTreeMap<String, String>>,
    check: Option<AgentCheck>,
    checks: Option<Vec<AgentCheck>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct AgentCheck {
    #[serde(rename = "CheckID", alias = "ID")]
    check_id: String,
    name: String,
    status: String,
    notes: String,
}

async fn agent_register(State(shared): Shr, body: Bytes) -> Response {
    let result = (|| {
        let s: AgentService = decode_body(&body)?;
        if s.name.is_empty() {
            return Err(DoubleError {
                status: 400,
                message: "Missing service name".to_owned(),
            });
        }
        let id = if s.id.is_empty() {
            s.name.clone()
        } else {
            s.id
        };
        let mut defs: Vec<AgentCheck> = s.checks.unwrap_or_default();
        defs.extend(s.check);
        let many = defs.len() > 1;
        let checks = defs
            .into_iter()
            .enumerate()
            .map(|(i, c)| CheckDef {
                check_id: match (c.check_id.is_empty(), many) {
                    (false, _) => c.check_id,
                    (true, false) => format!("service:{id}"),
                    (true, true) => format!("service:{id}:{}", i + 1),
                },
                name: if c.name.is_empty() {
                    format!("Service '{}' check", s.name)
                } else {
                    c.name
                },
                status: c.status,
                notes: c.notes,
                service_id: id.clone(),
                ..CheckDef::default()
            })
            .collect();
        write(&shared, None, |dc, ctx| {
            let node = ctx.default_node.clone();
            let address = dc
                .nodes
                .get(&node)
                .map(|n| n.address.clone())
                .unwrap_or_default();
            dc.register(Registration {
                node,
                address,
                skip_node_update: true,
                service: Some(crate::state::ServiceDef {
                    id,
                    service: s.name,
                    tags: s.tags,
                    address: s.address,
                    port: s.port,
                    meta: s.meta,
                }),
                checks: Some(checks),
                ..Registration::default()
            })
        })
    })();
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn agent_deregister(State(shared): Shr, Path(id): Path<String>) -> Response {
    let result = write(&shared, None, |dc, ctx| {
        dc.deregister(&ctx.default_node.clone(), Some(&id), None)
    });
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CheckUpdate {
    status: String,
    output: String,
}

async fn agent_check(
    State(shared): Shr,
    Path((action, id)): Path<(String, String)>,
    Query(q): Pairs,
    body: Bytes,
) -> Response {
    let p = match params(&q) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let (status, output) = match action.as_str() {
        "pass" => ("passing".to_owned(), p.note),
        "warn" => ("warning".to_owned(), p.note),
        "fail" => ("critical".to_owned(), p.note),
        "update" => match decode_body::<CheckUpdate>(&body) {
            Ok(u) => (u.status, Some(u.output)),
            Err(e) => return e.into_response(),
        },
        _ => return text(404, "Unknown check action"),
    };
    let result = write(&shared, None, |dc, ctx| {
        dc.set_check_status(&ctx.default_node.clone(), &id, &status, output)
    });
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

// ---- KV ----

/// The key from the request path, percent-decoded.
fn kv_key(uri: &Uri) -> Result<String, DoubleError> {
    let raw = uri.path().strip_prefix("/v1/kv/").unwrap_or_default();
    percent_decode(raw).ok_or_else(|| bad("Invalid key encoding"))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn kv_get(State(shared): Shr, uri: Uri, Query(q): Pairs) -> Response {
    let (p, key) = match (params(&q), kv_key(&uri)) {
        (Ok(p), Ok(key)) => (p, key),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    blocking(&shared, &p, |dc, _| {
        if p.keys {
            let index = dc.kv_prefix_index(&key);
            let mut keys: Vec<String> = Vec::new();
            for (k, _) in dc.kv_under(&key) {
                let rest = &k[key.len()..];
                let shown = match p.separator.as_deref().filter(|s| !s.is_empty()) {
                    Some(sep) => match rest.find(sep) {
                        Some(at) => format!("{key}{}", &rest[..at + sep.len()]),
                        None => k.clone(),
                    },
                    None => k.clone(),
                };
                if keys.last() != Some(&shown) {
                    keys.push(shown);
                }
            }
            return Ok(if keys.is_empty() {
                Reply::not_found(index)
            } else {
                Reply::json(index, &json!(keys))
            });
        }
        if p.recurse {
            let index = dc.kv_prefix_index(&key);
            let entries: Vec<Value> = dc.kv_under(&key).map(|(k, e)| kv_json(k, e)).collect();
            return Ok(if entries.is_empty() {
                Reply::not_found(index)
            } else {
                Reply::json(index, &Value::Array(entries))
            });
        }
        let index = dc.kv_key_index(&key);
        Ok(match dc.kv.get(&key) {
            None => Reply::not_found(index),
            Some(e) if p.raw => Reply {
                index,
                status: StatusCode::OK,
                body: e.value.clone(),
                content_type: "application/octet-stream",
            },
            Some(e) => Reply::json(index, &json!([kv_json(&key, e)])),
        })
    })
    .await
}

async fn kv_put(State(shared): Shr, uri: Uri, Query(q): Pairs, body: Bytes) -> Response {
    let (p, key) = match (params(&q), kv_key(&uri)) {
        (Ok(p), Ok(key)) => (p, key),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    if key.is_empty() {
        return text(400, "Missing key name");
    }
    if body.len() > MAX_VALUE {
        return text(
            413,
            &format!(
                "Request body({} bytes) too large, max size: {MAX_VALUE} bytes",
                body.len()
            ),
        );
    }
    let value = body.to_vec();
    let now = Instant::now();
    // As in Consul, a later parameter wins: release over acquire over cas.
    let result = write(&shared, p.dc.as_deref(), |dc, _| {
        if let Some(session) = &p.release {
            Ok(dc.kv_unlock(&key, value, p.flags, session))
        } else if let Some(session) = &p.acquire {
            dc.kv_lock(&key, value, p.flags, session, now)
        } else {
            Ok(dc.kv_set(&key, value, p.flags, p.cas))
        }
    });
    match result {
        Ok(ok) => bool_answer(ok),
        Err(e) => e.into_response(),
    }
}

async fn kv_delete(State(shared): Shr, uri: Uri, Query(q): Pairs) -> Response {
    let (p, key) = match (params(&q), kv_key(&uri)) {
        (Ok(p), Ok(key)) => (p, key),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let result = write(&shared, p.dc.as_deref(), |dc, _| {
        if p.recurse {
            dc.kv_delete_tree(&key);
            Ok(true)
        } else {
            Ok(dc.kv_delete(&key, p.cas))
        }
    });
    match result {
        Ok(ok) => bool_answer(ok),
        Err(e) => e.into_response(),
    }
}

// ---- sessions ----

async fn session_create(State(shared): Shr, Query(q): Pairs, body: Bytes) -> Response {
    let p = match params(&q) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let now = Instant::now();
    let result = decode_body(&body).and_then(|r| {
        write(&shared, p.dc.as_deref(), |dc, ctx| {
            dc.session_create(r, &ctx.default_node.clone(), ctx.session_ttl_min, now)
        })
    });
    match result {
        Ok(id) => json_body(&json!({ "ID": id })),
        Err(e) => e.into_response(),
    }
}

async fn session_renew(State(shared): Shr, Path(id): Path<String>, Query(q): Pairs) -> Response {
    let p = match params(&q) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let now = Instant::now();
    let result = write(&shared, p.dc.as_deref(), |dc, _| {
        dc.session_renew(&id, now)
            .map(session_json)
            .ok_or_else(|| DoubleError {
                status: 404,
                message: format!("Session id '{id}' not found"),
            })
    });
    match result {
        Ok(s) => json_body(&json!([s])),
        Err(e) => e.into_response(),
    }
}

async fn session_destroy(State(shared): Shr, Path(id): Path<String>, Query(q): Pairs) -> Response {
    let p = match params(&q) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match write(&shared, p.dc.as_deref(), |dc, _| {
        dc.session_destroy(&id);
        Ok(())
    }) {
        Ok(()) => bool_answer(true),
        Err(e) => e.into_response(),
    }
}

async fn session_info(State(shared): Shr, Path(id): Path<String>, Query(q): Pairs) -> Response {
    let p = match params(&q) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    blocking(&shared, &p, |dc, _| {
        let found: Vec<Value> = dc.sessions.get(&id).map(session_json).into_iter().collect();
        Ok(Reply::json(dc.sessions_index, &Value::Array(found)))
    })
    .await
}

async fn session_list(State(shared): Shr, Query(q): Pairs) -> Response {
    let p = match params(&q) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    blocking(&shared, &p, |dc, _| {
        let all: Vec<Value> = dc.sessions.values().map(session_json).collect();
        Ok(Reply::json(dc.sessions_index, &Value::Array(all)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b/c").as_deref(), Some("a b/c"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn unsupported_parameters_are_refused() {
        let pairs = vec![("filter".to_owned(), "x".to_owned())];
        assert!(params(&pairs).is_err());
        let pairs = vec![("wait".to_owned(), "10".to_owned())];
        assert!(params(&pairs).is_err());
        let pairs = vec![
            ("wait".to_owned(), "1s".to_owned()),
            ("index".to_owned(), "7".to_owned()),
            ("tag".to_owned(), "a".to_owned()),
            ("tag".to_owned(), "b".to_owned()),
            ("passing".to_owned(), String::new()),
        ];
        let p = params(&pairs).unwrap();
        assert_eq!(p.wait, Some(Duration::from_secs(1)));
        assert_eq!(p.index, Some(7));
        assert_eq!(p.tags, ["a", "b"]);
        assert!(p.passing);
    }
}
