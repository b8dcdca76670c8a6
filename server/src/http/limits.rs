//! What a request may cost the server before anybody knows who sent it: a global budget of bytes
//! for request bodies that are not yet authenticated, a deadline for every body, and a size limit
//! for the bodies of authenticated requests.
//!
//! A body counts against the [`BodyBudget`] as its chunks arrive, and its bytes stay counted
//! until the request is answered and the body dropped (the handler holds them until then: a
//! webhook's bytes are kept until its signature is checked). A chunk that does not fit waits for
//! room at most `[http] body_budget_wait`; then the request is answered 503 with `Retry-After`,
//! whatever the handler made of the failed read. Waiting requests are bounded by the connection
//! cap and by that wait, so there is never an unbounded queue.
//!
//! Every body counts but one kind: a request with an `Authorization` header outside `/hooks/`.
//! Its body is read only after `http::auth`'s extractor accepted the token (extractors that read
//! parts run before the one that takes the body, and the CSRF layer lets such requests through
//! unread), so a forged token costs no body bytes; such bodies are capped at
//! [`MAX_AUTHENTICATED_BODY_BYTES`] instead. This module decides nothing about who may do what.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use futures::future::BoxFuture;
use futures::FutureExt;
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::serve::ConnectionHandle;
use super::{error_response, AppState, HttpError};

/// The largest body of a request made with an API token (the API's JSON and the token page's
/// forms are a few hundred bytes).
pub const MAX_AUTHENTICATED_BODY_BYTES: usize = 64 * 1024;

/// The most of one body any handler keeps (a webhook's; forms and API bodies are capped lower).
/// Bytes past it are read only to be dropped (a webhook over the limit is drained so the forge
/// reads its 413), so they are not counted against the budget.
pub const MAX_KEPT_BODY_BYTES: usize = crate::forge::MAX_WEBHOOK_BYTES;

/// A refusal for a full budget is logged as a warning once per this many (the others at debug).
pub const REFUSALS_PER_WARNING: u64 = 1000;

/// What a 503 for a full budget tells the client to wait before trying again.
pub const BUSY_RETRY_AFTER: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The bytes of unauthenticated request bodies the server holds at once, all requests together.
#[derive(Debug)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    capacity: usize,
    wait: Duration,
    /// Requests answered 503 for want of room, since the start.
    refused: AtomicU64,
}

impl BodyBudget {
    /// A budget of `capacity` bytes; a chunk waits at most `wait` for room.
    pub fn new(capacity: usize, wait: Duration) -> BodyBudget {
        BodyBudget { permits: Arc::new(Semaphore::new(capacity)), capacity, wait, refused: AtomicU64::new(0) }
    }

    /// Bytes not held by any request now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// What one request holds of the budget. The bytes return to it when the last of the request's
/// handler and its body lets go.
#[derive(Debug, Default)]
struct Held {
    permits: Mutex<Option<OwnedSemaphorePermit>>,
    /// A chunk found no room in time: the request is answered 503.
    refused: AtomicBool,
}

impl Held {
    fn add(&self, permit: OwnedSemaphorePermit) {
        let mut held = self.permits.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match held.as_mut() {
            Some(all) => all.merge(permit),
            None => *held = Some(permit),
        }
    }
}

/// The body was refused: the budget had no room for it in time.
#[derive(Debug, thiserror::Error)]
#[error("the server holds too many request bodies; try again later")]
pub struct OverBudget;

/// A request body counted against a [`BodyBudget`]: its declared length (`Content-Length`) is
/// reserved before its first byte is read, so requests never hold parts of the budget while
/// each waits for the rest; a body of unknown length is counted chunk by chunk as it arrives.
pub struct BudgetedBody<B> {
    inner: B,
    permits: Arc<Semaphore>,
    capacity: usize,
    wait: Duration,
    held: Arc<Held>,
    /// Whether the declared length has been reserved (or there was none).
    declared_reserved: bool,
    /// Bytes of this body read so far.
    read: usize,
    /// Bytes of the budget this body holds (at most [`MAX_KEPT_BODY_BYTES`]).
    reserved: usize,
    /// Room being waited for, and the chunk (already read) that needs it.
    waiting: Option<(Option<Bytes>, BoxFuture<'static, Option<OwnedSemaphorePermit>>)>,
    /// Marks the connection as busy reading an unauthenticated body (the connection cap may
    /// close such a connection to make room); cleared when the body ends.
    reading: Option<Box<dyn Send + Sync>>,
}

impl<B> BudgetedBody<B> {
    fn new(inner: B, budget: &BodyBudget, held: Arc<Held>, reading: Option<Box<dyn Send + Sync>>) -> BudgetedBody<B> {
        BudgetedBody {
            inner,
            permits: Arc::clone(&budget.permits),
            capacity: budget.capacity,
            wait: budget.wait,
            held,
            declared_reserved: false,
            read: 0,
            reserved: 0,
            waiting: None,
            reading,
        }
    }

