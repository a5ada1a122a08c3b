//! HTTP/1.1 heads and message framing for the fast path ([`super::fast`]),
//! on borrowed bytes: nothing here allocates.
//!
//! - [`parse_request`] reads a request head with `httparse` and says
//!   whether the fast path may carry it. It takes only what it can forward
//!   byte for byte: HTTP/1.1, no body (no `Transfer-Encoding`, no
//!   `Content-Length` but `0`), origin-form or `http://` absolute-form, one
//!   `Host`, no `Upgrade`, `Expect`, connection options, dtab or context
//!   headers. Anything else is [`Parsed::Decline`]d and hyper serves the
//!   connection from that request on, with all its rules (431, 400,
//!   smuggling refusals, upgrades, bodies).
//! - [`parse_response`] reads a response head and its framing (RFC 9112
//!   §6.3): no body (HEAD, 1xx, 204, 304), chunked, a length, or until
//!   the connection closes.
//! - [`Chunked`] finds where a chunked body ends while its bytes are
//!   relayed as they are.
//!
//! `agent/tests/h1_differential.rs` holds these to hyper's parser on the
//! same bytes.

use httparse::{EMPTY_HEADER, Header};

/// The most header lines a head may have here (the listener's
/// `max_request_headers` may be lower: past it, the request is declined
/// and hyper answers 431).
pub const MAX_HEADERS: usize = 128;

/// An empty header array for [`parse_request`] and [`parse_response`].
pub const fn headers() -> [Header<'static>; MAX_HEADERS] {
    [EMPTY_HEADER; MAX_HEADERS]
}

/// Why the fast path leaves a request to hyper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decline {
    /// Not a valid head (hyper answers 400), or more header lines than
    /// the fast path takes.
    Invalid,
    /// More header lines or head bytes than the listener allows.
    TooLarge,
    /// HTTP/1.0 (or anything but 1.1).
    Version,
    /// `CONNECT`.
    Method,
    /// Not origin-form or `http://` absolute-form, or credentials in it.
    Target,
    /// No `Host`, several, or an empty one.
    Host,
    /// A body, or framing hyper must judge (`Transfer-Encoding`,
    /// `Content-Length` other than one `0`).
    Body,
    /// `Connection` names more than `close` or `keep-alive`.
    Connection,
    /// `Upgrade` or `Expect`.
    Upgrade,
    /// Context lines the fast path does not take (two of one `l5d-*`
    /// name; any but `l5d-reqid` on the outgoing side; `grpc-timeout`), or
    /// a gRPC request: the general path reads them.
    Context,
}

impl Decline {
    /// Its name in `ecsmesh_agent_fast_path_declines_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::Version => "version",
            Self::Method => "method",
            Self::Target => "target",
            Self::Host => "host",
            Self::Body => "body",
            Self::Connection => "connection",
            Self::Upgrade => "upgrade",
            Self::Context => "context",
        }
    }
}

/// A request head the fast path carries.
#[derive(Debug)]
pub struct RequestHead<'h, 'b> {
    pub method: &'b str,
    /// What goes on the upstream request line: the origin-form target.
    pub path: &'b [u8],
    /// The authority of an absolute-form target (then sent as `Host`).
    pub authority: Option<&'b [u8]>,
    /// What the request is routed by: the authority, else `Host`.
    pub host: &'b [u8],
    /// The client asked to close after this request.
    pub close: bool,
    /// `Via` entries so far (the call depth).
    pub via_depth: usize,
    /// The client sent its own `l5d-reqid`.
    pub has_request_id: bool,
    /// The `l5d-*` context lines (what the sending agent said).
    pub context: Context<'b>,
    pub headers: &'h [Header<'b>],
    /// The head's length in bytes (where the next request starts).
    pub len: usize,
}

impl RequestHead<'_, '_> {
    /// Whether a header line of the request is forwarded as it is (the
    /// proxy renders `Host` for an absolute-form target, and the context
    /// lines it sets itself).
    pub fn forwards(&self, name: &str) -> bool {
        !(hop_by_hop(name)
            || (self.authority.is_some() && name.eq_ignore_ascii_case("host"))
            || ["l5d-ctx-deadline", "l5d-dst-service", "l5d-dst-client"]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name)))
    }
}

