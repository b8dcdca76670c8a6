//! The table of open connections: how many there are, which of them is busy with what, and which
//! one to close when a new connection arrives at the cap.
//!
//! A connection is *idle* while no request of it is in flight (hyper has not handed one over, or
//! the last response has been sent): an idle kept-alive connection, a connection whose client is
//! still sending a head, one that never sent anything. It is *reading* while every request it
//! has in flight is still receiving an unauthenticated body (`http::limits` marks those). Both
//! cost a client nothing to make, so at the cap an idle connection is closed first (one that
//! never sent a request before a kept-alive one, each the longest-idle first), then the oldest
//! reading one; a connection with anything else in flight (a page being rendered, an
//! authenticated request, a build's event stream) is never closed to make room.
//!
//! A connection is closable only once it has been idle (or reading) for [`EVICTION_GRACE`]: a
//! client's new connection gets that long for its head to be read, however fast others arrive.
//! While nothing is closable the accept loop leaves new connections in the listen backlog, a
//! first-come, first-served queue, so clients that reconnect as fast as they can do not crowd
//! out one that connects once. Nothing here does I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long a connection is idle (or reading) before it may be closed to make room.
pub const EVICTION_GRACE: Duration = Duration::from_millis(250);

/// The open connections and the cap on them.
#[derive(Debug)]
pub struct Connections {
    cap: usize,
    /// [`EVICTION_GRACE`], but for tests.
    grace: Duration,
    /// The instant idle times are counted from.
    epoch: Instant,
    table: Mutex<Table>,
    /// A connection closed: there may be room.
    closed: Notify,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Connection>>,
}

/// One open connection's state, shared by its task, its requests and the table.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    epoch: Instant,
    accepted: Instant,
    in_flight: AtomicUsize,
    reading: AtomicUsize,
    /// A request of it has been handed over: it is a kept-alive connection when idle.
    served: AtomicBool,
    /// Milliseconds from `epoch` to when the connection last became idle.
    idle_since_ms: AtomicU64,
    /// Chosen to make room for a new connection: its task closes it.
    evicting: AtomicBool,
    evict: Notify,
    /// Its last request in flight ended: its task sets its idle timer again.
    went_idle: Notify,
}

/// What became of a new connection.
#[derive(Debug)]
pub enum Admission {
    /// Below the cap.
    Admitted(Arc<Connection>),
    /// At the cap: `closing` was told to close to make room.
    Replacing { admitted: Arc<Connection>, closing: Arc<Connection> },
    /// At the cap, and no connection may be closed to make room.
    Refused,
}

