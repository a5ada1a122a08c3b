//! EC2 instance metadata, IMDSv2 only: a session token first, then GETs that
//! carry it.

use std::net::IpAddr;

use hyper::{Method, StatusCode};

use crate::error::{FetchError, SourceError};
use crate::http::{self, Http};

/// Asks for a token; IMDS accepts 1–21600 seconds.
pub(crate) const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
pub(crate) const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// One discovery needs the token for seconds, but the maximum costs nothing
/// and is what the AWS SDKs ask for.
pub(crate) const TOKEN_TTL_SECONDS: &str = "21600";

/// Tokens and metadata values are short.
const BODY_LIMIT: usize = 4096;

/// The fields discovery still lacks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted {
    pub host_ip: bool,
    pub instance_id: bool,
    pub availability_zone: bool,
}

/// What IMDS said. A field not asked for is `Ok(None)`; so is an
/// instance id or AZ that IMDS does not have (404). A `local-ipv4` that is
/// missing is an error: without it IMDS did not answer the main question.
#[derive(Debug)]
pub(crate) struct Answer {
    pub host_ip: Result<Option<IpAddr>, SourceError>,
    pub instance_id: Result<Option<String>, SourceError>,
    pub availability_zone: Result<Option<String>, SourceError>,
}

/// Fetches a token, then the wanted fields concurrently. Fails as a whole
/// only when no token can be had (IMDS absent, disabled on the instance, or
/// out of reach from this network namespace).
pub(crate) async fn fetch(
    http: &Http,
    endpoint: &str,
    wanted: Wanted,
) -> Result<Answer, SourceError> {
    let token = token(http, endpoint).await?;
    let get = |path: &'static str, wanted: bool| {
        let token = token.as_str();
        async move {
            if wanted {
                get_text(http, endpoint, path, token).await
            } else {
                Ok(None)
            }
        }
    };
    let (ip, instance_id, zone) = tokio::join!(
        get("latest/meta-data/local-ipv4", wanted.host_ip),
        get("latest/meta-data/instance-id", wanted.instance_id),
        get(
            "latest/meta-data/placement/availability-zone",
            wanted.availability_zone
        ),
    );
    let host_ip = match ip {
        Ok(Some((url, text))) => text
            .parse::<IpAddr>()
            .map(Some)
            .map_err(|_| SourceError::Imds {
                url,
                kind: FetchError::InvalidIp(text),
            }),
        Ok(None) if wanted.host_ip => Err(SourceError::Imds {
            url: http::join(endpoint, "latest/meta-data/local-ipv4"),
            kind: FetchError::Status(StatusCode::NOT_FOUND),
        }),
        Ok(None) => Ok(None),
        Err(err) => Err(err),
    };
    Ok(Answer {
        host_ip,
        instance_id: instance_id.map(|v| v.map(|(_, text)| text)),
        availability_zone: zone.map(|v| v.map(|(_, text)| text)),
    })
}

/// `PUT /latest/api/token`. Real IMDS echoes the TTL header in its answer
/// (the AWS Rust SDK refuses a token without it); this client is lenient and
/// accepts a token without the echo, since the token itself is all it uses.
async fn token(http: &Http, endpoint: &str) -> Result<String, SourceError> {
    let url = http::join(endpoint, "latest/api/token");
    let fail = |kind| SourceError::Imds {
        url: url.clone(),
        kind,
    };
    let response = http
        .send(
            &Method::PUT,
            &url,
            &[(TTL_HEADER, TOKEN_TTL_SECONDS)],
            BODY_LIMIT,
        )
        .await
        .map_err(fail)?;
    if let Some(ttl) = response.headers.get(TTL_HEADER) {
        tracing::debug!(url, ttl = ?ttl, "IMDSv2 token granted");
    } else {
        tracing::debug!(url, "IMDSv2 token granted without a TTL echo; accepted");
    }
    let token = response.text().map_err(fail)?;
    if token.is_empty() {
        return Err(fail(FetchError::EmptyToken));
    }
    Ok(token.to_owned())
}

/// A metadata value as trimmed text with its URL; `None` on 404.
async fn get_text(
    http: &Http,
    endpoint: &str,
    path: &str,
    token: &str,
) -> Result<Option<(String, String)>, SourceError> {
    let url = http::join(endpoint, path);
    match http
        .send(&Method::GET, &url, &[(TOKEN_HEADER, token)], BODY_LIMIT)
        .await
        .and_then(|response| response.text().map(str::to_owned))
    {
        Ok(text) if text.is_empty() => Ok(None),
        Ok(text) => Ok(Some((url, text))),
        Err(FetchError::Status(StatusCode::NOT_FOUND)) => {
            tracing::debug!(url, "IMDSv2 has no such value");
            Ok(None)
        }
        Err(kind) => Err(SourceError::Imds { url, kind }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// A token endpoint that always fails with 500: one retry, then an error
    /// naming IMDSv2 and the token URL.
    #[tokio::test]
    async fn token_failure_is_retried_once_and_named() {
        let puts = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&puts);
        let app = axum::Router::new().fallback(move || {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                StatusCode::INTERNAL_SERVER_ERROR
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let http = Http::new(Duration::from_secs(1));
        let endpoint = format!("http://{addr}/");
        let wanted = Wanted {
            host_ip: true,
            instance_id: true,
            availability_zone: true,
        };
        let err = fetch(&http, &endpoint, wanted).await.unwrap_err();
        assert_eq!(puts.load(Ordering::SeqCst), 2, "one try and one retry");
        let expected_url = format!("http://{addr}/latest/api/token");
        assert!(
            matches!(&err, SourceError::Imds { url, kind: FetchError::Status(s) }
                if *url == expected_url && *s == StatusCode::INTERNAL_SERVER_ERROR),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("IMDSv2 {expected_url}: HTTP status 500 Internal Server Error")
        );
    }
}