/// The `l5d-*` lines of a request, one of each at most (more is
/// declined). The outgoing side takes none of them; the incoming side
/// routes by `l5d-dst-client`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context<'b> {
    pub dst_client: Option<&'b [u8]>,
    pub dst_service: Option<&'b [u8]>,
    pub dst_residual: Option<&'b [u8]>,
    pub ctx_dtab: Option<&'b [u8]>,
    pub deadline: Option<&'b [u8]>,
    /// Any other `l5d-*` line (`l5d-dtab`, `l5d-err` …).
    pub other: bool,
}

impl<'b> Context<'b> {
    /// Whether the request carries any context line (`l5d-reqid` aside).
    pub fn any(&self) -> bool {
        self.other
            || self.dst_client.is_some()
            || self.dst_service.is_some()
            || self.dst_residual.is_some()
            || self.ctx_dtab.is_some()
            || self.deadline.is_some()
    }

    /// Notes an `l5d-*` line; `false` for a second line of one name.
    fn note(&mut self, name: &str, value: &'b [u8]) -> bool {
        let slot = match name {
            n if n.eq_ignore_ascii_case("l5d-dst-client") => &mut self.dst_client,
            n if n.eq_ignore_ascii_case("l5d-dst-service") => &mut self.dst_service,
            n if n.eq_ignore_ascii_case("l5d-dst-residual") => &mut self.dst_residual,
            n if n.eq_ignore_ascii_case("l5d-ctx-dtab") => &mut self.ctx_dtab,
            n if n.eq_ignore_ascii_case("l5d-ctx-deadline") => &mut self.deadline,
            _ => {
                self.other = true;
                return true;
            }
        };
        slot.replace(value).is_none()
    }
}

/// What [`parse_request`] found.
#[derive(Debug)]
pub enum Parsed<'h, 'b> {
    /// The head is not complete yet.
    Partial,
    Request(RequestHead<'h, 'b>),
    Decline(Decline),
}

/// Headers that describe one connection (RFC 9110 §7.6.1), never forwarded.
pub fn hop_by_hop(name: &str) -> bool {
    const NAMES: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Parses the request head at the start of `buf`; `max_headers` and
/// `max_head_bytes` are the listener's limits.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [Header<'b>],
    max_headers: usize,
    max_head_bytes: usize,
) -> Parsed<'h, 'b> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head_bytes => {
            return Parsed::Decline(Decline::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Decline(Decline::Invalid),
    };
    if len > max_head_bytes || req.headers.len() > max_headers {
        return Parsed::Decline(Decline::TooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Decline(Decline::Invalid);
    };
    if version != 1 {
        return Parsed::Decline(Decline::Version);
    }
    if method == "CONNECT" {
        return Parsed::Decline(Decline::Method);
    }
    let Some((path, authority)) = target_of(target.as_bytes()) else {
        return Parsed::Decline(Decline::Target);
    };
    let headers: &'h [Header<'b>] = req.headers;
    let mut host = None;
    let (mut hosts, mut lengths) = (0, 0);
    let (mut close, mut via_depth, mut has_request_id) = (false, 0, false);
    let mut context = Context::default();
    for h in headers {
        let (name, value) = (h.name, h.value);
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("host") {
            hosts += 1;
            host = Some(value);
        } else if is("content-length") {
            // One `0` only: hyper judges (and merges) anything else.
            if value.trim_ascii() != b"0" || lengths > 0 {
                return Parsed::Decline(Decline::Body);
            }
            lengths += 1;
        } else if is("transfer-encoding") {
            return Parsed::Decline(Decline::Body);
        } else if is("connection") {
            for option in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !option.is_empty() && !option.eq_ignore_ascii_case(b"keep-alive") {
                    return Parsed::Decline(Decline::Connection);
                }
            }
        } else if is("upgrade") || is("expect") {
            return Parsed::Decline(Decline::Upgrade);
        } else if is("via") {
            via_depth += value.split(|b| *b == b',').count();
        } else if is("l5d-reqid") {
            has_request_id = true;
        } else if name.len() > 4 && name[..4].eq_ignore_ascii_case("l5d-") {
            if !context.note(name, value) {
                return Parsed::Decline(Decline::Context);
            }
        } else if is("grpc-timeout")
            || (is("content-type")
                && value.len() >= 16
                && value[..16].eq_ignore_ascii_case(b"application/grpc"))
        {
            return Parsed::Decline(Decline::Context);
        }
    }
    let host = match (authority, host) {
        (Some(a), _) => a,
        (None, Some(h)) if hosts == 1 && !h.trim_ascii().is_empty() => h.trim_ascii(),
        _ => return Parsed::Decline(Decline::Host),
    };
    Parsed::Request(RequestHead {
        method,
        path,
        authority,
        host,
        close,
        via_depth,
        has_request_id,
        context,
        headers,
        len,
    })
}

