//! An HTTP proxy on a free loopback port that stands between the AWS SDK and moto, records every
//! EC2 call and injects what moto does not simulate: throttling, other API errors and latency.
//! It can also hold a call until another of its action arrives (a barrier), which proves that two
//! calls were in flight together without measuring time. Faults are set per action at run time;
//! everything else is forwarded unchanged. It owns no EC2 behaviour of its own: it never answers a
//! call successfully without moto. Its server task is aborted when it is dropped. Included with
//! `#[path]` by the test binaries that need it.
//!
//! The SDK speaks EC2's Query protocol: every call is `POST /` with a form body
//! `Action=RunInstances&Version=2016-11-15&…`; the action is read from that body (or, for a `GET`,
//! from the query string).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

/// How long a forwarded call may wait for moto.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `wait_for` waits for calls to arrive.
const WAIT_DEADLINE: Duration = Duration::from_secs(30);

/// The pause between two checks in `wait_for`.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the ones the
/// HTTP libraries on either side compute themselves.
const NOT_FORWARDED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// One call the proxy received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The `Action` parameter, or an empty string if the call had none.
    pub action: String,
    /// Every form (or query) parameter as sent, `Action` and `Version` included; flattened list
    /// members keep their Query-protocol names (`InstanceId.1`, `TagSpecification.1.Tag.1.Key`).
    pub params: BTreeMap<String, String>,
    /// When it arrived.
    pub at: Instant,
    /// Whether the proxy answered it with an error set by `fail` or `throttle` instead of
    /// forwarding it (a barrier's error, known only later, does not count).
    pub faulted: bool,
}

pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, for `endpoint_url`.
    pub endpoint: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    faults: Mutex<Faults>,
    log: Mutex<Vec<Recorded>>,
}

#[derive(Default)]
struct Faults {
    /// Per action, the error answers its next calls get, in order: each error with how many
    /// calls are still to get it (`usize::MAX` is as good as forever).
    errors: HashMap<String, VecDeque<(Injected, usize)>>,
    /// Per action, how long each of its calls is held.
    delays: HashMap<String, Duration>,
    /// How long every call is held, on top of its action's own delay.
    all: Duration,
    /// Per action, a barrier its next two calls meet at.
    barriers: HashMap<String, Barrier>,
}

