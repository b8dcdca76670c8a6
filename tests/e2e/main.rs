//! Gantry end to end: the real server on an ephemeral port with a fresh data directory, real git
//! repositories, signed webhooks as the forges send them, real host processes (PostgreSQL
//! included) on the local provider, real OpenSSH servers for the SSH pool, moto's EC2 API on
//! loopback for the EC2 provider. One test binary for the whole suite, so it links once.

mod actions;
mod api;
mod auth;
mod auth_fuzz;
mod backup;
mod badge_metrics;
mod browser;
mod browser_actions;
mod browser_driver;
mod browser_live;
mod builds;
#[path = "../support/client.rs"]
mod client;
mod crash;
mod deliveries;
mod demo;
mod ec2;
#[path = "../../runner/tests/support/ec2_cloud.rs"]
mod ec2_cloud;
#[path = "../../runner/tests/support/fault_proxy.rs"]
mod fault_proxy;
#[path = "../support/fixture.rs"]
mod fixture;
mod forge_api;
mod forge_standin;
mod hardening;
mod headers;
mod helpers;
mod history;
mod leaks;
mod live;
mod logs;
#[path = "../../runner/tests/support/moto.rs"]
mod moto;
mod poller;
#[path = "../support/postgres.rs"]
mod postgres;
mod postgres_app;
mod postgres_schema;
mod postgres_server;
#[path = "../support/prerequisite.rs"]
mod prerequisite;
mod pull_requests;
mod retention;
mod secrets;
mod several_servers;
#[path = "../support/slow_remote.rs"]
mod slow_remote;
mod soak;
#[path = "../support/sse.rs"]
mod sse;
mod ssh;
#[path = "../../runner/tests/support/sshd.rs"]
mod sshd;
mod statuses;
mod tests_across_builds;
mod throttle;
mod webhooks;