/// The origin-form target and, for an absolute-form one, its authority;
/// `None` for the forms the fast path leaves to hyper (`*`,
/// authority-form, other schemes, credentials, an empty authority).
fn target_of(target: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    const SCHEME: &[u8] = b"http://";
    // RFC 3986's path and query characters only: anything else (a
    // fragment, which hyper's URI drops; `<`, `"`, `{` …) is hyper's to judge.
    let uri_char = |b: &u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'?'
            )
    };
    if !target.iter().all(uri_char) {
        return None;
    }
    if target.first() == Some(&b'/') {
        return Some((target, None));
    }
    if target.len() < SCHEME.len() || !target[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &target[SCHEME.len()..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if !plain_authority(authority) || path.first().is_some_and(|b| *b != b'/') {
        return None;
    }
    Some((if path.is_empty() { b"/" } else { path }, Some(authority)))
}

/// `host[:port]` with a plain host name or IPv4 address: what the fast
/// path routes. Anything else (IPv6 literals, percent-encoding,
/// credentials, odd ports) is left to hyper's URI rules.
fn plain_authority(authority: &[u8]) -> bool {
    let (host, port) = match authority.iter().position(|b| *b == b':') {
        Some(i) => (&authority[..i], Some(&authority[i + 1..])),
        None => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p).is_ok_and(|p| p.parse::<u16>().is_ok())
    });
    host_ok && port_ok
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, 1xx, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes.
    Close,
}

/// A response head.
#[derive(Debug)]
pub struct ResponseHead<'h, 'b> {
    pub code: u16,
    pub reason: &'b str,
    pub headers: &'h [Header<'b>],
    pub framing: Framing,
    /// The connection cannot carry another request after this response.
    pub close: bool,
    pub len: usize,
}

/// Why a response head is refused (the attempt fails as a protocol error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("invalid response head")]
    Invalid,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("response head larger than {0} bytes")]
    TooLarge(usize),
}

/// The most bytes a response head may have.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 << 10;

/// Parses the response head at the start of `buf`, to a request that
/// was a HEAD if `head_request`; `Ok(None)` while it is incomplete.
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [Header<'b>],
    head_request: bool,
) -> Result<Option<ResponseHead<'h, 'b>>, ResponseError> {
    let mut resp = httparse::Response::new(headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD_BYTES => {
            return Err(ResponseError::TooLarge(MAX_RESPONSE_HEAD_BYTES));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ResponseError::Invalid),
    };
    let (Some(code), Some(version)) = (resp.code, resp.version) else {
        return Err(ResponseError::Invalid);
    };
    let headers: &'h [Header<'b>] = resp.headers;
    let mut close = version == 0;
    let mut keep_alive = false;
    let (mut chunked, mut encoded) = (false, false);
    let mut length: Option<u64> = None;
    // Judged only without Transfer-Encoding, which overrides it.
    let mut bad_length = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            // The last coding of the last line decides (RFC 9112 §6.3
            // 3.); a value that is not visible ASCII names no coding (as
            // hyper reads it).
            chunked = h
                .value
                .iter()
                .all(|b| *b == b'\t' || (b' '..=b'~').contains(b))
                && h.value
                    .split(|b| *b == b',')
                    .map(<[u8]>::trim_ascii)
                    .rfind(|c| !c.is_empty())
                    .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for v in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                match content_length(v) {
                    Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => bad_length = true,
                }
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for option in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    if version == 0 && keep_alive && !encoded && length.is_some() {
        close = false;
    }
    let bodiless = head_request || code < 200 || code == 204 || code == 304;
    // HTTP/1.0 has no transfer codings (hyper refuses them too).
    if version == 0 && encoded && !bodiless {
        return Err(ResponseError::Invalid);
    }
    if bad_length && !encoded && !bodiless {
        return Err(ResponseError::ContentLength);
    }
    let framing = if bodiless {
        Framing::Empty
    } else if encoded {
        // A length beside Transfer-Encoding is a smuggling risk: the
        // connection is not reused (RFC 9112 §6.3 3.).
        close |= length.is_some() || !chunked;
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::Close
    };
    Ok(Some(ResponseHead {
        code,
        reason: resp.reason.unwrap_or(""),
        headers,
        framing,
        close,
        len,
    }))
}

