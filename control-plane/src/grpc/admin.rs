//! `DtabAdmin`: namerd's dtab API over gRPC. Writes are validated (a
//! malformed dtab is `INVALID_ARGUMENT` with the parser's offset, and
//! nothing is stored) and compare-and-set (`FAILED_PRECONDITION` on a
//! version mismatch).
//!
//! Access: when a token or admin identities are configured, writes need
//! `authorization: Bearer <token>` or a client certificate (TLS) naming an
//! allowed identity. Reads are open, or (`--admin-reads authenticated`)
//! need the token or any client certificate from the mesh CA. The admin
//! HTTP port's reads (the dashboard's `/api/*`, `/agents`) follow the same
//! policy through [`AdminService::authorize_http_read`], with the token
//! only: that port is plain HTTP and sees no client certificate.
//!
//! Bounds ([`DtabLimits`]): a dtab over `max_dtab_bytes` is
//! `INVALID_ARGUMENT`, a namespace past `max_namespaces` is
//! `RESOURCE_EXHAUSTED`, and nothing is stored; error messages quote at
//! most a bounded prefix of what the client sent ([`echo`]).

use std::pin::Pin;
use std::sync::Arc;

use ecsmesh_dtab::{self as dtab, Dtab, NameTree, Path};
use ecsmesh_proto::v1 as pb;
use ecsmesh_state::{Bound, MeshNamer, MeshState};
use futures_util::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::config::AdminReads;
use crate::limits::{DtabLimits, echo};
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::reconcile::BaseDtabs;
use crate::store::{DtabStore, PolicyStore, StoreError, StoredDtab};
use crate::tls;

#[derive(Debug, Clone)]
pub struct AdminService {
    pub store: Arc<DtabStore>,
    /// The service policies ([`super::policy`] serves them, with this
    /// service's access checks and limits).
    pub policies: Arc<PolicyStore>,
    pub base: BaseDtabs,
    pub publisher: Arc<Publisher>,
    /// Writes need this bearer token when set.
    pub write_token: Option<Arc<str>>,
    /// Client certificates that may write, and who may read.
    pub access: AdminAccess,
    pub limits: DtabLimits,
    /// Counts the writes the limits refuse.
    pub metrics: Arc<Metrics>,
}

/// Who may use the API besides the token's holders.
#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    /// Client certificate identities allowed to write.
    pub identities: Arc<[String]>,
    pub reads: AdminReads,
}

impl AdminAccess {
    pub fn new(security: &crate::config::Security) -> Self {
        Self {
            identities: security.admin_identities.clone().into(),
            reads: security.admin_reads,
        }
    }
}

#[allow(clippy::needless_pass_by_value)] // used as map_err(status_of)
pub(crate) fn status_of(e: StoreError) -> Status {
    match e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        StoreError::VersionMismatch { .. } => Status::failed_precondition(e.to_string()),
        StoreError::InvalidKey { .. } => Status::invalid_argument(e.to_string()),
        StoreError::TooMany { .. } => Status::resource_exhausted(e.to_string()),
        StoreError::Io { .. } | StoreError::Corrupt { .. } => Status::unavailable(e.to_string()),
    }
}

/// Opaque versions on the wire: the decimal text of the store's version.
pub(crate) fn encode_version(v: u64) -> Vec<u8> {
    v.to_string().into_bytes()
}

pub(crate) fn decode_version(bytes: &[u8]) -> Result<u64, Status> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            Status::invalid_argument("malformed version: pass back the version GetDtab returned")
        })
}

fn parse_dtab(text: &str) -> Result<Dtab, Status> {
    // The parser's errors name an offset and one character, never the input.
    Dtab::read(text).map_err(|e| Status::invalid_argument(format!("invalid dtab: {e}")))
}

fn parse_path(text: &str) -> Result<Path, Status> {
    Path::read(text).map_err(|e| Status::invalid_argument(format!("invalid path: {e}")))
}

