//! A network namespace per build, so a build's hosts reach each other and nothing else.
//!
//! A fresh namespace holds only a loopback interface; once it is up, all of 127.0.0.0/8 answers
//! inside it, so every address the provider hands the build's hosts works there, while another
//! build's hosts (in their own namespaces) and every service on the machine's own loopback are
//! out of reach. A namespace is made by a short-lived thread (`unshare(CLONE_NEWNET)` changes only
//! the calling thread, and a thread of tokio's pool must never be left inside one), which brings
//! `lo` up and hands back a descriptor of `/proc/thread-self/ns/net`. Making one takes about
//! half a millisecond, so [`Namespaces`] keeps one made ahead, in the background, for the next
//! build. The provider keeps a build's descriptor while any host of the build lives
//! ([`Namespaces`] counts them); the local transport enters it in each child before `exec`
//! (`setns`). The kernel frees the namespace when the last descriptor closes and its last process
//! exits. With egress, the thread that makes a namespace also binds the [`egress`] proxy's
//! listener in it; the proxy serves from the moment the namespace is a build's until it is
//! dropped.
//!
//! This module never starts a host's processes and never touches files.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

use nix::sched::CloneFlags;

use super::egress::{self, EgressProxy};

/// Where a thread finds its own network namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// The loopback interface's name.
const LOOPBACK: &[u8] = b"lo";

/// The name of the thread that makes a namespace.
const THREAD_NAME: &str = "gantry-netns";

/// One build's network namespace, open for as long as this value lives.
#[derive(Debug)]
pub struct NetNs {
    build: String,
    fd: OwnedFd,
    /// The way out, when builds have one.
    egress: Option<EgressProxy>,
}

/// A namespace made ahead, not yet any build's, and its egress proxy's listener.
#[derive(Debug)]
struct Blank {
    fd: OwnedFd,
    egress: Option<std::net::TcpListener>,
}

impl Blank {
    /// A new namespace with its loopback interface up (and the egress proxy's listener bound in
    /// it when `egress`), made on a thread of its own. Needs CAP_SYS_ADMIN (root).
    fn create(egress: bool) -> std::io::Result<Blank> {
        std::thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || Blank::create_here(egress))?
            .join()
            .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
    }

    /// Move the calling thread into a new namespace and bring its `lo` up. Only for a thread
    /// that ends right after.
    fn create_here(egress: bool) -> std::io::Result<Blank> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
        loopback_up()?;
        let egress = if egress { Some(egress::bind_here()?) } else { None };
        Ok(Blank { fd: std::fs::File::open(THREAD_NETNS)?.into(), egress })
    }

    /// Give the namespace to `build`, starting its egress proxy on the current tokio runtime.
    fn assign(self, build: &str) -> std::io::Result<NetNs> {
        let egress = match self.egress {
            Some(listener) => Some(EgressProxy::start(listener, build, self.fd.try_clone()?)?),
            None => None,
        };
        Ok(NetNs { build: build.to_string(), fd: self.fd, egress })
    }
}

impl NetNs {
    /// The build this namespace belongs to (`b12`).
    pub fn build(&self) -> &str {
        &self.build
    }

    /// Where the build's egress proxy listens inside the namespace, when builds have one.
    pub fn egress_proxy(&self) -> Option<std::net::SocketAddr> {
        self.egress.as_ref().map(|_| egress::PROXY_ADDRESS)
    }

    /// Move the calling thread into this namespace. Only a forked child about to `exec` calls
    /// this (it is async-signal-safe: one system call).
    pub fn enter(fd: BorrowedFd<'_>) -> std::io::Result<()> {
        nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// The namespaces of the builds that have live hosts, one per build key, and one made ahead.
#[derive(Debug)]
pub struct Namespaces {
    /// Whether each namespace gets an egress proxy.
    egress: bool,
    by_build: Mutex<HashMap<String, Weak<NetNs>>>,
    /// The next build's namespace, made in the background after the last one was taken.
    spare: Arc<Mutex<Option<Blank>>>,
}

impl Namespaces {
    /// Make the first namespace now: an error means this process may not make them at all (not
    /// root, or a container that forbids it).
    /// With `egress`, each build's namespace has an egress proxy.
    pub fn new(egress: bool) -> std::io::Result<Namespaces> {
        let first = Blank::create(egress)?;
        Ok(Namespaces { egress, by_build: Mutex::default(), spare: Arc::new(Mutex::new(Some(first))) })
    }

    /// The namespace of `build`: the one its live hosts hold, or the spare, or one made now.
    /// Blocking; called within a tokio runtime (on its blocking pool), where the egress proxy
    /// runs.
    pub fn for_build(&self, build: &str) -> std::io::Result<Arc<NetNs>> {
        let mut by_build = self.by_build.lock().expect("namespace table poisoned");
        if let Some(ns) = by_build.get(build).and_then(Weak::upgrade) {
            return Ok(ns);
        }
        by_build.retain(|_, ns| ns.strong_count() > 0);
        let spare = self.spare.lock().expect("spare namespace poisoned").take();
        let blank = match spare {
            Some(blank) => blank,
            None => Blank::create(self.egress)?,
        };
        self.make_spare();
        let ns = Arc::new(blank.assign(build)?);
        by_build.insert(build.to_string(), Arc::downgrade(&ns));
        Ok(ns)
    }

    /// Make the next spare on a thread of its own (which it leaves in the new namespace and
    /// ends). A failure only means the next build makes its own.
    fn make_spare(&self) {
        let (spare, egress) = (Arc::clone(&self.spare), self.egress);
        let made =
            std::thread::Builder::new().name(THREAD_NAME.to_string()).spawn(move || match Blank::create_here(egress) {
                Ok(blank) => {
                    let mut slot = spare.lock().expect("spare namespace poisoned");
                    if slot.is_none() {
                        *slot = Some(blank);
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot make a network namespace ahead"),
            });
        if let Err(error) = made {
            tracing::warn!(%error, "cannot start the thread that makes a network namespace ahead");
        }
    }

    /// How many builds hold a namespace now.
    pub fn live(&self) -> usize {
        self.by_build.lock().expect("namespace table poisoned").values().filter(|ns| ns.strong_count() > 0).count()
    }
}

/// Bring the calling thread's `lo` up: `SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with `IFF_UP`, on a
/// socket made in this thread (so in its namespace).
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: socket(2) with constant arguments; a non-negative result is a descriptor we own.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `socket` was just opened and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    // SAFETY: `ifreq` is plain data (a name and a union of integers); all zeros is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(LOOPBACK) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: both requests read and write one `ifreq` we own, on a socket we own.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
