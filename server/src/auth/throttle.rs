//! Sign-in throttling: repeated failures from one client address, or for one user name, are first
//! slowed down, then refused with 429 for a while.
//!
//! Failures are counted per address and per user name over a sliding [`FAILURE_WINDOW`]. After
//! [`SLOW_AFTER`] failures each further answer is delayed (one second more per failure, at most
//! [`MAX_DELAY`]); after [`LOCK_AFTER`] failures the key is locked for [`LOCKOUT`]. An attacker who
//! rotates user names from one address is stopped by the address; one who rotates addresses
//! against one account, by the name. A success clears both keys. The table is bounded: past
//! [`MAX_TRACKED`] keys the oldest quiet ones are forgotten. State is in memory, per server.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a failure counts.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Failures (of an address or a user name) answered at full speed.
pub const SLOW_AFTER: u32 = 3;

/// The longest a failed sign-in's answer is delayed.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// Failures after which the address or user name is refused with 429.
pub const LOCK_AFTER: u32 = 10;

/// How long a locked address or user name is refused.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);

/// The most addresses and names tracked at once.
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Address(IpAddr),
    User(String),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

/// What to do with a sign-in attempt before checking its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check it.
    Allow,
    /// Refuse it without checking: 429 with `Retry-After`.
    Refuse { retry_after: Duration },
}

/// The failures of every recently failing address and user name.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<Key, Failures>>,
}

impl LoginThrottle {
    /// Whether an attempt for `user` from `address` may be checked at `now`.
    pub fn check(&self, address: IpAddr, user: &str, now: Instant) -> Verdict {
        let failures = self.failures.lock().expect("throttle poisoned");
        let retry_after = keys(address, user)
            .iter()
            .filter_map(|key| failures.get(key)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        match retry_after {
            Some(retry_after) => Verdict::Refuse { retry_after },
            None => Verdict::Allow,
        }
    }

    /// Count a failed attempt; returns how long to delay its answer.
    pub fn failed(&self, address: IpAddr, user: &str, now: Instant) -> Duration {
        let mut failures = self.failures.lock().expect("throttle poisoned");
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, f| now.duration_since(f.first) < FAILURE_WINDOW || f.locked_until > Some(now));
            if failures.len() >= MAX_TRACKED {
                // Still full of live entries: forget the oldest half rather than grow without bound.
                let mut firsts: Vec<Instant> = failures.values().map(|f| f.first).collect();
                firsts.sort();
                let cut = firsts[firsts.len() / 2];
                failures.retain(|_, f| f.first > cut);
            }
        }
        let mut worst = 0;
        for key in keys(address, user) {
            let entry = failures.entry(key).or_insert(Failures { count: 0, first: now, locked_until: None });
            if now.duration_since(entry.first) >= FAILURE_WINDOW && entry.locked_until.is_none_or(|u| u <= now) {
                *entry = Failures { count: 0, first: now, locked_until: None };
            }
            entry.count += 1;
            if entry.count >= LOCK_AFTER {
                entry.locked_until = Some(now + LOCKOUT);
            }
            worst = worst.max(entry.count);
        }
        delay_after(worst)
    }

    /// A successful sign-in clears its address and user name.
    pub fn succeeded(&self, address: IpAddr, user: &str) {
        let mut failures = self.failures.lock().expect("throttle poisoned");
        for key in keys(address, user) {
            failures.remove(&key);
        }
    }
}

fn keys(address: IpAddr, user: &str) -> [Key; 2] {
    [Key::Address(address), Key::User(user.to_lowercase())]
}

/// The delay of the answer to the `count`th failure.
fn delay_after(count: u32) -> Duration {
    if count <= SLOW_AFTER {
        Duration::ZERO
    } else {
        Duration::from_secs(u64::from(count - SLOW_AFTER)).min(MAX_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn failures_are_slowed_then_refused_then_forgiven_after_the_lockout() {
        let throttle = LoginThrottle::default();
        let now = Instant::now();
        let delays: Vec<Duration> = (0..LOCK_AFTER).map(|_| throttle.failed(A, "alice", now)).collect();
        assert_eq!(delays[..SLOW_AFTER as usize], [Duration::ZERO; SLOW_AFTER as usize]);
        assert_eq!(delays[SLOW_AFTER as usize], Duration::from_secs(1));
        assert_eq!(*delays.last().unwrap(), MAX_DELAY);
        assert_eq!(throttle.check(A, "alice", now), Verdict::Refuse { retry_after: LOCKOUT });
        assert_eq!(throttle.check(A, "alice", now + LOCKOUT), Verdict::Allow);
    }

    #[test]
    fn rotating_names_is_stopped_by_the_address_and_rotating_addresses_by_the_name() {
        let throttle = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..LOCK_AFTER {
            throttle.failed(A, &format!("user{i}"), now);
        }
        assert!(matches!(throttle.check(A, "somebody-else", now), Verdict::Refuse { .. }));
        assert_eq!(throttle.check(B, "somebody-else", now), Verdict::Allow);

        for i in 0..LOCK_AFTER {
            throttle.failed(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, i as u8)), "Bob", now);
        }
        assert!(matches!(throttle.check(B, "bob", now), Verdict::Refuse { .. }), "names are case-insensitive");
    }

    #[test]
    fn a_success_clears_and_old_failures_expire() {
        let throttle = LoginThrottle::default();
        let now = Instant::now();
        for _ in 0..LOCK_AFTER - 1 {
            throttle.failed(A, "alice", now);
        }
        throttle.succeeded(A, "alice");
        assert_eq!(throttle.failed(A, "alice", now), Duration::ZERO, "counting starts again");
        for _ in 0..SLOW_AFTER {
            throttle.failed(B, "carol", now);
        }
        let later = now + FAILURE_WINDOW;
        assert_eq!(throttle.failed(B, "carol", later), Duration::ZERO, "failures outside the window are forgotten");
    }
}