/// A delegation or binding error: it may quote a path the client sent.
#[allow(clippy::needless_pass_by_value)] // used as map_err(bounded)
fn bounded(code: tonic::Code, e: impl std::fmt::Display) -> Status {
    Status::new(code, echo(&e.to_string()))
}

impl AdminService {
    /// The API over `store` as `config` sets it up.
    pub fn new(
        config: &crate::config::Config,
        stores: (Arc<DtabStore>, Arc<PolicyStore>),
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (store, policies) = stores;
        Self {
            store,
            policies,
            base: config.base_dtabs.clone(),
            publisher,
            write_token: config.admin_token.clone(),
            access: AdminAccess::new(&config.security),
            limits: config.security.dtab_limits,
            metrics,
        }
    }

    /// The bearer token presented: `None` if none, else whether it is right.
    fn token_ok<T>(&self, request: &Request<T>) -> Option<bool> {
        self.bearer_ok(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
        )
    }

    /// An `authorization` value (gRPC metadata or HTTP header): `None`
    /// without a bearer token, else whether it is the right one.
    fn bearer_ok(&self, authorization: Option<&str>) -> Option<bool> {
        let presented = authorization?.strip_prefix("Bearer ")?;
        Some(
            self.write_token
                .as_ref()
                .is_some_and(|t| constant_time_eq(presented.as_bytes(), t.as_bytes())),
        )
    }

    /// The read policy on the admin HTTP port, given the request's
    /// `authorization` header: the token is the only credential there.
    ///
    /// # Errors
    /// Reads are `authenticated` and the header holds no valid token
    /// (`UNAUTHENTICATED` without one, `PERMISSION_DENIED` with a wrong one).
    pub fn authorize_http_read(&self, authorization: Option<&str>) -> Result<(), Status> {
        if self.access.reads == AdminReads::Open {
            return Ok(());
        }
        match self.bearer_ok(authorization) {
            Some(true) => Ok(()),
            Some(false) => Err(Status::permission_denied("invalid bearer token")),
            None => Err(Status::unauthenticated(
                "admin_reads is authenticated: send 'Authorization: Bearer <token>' \
                 (this port sees no client certificates)",
            )),
        }
    }

    /// Checks a dtab's size before it is parsed, counting a refusal.
    fn check_dtab(&self, text: &str) -> Result<(), Status> {
        self.limits.check_dtab(text).map_err(|e| {
            self.metrics.dtab_write_refused("dtab_too_large");
            Status::invalid_argument(e.to_string())
        })
    }

    /// A store error as a status, counting the refusals of the limits.
    fn store_status(&self, e: StoreError) -> Status {
        match e {
            StoreError::InvalidKey { .. } => self.metrics.dtab_write_refused("invalid_namespace"),
            StoreError::TooMany { .. } => {
                self.metrics.dtab_write_refused("too_many_namespaces");
            }
            _ => {}
        }
        status_of(e)
    }

