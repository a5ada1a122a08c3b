//! Bounds on what clients send the controller (issue #16, "secure by
//! default"): agents' traffic summaries and dtab writes, and how much of a
//! client's input an error message may quote. Each bound is configurable
//! ([`crate::config`]); the defaults are here.

use std::borrow::Cow;

/// How many characters of a client's input an error message quotes.
pub const ECHO_CHARS: usize = 64;

/// `text` as an error message may quote it: its first [`ECHO_CHARS`]
/// characters, then `…` when there were more, so that a hostile input
/// never makes an error (or a log line) as large as itself.
pub fn echo(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(ECHO_CHARS) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}

/// Bounds on the agents' traffic summaries (the dashboard's data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficLimits {
    /// Services taken from one summary; the rest are dropped. An agent
    /// itself reports at most 500 (its metric label bound).
    pub max_summary_services: usize,
    /// The largest agent message (a summary is the only large one) the
    /// stream decodes; a larger one ends the stream.
    pub max_summary_bytes: usize,
    /// Distinct service names kept across all agents; series of further
    /// names are dropped until one is forgotten (its agents disconnect).
    pub max_services: usize,
}

impl Default for TrafficLimits {
    fn default() -> Self {
        Self {
            max_summary_services: 1_000,
            max_summary_bytes: 256 * 1024,
            max_services: 10_000,
        }
    }
}

/// A service name longer than this is dropped from a summary: the names
/// kept are bounded in number, and this bounds each one (a logical name
/// such as `/svc/hello` is far shorter).
pub const MAX_SERVICE_NAME_BYTES: usize = 256;

/// Bounds on stored dtabs and service policies (a policy's own size is
/// bounded by `ecsmesh_policy::MAX_POLICY_BYTES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DtabLimits {
    /// A dtab's size as written (the request's text), per namespace; also
    /// bounds the extra dtab of `Delegate` and `Resolve`.
    pub max_dtab_bytes: usize,
    /// Stored namespaces; creating one more is refused.
    pub max_namespaces: usize,
    /// Stored service policies; creating one more is refused.
    pub max_policies: usize,
}

impl Default for DtabLimits {
    fn default() -> Self {
        Self {
            max_dtab_bytes: 64 * 1024,
            max_namespaces: 1_000,
            max_policies: 1_000,
        }
    }
}

/// Room in a `DtabAdmin` request beside its dtab: the namespace (64
/// bytes), a version, a path. Past `max_dtab_bytes` plus this, tonic
/// refuses the message before decoding it.
const REQUEST_OVERHEAD_BYTES: usize = 16 * 1024;

/// A client's input over a bound.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("the dtab is {size} bytes; the limit is {limit} bytes (max_dtab_bytes)")]
    DtabTooLarge { size: usize, limit: usize },
}

impl DtabLimits {
    /// The largest `DtabAdmin` request the gRPC server decodes.
    pub fn max_request_bytes(&self) -> usize {
        self.max_dtab_bytes.saturating_add(REQUEST_OVERHEAD_BYTES)
    }

    /// The largest `PolicyAdmin` request the gRPC server decodes: a policy
    /// at its limit, its prefix and a version.
    pub fn max_policy_request_bytes(&self) -> usize {
        ecsmesh_policy::MAX_POLICY_BYTES.saturating_add(REQUEST_OVERHEAD_BYTES)
    }

    /// Checks a dtab's text before it is parsed.
    ///
    /// # Errors
    /// The text is over `max_dtab_bytes`.
    pub fn check_dtab(&self, text: &str) -> Result<(), LimitError> {
        if text.len() > self.max_dtab_bytes {
            return Err(LimitError::DtabTooLarge {
                size: text.len(),
                limit: self.max_dtab_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_quotes_a_bounded_prefix() {
        assert_eq!(echo("prod"), "prod");
        let exact = "a".repeat(ECHO_CHARS);
        assert_eq!(echo(&exact), exact.as_str());
        let long = "é".repeat(10_000);
        let quoted = echo(&long);
        assert_eq!(quoted.chars().count(), ECHO_CHARS + 1);
        assert!(quoted.ends_with('…'));
    }

    #[test]
    fn a_dtab_over_the_limit_is_refused() {
        let limits = DtabLimits {
            max_dtab_bytes: 10,
            ..DtabLimits::default()
        };
        assert_eq!(limits.check_dtab("/a=>/b"), Ok(()));
        assert_eq!(
            limits.check_dtab("/aaaa=>/bbbb"),
            Err(LimitError::DtabTooLarge {
                size: 12,
                limit: 10
            })
        );
        assert!(limits.max_request_bytes() > 10);
    }
}
