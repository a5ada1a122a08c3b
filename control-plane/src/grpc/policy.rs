//! `PolicyAdmin`: the service policies' API (issue #18), the dtab API's
//! twin. A policy is parsed and validated before anything is stored (a bad
//! one is `INVALID_ARGUMENT` naming the line and column, or the field and
//! its range), writes are compare-and-set on the version, and access,
//! bounds and refusal metrics are the dtab API's ([`AdminService`]).

use std::pin::Pin;

use ecsmesh_dtab::Path;
use ecsmesh_policy::{PolicyError, ServicePolicy};
use ecsmesh_proto::v1 as pb;
use futures_util::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::admin::{AdminService, decode_version, encode_version, status_of};
use crate::limits::echo;
use crate::store::{Policies, StoreError, Stored};

/// The policy API, over the admin service's stores, access and limits.
#[derive(Debug, Clone)]
pub struct PolicyAdmin(pub AdminService);

/// What `explain` says about a service name: every prefix an agent looks
/// up, most specific first, and the one that applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub service: Path,
    /// `(prefix, its stored policy)`, most specific first.
    pub candidates: Vec<(Path, Option<Stored<ServicePolicy>>)>,
    /// The index in `candidates` of the policy that applies.
    pub chosen: Option<usize>,
}

/// Explains which stored policy applies to `service` (the agents' rule:
/// the longest prefix, label by label, that has a policy).
pub fn explain(policies: &Policies, service: Path) -> Explanation {
    let candidates: Vec<_> = (1..=service.len())
        .rev()
        .map(|n| {
            let prefix = service.take(n);
            let stored = policies.get(&prefix.to_string()).cloned();
            (prefix, stored)
        })
        .collect();
    let chosen = candidates.iter().position(|(_, s)| s.is_some());
    Explanation {
        service,
        candidates,
        chosen,
    }
}

fn versioned(prefix: &str, stored: Option<&Stored<ServicePolicy>>) -> pb::VersionedPolicy {
    pb::VersionedPolicy {
        prefix: prefix.to_owned(),
        policy: stored.map(|s| s.doc.canonical()).unwrap_or_default(),
        version: stored
            .map(|s| encode_version(s.version))
            .unwrap_or_default(),
        exists: stored.is_some(),
    }
}

impl PolicyAdmin {
    /// The prefix in canonical form (the store's key), counting a refusal.
    fn prefix(&self, text: &str) -> Result<String, Status> {
        ecsmesh_policy::parse_prefix(text)
            .map(|p| p.to_string())
            .map_err(|e| {
                self.0.metrics.policy_write_refused("invalid_prefix");
                Status::invalid_argument(echo(&e.to_string()))
            })
    }

    /// Parses and validates a policy, counting a refusal. The parser's
    /// messages quote field names and values of bounded size.
    fn parse(&self, text: &str) -> Result<ServicePolicy, Status> {
        ServicePolicy::parse(text).map_err(|e| {
            self.0.metrics.policy_write_refused("invalid_policy");
            let message = match &e {
                PolicyError::TooLarge(_) => e.to_string(),
                _ => format!("invalid policy: {}", echo(&e.to_string())),
            };
            Status::invalid_argument(message)
        })
    }

    fn store_status(&self, e: StoreError) -> Status {
        match e {
            StoreError::InvalidKey { .. } => self.0.metrics.policy_write_refused("invalid_prefix"),
            StoreError::TooMany { .. } => self.0.metrics.policy_write_refused("too_many_policies"),
            _ => {}
        }
        status_of(e)
    }

