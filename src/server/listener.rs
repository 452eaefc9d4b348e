//! Accepting connections with bounds a client cannot stretch: a cap on open connections
//! (past it, a new connection is closed at once), a deadline for the request headers (and for
//! the first byte of a connection that sends nothing), and a graceful stop.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{ConnectionClose, Metrics};

/// How long the accept loop pauses after a failed accept (e.g. out of file descriptors), so
/// that it does not spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// File descriptors kept free of client connections: the model's files, the metrics port,
/// logs and the blocking pool's work.
pub const RESERVED_FDS: u64 = 64;

/// Connection bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown`, then lets open connections finish their
/// current request and returns once they are closed. `metrics`, when given, counts this
/// listener's connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: Option<Metrics>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if let Some(m) = &metrics {
                m.close_connection(ConnectionClose::MaxConnections);
            }
            drop(stream);
            continue;
        };
        connections.spawn(serve_connection(
            stream,
            app.clone(),
            limits.header_timeout,
            metrics.clone(),
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Counts an open connection for as long as it lives.
struct OpenConnection(Option<Metrics>);

impl OpenConnection {
    fn new(metrics: Option<Metrics>) -> Self {
        if let Some(m) = &metrics {
            m.open_connections.inc();
        }
        OpenConnection(metrics)
    }

    fn closed(&self, reason: ConnectionClose) {
        if let Some(m) = &self.0 {
            m.close_connection(reason);
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.open_connections.dec();
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    header_timeout: Duration,
    metrics: Option<Metrics>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let open = OpenConnection::new(metrics);
    let _ = stream.set_nodelay(true);
    // hyper's header timer covers a request that has begun; a connection that sends nothing
    // at all is bounded here.
    match tokio::time::timeout(header_timeout, stream.peek(&mut [0u8; 1])).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return,
        Err(_) => {
            open.closed(ConnectionClose::HeaderTimeout);
            return;
        }
    }
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        r = connection.as_mut() => r,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            open.closed(ConnectionClose::HeaderTimeout);
        } else {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Raises the soft limit of open files to the hard limit, and answers the connection cap that
/// fits under it with [`RESERVED_FDS`] to spare.
pub fn fit_connection_cap(requested: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct through a pointer to a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return requested;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit struct through a pointer to a live local.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    let fits = limit.rlim_cur.saturating_sub(RESERVED_FDS).max(1);
    if fits < requested {
        tracing::warn!(
            requested,
            open_files_limit = limit.rlim_cur,
            cap = fits,
            "--max-connections lowered to fit the open-files limit"
        );
    }
    requested.min(fits)
}
