//! How an SSH connection to a host is made and kept: the target's address and identity, key
//! authentication, the check that the server presents exactly the configured host key, keepalives,
//! bounded retries for a machine still booting, and the reconnect of a connection found dead
//! before a command.
//!
//! Nothing here runs a command on the host.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use russh::client::{self, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};

use super::SshTransport;
use crate::provider::HostId;
use crate::transport::TransportError;

/// How often a keepalive is sent on a connection that is otherwise silent.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// How many unanswered keepalives in a row close a connection as lost.
pub const KEEPALIVE_MAX: usize = 3;

/// The longest one connection attempt (TCP, key exchange, authentication) may take.
pub const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The first pause between two connection attempts; it doubles up to [`CONNECT_BACKOFF_MAX`].
pub const CONNECT_BACKOFF_START: Duration = Duration::from_millis(100);

/// The longest pause between two connection attempts.
pub const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How long a dead connection found before a command may take to come back.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to reach one remote host.
#[derive(Clone)]
pub struct SshTarget {
    pub address: IpAddr,
    pub port: u16,
    pub user: String,
    /// The client key (key authentication only).
    pub key: Arc<PrivateKey>,
    /// The ONLY server key accepted for this host.
    pub host_key: PublicKey,
    /// Absolute remote directory that is this host's `~` for Gantry (a fresh work dir).
    pub home: String,
    /// Marker put into every remote process's environment.
    pub host_id: HostId,
}

impl std::fmt::Debug for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTarget")
            .field("address", &self.address)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("home", &self.home)
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

impl SshTarget {
    fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// `user@address:port`, for messages.
    pub(super) fn name(&self) -> String {
        format!("{}@{}", self.user, self.socket())
    }
}

impl SshTransport {
    /// The live session, reconnecting first when the connection was found dead.
    pub(super) async fn session(&self) -> Result<Arc<Handle<Client>>, TransportError> {
        let mut session = self.session.lock().await;
        if session.is_closed() {
            tracing::info!(host = %self.target.host_id, machine = %self.target.name(), "connection lost; reconnecting");
            let timeout = self.connect_timeout.max(RECONNECT_TIMEOUT);
            *session = Arc::new(connect_with_retry(&self.target, timeout).await?);
        }
        Ok(session.clone())
    }
}

/// The russh client handler: accepts exactly one host key.
pub(super) struct Client {
    host_key: PublicKey,
    /// What the server presented when it was refused, for the error message.
    refused: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let presented = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(certificate) => {
                *self.refused.lock().unwrap() = Some(format!(
                    "a certificate signed by {}",
                    certificate.signature_key().fingerprint(russh::keys::HashAlg::Sha256)
                ));
                return Ok(false);
            }
        };
        // Compare the key material only: the comment is not part of the key.
        if presented.key_data() == self.host_key.key_data() {
            return Ok(true);
        }
        let fingerprint = presented.fingerprint(russh::keys::HashAlg::Sha256);
        *self.refused.lock().unwrap() = Some(format!("{} {fingerprint}", presented.algorithm()));
        Ok(false)
    }
}

/// Why one connection attempt failed, and whether trying again can help.
enum AttemptError {
    /// The machine may still be booting: refused, reset, timed out.
    Retry(String),
    /// Trying again cannot help: a wrong host key, a refused key.
    Fatal(TransportError),
}

