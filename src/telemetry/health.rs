//! The metrics listener of `hubsync run` (`[metrics] listen`, `HUBSYNC_METRICS_LISTEN`):
//! `GET /metrics` (Prometheus text), `GET /healthz` (the process is up) and `GET /readyz`
//! (200 when taking work, else 503 with the reasons as text). Three fixed routes over plain
//! HTTP/1.1, served with hyper directly.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
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
    let served = Served { telemetry, pool };
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        tracing::warn!("the metrics listener on {bound} cannot accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let served = served.clone();
            let stop = cancel.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let served = served.clone();
                    async move { Ok::<_, Infallible>(route(&served, request).await) }
                });
                let connection =
                    http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = stop.cancelled() => {}
                    result = connection => {
                        if let Err(e) = result {
                            tracing::debug!("a metrics connection ended: {e}");
                        }
                    }
                }
            });
        }
    });
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz on {bound}");
    Ok(bound)
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn route(s: &Served, request: Request<Incoming>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET is served here\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => {
            s.telemetry.refresh_queue(&s.pool).await;
            reply(StatusCode::OK, METRICS_CONTENT_TYPE, s.telemetry.render())
        }
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => {
            let database = match tokio::time::timeout(
                Duration::from_secs(2),
                crate::db::ping(&s.pool),
            )
            .await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer within 2 s".to_string()),
            };
            match s.telemetry.readiness(database) {
                Readiness::Ready => reply(StatusCode::OK, TEXT, "ready\n".into()),
                Readiness::NotReady(why) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("not ready:\n{}\n", why.join("\n")),
                ),
            }
        }
        other => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            format!("{other} is not served here; try /metrics, /healthz or /readyz\n"),
        ),
    }
}
