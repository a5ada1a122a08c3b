//! A minimal HTTP/1 client for the two metadata services: plain `http://`,
//! a bounded body, a timeout per attempt and one retry.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::FetchError;

/// Pause before the single retry.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A successful (2xx) answer.
#[derive(Debug)]
pub(crate) struct Response {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body as trimmed text.
    pub fn text(&self) -> Result<&str, FetchError> {
        std::str::from_utf8(&self.body)
            .map(str::trim)
            .map_err(|_| FetchError::NotUtf8)
    }
}

#[derive(Debug)]
pub(crate) struct Http {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Http {
    /// `timeout` bounds the connect and, separately, each whole attempt
    /// (connect, request, response and body).
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build(connector);
        Self { client, timeout }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends a bodiless request; retries once after a timeout, a transport
    /// error or a 5xx. Any non-2xx status is an error.
    pub async fn send(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&'static str, &str)],
        limit: usize,
    ) -> Result<Response, FetchError> {
        let uri = parse_url(url)?;
        let mut values = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let value =
                HeaderValue::from_str(value).map_err(|_| FetchError::InvalidHeader(name))?;
            values.push((*name, value));
        }
        match self.attempt(method, &uri, &values, limit).await {
            Err(err) if err.is_retryable() => {
                tracing::debug!(%method, url, error = %err, "metadata request failed; retrying once");
                tokio::time::sleep(RETRY_PAUSE).await;
                self.attempt(method, &uri, &values, limit).await
            }
            other => other,
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &[(&'static str, HeaderValue)],
        limit: usize,
    ) -> Result<Response, FetchError> {
        let mut builder = Request::builder().method(method.clone()).uri(uri.clone());
        for (name, value) in headers {
            builder = builder.header(*name, value.clone());
        }
        let request = builder
            .body(Empty::new())
            .map_err(|err| FetchError::InvalidUrl(err.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(FetchError::Request)?;
            let (parts, body) = response.into_parts();
            if !parts.status.is_success() {
                return Err(FetchError::Status(parts.status));
            }
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|err| {
                    if err.is::<LengthLimitError>() {
                        FetchError::TooLarge { limit }
                    } else {
                        FetchError::Body(err)
                    }
                })?
                .to_bytes();
            Ok(Response {
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
    }
}

/// Only `http://host[:port]/…` URLs.
fn parse_url(url: &str) -> Result<Uri, FetchError> {
    let uri: Uri = url
        .parse()
        .map_err(|err| FetchError::InvalidUrl(format!("{url:?}: {err}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(FetchError::InvalidUrl(format!(
            "{url:?}: only http:// is supported"
        )));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(FetchError::InvalidUrl(format!("{url:?}: no host")));
    }
    Ok(uri)
}

/// `base` + `/` + `path`, whatever slashes `base` ends with.
pub(crate) fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(parse_url("http://127.0.0.1:1234/imds/i-1/latest/api/token").is_ok());
        assert!(parse_url("http://[fd00:ec2::254]/latest/api/token").is_ok());
        for bad in [
            "https://169.254.169.254/",
            "169.254.169.254",
            "http://",
            "",
            "ftp://x/",
        ] {
            assert!(
                matches!(parse_url(bad), Err(FetchError::InvalidUrl(_))),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!(
            join("http://h/imds/i-1/", "/latest/api/token"),
            "http://h/imds/i-1/latest/api/token"
        );
        assert_eq!(join("http://h", "task"), "http://h/task");
    }
}
