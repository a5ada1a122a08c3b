//! Header rules of the Linkerd 1 HTTP router: hop-by-hop stripping, `Via`
//! and the call-depth limit, the `l5d-*` context headers, and the error
//! responses the proxy makes itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt as _, Full};

use super::Body;

pub const L5D_DTAB: &str = "l5d-dtab";
pub const L5D_CTX_DTAB: &str = "l5d-ctx-dtab";
pub const L5D_CTX_DEADLINE: &str = "l5d-ctx-deadline";
pub const L5D_DST_SERVICE: &str = "l5d-dst-service";
pub const L5D_DST_CLIENT: &str = "l5d-dst-client";
pub const L5D_DST_RESIDUAL: &str = "l5d-dst-residual";
pub const L5D_REQID: &str = "l5d-reqid";
pub const L5D_ERR: &str = "l5d-err";
/// What this proxy appends to `Via`.
pub const VIA_ENTRY: &str = "ecsmesh";

/// Headers that describe one connection, not the message: never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): the fixed list, and every
/// header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    // HTTP/1.0-style keep-alive is hop-by-hop too.
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Removes every `l5d-*` header (edge mode, `clearContext`).
pub fn clear_context(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("l5d-"))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

/// How many proxies the request has been through (comma-separated `Via` entries).
pub fn call_depth(headers: &HeaderMap) -> usize {
    headers
        .get_all(header::VIA)
        .iter()
        .map(|v| v.as_bytes().split(|b| *b == b',').count())
        .sum()
}

/// Appends this proxy to `Via` (RFC 9110 §7.6.3: the protocol the message
/// was received with, and a pseudonym), on requests and responses alike.
pub fn append_via(headers: &mut HeaderMap, version: http::Version) {
    let entry = match version {
        http::Version::HTTP_10 => "1.0 ecsmesh",
        http::Version::HTTP_2 => "2 ecsmesh",
        _ => "1.1 ecsmesh",
    };
    headers.append(header::VIA, HeaderValue::from_static(entry));
}

/// Whether `TE` asks for trailers: kept on HTTP/2, where it is the only
/// value allowed (RFC 9113 §8.2.2) and gRPC servers require it.
pub fn wants_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    })
}

