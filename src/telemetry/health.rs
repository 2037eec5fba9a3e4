//! The metrics listener of `hubsync run` (`[metrics] listen`, `HUBSYNC_METRICS_LISTEN`):
//! `GET /metrics` (Prometheus text), `GET /healthz` (the process is up) and `GET /readyz`
//! (200 when taking work, else 503 with the reasons as text).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::metrics::{Readiness, Telemetry};

/// The content type of `/metrics` (the encoder writes OpenMetrics text, which Prometheus
/// reads).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Served {
    telemetry: Telemetry,
    pool: PgPool,
}

/// Binds `addr` and serves the three endpoints until `cancel` fires. Returns the bound
/// address (port 0 picks a free one) once listening.
pub async fn serve(
    addr: SocketAddr,
    telemetry: Telemetry,
    pool: PgPool,
    cancel: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen for metrics on {addr} ([metrics] listen or HUBSYNC_METRICS_LISTEN); pick a free port or another address"
        )
    })?;
    let bound = listener
        .local_addr()
        .context("cannot read the metrics listener's address")?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Served { telemetry, pool });
    tokio::spawn(async move {
        let stop = cancel.clone();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
        {
            tracing::error!("the metrics listener on {bound} stopped: {e}");
        }
    });
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz on {bound}");
    Ok(bound)
}

async fn metrics(State(s): State<Served>) -> impl IntoResponse {
    s.telemetry.refresh_queue(&s.pool).await;
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        s.telemetry.render(),
    )
}

async fn readyz(State(s): State<Served>) -> impl IntoResponse {
    let database = match tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&s.pool),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 2 s".to_string()),
    };
    match s.telemetry.readiness(database) {
        Readiness::Ready => (StatusCode::OK, "ready\n".to_string()),
        Readiness::NotReady(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", why.join("\n")),
        ),
    }
}
