//! Identification: the logical name a request is routed by (Linkerd's
//! identifiers, with `dstPrefix` `/svc`).

use std::sync::LazyLock;

use ecsmesh_dtab::{Label, Path};
use http::request::Parts;
use http::uri::PathAndQuery;

use crate::config::Identifier;

/// Why a request has no name (answered 400 `Unknown destination`).
#[derive(Debug, thiserror::Error)]
pub enum IdentifyError {
    #[error("{0} header is absent")]
    MissingHeader(String),
    #[error("not enough segments in path")]
    TooFewSegments,
    #[error("{header} header is not a path: {error}")]
    NotAPath {
        header: String,
        error: ecsmesh_dtab::ParseError,
    },
}

/// A forward-proxy request (`GET http://hello/x`) becomes an origin-form
/// one with `Host: hello` (Linkerd's `ProxyRewriteFilter`). Credentials in
/// the authority (`http://user:pass@hello/`) are dropped here, before
/// anything names the request: they never reach a log, a metric label, the
/// dashboard or the endpoint.
pub fn rewrite_proxy_form(parts: &mut Parts) {
    if let Some(host) = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| without_userinfo(h.as_bytes()))
        .and_then(|h| http::HeaderValue::from_bytes(h).ok())
    {
        parts.headers.insert(http::header::HOST, host);
    }
    let Some(authority) = parts.uri.authority().cloned() else {
        return;
    };
    let host =
        without_userinfo(authority.as_str().as_bytes()).unwrap_or(authority.as_str().as_bytes());
    if parts.version >= http::Version::HTTP_2 {
        // HTTP/2 always carries the authority in the URI: keep it there.
        if host.len() != authority.as_str().len() {
            let mut uri = parts.uri.clone().into_parts();
            uri.authority = http::uri::Authority::try_from(host).ok();
            if let Ok(u) = http::Uri::from_parts(uri) {
                parts.uri = u;
            }
        }
        return;
    }
    if let Ok(host) = http::HeaderValue::from_bytes(host) {
        parts.headers.insert(http::header::HOST, host);
    }
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = http::Uri::from(path);
}

/// `host[:port]` from an authority that carries `userinfo@`, if it does.
fn without_userinfo(authority: &[u8]) -> Option<&[u8]> {
    let at = authority.iter().rposition(|b| *b == b'@')?;
    Some(&authority[at + 1..])
}

/// Linkerd's `dstPrefix`.
static SVC: LazyLock<Path> =
    LazyLock::new(|| Path::from_strs(["svc"]).expect("a literal non-empty element"));

/// `/svc/<token>`: the name of a header token (`io.l5d.header.token`),
/// if it is a valid label.
pub fn token_name(token: &[u8]) -> Option<Path> {
    Label::new(token).ok().map(|label| SVC.join(&[label]))
}