impl Connections {
    /// At most `cap` connections; one may be closed to make room once idle for `grace`
    /// ([`EVICTION_GRACE`] in the server).
    pub fn new(cap: usize, grace: Duration) -> Connections {
        Connections { cap, grace, epoch: Instant::now(), table: Mutex::default(), closed: Notify::new() }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Connections open now (those being closed to make room included).
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a new connection would be admitted now: below the cap, or one may be closed.
    pub fn has_room(&self) -> bool {
        let table = self.lock();
        Self::staying(&table) < self.cap || self.victim(&table).is_some()
    }

    /// Resolves when a connection has closed (there may be room now).
    pub async fn closed(&self) {
        self.closed.notified().await;
    }

    /// Connections not told to close: those are on their way out.
    fn staying(table: &Table) -> usize {
        table.open.values().filter(|c| !c.evicting.load(Ordering::Relaxed)).count()
    }

    /// Record a new connection, closing another at the cap (see the module's description).
    pub fn admit(&self) -> Admission {
        let mut table = self.lock();
        let closing = if Self::staying(&table) >= self.cap {
            match self.victim(&table) {
                Some(victim) => Some(victim),
                None => return Admission::Refused,
            }
        } else {
            None
        };
        table.next_id += 1;
        let connection = Arc::new(Connection {
            id: table.next_id,
            epoch: self.epoch,
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            reading: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(millis_since(self.epoch)),
            evicting: AtomicBool::new(false),
            evict: Notify::new(),
            went_idle: Notify::new(),
        });
        table.open.insert(connection.id, Arc::clone(&connection));
        match closing {
            None => Admission::Admitted(connection),
            Some(closing) => {
                closing.evicting.store(true, Ordering::Relaxed);
                closing.evict.notify_one();
                Admission::Replacing { admitted: connection, closing }
            }
        }
    }

    /// Close the longest-idle connection, if there is one, to free its file descriptor (when
    /// accepting failed for want of one).
    pub fn close_longest_idle(&self) -> bool {
        let table = self.lock();
        match self.victim(&table).filter(|victim| victim.in_flight.load(Ordering::Relaxed) == 0) {
            Some(victim) => {
                victim.evicting.store(true, Ordering::Relaxed);
                victim.evict.notify_one();
                true
            }
            None => false,
        }
    }

    /// The connection to close for a new one: an idle one (never served before kept-alive, then
    /// the longest-idle), else the oldest that is only reading unauthenticated bodies; in either
    /// case only one idle or reading for the grace period at least.
    fn victim(&self, table: &Table) -> Option<Arc<Connection>> {
        let grace = u64::try_from(self.grace.as_millis()).unwrap_or(u64::MAX);
        // Idle since at most this many milliseconds from the epoch; none in the first `grace`.
        let settled = millis_since(self.epoch).checked_sub(grace);
        let candidates = table.open.values().filter(|c| !c.evicting.load(Ordering::Relaxed));
        // A connection that never sent a whole request goes before one that has: the latter is
        // a client's kept-alive connection, which it may be reusing this very moment.
        let idle = candidates
            .clone()
            .filter(|c| c.in_flight.load(Ordering::Relaxed) == 0)
            .map(|c| (c, c.idle_since_ms.load(Ordering::Relaxed)))
            .filter(|(_, since)| settled.is_some_and(|settled| *since <= settled))
            .min_by_key(|(c, since)| (c.served.load(Ordering::Relaxed), *since, c.accepted))
            .map(|(c, _)| c);
        let grace_start = Instant::now().checked_sub(self.grace);
        idle.or_else(|| {
            candidates
                .filter(|c| {
                    let in_flight = c.in_flight.load(Ordering::Relaxed);
                    in_flight > 0
                        && c.reading.load(Ordering::Relaxed) >= in_flight
                        && grace_start.is_some_and(|start| c.accepted <= start)
                })
                .min_by_key(|c| c.accepted)
        })
        .cloned()
    }

    /// Forget a connection that has closed.
    pub fn remove(&self, connection: &Connection) {
        self.lock().open.remove(&connection.id);
        self.closed.notify_one();
    }
}

impl Connection {
    /// A request of this connection is in flight until the guard is dropped (with its response's
    /// body, once that has been sent).
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        InFlight(Arc::clone(self))
    }

    /// A request of this connection is reading an unauthenticated body until the guard is
    /// dropped.
    pub fn reading_started(self: &Arc<Self>) -> Reading {
        self.reading.fetch_add(1, Ordering::AcqRel);
        Reading(Arc::clone(self))
    }

    /// How long the connection has been idle; `None` while a request is in flight.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.idle_since_ms.load(Ordering::Acquire);
        Some(Duration::from_millis(millis_since(self.epoch).saturating_sub(since)))
    }

    /// Whether a request of it has been handed over (so, when idle, it waits for its next one).
    pub fn has_served(&self) -> bool {
        self.served.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Resolves once the connection was chosen to close for a new one.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// Resolves once the connection's last request in flight has ended.
    pub async fn went_idle(&self) {
        self.went_idle.notified().await;
    }
}

