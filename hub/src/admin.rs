//! The hub's admin HTTP server on `[hub] admin`: `GET /metrics` for a Prometheus scraper. The
//! supervision console and its API will live here too (issue 16). The metrics are open as
//! exporters' are, unless `[hub] metrics_token_file` names a token, which a scrape must then
//! present as `Authorization: Bearer …`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::secret::Secret;

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
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(Admin { metrics, token }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
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

/// Whether the request's `Authorization` is `Bearer <token>`, compared in time that does not
/// depend on where the two first differ.
fn bearer_is(headers: &HeaderMap, token: &Secret) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (given, want) = (given.trim().as_bytes(), token.expose().as_bytes());
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
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
        assert!(!bearer_is(&with("Bearer s3cret-tokeN"), &token));
        assert!(!bearer_is(&with("Bearer s3cret"), &token));
        assert!(!bearer_is(&with("Basic s3cret-token"), &token));
        assert!(!bearer_is(&HeaderMap::new(), &token));
    }
}
