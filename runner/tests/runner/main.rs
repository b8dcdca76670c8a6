//! The runner's integration tests: real git repositories, real directories, real processes and
//! real loopback sockets. One test binary (it links once); each module covers one seam.

mod ec2;
#[path = "../support/ec2_cloud.rs"]
mod ec2_cloud;
mod executor;
#[path = "../support/fault_proxy.rs"]
mod fault_proxy;
#[path = "../../../tests/support/fixture.rs"]
mod fixture;
mod helpers;
mod isolation;
#[path = "../support/moto.rs"]
mod moto;
#[path = "../../../tests/support/prerequisite.rs"]
mod prerequisite;
mod process;
mod provider;
mod secrets;
mod source;
mod ssh;
#[path = "../support/sshd.rs"]
mod sshd;
mod transport;