/// See [`Connection::request_started`].
#[derive(Debug)]
pub struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let connection = &self.0;
        connection.idle_since_ms.store(millis_since(connection.epoch), Ordering::Release);
        if connection.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            connection.went_idle.notify_one();
        }
    }
}

/// See [`Connection::reading_started`].
#[derive(Debug)]
pub struct Reading(Arc<Connection>);

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.reading.fetch_sub(1, Ordering::AcqRel);
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(admission: Admission) -> Arc<Connection> {
        match admission {
            Admission::Admitted(connection) => connection,
            other => panic!("expected a plain admission, got {other:?}"),
        }
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room_first() {
        let connections = Connections::new(3, Duration::ZERO);
        let first = admitted(connections.admit());
        let second = admitted(connections.admit());
        let busy = admitted(connections.admit());
        let _request = busy.request_started();
        // Both served a request, the second after the first: the first has been idle the longest.
        drop(first.request_started());
        std::thread::sleep(Duration::from_millis(2));
        drop(second.request_started());
        let Admission::Replacing { closing, admitted } = connections.admit() else { panic!("expected a replacement") };
        assert_eq!(closing.id, first.id);
        assert_eq!(connections.len(), 4, "the closing connection counts until its task ends");
        connections.remove(&first);
        std::thread::sleep(Duration::from_millis(2));
        drop(admitted.request_started());
        let Admission::Replacing { closing, .. } = connections.admit() else { panic!("expected a replacement") };
        assert_eq!(closing.id, second.id, "the next longest-idle");
    }

    #[test]
    fn a_connection_only_reading_an_unauthenticated_body_may_be_closed_anything_else_busy_may_not() {
        let connections = Connections::new(2, Duration::ZERO);
        let page = admitted(connections.admit());
        let _rendering = page.request_started();
        let flood = admitted(connections.admit());
        let _request = flood.request_started();
        let reading = flood.reading_started();
        let Admission::Replacing { closing, admitted } = connections.admit() else { panic!("expected a replacement") };
        assert_eq!(closing.id, flood.id);
        connections.remove(&flood);
        drop(reading);

        // Now every connection has a request in flight that is not reading a body.
        let _also_busy = admitted.request_started();
        assert!(matches!(connections.admit(), Admission::Refused));
        assert_eq!(connections.len(), 2);
    }

    #[test]
    fn a_connection_that_never_sent_a_request_makes_room_before_a_kept_alive_one() {
        let connections = Connections::new(2, Duration::ZERO);
        let kept_alive = admitted(connections.admit());
        drop(kept_alive.request_started());
        std::thread::sleep(Duration::from_millis(2));
        let silent = admitted(connections.admit());
        let Admission::Replacing { closing, .. } = connections.admit() else { panic!("expected a replacement") };
        assert_eq!(closing.id, silent.id, "the silent one goes, though it has been idle for less time");
    }

    #[test]
    fn a_connection_idle_for_less_than_the_grace_period_is_not_closed_for_another() {
        let grace = Duration::from_millis(50);
        let connections = Connections::new(1, grace);
        let young = admitted(connections.admit());
        assert!(!connections.has_room());
        assert!(matches!(connections.admit(), Admission::Refused));
        std::thread::sleep(grace + Duration::from_millis(10));
        assert!(connections.has_room(), "idle for the grace period, it may make room");
        let Admission::Replacing { closing, .. } = connections.admit() else { panic!("expected a replacement") };
        assert_eq!(closing.id, young.id);
    }

    #[test]
    fn idle_time_counts_from_the_last_request() {
        let connections = Connections::new(4, Duration::ZERO);
        let connection = admitted(connections.admit());
        let request = connection.request_started();
        assert_eq!(connection.idle_for(), None);
        drop(request);
        assert!(connection.idle_for().unwrap() < Duration::from_secs(1));
        assert!(connections.close_longest_idle());
        assert!(!connections.close_longest_idle(), "a connection is told to close once");
    }
}
