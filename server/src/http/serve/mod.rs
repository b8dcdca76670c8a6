//! The accept loop: every connection the server holds, the timeouts it holds them under, and the
//! cap on how many it holds at once.
//!
//! Connections are served by hyper-util's `auto` builder (HTTP/1.1, and HTTP/2 with prior
//! knowledge, as `axum::serve` does). Its HTTP/1 `header_read_timeout` (`[http] header_timeout`)
//! bounds the time from a connection being ready for a request (accepted, or done with the
//! previous one) to the request's complete head: slow heads and silent connections are closed by
//! hyper. A kept-alive connection (one that has served a request) with nothing in
//! flight is closed after `[http] idle_timeout` by its task here, with hyper's graceful shutdown
//! (HTTP/2 included); one that never sent a request is closed the same way [`FRESH_BACKSTOP`]
//! after its header timeout, in case hyper's timer does not apply (HTTP/2). Bodies have their
//! own deadline, a tower-http layer in the router (`http::limits` and `http::router`).
//!
//! The number of connections is capped below the file-descriptor limit ([`connection_cap`]); at
//! the cap a new connection makes room by closing the longest-idle one (see `connections`), so a
//! flood of idle or slow connections cannot lock the dashboard out; while nothing may be closed,
//! new connections wait in the listen backlog. On shutdown the listener closes, every connection is shut
//! down gracefully, and those still open after [`SHUTDOWN_GRACE`] are dropped. This module does
//! not route, authenticate or read bodies.

mod connections;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

pub use connections::{Admission, Connection, Connections, EVICTION_GRACE};

use crate::config::HttpConfig;

/// File descriptors kept for everything but connections: the SQLite database and its journal,
/// git mirrors' pack files, log files, the server's own pipes.
pub const FD_RESERVE_BASE: u64 = 256;

/// File descriptors kept per build that may run at once: its steps' pipes and its git work.
pub const FD_RESERVE_PER_BUILD: u64 = 16;

/// The most a connection buffers of what its client sends (hyper's `max_buf_size`; its default
/// is about 400 KiB): a request head must fit (larger ones get 431), and a body is read in
/// chunks of at most this. A thousand slow heads hold at most this much each.
pub const MAX_CONNECTION_BUFFER_BYTES: usize = 64 * 1024;

/// How long, after shutdown begins, open connections may take to finish their requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long a connection told to close (idle, or making room) may take to finish what it has in
/// flight before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How much longer than the header timeout a connection that never sent a request may stay
/// open: hyper closes an HTTP/1 one at its header timeout; this catches the rest.
pub const FRESH_BACKSTOP: Duration = Duration::from_secs(1);

/// How often the accept loop, at the cap with no connection it may close, looks again (a
/// connection may have become idle or been idle long enough by then).
pub const ROOM_RECHECK: Duration = Duration::from_millis(25);

/// How long the accept loop pauses after accepting failed (out of file descriptors, say).
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What a connection refused at the cap is sent before it is closed.
const REFUSED_AT_CAP: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The connections a server holds: `configured`, lowered to what the file-descriptor limit
/// `nofile` leaves after the reserve for `max_concurrent_builds` builds (and never below
/// [`crate::config::MIN_CONNECTIONS`]).
pub fn connection_cap(configured: usize, nofile: u64, max_concurrent_builds: usize) -> usize {
    let builds = u64::try_from(max_concurrent_builds).unwrap_or(u64::MAX);
    let reserve = FD_RESERVE_BASE.saturating_add(FD_RESERVE_PER_BUILD.saturating_mul(builds));
    let room = usize::try_from(nofile.saturating_sub(reserve)).unwrap_or(usize::MAX);
    configured.min(room).max(crate::config::MIN_CONNECTIONS)
}

/// The soft limit on open files of this process.
pub fn open_files_limit() -> std::io::Result<u64> {
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    Ok(soft)
}

/// A request's connection, in its extensions: `http::limits` marks it while an unauthenticated
/// body is read, so the connection may be closed to make room for another.
#[derive(Clone, Debug)]
pub struct ConnectionHandle(Arc<Connection>);

impl ConnectionHandle {
    /// A guard marking the connection as reading an unauthenticated body until it is dropped.
    pub fn reading_body(&self) -> Box<dyn Send + Sync> {
        Box::new(self.0.reading_started())
    }
}

/// What every connection task shares.
struct Shared {
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    connections: Connections,
    idle_timeout: Duration,
    /// How long a connection that never sent a request may stay idle.
    fresh_timeout: Duration,
}