    fn refuse(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.held.refused.store(true, Ordering::Relaxed);
        self.waiting = None;
        self.reading = None;
        Poll::Ready(Some(Err(Box::new(OverBudget))))
    }

    /// Take `needed` more bytes of the budget for this body.
    fn reserve(&mut self, needed: usize) -> Reserve {
        if needed == 0 {
            return Reserve::Held;
        }
        let Ok(count) = u32::try_from(needed) else { return Reserve::Never };
        if self.reserved + needed > self.capacity {
            return Reserve::Never;
        }
        self.reserved += needed;
        match Arc::clone(&self.permits).try_acquire_many_owned(count) {
            Ok(permit) => {
                self.held.add(permit);
                Reserve::Held
            }
            Err(_) => {
                let (permits, wait) = (Arc::clone(&self.permits), self.wait);
                Reserve::Wait(
                    async move { tokio::time::timeout(wait, permits.acquire_many_owned(count)).await.ok()?.ok() }
                        .boxed(),
                )
            }
        }
    }
}

/// What [`BudgetedBody::reserve`] got.
enum Reserve {
    Held,
    /// Wait for this; `None` when the wait ran out.
    Wait(BoxFuture<'static, Option<OwnedSemaphorePermit>>),
    /// More than the whole budget.
    Never,
}

impl<B> HttpBody for BudgetedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some((_, acquire)) = this.waiting.as_mut() {
                let permit = ready!(acquire.poll_unpin(cx));
                let (chunk, _) = this.waiting.take().expect("room is being waited for");
                let Some(permit) = permit else { return this.refuse() };
                this.held.add(permit);
                match chunk {
                    Some(chunk) => return Poll::Ready(Some(Ok(Frame::data(chunk)))),
                    // The declared length is reserved: read.
                    None => continue,
                }
            }
            if !this.declared_reserved {
                this.declared_reserved = true;
                let declared = usize::try_from(this.inner.size_hint().lower()).unwrap_or(usize::MAX);
                match this.reserve(declared.min(MAX_KEPT_BODY_BYTES)) {
                    Reserve::Held => {}
                    Reserve::Wait(acquire) => {
                        this.waiting = Some((None, acquire));
                        continue;
                    }
                    Reserve::Never => return this.refuse(),
                }
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => {
                    this.reading = None;
                    return Poll::Ready(None);
                }
                Some(Err(error)) => {
                    this.reading = None;
                    return Poll::Ready(Some(Err(error.into())));
                }
                Some(Ok(frame)) => frame,
            };
            let chunk = match frame.into_data() {
                Ok(chunk) => chunk,
                Err(other) => return Poll::Ready(Some(Ok(other))),
            };
            this.read = this.read.saturating_add(chunk.len());
            match this.reserve(this.read.min(MAX_KEPT_BODY_BYTES).saturating_sub(this.reserved)) {
                Reserve::Held => return Poll::Ready(Some(Ok(Frame::data(chunk)))),
                Reserve::Wait(acquire) => this.waiting = Some((Some(chunk), acquire)),
                Reserve::Never => return this.refuse(),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `request`'s body counts against the budget: see the module's description.
fn counts_against_budget(request: &Request) -> bool {
    !request.headers().contains_key(header::AUTHORIZATION) || request.uri().path().starts_with("/hooks/")
}

/// The layer (over the whole router) that counts unauthenticated bodies against the state's
/// budget and answers 503 with `Retry-After` when one found no room in time.
pub async fn budget_unauthenticated_bodies(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !counts_against_budget(&request) || request.body().is_end_stream() {
        return next.run(request).await;
    }
    let path = request.uri().path().to_string();
    let reading = request.extensions().get::<ConnectionHandle>().map(ConnectionHandle::reading_body);
    let held = Arc::new(Held::default());
    let budget = &state.body_budget;
    let request = request.map(|body| Body::new(BudgetedBody::new(body, budget, Arc::clone(&held), reading)));
    let response = next.run(request).await;
    if !held.refused.load(Ordering::Relaxed) {
        return response;
    }
    let refused = state.body_budget.refused.fetch_add(1, Ordering::Relaxed) + 1;
    // The first refusal and every thousandth after it: a flood must not fill the log.
    if refused % REFUSALS_PER_WARNING == 1 {
        tracing::warn!(path = %path, refused, budget = state.body_budget.capacity, "request body refused: the body budget is full");
    } else {
        tracing::debug!(path = %path, refused, "request body refused: the body budget is full");
    }
    error_response(&path, HttpError::Busy(BUSY_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect<B>(body: BudgetedBody<B>) -> Result<Bytes, axum::Error>
    where
        B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        axum::body::to_bytes(Body::new(body), usize::MAX).await
    }

    fn chunks(sizes: &[usize]) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            sizes.iter().map(|&n| Ok(Bytes::from(vec![b'x'; n]))).collect();
        Body::from_stream(futures::stream::iter(chunks))
    }

    #[tokio::test]
    async fn bytes_are_held_until_the_request_lets_go_and_a_full_budget_refuses_after_its_wait() {
        let budget = BodyBudget::new(1000, Duration::from_millis(50));
        let first = Arc::new(Held::default());
        let body = BudgetedBody::new(chunks(&[300, 300]), &budget, Arc::clone(&first), None);
        assert_eq!(collect(body).await.unwrap().len(), 600);
        assert_eq!(budget.available(), 400, "the bytes stay counted while the handler holds them");

        let second = Arc::new(Held::default());
        let body = BudgetedBody::new(chunks(&[300, 300]), &budget, Arc::clone(&second), None);
        let started = std::time::Instant::now();
        let error = collect(body).await.unwrap_err();
        assert!(error.to_string().contains("too many request bodies"), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(50), "it waited for room first");
        assert!(second.refused.load(Ordering::Relaxed));
        drop(second);
        assert_eq!(budget.available(), 400, "a refused request gives back what it held");

        drop(first);
        assert_eq!(budget.available(), 1000);
    }

    #[tokio::test]
    async fn a_waiting_chunk_gets_the_room_another_request_frees() {
        let budget = BodyBudget::new(1000, Duration::from_secs(30));
        let first = Arc::new(Held::default());
        let body = BudgetedBody::new(chunks(&[900]), &budget, Arc::clone(&first), None);
        collect(body).await.unwrap();
        let second = Arc::new(Held::default());
        let body = BudgetedBody::new(chunks(&[500]), &budget, Arc::clone(&second), None);
        let reading = tokio::spawn(async move { collect(body).await.map(|bytes| bytes.len()).ok() });
        tokio::task::yield_now().await;
        drop(first);
        assert_eq!(reading.await.unwrap(), Some(500));
        assert!(!second.refused.load(Ordering::Relaxed));
    }

    /// A body that declares its length and never sends a byte of it.
    struct Silent(u64);

    impl HttpBody for Silent {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Pending
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.0)
        }
    }

