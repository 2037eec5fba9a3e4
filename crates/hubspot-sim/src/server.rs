//! The HTTP side: accepts loopback connections and serves each with hyper, handing every
//! request to `pipeline` and dropping a connection when a fault says so.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::pipeline::{self, Outcome};
use crate::state::Shared;

/// Accepts connections until told to stop, then closes the ones still open.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // An error means the Simulator is gone: stop as well.
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared), stop.clone()));
                }
                Err(err) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(%err, "HubSpot simulator failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// Serves one connection; ends it abruptly when a handler asks for a dropped connection.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // Small JSON responses: don't let Nagle delay them behind the client's delayed ACK.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "could not set TCP_NODELAY");
    }
    let drop_connection = Arc::new(Notify::new());
    let service = {
        let drop_connection = Arc::clone(&drop_connection);
        service_fn(move |request| {
            let shared = Arc::clone(&shared);
            let drop_connection = Arc::clone(&drop_connection);
            async move {
                match pipeline::handle(&shared, request).await {
                    Outcome::Reply(response) => Ok::<_, Infallible>(response),
                    Outcome::Drop => {
                        // notify_one keeps a permit, so the select below sees it even if it
                        // is not polling `notified()` at this very moment. Never answering
                        // keeps hyper from writing anything before the connection is dropped.
                        drop_connection.notify_one();
                        std::future::pending().await
                    }
                }
            }
        })
    };
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        served = connection => {
            if let Err(err) = served {
                tracing::debug!(%err, "simulator connection ended with an error");
            }
        }
        // Dropping the connection future closes the socket with no response written.
        () = drop_connection.notified() => {}
        _ = stop.changed() => {}
    }
}
