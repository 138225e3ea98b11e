//! The hub's admin HTTP server on `[hub] admin`: `GET /metrics` for a Prometheus scraper, and
//! the supervision console with its API ([`crate::console`]). The metrics are open as
//! exporters' are, unless `[hub] metrics_token_file` names a token, which a scrape must then
//! present as `Authorization: Bearer …`.
//!
//! What one client can take is bounded: at most [`MAX_CONNECTIONS`] at once, each closed after
//! [`CONNECTION_LIFETIME`] (a connection that sends nothing, or half a request, included), and
//! a shutdown waits at most [`SHUTDOWN_GRACE`] for the requests in flight.

use std::future::{Future as _, IntoFuture as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::secret::Secret;

/// Most connections held at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// How long one connection may live. A scrape takes well under a second.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// After shutdown, how long requests in flight may take before the server stops anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The content type of [`Metrics::encode`]'s text.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the handlers share.
struct Admin {
    metrics: Arc<Metrics>,
    /// The token a scrape must present, if one is configured.
    token: Option<Secret>,
}

/// Serves on `listener` until `shutdown`; `token`, if any, guards `/metrics`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    token: Option<Secret>,
    console: Option<Arc<crate::console::Console>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(Admin { metrics, token }));
    if let Some(console) = console {
        app = app.merge(console.routes());
    }
    let listener = Limited {
        listener,
        permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        served = server.into_future() => served,
        // Graceful shutdown waits for every open connection; a client that keeps one open must
        // not hold the hub up.
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    }
}

/// A listener that holds at most [`MAX_CONNECTIONS`] connections, each for at most
/// [`CONNECTION_LIFETIME`].
struct Limited {
    listener: TcpListener,
    permits: Arc<Semaphore>,
}

impl axum::serve::Listener for Limited {
    type Io = Bounded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Bounded, SocketAddr) {
        loop {
            // The semaphore is never closed; were it, no connection would be taken.
            let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                std::future::pending::<()>().await;
                continue;
            };
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let bounded = Bounded {
                        stream,
                        deadline: Box::pin(tokio::time::sleep(CONNECTION_LIFETIME)),
                        _permit: permit,
                    };
                    return (bounded, addr);
                }
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was taken: wait a
                    // moment rather than spin.
                    tracing::debug!(error = %e, "admin server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection that fails once its lifetime is over, and gives its permit back when closed.
struct Bounded {
    stream: TcpStream,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Bounded {
    /// An error once the connection has lived too long (and a wake-up for then).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        self.deadline
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "admin connection lived too long"))
    }
}

impl AsyncRead for Bounded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// `GET /metrics`.
async fn scrape(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(token) = &admin.token
        && !bearer_is(&headers, token)
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response();
    }
    match admin.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "the metrics could not be encoded");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Whether the request's `Authorization` is `Bearer <token>` (the scheme in any case). The
/// SHA-256 digests are compared, in time that depends neither on where they first differ nor
/// on the token's length.
fn bearer_is(headers: &HeaderMap, token: &Secret) -> bool {
    let Some((scheme, given)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
    else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let given = Sha256::digest(given.trim().as_bytes());
    let want = Sha256::digest(token.expose().as_bytes());
    given.iter().zip(want.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let token = Secret::new("s3cret-token");
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            h
        };
        assert!(bearer_is(&with("Bearer s3cret-token"), &token));
        assert!(bearer_is(&with("bearer s3cret-token"), &token));
        assert!(!bearer_is(&with("Bearer s3cret-tokeN"), &token));
        assert!(!bearer_is(&with("Bearer s3cret"), &token));
        assert!(!bearer_is(&with("Basic s3cret-token"), &token));
        assert!(!bearer_is(&HeaderMap::new(), &token));
    }
}