    /// `explain` on what is stored now.
    ///
    /// # Errors
    /// `service` is not a path.
    pub fn explanation(&self, service: &str) -> Result<Explanation, Status> {
        // Bounded before parsing: a service name is short.
        if service.len() > crate::limits::MAX_SERVICE_NAME_BYTES {
            return Err(Status::invalid_argument(format!(
                "a service name is at most {} bytes",
                crate::limits::MAX_SERVICE_NAME_BYTES
            )));
        }
        let path = Path::read(service)
            .map_err(|e| Status::invalid_argument(format!("invalid service name: {e}")))?;
        Ok(explain(&self.0.policies.entries(), path))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::VersionedPolicy, Status>> + Send>>;

#[tonic::async_trait]
impl pb::policy_admin_server::PolicyAdmin for PolicyAdmin {
    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        self.0.authorize_read(&request)?;
        let all = self.0.policies.entries();
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: all.iter().map(|(k, s)| versioned(k, Some(s))).collect(),
        }))
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::VersionedPolicy>, Status> {
        self.0.authorize_read(&request)?;
        let prefix = ecsmesh_policy::parse_prefix(&request.get_ref().prefix)
            .map_err(|e| Status::invalid_argument(echo(&e.to_string())))?
            .to_string();
        match self.0.policies.entries().get(&prefix) {
            Some(s) => Ok(Response::new(versioned(&prefix, Some(s)))),
            None => Err(Status::not_found(format!(
                "no policy is stored for {:?}",
                echo(&prefix)
            ))),
        }
    }

    async fn create_policy(
        &self,
        request: Request<pb::CreatePolicyRequest>,
    ) -> Result<Response<pb::VersionedPolicy>, Status> {
        self.0.authorize_write(&request)?;
        let req = request.into_inner();
        let prefix = self.prefix(&req.prefix)?;
        let policy = self.parse(&req.policy)?;
        let stored = self
            .0
            .policies
            .create(&prefix, policy, self.0.limits.max_policies)
            .await
            .map_err(|e| self.store_status(e))?;
        tracing::info!(prefix, version = stored.version, "service policy created");
        Ok(Response::new(versioned(&prefix, Some(&stored))))
    }

    async fn update_policy(
        &self,
        request: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::VersionedPolicy>, Status> {
        self.0.authorize_write(&request)?;
        let req = request.into_inner();
        let prefix = self.prefix(&req.prefix)?;
        let policy = self.parse(&req.policy)?;
        let expected = decode_version(&req.expected_version)?;
        let stored = self
            .0
            .policies
            .update(&prefix, policy, expected)
            .await
            .map_err(|e| self.store_status(e))?;
        tracing::info!(prefix, version = stored.version, "service policy updated");
        Ok(Response::new(versioned(&prefix, Some(&stored))))
    }

    async fn delete_policy(
        &self,
        request: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        self.0.authorize_write(&request)?;
        let req = request.into_inner();
        let prefix = self.prefix(&req.prefix)?;
        let expected = if req.expected_version.is_empty() {
            None
        } else {
            Some(decode_version(&req.expected_version)?)
        };
        self.0
            .policies
            .delete(&prefix, expected)
            .await
            .map_err(|e| self.store_status(e))?;
        tracing::info!(prefix, "service policy deleted");
        Ok(Response::new(pb::DeletePolicyResponse {}))
    }

    type WatchPolicyStream = WatchStream;

    async fn watch_policy(
        &self,
        request: Request<pb::WatchPolicyRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.0.authorize_read(&request)?;
        let prefix = ecsmesh_policy::parse_prefix(&request.into_inner().prefix)
            .map_err(|e| Status::invalid_argument(echo(&e.to_string())))?
            .to_string();
        let updates = tokio_stream::wrappers::WatchStream::new(self.0.policies.subscribe());
        let mut last: Option<Option<Stored<ServicePolicy>>> = None;
        let stream = updates.filter_map(move |all| {
            let entry = all.get(&prefix).cloned();
            // Only this prefix's changes (and the first state) are sent.
            let msg =
                (last.as_ref() != Some(&entry)).then(|| Ok(versioned(&prefix, entry.as_ref())));
            last = Some(entry);
            std::future::ready(msg)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn explain_policy(
        &self,
        request: Request<pb::ExplainPolicyRequest>,
    ) -> Result<Response<pb::ExplainPolicyResponse>, Status> {
        self.0.authorize_read(&request)?;
        let e = self.explanation(&request.get_ref().service)?;
        let chosen = e
            .chosen
            .and_then(|i| e.candidates.get(i))
            .map(|(prefix, stored)| versioned(&prefix.to_string(), stored.as_ref()))
            .unwrap_or_default();
        Ok(Response::new(pb::ExplainPolicyResponse {
            service: e.service.to_string(),
            candidates: e
                .candidates
                .iter()
                .enumerate()
                .map(|(i, (prefix, stored))| pb::PolicyCandidate {
                    prefix: prefix.to_string(),
                    stored: stored.is_some(),
                    version: stored
                        .as_ref()
                        .map(|s| encode_version(s.version))
                        .unwrap_or_default(),
                    chosen: e.chosen == Some(i),
                })
                .collect(),
            chosen: Some(chosen),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn explain_walks_the_prefixes_most_specific_first() {
        let stored = |text: &str, version| Stored {
            doc: Arc::new(ServicePolicy::parse(text).unwrap()),
            version,
        };
        let policies: Policies = [
            ("/svc".to_owned(), stored("zone_aware: false", 3)),
            (
                "/svc/payments".to_owned(),
                stored("timeouts: {total: 1s}", 7),
            ),
            ("/svc/pay".to_owned(), stored("{}", 9)),
        ]
        .into();
        let e = explain(&policies, Path::read("/svc/payments/v2").unwrap());
        let shown: Vec<_> = e
            .candidates
            .iter()
            .map(|(p, s)| (p.to_string(), s.as_ref().map(|s| s.version)))
            .collect();
        assert_eq!(
            shown,
            [
                ("/svc/payments/v2".to_owned(), None),
                ("/svc/payments".to_owned(), Some(7)),
                ("/svc".to_owned(), Some(3)),
            ]
        );
        assert_eq!(e.chosen, Some(1), "the longest stored prefix, not /svc");
        let none = explain(&Policies::new(), Path::read("/svc/x").unwrap());
        assert_eq!(none.chosen, None);
    }
}
