//! The way out of a build's network namespace: an HTTP proxy listening inside the namespace at
//! [`PROXY_ADDRESS`], whose outgoing connections the server makes from its own network. Steps
//! find it in `http_proxy` / `https_proxy` (the local transport sets them), so `npm ci`,
//! `pip install`, `git clone https://…` and `apt-get` work in an isolated build while the build
//! still cannot reach another build, the machine itself or the cloud's metadata service. Each
//! destination address takes one [`Route`]: a loopback address is the build's own (its hosts
//! live there), so it is connected to from inside the build's namespace, as if there were no
//! proxy (clients that cannot read `no_proxy=127.0.0.0/8`, such as Python's urllib, still reach
//! the build's other hosts); every other address of this machine, link-local (169.254.169.254
//! among them), unspecified or multicast is refused before any connection is made; the rest is
//! the world, connected to from the server's own network.
//!
//! `CONNECT host:port` (HTTPS, and any TCP a client tunnels) is answered 200 and then spliced;
//! a request for an absolute `http://` URL is forwarded over a connection of its own. The proxy
//! reads and changes nothing else of the traffic and keeps no logs of it but refusals. It lives
//! as long as the namespace: dropping the [`EgressProxy`] closes its listener and every
//! connection it carries.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nix::sched::CloneFlags;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Where the proxy listens inside each build's namespace. The local provider never hands out
/// 127.0.0.1 to a host, so no host's service can be in its way.
pub const PROXY_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 3128);

/// What `no_proxy` holds in a build: its own hosts are reached directly, never through the proxy
/// (which would refuse them: they are loopback addresses of the machine).
pub const NO_PROXY: &str = "localhost,127.0.0.0/8,::1";

/// How long connecting to one address of a destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the accept loop waits after an error (out of file descriptors, say) before it tries
/// again, so it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// One build's egress proxy, serving while this value lives.
#[derive(Debug)]
pub struct EgressProxy {
    stop: CancellationToken,
}

/// What one build's proxy knows: whose it is, and its namespace (for the build's own addresses).
#[derive(Debug)]
struct Build {
    name: String,
    netns: OwnedFd,
}

impl EgressProxy {
    /// Serve `listener` (bound inside the build's namespace, `netns`) on the current tokio
    /// runtime.
    pub fn start(listener: std::net::TcpListener, build: &str, netns: OwnedFd) -> io::Result<EgressProxy> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, Arc::new(Build { name: build.to_string(), netns }), stop.clone()));
        Ok(EgressProxy { stop })
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Bind the proxy's listener. Call on a thread inside the namespace it is for.
pub fn bind_here() -> io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(PROXY_ADDRESS)
}

async fn accept_loop(listener: tokio::net::TcpListener, build: Arc<Build>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, build = %build.name, "the egress proxy cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let (build, stop) = (Arc::clone(&build), stop.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn({
                let (build, stop) = (Arc::clone(&build), stop.clone());
                move |request| proxy(request, Arc::clone(&build), stop.clone())
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .preserve_header_case(true)
                .title_case_headers(true)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                _ = stop.cancelled() => {}
                served = connection => if let Err(error) = served {
                    tracing::debug!(%error, build = %build.name, "egress proxy connection ended");
                }
            }
        });
    }
}

/// Answer one request: a tunnel for `CONNECT`, a forwarded request for an absolute `http://` URL.
async fn proxy(
    request: Request<Incoming>,
    build: Arc<Build>,
    stop: CancellationToken,
) -> Result<Response<ProxyBody>, hyper::Error> {
    let answer = if request.method() == Method::CONNECT {
        tunnel(request, &build, stop).await
    } else {
        forward(request, &build, stop).await
    };
    Ok(answer.unwrap_or_else(Refusal::into_response))
}

async fn tunnel(
    request: Request<Incoming>,
    build: &Build,
    stop: CancellationToken,
) -> Result<Response<ProxyBody>, Refusal> {
    let authority =
        request.uri().authority().cloned().ok_or_else(|| Refusal::bad_request("CONNECT needs host:port"))?;
    let port = authority.port_u16().ok_or_else(|| Refusal::bad_request("CONNECT needs host:port"))?;
    let mut target = connect(authority.host(), port, build).await?;
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(request).await {
            Ok(upgraded) => upgraded,
            Err(error) => return tracing::debug!(%error, "the client left before its tunnel opened"),
        };
        let mut client = TokioIo::new(upgraded);
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::io::copy_bidirectional(&mut client, &mut target) => {}
        }
    });
    Ok(Response::new(empty()))
}

async fn forward(
    mut request: Request<Incoming>,
    build: &Build,
    stop: CancellationToken,
) -> Result<Response<ProxyBody>, Refusal> {
    let uri = request.uri().clone();
    if uri.scheme_str() != Some("http") {
        return Err(Refusal::bad_request("the egress proxy takes CONNECT or an absolute http:// URL"));
    }
    let host = uri.host().ok_or_else(|| Refusal::bad_request("the URL has no host"))?;
    let target = connect(host, uri.port_u16().unwrap_or(80), build).await?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .title_case_headers(true)
        .handshake(TokioIo::new(target))
        .await
        .map_err(|e| Refusal::bad_gateway(format!("{host}: {e}")))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = connection => {}
        }
    });
    let origin_form = uri.path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = origin_form.parse().map_err(|_| Refusal::bad_request("the URL's path is not valid"))?;
    let headers = request.headers_mut();
    headers.remove("proxy-connection");
    headers.remove(header::PROXY_AUTHORIZATION);
    if !headers.contains_key(header::HOST) {
        let host = uri.authority().map_or(host, |a| a.as_str());
        headers.insert(header::HOST, HeaderValue::from_str(host).map_err(|_| Refusal::bad_request("bad host"))?);
    }
    let response = sender.send_request(request).await.map_err(|e| Refusal::bad_gateway(format!("{host}: {e}")))?;
    Ok(response.map(BodyExt::boxed))
}