    #[tokio::test]
    async fn a_declared_length_is_reserved_before_the_first_byte_and_all_of_it_or_nothing() {
        let budget = BodyBudget::new(1000, Duration::from_millis(50));
        let first = Arc::new(Held::default());
        let silent = collect(BudgetedBody::new(Silent(600), &budget, Arc::clone(&first), None));
        assert!(tokio::time::timeout(Duration::from_millis(20), silent).await.is_err(), "it never ends");
        assert_eq!(budget.available(), 400, "the declared length was reserved");

        // Another declared body does not take the 400 left and wait for the rest.
        let second = Arc::new(Held::default());
        let error = collect(BudgetedBody::new(Body::from(vec![b'x'; 600]), &budget, Arc::clone(&second), None))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("too many request bodies"), "{error}");
        assert_eq!(budget.available(), 400);
        drop(first);
        let third = Arc::new(Held::default());
        let body = BudgetedBody::new(Body::from(vec![b'x'; 600]), &budget, Arc::clone(&third), None);
        assert_eq!(collect(body).await.unwrap().len(), 600);
    }

    #[tokio::test]
    async fn a_chunk_larger_than_the_whole_budget_is_refused_at_once() {
        let budget = BodyBudget::new(100, Duration::from_secs(30));
        let held = Arc::new(Held::default());
        let body = BudgetedBody::new(chunks(&[101]), &budget, Arc::clone(&held), None);
        assert!(collect(body).await.is_err());
        assert!(held.refused.load(Ordering::Relaxed));
    }
}