/// Two calls of one action meet here: the first waits for the second, then both go on and the
/// barrier is gone.
struct Barrier {
    /// How long the first call waits for the second before it is answered with an error.
    deadline: Duration,
    /// Set while the first call waits: the second call releases it through this.
    release: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Injected {
    status: StatusCode,
    code: String,
    message: String,
}

impl FaultProxy {
    /// Start a proxy to `upstream` (such as `Moto::endpoint`) on a free loopback port.
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder().no_proxy().timeout(UPSTREAM_TIMEOUT).build().unwrap(),
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the fault proxy's server failed");
        });
        FaultProxy { endpoint, shared, server }
    }

    /// Answer the next `times` calls of `action` with EC2's throttling error:
    /// 503 `RequestLimitExceeded`, which the SDK classifies as a throttling error and retries.
    pub fn throttle(&self, action: &str, times: usize) {
        self.fail(action, times, 503, "RequestLimitExceeded", "Request limit exceeded.");
    }

    /// Answer the next `times` calls of `action` with an EC2 error, such as 500
    /// `InsufficientInstanceCapacity` or 403 `UnauthorizedOperation`. Queued after any error
    /// already pending for `action`.
    pub fn fail(&self, action: &str, times: usize, status: u16, code: &str, message: &str) {
        let status = StatusCode::from_u16(status).expect("an HTTP status code");
        let injected = Injected { status, code: code.to_string(), message: message.to_string() };
        let mut faults = self.shared.faults.lock().unwrap();
        if times > 0 {
            faults.errors.entry(action.to_string()).or_default().push_back((injected, times));
        }
    }

    /// Hold every call of `action` for `by` before forwarding it (or answering it with an
    /// injected error), until `clear`.
    pub fn delay(&self, action: &str, by: Duration) {
        self.shared.faults.lock().unwrap().delays.insert(action.to_string(), by);
    }

    /// Hold every call, whatever its action, for `by` (on top of any `delay` of its action)
    /// before forwarding it, until `clear`: the round trip to a real region.
    pub fn delay_all(&self, by: Duration) {
        self.shared.faults.lock().unwrap().all = by;
    }

    /// Hold the next call of `action` until a second one arrives, then let both go on (to their
    /// delays, errors or moto): a test that passes proves the two were in flight at the same time,
    /// however slow the machine. If no second call arrives within `deadline`, the held one is
    /// answered with a 500 `FaultProxyBarrier` error saying that the calls came one after the
    /// other, the barrier is gone, and later calls pass. One barrier per action, for one pair.
    pub fn barrier(&self, action: &str, deadline: Duration) {
        let barrier = Barrier { deadline, release: None };
        self.shared.faults.lock().unwrap().barriers.insert(action.to_string(), barrier);
    }

    /// Drop every pending error, delay and barrier (a call held at a barrier goes on); the log
    /// stays.
    pub fn clear(&self) {
        *self.shared.faults.lock().unwrap() = Faults::default();
    }

    /// Every call received, in arrival order, faulted ones included.
    pub fn calls(&self) -> Vec<Recorded> {
        self.shared.log.lock().unwrap().clone()
    }

    /// The action of every call received, in arrival order.
    pub fn actions(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().iter().map(|call| call.action.clone()).collect()
    }

    /// How many calls of `action` were received, faulted ones included.
    pub fn count(&self, action: &str) -> usize {
        self.shared.log.lock().unwrap().iter().filter(|call| call.action == action).count()
    }

    /// Forget the calls received so far; faults stay.
    pub fn reset_log(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    /// Wait until at least `n` calls of `action` have arrived (they may still be held by a
    /// delay), so a test can act while a call is in flight.
    pub async fn wait_for(&self, action: &str, n: usize) {
        let deadline = Instant::now() + WAIT_DEADLINE;
        while self.count(action) < n {
            assert!(
                Instant::now() < deadline,
                "{action} was called {} times, not {n}, within {WAIT_DEADLINE:?}: {:?}",
                self.count(action),
                self.actions()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = parse_params(&method, &uri, &body).await;
    let action = params.get("Action").cloned().unwrap_or_default();
    let (injected, delay, held) = {
        let mut faults = shared.faults.lock().unwrap();
        let injected = faults.errors.get_mut(&action).and_then(next_error);
        let held = meet(&mut faults.barriers, &action);
        (injected, faults.delays.get(&action).copied().unwrap_or_default() + faults.all, held)
    };
    shared.log.lock().unwrap().push(Recorded {
        action: action.clone(),
        params,
        at: Instant::now(),
        faulted: injected.is_some(),
    });
    if let Some((released, deadline)) = held {
        // A dropped sender (`clear`) releases the call as well.
        if tokio::time::timeout(deadline, released).await.is_err() {
            {
                // Remove the barrier this call waited at (nobody listens to its release any
                // more), not one set since.
                let mut faults = shared.faults.lock().unwrap();
                let abandoned =
                    faults.barriers.get(&action).and_then(|b| b.release.as_ref()).is_some_and(|r| r.is_closed());
                if abandoned {
                    faults.barriers.remove(&action);
                }
            }
            return error_response(&Injected {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "FaultProxyBarrier".to_string(),
                message: format!(
                    "the second {action} never arrived within {deadline:?} of the first: the calls are sequential"
                ),
            });
        }
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match injected {
        Some(injected) => error_response(&injected),
        None => forward(&shared, method, &uri, &headers, body).await,
    }
}

/// A call of `action` at its barrier, if it has one: the first call gets what to wait on and for
/// how long; the second releases the first and removes the barrier.
fn meet(barriers: &mut HashMap<String, Barrier>, action: &str) -> Option<(oneshot::Receiver<()>, Duration)> {
    let barrier = barriers.get_mut(action)?;
    match barrier.release.take() {
        Some(release) => {
            // Sending fails only if the first call has just given up: then nothing waits.
            let _ = release.send(());
            barriers.remove(action);
            None
        }
        None => {
            let (release, released) = oneshot::channel();
            barrier.release = Some(release);
            Some((released, barrier.deadline))
        }
    }
}

/// Take one call's worth from the first pending error of a queue.
fn next_error(queue: &mut VecDeque<(Injected, usize)>) -> Option<Injected> {
    let (injected, remaining) = queue.front_mut()?;
    let injected = injected.clone();
    *remaining -= 1;
    if *remaining == 0 {
        queue.pop_front();
    }
    Some(injected)
}

/// The call's form parameters: the body of a `POST`, the query of a `GET`. Empty if they do not
/// parse. axum's `Form` does the decoding; the request is rebuilt because its body was taken.
async fn parse_params(method: &Method, uri: &Uri, body: &Bytes) -> BTreeMap<String, String> {
    let request = Request::builder()
        .method(method.clone())
        .uri(uri.clone())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.clone()))
        .unwrap();
    match axum::Form::<BTreeMap<String, String>>::from_request(request, &()).await {
        Ok(axum::Form(params)) => params,
        Err(_) => BTreeMap::new(),
    }
}

/// EC2's error document, as `aws-sdk-ec2`'s `ec2_query_errors` parses it:
/// `Response/Errors/Error/{Code,Message}`.
fn error_response(injected: &Injected) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
        xml_escape(&injected.code),
        xml_escape(&injected.message),
        request_id()
    );
    (injected.status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"))], body).into_response()
}

async fn forward(shared: &Shared, method: Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", shared.upstream);
    let mut outgoing = headers.clone();
    strip(&mut outgoing);
    let sent = shared.client.request(method, &url).headers(outgoing).body(body).send().await;
    let upstream = match sent {
        Ok(upstream) => upstream,
        Err(error) => return (StatusCode::BAD_GATEWAY, format!("fault proxy: {url}: {error}")).into_response(),
    };
    let status = upstream.status();
    let mut incoming = upstream.headers().clone();
    strip(&mut incoming);
    match upstream.bytes().await {
        Ok(bytes) => (status, incoming, bytes).into_response(),
        Err(error) => (StatusCode::BAD_GATEWAY, format!("fault proxy: {url}: {error}")).into_response(),
    }
}

fn strip(headers: &mut HeaderMap) {
    for name in NOT_FORWARDED {
        headers.remove(name);
    }
}

/// A fresh id in the UUID shape EC2 uses.
fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("fa017000-{:04x}-4000-8000-{:012x}", std::process::id() & 0xffff, n)
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}
