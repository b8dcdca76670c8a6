//! Gantry end to end: the real server on an ephemeral port with a fresh data directory, real git
//! repositories, signed webhooks as the forges send them, real host processes (PostgreSQL
//! included) on the local provider. One test binary for the whole suite, so it links once.

mod api;
mod browser;
mod builds;
mod crash;
mod demo;
mod helpers;
mod poller;
mod ssh;
#[path = "../../runner/tests/support/sshd.rs"]
mod sshd;
mod webhooks;
