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

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::Body;

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
}

/// The request's body, held for the attempts.
#[derive(Debug)]
pub enum RequestBody {
    /// No body: every attempt sends an empty one.
    Empty,
    Streamed(Arc<Shared>),
}

impl RequestBody {
    pub fn new(body: Incoming) -> Self {
        if body.is_end_stream() {
            return Self::Empty;
        }
        Self::Streamed(Arc::new(Shared {
            hint: body.size_hint(),
            body: Mutex::new(Some(body)),
            state: AtomicU8::new(0),
        }))
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
    /// unless [`RequestBody::sendable`] says otherwise.
    pub fn for_attempt(&self) -> Body {
        match self {
            Self::Empty => super::headers::empty(),
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