/// The request's logical name.
pub fn identify(identifier: &Identifier, parts: &mut Parts) -> Result<Path, IdentifyError> {
    match identifier {
        Identifier::HeaderToken { header } => {
            // HTTP/2 carries the host as :authority rather than a header.
            let value = parts
                .headers
                .get(header.as_str())
                .map(http::HeaderValue::as_bytes)
                .filter(|v| !v.is_empty())
                .or_else(|| {
                    (header.eq_ignore_ascii_case("host"))
                        .then(|| parts.uri.authority().map(|a| a.as_str().as_bytes()))
                        .flatten()
                })
                .ok_or_else(|| IdentifyError::MissingHeader(header.clone()))?;
            token_name(value).ok_or_else(|| IdentifyError::MissingHeader(header.clone()))
        }
        Identifier::Path { segments, consume } => {
            let path = parts.uri.path().to_owned();
            let all: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            if all.len() < *segments {
                return Err(IdentifyError::TooFewSegments);
            }
            let mut elems = Vec::with_capacity(*segments);
            for seg in &all[..*segments] {
                elems.push(Label::new(seg.as_bytes()).map_err(|_| IdentifyError::TooFewSegments)?);
            }
            if *consume {
                let rest = all[*segments..].join("/");
                let trailing = if path.ends_with('/') && !rest.is_empty() {
                    "/"
                } else {
                    ""
                };
                let query = parts
                    .uri
                    .query()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                let new = format!("/{rest}{trailing}{query}");
                if let Ok(pq) = PathAndQuery::try_from(new) {
                    let mut uri = parts.uri.clone().into_parts();
                    uri.path_and_query = Some(pq);
                    if let Ok(u) = http::Uri::from_parts(uri) {
                        parts.uri = u;
                    }
                }
            }
            Ok(SVC.join(&elems))
        }
        Identifier::Header { header } => {
            let value = parts
                .headers
                .get(header.as_str())
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| IdentifyError::MissingHeader(header.clone()))?;
            let tail = Path::read(value).map_err(|error| IdentifyError::NotAPath {
                header: header.clone(),
                error,
            })?;
            Ok(SVC.join(tail.elems()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> Parts {
        req.into_parts().0
    }

    #[test]
    fn host_header_token() {
        let mut p = parts(
            http::Request::get("/x")
                .header("host", "hello")
                .body(())
                .unwrap(),
        );
        assert_eq!(
            identify(&Identifier::default(), &mut p)
                .unwrap()
                .to_string(),
            "/svc/hello"
        );
        let mut p = parts(http::Request::get("/x").body(()).unwrap());
        assert_eq!(
            identify(&Identifier::default(), &mut p)
                .unwrap_err()
                .to_string(),
            "host header is absent"
        );
    }

    #[test]
    fn forward_proxy_requests_are_rewritten() {
        let mut p = parts(
            http::Request::get("http://world:8080/a?b=c")
                .body(())
                .unwrap(),
        );
        rewrite_proxy_form(&mut p);
        assert_eq!(p.uri, "/a?b=c");
        assert_eq!(p.headers["host"], "world:8080");
        assert_eq!(
            identify(&Identifier::default(), &mut p)
                .unwrap()
                .to_string(),
            "/svc/world:8080"
        );
    }

    #[test]
    fn credentials_never_reach_the_name() {
        for version in [http::Version::HTTP_11, http::Version::HTTP_2] {
            let mut p = parts(
                http::Request::get("http://user:s3cret@world:8080/a")
                    .version(version)
                    .body(())
                    .unwrap(),
            );
            rewrite_proxy_form(&mut p);
            let name = identify(&Identifier::default(), &mut p).unwrap();
            assert_eq!(name.to_string(), "/svc/world:8080");
            assert!(!format!("{p:?}").contains("s3cret"), "{p:?}");
        }
        let mut p = parts(
            http::Request::get("/a")
                .header("host", "user:s3cret@world")
                .body(())
                .unwrap(),
        );
        rewrite_proxy_form(&mut p);
        assert_eq!(p.headers["host"], "world");
    }

    #[test]
    fn path_identifier_consumes() {
        let id = Identifier::Path {
            segments: 1,
            consume: true,
        };
        let mut p = parts(http::Request::get("/users/42?x=1").body(()).unwrap());
        assert_eq!(identify(&id, &mut p).unwrap().to_string(), "/svc/users");
        assert_eq!(p.uri, "/42?x=1");
        let mut p = parts(http::Request::get("/").body(()).unwrap());
        assert!(matches!(
            identify(&id, &mut p),
            Err(IdentifyError::TooFewSegments)
        ));
    }

    #[test]
    fn header_identifier_reads_a_path() {
        let id = Identifier::Header {
            header: "l5d-name".into(),
        };
        let mut p = parts(
            http::Request::get("/")
                .header("l5d-name", "/a/b")
                .body(())
                .unwrap(),
        );
        assert_eq!(identify(&id, &mut p).unwrap().to_string(), "/svc/a/b");
        let mut p = parts(
            http::Request::get("/")
                .header("l5d-name", "a")
                .body(())
                .unwrap(),
        );
        assert!(matches!(
            identify(&id, &mut p),
            Err(IdentifyError::NotAPath { .. })
        ));
    }
}
