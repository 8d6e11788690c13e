//! The monitoring endpoint (`[metrics] listen`, `ferry serve
//! --metrics-listen`): plain HTTP/1.1 with two answers, `GET /metrics` (the
//! registry in Prometheus text, `metrics.rs`) and `GET /healthz` (`200 ok`,
//! or `503` and a line naming what failed, `health.rs`); anything else is
//! `404`.
//!
//! HTTP is hyper's (its HTTP/1 server over tokio, already in the tree for
//! the S3 client): no HTTP parsing of ours. The endpoint is for scrapers and
//! balancers on a private network, not for clients, so it has its own small
//! bounds instead of the core's admission: a few connections at once, each
//! with a time limit on its request headers and on its whole life (a peer
//! that never reads its answer holds a seat for a minute at most), all cut
//! at shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::core::Core;
use crate::health::Health;
use crate::metrics::Metrics;

/// Connections served at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 16;
/// Time a connection may take to send a request's headers (and, on a
/// kept-alive connection, to start the next request).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection lives, kept alive or not; a scraper reconnects.
const CONNECTION_LIFE: Duration = Duration::from_secs(60);

struct Monitor {
    core: Arc<Core>,
    health: Health,
}

/// Binds `[metrics] listen` when set and serves in the background until
/// the core's shutdown; returns the bound address (port 0 picks one).
pub async fn start(core: Arc<Core>) -> Result<Option<SocketAddr>> {
    let Some(listen) = core.config.metrics.listen else { return Ok(None) };
    let listener = crate::listener::bind_tcp(listen)
        .with_context(|| format!("cannot listen for metrics on {listen} ([metrics] listen)"))?;
    let addr = listener.local_addr()?;
    info!(%addr, "metrics and health endpoint listening");
    let monitor = Arc::new(Monitor { core: Arc::clone(&core), health: Health::default() });
    core.tracker.spawn(accept_loop(monitor, listener));
    Ok(Some(addr))
}

async fn accept_loop(monitor: Arc<Monitor>, listener: TcpListener) {
    let core = &monitor.core;
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p,
            _ = core.shutdown.cancelled() => return,
        };
        let Ok(permit) = permit else { return };
        let Some((socket, peer)) = crate::listener::next_connection(core, &listener, "metrics").await else { return };
        let monitor2 = Arc::clone(&monitor);
        core.tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(|req| {
                let monitor = Arc::clone(&monitor2);
                async move { Ok::<_, Infallible>(answer(&monitor, &req).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let connection = http.serve_connection(TokioIo::new(socket), service);
            // Scrapes are short: at shutdown the connection is simply cut.
            tokio::select! {
                r = tokio::time::timeout(CONNECTION_LIFE, connection) => match r {
                    Ok(Err(e)) => debug!(%peer, error = %e, "metrics: connection ended with an error"),
                    Err(_) => debug!(%peer, "metrics: connection open too long; closed"),
                    Ok(Ok(())) => {}
                },
                _ = monitor2.core.shutdown.cancelled() => {}
            }
        });
    }
}

async fn answer(monitor: &Monitor, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return text(StatusCode::NOT_FOUND, "not found\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(monitor.core.metrics.encode())));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(Metrics::content_type()));
            response
        }
        "/healthz" => match monitor.health.check(&monitor.core, crate::health::TIMEOUT).await {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(why) => {
                warn!(problem = %why, "health check failed");
                text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
            }
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