/// Connect to `target`, retrying what may be a machine still booting (a refused, reset or
/// unanswered attempt) with exponential backoff from [`CONNECT_BACKOFF_START`] to
/// [`CONNECT_BACKOFF_MAX`], each attempt under [`CONNECT_ATTEMPT_TIMEOUT`] and the remaining
/// budget, until `timeout` is spent: no retry starts when its pause would reach the end of the
/// budget. A wrong host key or a refused client key fails at once.
pub(super) async fn connect_with_retry(
    target: &SshTarget,
    timeout: Duration,
) -> Result<Handle<Client>, TransportError> {
    let give_up = tokio::time::Instant::now() + timeout;
    let attempts = AtomicU32::new(0);
    let attempt = || async {
        attempts.fetch_add(1, Ordering::Relaxed);
        let remaining = give_up.saturating_duration_since(tokio::time::Instant::now());
        let attempt_timeout = CONNECT_ATTEMPT_TIMEOUT.min(remaining.max(Duration::from_millis(1)));
        match tokio::time::timeout(attempt_timeout, connect_once(target)).await {
            Ok(result) => result,
            Err(_) => Err(AttemptError::Retry(format!("no answer within {attempt_timeout:?}"))),
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(CONNECT_BACKOFF_START)
        .with_max_delay(CONNECT_BACKOFF_MAX)
        .with_factor(2.0)
        .without_max_times();
    // Poll with a deadline: a booting machine gives no event to wait on.
    let connected = attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|error| matches!(error, AttemptError::Retry(_)))
        .adjust(|_, pause| pause.filter(|pause| tokio::time::Instant::now() + *pause < give_up))
        .notify(|error, _| {
            if let AttemptError::Retry(message) = error {
                let attempts = attempts.load(Ordering::Relaxed);
                tracing::debug!(machine = %target.name(), attempts, error = %message, "ssh connection attempt failed; retrying");
            }
        })
        .await;
    match connected {
        Ok(handle) => Ok(handle),
        Err(AttemptError::Fatal(error)) => Err(error),
        Err(AttemptError::Retry(last_error)) => Err(TransportError::Connect(format!(
            "{}: gave up after {} attempts in {timeout:?}: {last_error}",
            target.name(),
            attempts.load(Ordering::Relaxed)
        ))),
    }
}

async fn connect_once(target: &SshTarget) -> Result<Handle<Client>, AttemptError> {
    let config = Arc::new(client::Config {
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        ..Default::default()
    });
    let refused = Arc::new(std::sync::Mutex::new(None));
    let handler = Client { host_key: target.host_key.clone(), refused: refused.clone() };
    let mut handle = match client::connect(config, target.socket(), handler).await {
        Ok(handle) => handle,
        Err(error) => {
            if let Some(presented) = refused.lock().unwrap().take() {
                return Err(AttemptError::Fatal(TransportError::HostKeyMismatch(format!(
                    "{} presented host key {presented}, not the configured {} {}",
                    target.name(),
                    target.host_key.algorithm(),
                    target.host_key.fingerprint(russh::keys::HashAlg::Sha256)
                ))));
            }
            return Err(AttemptError::Retry(error.to_string()));
        }
    };
    let hash = if target.key.algorithm().is_rsa() {
        handle.best_supported_rsa_hash().await.ok().flatten().flatten()
    } else {
        None
    };
    let auth = handle
        .authenticate_publickey(target.user.clone(), PrivateKeyWithHashAlg::new(target.key.clone(), hash))
        .await
        .map_err(|error| AttemptError::Retry(format!("authentication interrupted: {error}")))?;
    if !auth.success() {
        return Err(AttemptError::Fatal(TransportError::Auth(format!(
            "{} refused key {} for user {}",
            target.name(),
            target.key.public_key().fingerprint(russh::keys::HashAlg::Sha256),
            target.user
        ))));
    }
    Ok(handle)
}

/// Parse `ssh-ed25519 AAAA… [comment]` as in the config's `host_key`.
pub fn parse_public_key(openssh: &str) -> Result<PublicKey, TransportError> {
    PublicKey::from_openssh(openssh.trim()).map_err(|error| {
        TransportError::Other(format!("not an OpenSSH public key ({error}): {:?}", abbreviate(openssh)))
    })
}

fn abbreviate(text: &str) -> String {
    const SHOWN: usize = 40;
    let text = text.trim();
    match text.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

pub(super) fn lost(target: &SshTarget) -> impl Fn(russh::Error) -> TransportError + '_ {
    move |error| TransportError::ConnectionLost(format!("{}: {error}", target.name()))
}

#[cfg(test)]
mod tests {
    use russh::keys::ssh_key::private::Ed25519Keypair;

    use super::*;

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
    }

    /// A loopback port that accepts every connection and drops it at once, as a machine whose
    /// sshd is not up yet may.
    async fn dropping_listener() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        port
    }

    #[tokio::test]
    async fn retries_back_off_and_give_up_within_the_budget() {
        let target = SshTarget {
            address: IpAddr::from([127, 0, 0, 1]),
            port: dropping_listener().await,
            user: "gantry".into(),
            key: Arc::new(key(1)),
            host_key: key(2).public_key().clone(),
            home: "/nowhere".into(),
            host_id: HostId("h-retry".into()),
        };
        let budget = Duration::from_secs(2);
        let started = std::time::Instant::now();
        let error = connect_with_retry(&target, budget).await.err().expect("nothing can connect");
        let elapsed = started.elapsed();
        let TransportError::Connect(message) = &error else { panic!("not a connect error: {error}") };
        let attempts: u32 = message
            .split("gave up after ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no attempt count in {message:?}"));
        // The pauses of 0.1 s, 0.2 s and 0.4 s all fit in the budget; the fourth attempt follows them.
        assert!(attempts >= 4, "only {attempts} attempts: {message}");
        assert!(elapsed >= Duration::from_millis(700), "gave up after {elapsed:?}, before the pauses ran");
        // No pause reaches past the budget, so only the last quick attempt may overrun it.
        assert!(elapsed < budget + Duration::from_secs(1), "gave up after {elapsed:?}");
    }
}
