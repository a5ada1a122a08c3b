//! Linkerd 1's HTTP response classifiers (`service.responseClassifier`).
//! One classification drives retries, failure accrual and success stats.

/// Which responses are failures, and which failures may be retried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Classifier {
    /// `io.l5d.http.retryableRead5XX`: a 5XX or a transport error on GET,
    /// HEAD, OPTIONS or TRACE is retryable; otherwise as `NonRetryable5XX`.
    RetryableRead5XX,
    /// `io.l5d.http.retryableIdempotent5XX`: the same, adding PUT and DELETE.
    RetryableIdempotent5XX,
    /// `io.l5d.http.nonRetryable5XX`: a 5XX or a transport error is a failure
    /// that is never retried. Linkerd 1's effective default.
    #[default]
    NonRetryable5XX,
    /// `io.l5d.http.allSuccessful`: every response succeeds; only transport
    /// errors fail, never retryable.
    AllSuccessful,
}

/// How a request attempt went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    Failure { retryable: bool },
}

impl Outcome {
    pub fn is_success(self) -> bool {
        self == Self::Success
    }

    pub fn is_retryable(self) -> bool {
        self == Self::Failure { retryable: true }
    }
}

impl Classifier {
    /// The classifier Linkerd 1 configures as `kind`, e.g.
    /// `"io.l5d.http.retryableRead5XX"`.
    pub fn from_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "io.l5d.http.retryableRead5XX" => Self::RetryableRead5XX,
            "io.l5d.http.retryableIdempotent5XX" => Self::RetryableIdempotent5XX,
            "io.l5d.http.nonRetryable5XX" => Self::NonRetryable5XX,
            "io.l5d.http.allSuccessful" => Self::AllSuccessful,
            _ => return None,
        })
    }

    /// Classifies an attempt: `status` is the response status, or `None`
    /// when the connection or transport failed. Methods are matched
    /// case-sensitively, as HTTP defines them.
    pub fn classify(self, method: &str, status: Option<u16>) -> Outcome {
        let failed = status.is_none_or(|s| (500..600).contains(&s));
        let retry_method = match self {
            Self::RetryableRead5XX => is_read(method),
            Self::RetryableIdempotent5XX => is_read(method) || matches!(method, "PUT" | "DELETE"),
            Self::NonRetryable5XX => false,
            Self::AllSuccessful => {
                return if status.is_some() {
                    Outcome::Success
                } else {
                    Outcome::Failure { retryable: false }
                };
            }
        };
        if failed {
            Outcome::Failure {
                retryable: retry_method,
            }
        } else {
            Outcome::Success
        }
    }
}

fn is_read(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

#[cfg(test)]
mod tests {
    use super::*;

    const METHODS: [&str; 9] = [
        "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "POST", "PATCH", "get",
    ];
    const STATUSES: [Option<u16>; 8] = [
        Some(200),
        Some(204),
        Some(302),
        Some(404),
        Some(429),
        Some(500),
        Some(503),
        None,
    ];

    /// Expected outcome as a char: S success, R retryable, F non-retryable.
    fn expected(c: Classifier, method: &str, status: Option<u16>) -> char {
        let failed = status.is_none_or(|s| s >= 500);
        let read = ["GET", "HEAD", "OPTIONS", "TRACE"].contains(&method);
        let idem = read || ["PUT", "DELETE"].contains(&method);
        match c {
            Classifier::AllSuccessful if status.is_some() => 'S',
            _ if !failed => 'S',
            Classifier::RetryableRead5XX if read => 'R',
            Classifier::RetryableIdempotent5XX if idem => 'R',
            _ => 'F',
        }
    }

    #[test]
    fn classification_table() {
        // Spelled out for the cases that matter most.
        use Classifier::*;
        let retryable = Outcome::Failure { retryable: true };
        let fatal = Outcome::Failure { retryable: false };
        assert_eq!(RetryableRead5XX.classify("GET", Some(503)), retryable);
        assert_eq!(RetryableRead5XX.classify("GET", None), retryable);
        assert_eq!(RetryableRead5XX.classify("PUT", Some(503)), fatal);
        assert_eq!(RetryableIdempotent5XX.classify("DELETE", None), retryable);
        assert_eq!(RetryableIdempotent5XX.classify("POST", Some(500)), fatal);
        assert_eq!(RetryableIdempotent5XX.classify("POST", None), fatal);
        assert_eq!(
            RetryableIdempotent5XX.classify("GET", Some(404)),
            Outcome::Success
        );
        assert_eq!(NonRetryable5XX.classify("GET", Some(502)), fatal);
        assert_eq!(NonRetryable5XX.classify("GET", None), fatal);
        assert_eq!(AllSuccessful.classify("GET", Some(500)), Outcome::Success);
        assert_eq!(AllSuccessful.classify("GET", None), fatal);
        assert_eq!(Classifier::default(), NonRetryable5XX);

        // And the whole grid.
        for c in [
            RetryableRead5XX,
            RetryableIdempotent5XX,
            NonRetryable5XX,
            AllSuccessful,
        ] {
            for m in METHODS {
                for s in STATUSES {
                    let got = match c.classify(m, s) {
                        Outcome::Success => 'S',
                        Outcome::Failure { retryable: true } => 'R',
                        Outcome::Failure { retryable: false } => 'F',
                    };
                    assert_eq!(got, expected(c, m, s), "{c:?} {m} {s:?}");
                }
            }
        }
    }

    #[test]
    fn kinds_and_helpers() {
        assert_eq!(
            Classifier::from_kind("io.l5d.http.retryableIdempotent5XX"),
            Some(Classifier::RetryableIdempotent5XX)
        );
        assert_eq!(Classifier::from_kind("io.l5d.http.retryableAll5XX"), None);
        assert!(Outcome::Success.is_success());
        assert!(Outcome::Failure { retryable: true }.is_retryable());
        assert!(!Outcome::Failure { retryable: false }.is_retryable());
    }
}