/// Connect to `host:port` at the first of its addresses a build may reach, each by its route.
async fn connect(host: &str, port: u16, build: &Build) -> Result<TcpStream, Refusal> {
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
        .await
        .map_err(|e| Refusal::bad_gateway(format!("cannot resolve {name}: {e}")))?
        .collect();
    let own = own_addresses();
    type Routed = Vec<(SocketAddr, Route)>;
    let (allowed, refused): (Routed, Routed) = resolved
        .into_iter()
        .map(|address| (address, route(address.ip(), &own)))
        .partition(|(_, route)| *route != Route::Refused);
    if allowed.is_empty() {
        let refused: Vec<SocketAddr> = refused.into_iter().map(|(address, _)| address).collect();
        tracing::info!(build = %build.name, destination = %name, port, ?refused, "egress refused: not a destination builds may reach");
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            message: format!("{name}:{port} is this machine, link-local or multicast: builds may not reach it"),
        });
    }
    let mut last = String::new();
    for (address, route) in allowed {
        let connecting = async {
            match route {
                Route::Inside => connect_inside(address, &build.netns).await,
                _ => TcpStream::connect(address).await,
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(error)) => last = format!("{address}: {error}"),
            Err(_) => last = format!("{address}: no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        }
    }
    Err(Refusal::bad_gateway(format!("cannot connect to {name}:{port} ({last})")))
}

/// How the proxy reaches a destination address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A loopback address: the build's own hosts', reached inside its namespace.
    Inside,
    /// Beyond the machine, reached from the server's network.
    Outside,
    /// This machine's other addresses (`own`: its interfaces'), unspecified, link-local,
    /// multicast or broadcast.
    Refused,
}

/// The route to `address`, in IPv4 or IPv6 (an IPv4-mapped IPv6 address counts as the IPv4
/// address it maps).
pub fn route(address: IpAddr, own: &HashSet<IpAddr>) -> Route {
    let address = address.to_canonical();
    if address.is_loopback() {
        return Route::Inside;
    }
    let refused = own.contains(&address)
        || match address {
            IpAddr::V4(v4) => v4.is_unspecified() || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast(),
            IpAddr::V6(v6) => v6.is_unspecified() || v6.is_unicast_link_local() || v6.is_multicast(),
        };
    if refused {
        Route::Refused
    } else {
        Route::Outside
    }
}

/// Connect to `address` from inside the build's namespace: on a thread of its own, which enters
/// the namespace, connects and ends (a socket stays in the namespace it was made in; a thread of
/// tokio's pools must never be left in one).
async fn connect_inside(address: SocketAddr, netns: &OwnedFd) -> io::Result<TcpStream> {
    let netns = netns.try_clone()?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("gantry-egress".to_string()).spawn(move || {
        let connected = nix::sched::setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(io::Error::from)
            .and_then(|()| std::net::TcpStream::connect_timeout(&address, CONNECT_TIMEOUT));
        let _ = sender.send(connected);
    })?;
    let stream = receiver.await.map_err(|_| io::Error::other("the connecting thread ended early"))??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// The addresses of this machine's interfaces (in the server's own namespace), read at each
/// connection so an address the machine gains later is refused too.
fn own_addresses() -> HashSet<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else { return HashSet::new() };
    interfaces
        .filter_map(|interface| {
            let address = interface.address?;
            address
                .as_sockaddr_in()
                .map(|a| IpAddr::V4(a.ip()))
                .or_else(|| address.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))
        })
        .map(|a| a.to_canonical())
        .collect()
}

/// An answer the proxy gives itself instead of the destination's.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn bad_request(message: &str) -> Refusal {
        Refusal { status: StatusCode::BAD_REQUEST, message: message.to_string() }
    }

    fn bad_gateway(message: String) -> Refusal {
        Refusal { status: StatusCode::BAD_GATEWAY, message }
    }

    fn into_response(self) -> Response<ProxyBody> {
        let body = Full::new(Bytes::from(format!("gantry egress proxy: {}\n", self.message)));
        let mut response = Response::new(body.map_err(|never| match never {}).boxed());
        *response.status_mut() = self.status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        response
    }
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_reach_the_world_and_their_own_loopback_but_not_this_machine_or_link_local() {
        let own: HashSet<IpAddr> = ["10.0.0.5".parse().unwrap(), "127.0.0.1".parse().unwrap()].into();
        for outside in ["192.0.2.7", "10.0.0.6", "2001:db8::1", "::ffff:192.0.2.7"] {
            assert_eq!(route(outside.parse().unwrap(), &own), Route::Outside, "{outside}");
        }
        for inside in ["127.0.0.1", "127.0.10.3", "::ffff:127.0.0.1", "::1"] {
            assert_eq!(route(inside.parse().unwrap(), &own), Route::Inside, "{inside}");
        }
        for refused in [
            "10.0.0.5",
            "::ffff:10.0.0.5",
            "0.0.0.0",
            "::",
            "169.254.169.254",
            "fe80::1",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
        ] {
            assert_eq!(route(refused.parse().unwrap(), &own), Route::Refused, "{refused}");
        }
    }

    #[test]
    fn this_machine_has_addresses_and_loopback_is_among_them() {
        assert!(own_addresses().contains(&IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)));
    }
}
