//! The runner's integration tests: real git repositories, real directories, real processes and
//! real loopback sockets. One test binary (it links once); each module covers one seam.

mod executor;
mod helpers;
mod process;
mod provider;
mod source;
mod ssh;
#[path = "../support/sshd.rs"]
mod sshd;
mod transport;