    pub(crate) fn authorize_write<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.write_token.is_none() && self.access.identities.is_empty() {
            return Ok(());
        }
        let peer = tls::peer(request);
        if peer.is_some_and(|p| p.is_any_of(&self.access.identities)) {
            return Ok(());
        }
        match self.token_ok(request) {
            Some(true) => Ok(()),
            Some(false) => Err(Status::permission_denied("invalid bearer token")),
            None => match peer.filter(|p| p.authenticated()) {
                Some(p) => Err(Status::permission_denied(format!(
                    "client certificate {:?} may not write dtabs (see --admin-identity)",
                    p.name()
                ))),
                None => Err(Status::unauthenticated(
                    "writes need 'authorization: Bearer <token>' or an allowed client certificate",
                )),
            },
        }
    }

    /// The read policy (also in front of `MeshStatus`).
    pub fn authorize_read<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.access.reads == AdminReads::Open {
            return Ok(());
        }
        if tls::peer(request).is_some_and(ecsmesh_tls::Peer::authenticated)
            || self.token_ok(request) == Some(true)
        {
            return Ok(());
        }
        Err(Status::unauthenticated(
            "reads need 'authorization: Bearer <token>' or a client certificate from the mesh CA",
        ))
    }

    /// `Delegate` without the access check (the dashboard's playground
    /// calls it in-process): the delegation tree of `path` down to
    /// endpoints, as JSON, and its result.
    ///
    /// # Errors
    /// An unknown namespace, or a malformed path or extra dtab.
    pub fn delegation(
        &self,
        namespace: &str,
        path: &str,
        extra_dtab: &str,
    ) -> Result<(serde_json::Value, String), Status> {
        let dtab = self.routing_dtab(namespace, extra_dtab)?;
        let path = parse_path(path)?;
        let tree =
            dtab::delegate(&dtab, &path).map_err(|e| bounded(tonic::Code::InvalidArgument, e))?;
        let state = self.publisher.current().state.clone();
        let tree_json =
            ecsmesh_state::json::delegation_with_endpoints(&tree, MeshNamer::new(&state));
        Ok((tree_json, tree.result().to_string()))
    }

    fn versioned(&self, namespace: &str, stored: Option<&StoredDtab>) -> pb::VersionedDtab {
        pb::VersionedDtab {
            namespace: namespace.to_owned(),
            dtab: stored.map(|s| s.doc.to_string()).unwrap_or_default(),
            version: stored
                .map(|s| encode_version(s.version))
                .unwrap_or_default(),
            effective_dtab: self
                .base
                .effective(namespace, stored.map(|s| &*s.doc))
                .to_string(),
            exists: stored.is_some(),
        }
    }

    /// The namespace's effective dtab plus an optional extra one.
    fn routing_dtab(&self, namespace: &str, extra: &str) -> Result<Dtab, Status> {
        let namespaces = self.store.namespaces();
        let stored = namespaces.get(namespace);
        if stored.is_none() && !self.base.0.contains_key(namespace) {
            return Err(Status::not_found(format!(
                "namespace {:?} does not exist",
                echo(namespace)
            )));
        }
        let dtab = self.base.effective(namespace, stored.map(|s| &*s.doc));
        Ok(if extra.trim().is_empty() {
            dtab
        } else {
            // The extra dtab is bounded as a stored one is.
            self.limits
                .check_dtab(extra)
                .map_err(|e| Status::invalid_argument(format!("extra dtab: {e}")))?;
            dtab.concat(&parse_dtab(extra)?)
        })
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::VersionedDtab, Status>> + Send>>;

#[tonic::async_trait]
impl pb::dtab_admin_server::DtabAdmin for AdminService {
    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        self.authorize_read(&request)?;
        let stored = self.store.namespaces();
        let mut namespaces: Vec<String> =
            self.base.0.keys().chain(stored.keys()).cloned().collect();
        namespaces.sort();
        namespaces.dedup();
        Ok(Response::new(pb::ListNamespacesResponse { namespaces }))
    }

    async fn get_dtab(
        &self,
        request: Request<pb::GetDtabRequest>,
    ) -> Result<Response<pb::VersionedDtab>, Status> {
        self.authorize_read(&request)?;
        let ns = &request.get_ref().namespace;
        let stored = self.store.namespaces();
        match stored.get(ns) {
            Some(s) => Ok(Response::new(self.versioned(ns, Some(s)))),
            None => Err(Status::not_found(format!(
                "namespace {:?} has no stored dtab",
                echo(ns)
            ))),
        }
    }

    async fn create_dtab(
        &self,
        request: Request<pb::CreateDtabRequest>,
    ) -> Result<Response<pb::VersionedDtab>, Status> {
        self.authorize_write(&request)?;
        let req = request.into_inner();
        self.check_dtab(&req.dtab)?;
        let dtab = parse_dtab(&req.dtab)?;
        let stored = self
            .store
            .create(&req.namespace, dtab, self.limits.max_namespaces)
            .await
            .map_err(|e| self.store_status(e))?;
        tracing::info!(namespace = %req.namespace, version = stored.version, "dtab created");
        Ok(Response::new(self.versioned(&req.namespace, Some(&stored))))
    }

    async fn update_dtab(
        &self,
        request: Request<pb::UpdateDtabRequest>,
    ) -> Result<Response<pb::VersionedDtab>, Status> {
        self.authorize_write(&request)?;
        let req = request.into_inner();
        self.check_dtab(&req.dtab)?;
        let dtab = parse_dtab(&req.dtab)?;
        let expected = decode_version(&req.expected_version)?;
        let stored = self
            .store
            .update(&req.namespace, dtab, expected)
            .await
            .map_err(|e| self.store_status(e))?;
        tracing::info!(namespace = %req.namespace, version = stored.version, "dtab updated");
        Ok(Response::new(self.versioned(&req.namespace, Some(&stored))))
    }

    async fn delete_dtab(
        &self,
        request: Request<pb::DeleteDtabRequest>,
    ) -> Result<Response<pb::DeleteDtabResponse>, Status> {
        self.authorize_write(&request)?;
        let req = request.into_inner();
        let expected = if req.expected_version.is_empty() {
            None
        } else {
            Some(decode_version(&req.expected_version)?)
        };
        self.store
            .delete(&req.namespace, expected)
            .await
            .map_err(|e| self.store_status(e))?;
        tracing::info!(namespace = %req.namespace, "dtab deleted");
        Ok(Response::new(pb::DeleteDtabResponse {}))
    }

    type WatchDtabStream = WatchStream;

    async fn watch_dtab(
        &self,
        request: Request<pb::WatchDtabRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.authorize_read(&request)?;
        let ns = request.into_inner().namespace;
        let this = self.clone();
        let updates = tokio_stream::wrappers::WatchStream::new(self.store.subscribe());
        let mut last: Option<Option<StoredDtab>> = None;
        let stream = updates.filter_map(move |all| {
            let entry = all.get(&ns).cloned();
            // Only this namespace's changes (and the first state) are sent.
            let msg =
                (last.as_ref() != Some(&entry)).then(|| Ok(this.versioned(&ns, entry.as_ref())));
            last = Some(entry);
            std::future::ready(msg)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn delegate(
        &self,
        request: Request<pb::DelegateRequest>,
    ) -> Result<Response<pb::DelegateResponse>, Status> {
        self.authorize_read(&request)?;
        let req = request.into_inner();
        let (tree_json, result) = self.delegation(&req.namespace, &req.path, &req.extra_dtab)?;
        Ok(Response::new(pb::DelegateResponse {
            tree_json: tree_json.to_string(),
            result,
        }))
    }

    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        self.authorize_read(&request)?;
        let req = request.into_inner();
        let dtab = self.routing_dtab(&req.namespace, &req.extra_dtab)?;
        let path = parse_path(&req.path)?;
        let state: Arc<MeshState> = self.publisher.current().state.clone();
        let bound = dtab::bind(&dtab, &path, &MeshNamer::new(&state))
            .map_err(|e| bounded(tonic::Code::FailedPrecondition, e))?;
        let mut endpoints = Vec::new();
        for leaf in bound.leaves() {
            if let Bound::Set {
                id, endpoints: set, ..
            } = leaf
            {
                endpoints.extend(set.iter().map(|e| pb::ResolvedEndpoint {
                    set: id.to_string(),
                    endpoint: Some(pb::Endpoint {
                        addr: Some(pb::SocketAddr {
                            ip: e.addr.ip().to_string(),
                            port: u32::from(e.addr.port()),
                        }),
                        meta: e.meta.clone().into_iter().collect(),
                        weight: e.weight,
                    }),
                }));
            }
        }
        let shown: NameTree<Path> = bound.map(&mut |b: Bound| b.id().clone());
        Ok(Response::new(pb::ResolveResponse {
            bound: shown.to_string(),
            endpoints,
        }))
    }
}
