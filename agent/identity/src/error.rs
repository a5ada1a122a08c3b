//! Typed errors: which source failed, at which URL, and why.

use std::error::Error;
use std::fmt::Write as _;
use std::time::Duration;

use hyper::StatusCode;

use crate::Source;

/// Why one HTTP metadata request (IMDSv2 or ECS task metadata v4) gave no
/// usable answer. The message already includes the cause chain, so these
/// variants do not also report it through [`Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The URL cannot be parsed, or is not `http://host…` (no TLS here: both
    /// metadata services are plain HTTP on link-local addresses).
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// A header value (e.g. a token the server sent) is not a valid HTTP
    /// header value.
    #[error("the {0} header value is not valid in HTTP")]
    InvalidHeader(&'static str),
    /// No complete response (connect, headers and body) within the timeout.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or exchanging the request failed.
    #[error("request failed: {}", chain(.0))]
    Request(hyper_util::client::legacy::Error),
    /// The server answered with a non-2xx status.
    #[error("HTTP status {0}")]
    Status(StatusCode),
    /// The response body could not be read.
    #[error("reading the body failed: {}", chain(.0.as_ref()))]
    Body(Box<dyn Error + Send + Sync>),
    /// The response body is larger than expected for this endpoint.
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// A text answer is not UTF-8.
    #[error("the body is not UTF-8")]
    NotUtf8,
    /// The IMDSv2 token response was empty.
    #[error("the token is empty")]
    EmptyToken,
    /// A text answer that should be an IP address is not one.
    #[error("{0:?} is not an IP address")]
    InvalidIp(String),
    /// The task metadata is not the JSON expected.
    #[error("invalid task metadata JSON: {0}")]
    Json(serde_json::Error),
    /// The task metadata answered, but its network mode does not reveal the
    /// host IP (bridge mode reports the container's Docker-bridge address).
    #[error("network mode {mode} does not give the host IP")]
    NoHostIp { mode: String },
}

impl FetchError {
    /// Worth one more try: the endpoint may be starting, or a pooled
    /// connection went stale.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Request(_) | Self::Body(_) => true,
            Self::Status(status) => status.is_server_error(),
            _ => false,
        }
    }
}

/// Why one identity source did not give the host IP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// An IMDSv2 request failed; `url` is the request that failed.
    #[error("IMDSv2 {url}: {kind}")]
    Imds { url: String, kind: FetchError },
    /// The ECS task metadata v4 request failed or gave no host IP.
    #[error("ECS task metadata v4 {url}: {kind}")]
    EcsMetadata { url: String, kind: FetchError },
    /// The interface addresses could not be listed (`getifaddrs`).
    #[error("network interface: cannot list addresses: {0}")]
    Interfaces(std::io::Error),
    /// Every interface address is loopback, link-local or IPv6.
    #[error("network interface: no IPv4 address other than loopback and link-local")]
    NoInterfaceAddress,
    /// The source was not consulted.
    #[error("{which}: skipped: {reason}")]
    Skipped { which: Source, reason: &'static str },
}

impl SourceError {
    /// The source this error is about.
    pub fn origin(&self) -> Source {
        match self {
            Self::Imds { .. } => Source::Imds,
            Self::EcsMetadata { .. } => Source::EcsMetadata,
            Self::Interfaces(_) | Self::NoInterfaceAddress => Source::Interface,
            Self::Skipped { which, .. } => *which,
        }
    }
}

/// Discovery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// No source gave a host IP; `failures` says why, in the order the
    /// sources were consulted.
    #[error("no host IP from any source: {}", join(.failures))]
    NoHostIp { failures: Vec<SourceError> },
}

/// `err: cause: cause…`.
fn chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let _ = write!(out, ": {cause}");
        next = cause.source();
    }
    out
}

fn join(failures: &[SourceError]) -> String {
    if failures.is_empty() {
        return "no source was consulted".to_owned();
    }
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_source_and_url() {
        let err = IdentityError::NoHostIp {
            failures: vec![
                SourceError::Imds {
                    url: "http://127.0.0.1:9/latest/api/token".into(),
                    kind: FetchError::Timeout(Duration::from_secs(1)),
                },
                SourceError::EcsMetadata {
                    url: "http://169.254.170.2/v4/abc/task".into(),
                    kind: FetchError::NoHostIp {
                        mode: "bridge".into(),
                    },
                },
                SourceError::NoInterfaceAddress,
            ],
        };
        assert_eq!(
            err.to_string(),
            "no host IP from any source: \
             IMDSv2 http://127.0.0.1:9/latest/api/token: no complete answer within 1s; \
             ECS task metadata v4 http://169.254.170.2/v4/abc/task: network mode bridge does not \
             give the host IP; \
             network interface: no IPv4 address other than loopback and link-local"
        );
        let skipped = SourceError::Skipped {
            which: Source::Imds,
            reason: "disabled",
        };
        assert_eq!(skipped.to_string(), "IMDSv2: skipped: disabled");
        assert_eq!(skipped.origin(), Source::Imds);
    }

    #[test]
    fn retryable_errors() {
        assert!(FetchError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(FetchError::Status(StatusCode::SERVICE_UNAVAILABLE).is_retryable());
        assert!(!FetchError::Status(StatusCode::UNAUTHORIZED).is_retryable());
        assert!(!FetchError::Status(StatusCode::NOT_FOUND).is_retryable());
        assert!(!FetchError::EmptyToken.is_retryable());
    }
}