/// Serve `router` on `listener` under `config`'s limits, holding at most `cap` connections, until
/// `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &HttpConfig,
    cap: usize,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_CONNECTION_BUFFER_BYTES);
    builder.http2().timer(TokioTimer::new());
    let shared = Arc::new(Shared {
        router,
        builder,
        connections: Connections::new(cap, EVICTION_GRACE),
        idle_timeout: config.idle_timeout,
        fresh_timeout: config.header_timeout + FRESH_BACKSTOP,
    });
    let tasks = TaskTracker::new();
    // Fires SHUTDOWN_GRACE after `shutdown`: connections still open are dropped.
    let drop_all = CancellationToken::new();
    let mut refused = 0u64;
    let mut waits = 0u64;
    loop {
        if !shared.connections.has_room() {
            // Left in the listen backlog, in the order they came, until there is room.
            waits += 1;
            if waits % crate::http::limits::REFUSALS_PER_WARNING == 1 {
                tracing::warn!(cap, waits, "at the connection cap: new connections wait in the listen backlog");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = shared.connections.closed() => {}
                () = tokio::time::sleep(ROOM_RECHECK) => {}
            }
            continue;
        }
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                let freed = shared.connections.close_longest_idle();
                tracing::warn!(%error, open = shared.connections.len(), freed, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let connection = match shared.connections.admit() {
            Admission::Admitted(connection) | Admission::Replacing { admitted: connection, .. } => connection,
            Admission::Refused => {
                refused += 1;
                // Logged at the first refusal and then every thousandth: a flood must not fill the log.
                if refused % crate::http::limits::REFUSALS_PER_WARNING == 1 {
                    tracing::warn!(cap, refused, "connection refused: every connection is busy");
                }
                tasks.spawn(refuse(stream));
                continue;
            }
        };
        tasks.spawn(serve_connection(
            stream,
            peer,
            connection,
            Arc::clone(&shared),
            shutdown.clone(),
            drop_all.clone(),
        ));
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await.is_err() {
        tracing::warn!(open = shared.connections.len(), "connections still open after the grace period are dropped");
        drop_all.cancel();
        tasks.wait().await;
    }
}

/// A bare 503 for a connection refused at the cap, then close it.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(CLOSE_GRACE, stream.write_all(REFUSED_AT_CAP)).await;
}

/// Serve one connection until it closes, is closed for being idle or to make room, or the
/// server shuts down.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    connection: Arc<Connection>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    drop_all: CancellationToken,
) {
    // Small answers go out at once rather than waiting for more to send.
    let _ = stream.set_nodelay(true);
    let handle = ConnectionHandle(Arc::clone(&connection));
    let router = shared.router.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        handle_request(request, peer, handle.clone(), router.clone())
    });
    let served = shared.builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    // When the connection was told to close; it gets CLOSE_GRACE to finish what is in flight.
    let mut closing: Option<Instant> = None;
    let idle_limit = |connection: &Connection| {
        if connection.has_served() {
            shared.idle_timeout
        } else {
            shared.fresh_timeout
        }
    };
    loop {
        let limit = idle_limit(&connection);
        // While a request is in flight there is nothing to time: `went_idle` wakes the loop.
        let wake = match (closing, connection.idle_for()) {
            (Some(since), _) => Some(since + CLOSE_GRACE),
            (None, Some(idle)) => Some(Instant::now() + limit.saturating_sub(idle)),
            (None, None) => None,
        };
        let timer = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = served.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                break;
            }
            () = connection.went_idle() => {}
            () = connection.evicted(), if closing.is_none() => {
                if connection.in_flight() > 0 {
                    tracing::debug!(%peer, "connection reading an unauthenticated body closed to make room");
                    break;
                }
                served.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            () = shutdown.cancelled(), if closing.is_none() => {
                served.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            () = drop_all.cancelled() => break,
            () = timer => {
                if closing.is_some() {
                    break;
                }
                if connection.idle_for().is_some_and(|idle| idle >= idle_limit(&connection)) {
                    served.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
            }
        }
    }
    shared.connections.remove(&connection);
}

/// One request: into the router with its peer's address and its connection in its extensions;
/// the connection counts it as in flight until its response's body has been sent.
async fn handle_request(
    request: hyper::Request<Incoming>,
    peer: SocketAddr,
    handle: ConnectionHandle,
    router: Router,
) -> Result<Response, Infallible> {
    let in_flight = handle.0.request_started();
    let mut request = request.map(Body::new);
    request.extensions_mut().insert(ConnectInfo(peer));
    request.extensions_mut().insert(handle);
    let response = router.oneshot(request).await?;
    Ok(response.map(|body| Body::new(InFlightBody { body, _in_flight: in_flight })))
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct InFlightBody {
    body: Body,
    _in_flight: connections::InFlight,
}

impl HttpBody for InFlightBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_database_git_and_builds() {
        assert_eq!(connection_cap(1024, 1_048_576, 4), 1024, "a high limit leaves the configured cap");
        assert_eq!(connection_cap(1024, 1024, 4), 1024 - 256 - 4 * 16);
        assert_eq!(connection_cap(1024, 1024, 40), 1024 - 256 - 40 * 16);
        assert_eq!(connection_cap(1024, 100, 4), 16, "never below the minimum");
    }
}
