//! The client's request body as the attempts see it.
//!
//! Two questions decide what a failed attempt means, and only the body can
//! answer them:
//! - did the failure start on the client's side (a malformed chunk, a body
//!   cut short, a client that stopped sending)? Then it is the client's
//!   error — 400 or 408 — and nothing is charged to the endpoint;
//! - was the body ever read? A body no attempt has touched can go to
//!   another endpoint after a connect failure, whatever the method.
//!
//! A request without a body needs none of this and costs nothing.
//!
//! A request whose policy may retry it on a gRPC status (the response
//! comes after the body was sent) keeps a copy of a small body, up to
//! [`REPLAY_LIMIT`], so that the retry can send it again.
//!
//! [`GrpcClassified`] classifies a gRPC response by the `grpc-status` in
//! its trailers, for failure accrual and metrics, when the body ends.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use ecsmesh_agent_balance::Pick;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::Body;
use crate::metrics::{Class, Metrics};
use crate::policy::GrpcCodes;

/// The largest request body kept to be sent again.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// What happened to the body so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyState {
    /// No attempt has read from it: it can still be sent.
    Untouched,
    /// An attempt is reading it.
    Started,
    /// The client sent all of it.
    Done,
    /// Reading it failed: the client's side of the exchange broke.
    ClientFailed,
}

impl BodyState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Untouched,
            1 => Self::Started,
            2 => Self::Done,
            _ => Self::ClientFailed,
        }
    }
}

#[derive(Debug)]
pub struct Shared {
    body: Mutex<Option<Incoming>>,
    state: AtomicU8,
    hint: SizeHint,
    /// The body as read so far, while it may be sent again; `None` once
    /// it is too large (or trailers came) or when not kept at all.
    replay: Mutex<Option<BytesMut>>,
}

/// The request's body, held for the attempts.
#[derive(Debug)]
pub enum RequestBody {
    /// No body: every attempt sends an empty one.
    Empty,
    Streamed(Arc<Shared>),
}

impl RequestBody {
    /// The request's body; `replay` keeps a copy of a small one so that
    /// [`RequestBody::replayable`] may say yes after it was sent.
    pub fn new(body: Incoming, replay: bool) -> Self {
        if body.is_end_stream() {
            return Self::Empty;
        }
        let replay = (replay
            && body
                .size_hint()
                .upper()
                .is_none_or(|n| n <= REPLAY_LIMIT as u64))
        .then(BytesMut::new);
        Self::Streamed(Arc::new(Shared {
            hint: body.size_hint(),
            body: Mutex::new(Some(body)),
            state: AtomicU8::new(0),
            replay: Mutex::new(replay),
        }))
    }

    /// Whether the whole request can be sent again: no body, a body no
    /// attempt has read, or a kept copy of all of it.
    pub fn replayable(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Streamed(s) => {
                self.sendable()
                    || (self.state() == BodyState::Done
                        && s.replay
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .is_some())
            }
        }
    }

    pub fn state(&self) -> BodyState {
        match self {
            Self::Empty => BodyState::Done,
            Self::Streamed(s) => BodyState::from_u8(s.state.load(Ordering::Acquire)),
        }
    }

    /// Whether an attempt can still send the whole body: it is empty, or
    /// no attempt has read from it.
    pub fn sendable(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Streamed(s) => s
                .body
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some(),
        }
    }

    /// The body for one attempt; a later attempt gets an empty body
    /// unless [`RequestBody::sendable`] or [`RequestBody::replayable`] says
    /// otherwise.
    pub fn for_attempt(&self) -> Body {
        match self {
            Self::Empty => super::headers::empty(),
            Self::Streamed(s) if !self.sendable() && self.replayable() => {
                let copy = s
                    .replay
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                    .map(|b| b.clone().freeze())
                    .unwrap_or_default();
                super::headers::full(copy)
            }
            Self::Streamed(s) => AttemptBody {
                shared: Arc::clone(s),
                body: None,
            }
            .boxed(),
        }
    }
}

/// One attempt's view: takes the client's body on the first read.
struct AttemptBody {
    shared: Arc<Shared>,
    body: Option<Incoming>,
}

impl AttemptBody {
    fn mark(&self, state: BodyState) {
        self.shared.state.store(state as u8, Ordering::Release);
    }

    /// Copies a frame into the replay buffer while the body stays small
    /// and has no trailers.
    fn keep(&self, frame: &Frame<Bytes>) {
        let mut replay = self
            .shared
            .replay
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(buf) = replay.as_mut() else { return };
        match frame.data_ref() {
            Some(data) if buf.len() + data.len() <= REPLAY_LIMIT => buf.extend_from_slice(data),
            _ => *replay = None,
        }
    }
}

/// Who a gRPC failure found in trailers is reported to.
#[derive(Debug)]
pub struct Report {
    pub metrics: Arc<Metrics>,
    pub service: Arc<str>,
    pub client: Arc<str>,
}

/// A gRPC response body whose trailers decide how the attempt went: a
/// `grpc-status` the policy counts as a failure charges the endpoint
/// (failure accrual, latency) and the failure metrics; any other end is a
/// success. A body dropped before its end (the client went away) releases
/// the endpoint without touching its statistics.
#[derive(Debug)]
pub struct GrpcClassified {
    inner: Body,
    pick: Option<Pick>,
    codes: GrpcCodes,
    report: Report,
}

impl GrpcClassified {
    pub fn new(inner: Body, pick: Option<Pick>, codes: GrpcCodes, report: Report) -> Self {
        Self {
            inner,
            pick,
            codes,
            report,
        }
    }

    fn finish(&mut self, failed: Option<Class>) {
        let Some(pick) = self.pick.take() else { return };
        match failed {
            None => pick.success(),
            Some(class) => {
                pick.failure();
                let r = &self.report;
                r.metrics.failure(&r.service, Some(&r.client), class);
            }
        }
    }
}

impl http_body::Body for GrpcClassified {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let failed = super::headers::grpc_status(trailers)
                        .filter(|&code| self.codes.is_failure(code))
                        .map(|_| Class::GrpcStatus);
                    self.finish(failed);
                }
            }
            Poll::Ready(None) => self.finish(None),
            Poll::Ready(Some(Err(_))) => self.finish(Some(Class::Reset)),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl http_body::Body for AttemptBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.body.is_none() {
            let taken = self
                .shared
                .body
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let Some(body) = taken else {
                // Another attempt had it: nothing left to send.
                return Poll::Ready(None);
            };
            self.body = Some(body);
            self.mark(BodyState::Started);
        }
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            self.keep(frame);
        }
        match &polled {
            Poll::Ready(None) => self.mark(BodyState::Done),
            Poll::Ready(Some(Err(_))) => self.mark(BodyState::ClientFailed),
            Poll::Ready(Some(Ok(_)))
                if self
                    .body
                    .as_ref()
                    .is_some_and(http_body::Body::is_end_stream) =>
            {
                self.mark(BodyState::Done);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        // hyper frames the request from this (Content-Length or chunked).
        self.shared.hint
    }
}