/// The protocol an HTTP/1.1 request asks to switch to (`Upgrade`, with
/// `upgrade` among the `Connection` options), e.g. `websocket`.
pub fn upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asked = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    asked
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Puts back the two headers an upgrade needs on its next hop.
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Whether the request is gRPC (`content-type: application/grpc…`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` code in response headers or trailers.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    std::str::from_utf8(headers.get("grpc-status")?.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The deadline a gRPC client set (`grpc-timeout`: at most 8 digits and a
/// unit, H M S m u n).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n.saturating_mul(3600)),
        b"M" => Duration::from_secs(n.saturating_mul(60)),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The proxy's own error as a gRPC client expects it: HTTP 200 and a
/// trailers-only response whose `grpc-status` says what happened (gRPC
/// clients read any other HTTP status as an opaque failure).
pub fn grpc_error(resp: &mut Response<Body>, timed_out: bool) {
    let code = match resp.status() {
        _ if timed_out => "4",                              // DEADLINE_EXCEEDED
        StatusCode::BAD_REQUEST => "3",                     // INVALID_ARGUMENT
        StatusCode::REQUEST_TIMEOUT => "4",                 // DEADLINE_EXCEEDED
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "8", // RESOURCE_EXHAUSTED
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => "14", // UNAVAILABLE
        _ => "13",                                          // INTERNAL
    };
    *resp.status_mut() = StatusCode::OK;
    *resp.body_mut() = empty();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static(code));
    if let Some(message) = headers.get(L5D_ERR).cloned() {
        // l5d-err is form-encoded; grpc-message is percent-encoded, and
        // the two differ only in how a space is written.
        let text = message
            .as_bytes()
            .iter()
            .map(|b| if *b == b'+' { b' ' } else { *b });
        let mut out = String::new();
        for b in text {
            if b == b' ' {
                out.push_str("%20");
            } else {
                out.push(char::from(b));
            }
        }
        if let Ok(v) = HeaderValue::from_str(&out) {
            headers.insert("grpc-message", v);
        }
    }
}

/// An empty body.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// All values of a header joined with `;` (several `l5d-dtab` headers add up).
pub fn joined(headers: &HeaderMap, name: &str) -> Option<Bytes> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut out = first.as_bytes().to_vec();
    for v in values {
        out.push(b';');
        out.extend_from_slice(v.as_bytes());
    }
    Some(Bytes::from(out))
}

/// The strictest deadline in `l5d-ctx-deadline` headers
/// (`"<timestamp_ns> <deadline_ns>"`, nanoseconds since the epoch), as time
/// left from now.
pub fn deadline_remaining(headers: &HeaderMap) -> Option<Duration> {
    let now = now_nanos();
    headers
        .get_all(L5D_CTX_DEADLINE)
        .iter()
        .filter_map(|v| deadline_of(v.as_bytes()))
        .min()
        .map(|deadline| remaining_until(deadline, now))
}

/// The time left by one `l5d-ctx-deadline` value, if it is one.
pub fn deadline_value_remaining(value: &[u8]) -> Option<Duration> {
    deadline_of(value).map(|deadline| remaining_until(deadline, now_nanos()))
}

/// The deadline (nanoseconds since the epoch) of `"<timestamp> <deadline>"`.
fn deadline_of(value: &[u8]) -> Option<u128> {
    std::str::from_utf8(value)
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse::<u128>()
        .ok()
}

fn remaining_until(deadline: u128, now: u128) -> Duration {
    Duration::from_nanos(u64::try_from(deadline.saturating_sub(now)).unwrap_or(u64::MAX))
}

/// `l5d-ctx-deadline` for a deadline `remaining` from now.
pub fn deadline_header(remaining: Duration) -> Option<HeaderValue> {
    use std::io::Write as _;
    let now = now_nanos();
    // Rendered on the stack: the header value is then the only allocation.
    let mut buf = [0_u8; 80];
    let mut w = &mut buf[..];
    write!(w, "{now} {}", now + remaining.as_nanos()).ok()?;
    let len = 80 - w.len();
    HeaderValue::from_bytes(&buf[..len]).ok()
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A fresh request id: 16 lowercase hex digits.
pub fn request_id() -> HeaderValue {
    HeaderValue::from_bytes(&request_id_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static("0000000000000000"))
}

/// A fresh request id's 16 lowercase hex digits, on the stack.
pub fn request_id_bytes() -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id = fastrand::u64(..);
    let mut buf = [0_u8; 16];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[usize::try_from((id >> (60 - 4 * i)) & 0xf).unwrap_or(0)];
    }
    buf
}

/// A response the proxy makes itself: the message as the plain-text body
/// and, URL-encoded, in `l5d-err`.
pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(format!("{message}\n"))));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&url_encode(message)) {
        headers.insert(L5D_ERR, v);
    }
    resp
}

/// A body from bytes.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// `application/x-www-form-urlencoded` encoding, as Linkerd writes `l5d-err`.
pub fn url_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn via_counts_entries_across_headers() {
        let mut h = HeaderMap::new();
        h.append(header::VIA, HeaderValue::from_static("1.1 a, 1.1 b"));
        h.append(header::VIA, HeaderValue::from_static("1.1 c"));
        assert_eq!(call_depth(&h), 3);
        append_via(&mut h, http::Version::HTTP_11);
        assert_eq!(call_depth(&h), 4);
    }

    #[test]
    fn deadlines_take_the_strictest() {
        let now = now_nanos();
        let mut h = HeaderMap::new();
        h.append(
            L5D_CTX_DEADLINE,
            HeaderValue::from_str(&format!("{now} {}", now + 5_000_000_000)).unwrap(),
        );
        h.append(
            L5D_CTX_DEADLINE,
            HeaderValue::from_str(&format!("{now} {}", now + 1_000_000_000)).unwrap(),
        );
        let left = deadline_remaining(&h).unwrap();
        assert!(
            left <= Duration::from_secs(1) && left > Duration::from_millis(900),
            "{left:?}"
        );
    }

    #[test]
    fn rendered_headers() {
        let id = request_id();
        assert_eq!(id.len(), 16);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        let mut h = HeaderMap::new();
        h.insert(
            L5D_CTX_DEADLINE,
            deadline_header(Duration::from_secs(2)).unwrap(),
        );
        let left = deadline_remaining(&h).unwrap();
        assert!(left > Duration::from_millis(1900) && left <= Duration::from_secs(2));
    }

    #[test]
    fn l5d_err_is_form_encoded() {
        assert_eq!(
            url_encode("Unable to route: /svc/x!"),
            "Unable+to+route%3A+%2Fsvc%2Fx%21"
        );
    }
}
