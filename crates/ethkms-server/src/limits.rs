//! How much the service takes on at once, and for how long it waits on a client (`[limits]` in the
//! configuration): a connection cap, header and body timeouts, a cap on requests being answered and on
//! withdrawals waiting to be signed. What is over a limit is refused at once — a connection closed, a
//! request answered `503 Service Unavailable` with `Retry-After` — and counted in
//! `ethkms_overload_refusals_total{limit=…}`, so a flood of clients slows nobody down and grows no memory.
//!
//! ```toml
//! [limits]   # the defaults
//! max_connections = 1024          # open connections; more are closed as they arrive
//! max_in_flight_requests = 256    # requests being answered; more get 503 + Retry-After
//! max_pending_withdrawals = 10000 # accepted withdrawals not yet signed; more POSTs get 503 + Retry-After
//! header_timeout_seconds = 10     # to send a request's headers (the first one's, too)
//! body_timeout_seconds = 30       # to send a whole request body
//! ```

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use axum_server::accept::Accept;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Labeled;

/// Seconds a refused client is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// The service's limits. See the [module](self) for the defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open connections at most; a connection past it is closed as it arrives.
    pub max_connections: usize,
    /// Requests being answered at most; more are answered 503 with `Retry-After`.
    pub max_in_flight_requests: usize,
    /// Accepted withdrawals not yet signed at most; more POSTs are answered 503 with `Retry-After`.
    pub max_pending_withdrawals: usize,
    /// Seconds a client has to send a request's headers.
    pub header_timeout_seconds: u64,
    /// Seconds a client has to send a whole request body.
    pub body_timeout_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_in_flight_requests: 256,
            max_pending_withdrawals: 10_000,
            header_timeout_seconds: 10,
            body_timeout_seconds: 30,
        }
    }
}

impl Limits {
    /// Checks that every limit is above zero, naming the one that is not.
    ///
    /// # Errors
    /// The name of the setting that is zero.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("max_connections", self.max_connections as u64),
            ("max_in_flight_requests", self.max_in_flight_requests as u64),
            ("max_pending_withdrawals", self.max_pending_withdrawals as u64),
            ("header_timeout_seconds", self.header_timeout_seconds),
            ("body_timeout_seconds", self.body_timeout_seconds),
        ] {
            if value == 0 {
                return Err(format!("limits.{name} must be more than zero"));
            }
        }
        Ok(())
    }

    /// How long a client has to send its headers.
    #[must_use]
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_seconds)
    }

    /// How long a client has to send a body.
    #[must_use]
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_seconds)
    }
}

/// Why a body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Larger than the limit.
    TooLarge,
    /// Not all sent within the body timeout.
    TooSlow,
}

/// Reads a whole body, at most `max` bytes and within `within`.
pub(crate) async fn read_body(body: Body, max: usize, within: Duration) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(within, axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::TooSlow),
    }
}

/// Requests being answered, at most so many at once.
#[derive(Debug)]
pub(crate) struct InFlight {
    slots: Arc<Semaphore>,
}

impl InFlight {
    pub(crate) fn new(limit: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(limit)) }
    }

    /// A slot for one request, or `None` when all are taken.
    pub(crate) fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }
}

/// An acceptor that holds one of `max_connections` slots for each connection's life and closes the
/// connections that find none, before any TLS handshake.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionCap<A> {
    inner: A,
    slots: Arc<Semaphore>,
    refusals: Labeled,
}

impl<A> ConnectionCap<A> {
    pub(crate) fn new(inner: A, limit: usize, refusals: Labeled) -> Self {
        Self { inner, slots: Arc::new(Semaphore::new(limit)), refusals }
    }
}

impl<I, S, A> Accept<I, S> for ConnectionCap<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Counted<A::Stream>;
    type Service = A::Service;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            self.refusals.inc("connections");
            drop(stream);
            return Box::pin(std::future::ready(Err(io::Error::other("the connection cap is reached"))));
        };
        let accepting = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepting.await?;
            Ok((Counted { inner: stream, _slot: permit }, service))
        })
    }
}

/// A connection that holds its slot until it is closed.
#[derive(Debug)]
pub(crate) struct Counted<S> {
    inner: S,
    _slot: OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Runs `next` only if a request slot is free; otherwise counts the refusal and answers `refuse(what)` at
/// once (the service's 503 with `Retry-After`).
pub(crate) async fn within_capacity<F: Future<Output = Response>>(
    in_flight: &InFlight,
    refusals: &Labeled,
    refuse: impl FnOnce(&str) -> Response,
    next: impl FnOnce() -> F,
) -> Response {
    let Some(_slot) = in_flight.try_enter() else {
        refusals.inc("requests");
        return refuse("too many requests are being answered");
    };
    next().await
}

#[cfg(test)]
mod tests {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;

    use super::*;

    #[test]
    fn zero_limits_are_named() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let limits = Limits { body_timeout_seconds: 0, ..Limits::default() };
        assert_eq!(limits.validate().unwrap_err(), "limits.body_timeout_seconds must be more than zero");
    }

    #[tokio::test]
    async fn bodies_past_the_limit_or_the_deadline_are_refused() {
        assert_eq!(read_body(Body::from("abc"), 3, Duration::from_secs(1)).await.unwrap(), "abc");
        assert_eq!(read_body(Body::from("abcd"), 3, Duration::from_secs(1)).await, Err(BodyError::TooLarge));
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(1);
        sender.send(Ok(Bytes::from_static(b"a"))).await.unwrap();
        let slow = Body::from_stream(tokio_stream_from(receiver));
        assert_eq!(read_body(slow, 100, Duration::from_millis(50)).await, Err(BodyError::TooSlow));
        drop(sender);
    }

    fn tokio_stream_from(
        mut receiver: tokio::sync::mpsc::Receiver<Result<Bytes, io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, io::Error>> {
        futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
    }

    #[tokio::test]
    async fn a_full_house_is_answered_503_with_retry_after() {
        let in_flight = InFlight::new(1);
        let refusals = Labeled::new("limit");
        let refuse = |what: &str| crate::withdrawals::api::overloaded(what).into_response();
        let held = in_flight.try_enter().unwrap();
        let response =
            within_capacity(&in_flight, &refusals, refuse, || async { StatusCode::OK.into_response() }).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(refusals.get("requests"), 1);
        drop(held);
        let response =
            within_capacity(&in_flight, &refusals, refuse, || async { StatusCode::OK.into_response() }).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
}