/// A `Content-Length` value: decimal digits only, within `u64`.
fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0_u64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Where a chunked body is (RFC 9112 §7.1), byte by byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Size {
        digits: u8,
    },
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    /// A trailer field's name, then (after `:`) its value.
    TrailerName,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body's end, found as its bytes go by (they are relayed as
/// they are: the framing stays the sender's).
#[derive(Clone, Debug)]
pub struct Chunked {
    state: State,
    size: u64,
    /// Extension and trailer bytes so far, bounded.
    extra: usize,
}

/// Chunk extensions and trailers together may take this many bytes.
const MAX_CHUNK_EXTRA: usize = 16 << 10;

/// A chunked body that breaks the grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body")]
pub struct ChunkedError;

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
            extra: 0,
        }
    }
}

impl Chunked {
    /// Whether the whole body has gone by.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads on through `buf`; returns how many of its bytes belong to the
    /// body (all of them until the end is found).
    pub fn scan(&mut self, buf: &[u8]) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < buf.len() && self.state != State::Done {
            if self.state == State::Data {
                let take = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(buf.len() - i);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.step(buf[i])?;
            i += 1;
        }
        Ok(i)
    }

    /// One more extension or trailer byte, within the bound.
    fn extra_byte(&mut self, next: State) -> Result<State, ChunkedError> {
        self.extra += 1;
        if self.extra > MAX_CHUNK_EXTRA {
            return Err(ChunkedError);
        }
        Ok(next)
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkedError> {
        self.state = match (self.state, b) {
            (State::Size { digits }, _) if b.is_ascii_hexdigit() => {
                if digits >= 16 {
                    return Err(ChunkedError);
                }
                let d = char::from(b).to_digit(16).ok_or(ChunkedError)?;
                self.size = self.size << 4 | u64::from(d);
                State::Size { digits: digits + 1 }
            }
            (State::Size { digits: 1.. } | State::SizeSpace, b' ' | b'\t') => State::SizeSpace,
            (State::Size { digits: 1.. } | State::SizeSpace, b';') => State::Extension,
            (State::Size { digits: 1.. } | State::SizeSpace | State::Extension, b'\r') => {
                State::SizeLf
            }
            (State::Extension, b'\n') => return Err(ChunkedError),
            (State::Extension, _) => self.extra_byte(State::Extension)?,
            (State::SizeLf, b'\n') if self.size == 0 => State::TrailerStart,
            (State::SizeLf, b'\n') => State::Data,
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size { digits: 0 },
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::TrailerName, b':') => self.extra_byte(State::Trailer)?,
            // Field names are tokens; values visible bytes, blanks, obs-text.
            (State::TrailerStart | State::TrailerName, _) if is_tchar(b) => {
                self.extra_byte(State::TrailerName)?
            }
            (State::Trailer, b'\t' | b' '..=b'~' | 0x80..=0xff) => {
                self.extra_byte(State::Trailer)?
            }
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::EndLf, b'\n') => State::Done,
            _ => return Err(ChunkedError),
        };
        Ok(())
    }
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(bytes: &[u8]) -> Result<(String, String, usize, bool), Decline> {
        let mut h = headers();
        match parse_request(bytes, &mut h, 100, 64 << 10) {
            Parsed::Request(r) => Ok((
                String::from_utf8_lossy(r.host).into_owned(),
                String::from_utf8_lossy(r.path).into_owned(),
                r.len,
                r.close,
            )),
            Parsed::Decline(d) => Err(d),
            Parsed::Partial => Err(Decline::Invalid),
        }
    }

    #[test]
    fn requests_the_fast_path_takes() {
        assert_eq!(
            request(b"GET /a?b HTTP/1.1\r\nHost: svc7\r\n\r\nGET"),
            Ok(("svc7".into(), "/a?b".into(), 33, false))
        );
        assert_eq!(
            request(b"GET http://hello:80 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            Ok(("hello:80".into(), "/".into(), 60, true))
        );
        assert_eq!(
            request(b"DELETE /x HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n").map(|r| r.0),
            Ok("a".into())
        );
    }

    #[test]
    fn requests_left_to_hyper() {
        let cases: [(&[u8], Decline); 12] = [
            (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", Decline::Version),
            (b"CONNECT a:1 HTTP/1.1\r\nHost: a\r\n\r\n", Decline::Method),
            (b"GET http://u:p@a/ HTTP/1.1\r\n\r\n", Decline::Target),
            (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Decline::Target),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                Decline::Host,
            ),
            (b"GET / HTTP/1.1\r\n\r\n", Decline::Host),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
                Decline::Body,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Decline::Body,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\n\r\n",
                Decline::Connection,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
                Decline::Upgrade,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nl5d-dst-client: /x\r\nl5d-dst-client: /y\r\n\r\n",
                Decline::Context,
            ),
            (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", Decline::Invalid),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                request(bytes).map(|_| ()),
                Err(want),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let mut h = headers();
        let many = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert!(matches!(
            parse_request(many, &mut h, 2, 1024),
            Parsed::Decline(Decline::TooLarge)
        ));
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: a", &mut h, 2, 1024),
            Parsed::Partial
        ));
        assert!(matches!(
            parse_request(&[b'a'; 2000], &mut h, 2, 1024),
            Parsed::Decline(Decline::TooLarge | Decline::Invalid)
        ));
    }

    fn framing(bytes: &[u8], head: bool) -> Result<(Framing, bool), ResponseError> {
        let mut h = headers();
        parse_response(bytes, &mut h, head).map(|r| {
            let r = r.expect("complete");
            (r.framing, r.close)
        })
    }

    #[test]
    fn response_framing() {
        let ok = |h: &str| format!("HTTP/1.1 200 OK\r\n{h}\r\n");
        let f = |h: &str| framing(ok(h).as_bytes(), false);
        assert_eq!(f("Content-Length: 5\r\n"), Ok((Framing::Length(5), false)));
        assert_eq!(
            f("Content-Length: 5, 5\r\n"),
            Ok((Framing::Length(5), false))
        );
        assert_eq!(
            f("Content-Length: 5\r\nContent-Length: 6\r\n"),
            Err(ResponseError::ContentLength)
        );
        assert_eq!(
            f("Content-Length: -1\r\n"),
            Err(ResponseError::ContentLength)
        );
        assert_eq!(
            f("Transfer-Encoding: gzip, chunked\r\n"),
            Ok((Framing::Chunked, false))
        );
        assert_eq!(
            f("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"),
            Ok((Framing::Chunked, true))
        );
        assert_eq!(f("Transfer-Encoding: gzip\r\n"), Ok((Framing::Close, true)));
        assert_eq!(f(""), Ok((Framing::Close, true)));
        assert_eq!(
            f("Content-Length: 5\r\nConnection: close\r\n"),
            Ok((Framing::Length(5), true))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                false
            ),
            Ok((Framing::Empty, false))
        );
        assert_eq!(
            framing(ok("Content-Length: 5\r\n").as_bytes(), true),
            Ok((Framing::Empty, false))
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            Ok((Framing::Length(1), true))
        );
        let mut h = headers();
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\n", &mut h, false),
            Ok(None)
        ));
    }

    #[test]
    fn chunked_bodies_end_where_they_say() {
        let body = b"5;ext=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        // Byte by byte and all at once agree.
        let mut whole = Chunked::default();
        assert_eq!(whole.scan(body), Ok(body.len() - 4));
        assert!(whole.is_done());
        let mut bytewise = Chunked::default();
        let mut n = 0;
        for b in body.chunks(1) {
            n += bytewise.scan(b).unwrap();
            if bytewise.is_done() {
                break;
            }
        }
        assert_eq!(n, body.len() - 4);
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloX",
            b"0\r\n\n",
            b"11111111111111111\r\n",
            b"\r\n",
        ] {
            assert_eq!(Chunked::default().scan(bad), Err(ChunkedError), "{bad:?}");
        }
        let mut c = Chunked::default();
        assert_eq!(c.scan(b"A\r\n0123"), Ok(7));
        assert!(!c.is_done());
    }
}
