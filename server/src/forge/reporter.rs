//! The commit-status reporter: every build's state goes to its repo's forge, off the build's
//! path.
//!
//! A feeder task listens to the scheduler's updates (queued, the first event of a run, finished)
//! and appends the state to the `commit_statuses` outbox; one sender task per repo with a forge
//! takes the outbox's newest state per (commit, context), in order, and POSTs it. A state the
//! forge did not take for a passing reason (a 5xx, a timeout, a rate limit — GitHub's secondary
//! one answers 403 or 429 with `Retry-After` or `x-ratelimit-remaining: 0`) is retried with an
//! exponential backoff (`backon`) or after the wait the forge asked for; a newer state of the
//! same commit replaces it, so the last state always wins. A refusal (401, 404, 422, ...) is not
//! retried: the forge's words are shown on the repo page once. The outbox is durable, so a
//! restart loses nothing; at start (and whenever the feeder fell behind the updates) recent
//! builds whose last queued state is not their current one are queued again.
//!
//! One context, `gantry`, per commit: a forge's required checks name contexts, and stage names
//! change from one `.gantry.yml` to the next, so per-stage contexts would break branch protection
//! whenever a pipeline is edited and leave stages that never ran forever pending; the build's
//! page (`target_url`) shows the stages. Nothing here can delay or fail a build: the feeder only
//! writes to the database, and sending happens on tasks of its own. The token is read when a
//! state is sent, goes into one sensitive header, and is never logged or stored.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use gantry_runner::BuildStatus;
use secrecy::ExposeSecret;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::status::{self, Status, Target, Verdict};
use crate::config::{Config, RepoConfig};
use crate::scheduler::BuildUpdate;
use crate::store::statuses::{CommitState, NewStatus, StatusRow};
use crate::store::{now_ms, BuildId, BuildRow, Store};

/// The context every status is reported under.
pub const STATUS_CONTEXT: &str = "gantry";

/// A status request that has not been answered after this long counts as failed (and is retried).
pub const STATUS_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting to a forge may take.
pub const STATUS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// After this many failed attempts a state is given up (about 25 minutes of backoff).
pub const MAX_STATUS_ATTEMPTS: u32 = 10;

/// The first retry waits this long; each further one twice as long, up to [`RETRY_MAX_DELAY`].
pub const RETRY_MIN_DELAY: Duration = Duration::from_secs(1);

/// The longest wait between two attempts of the reporter's own backoff.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(5 * 60);

/// At start, builds created within this window are compared with what was last queued for them.
pub const RECONCILE_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// After a database error the sender tries again after this long.
pub const STORE_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The forge's answer is read up to this many bytes (its words are cut much shorter anyway).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Start the reporter for every repo that has a forge; nothing starts when none has.
pub fn start(
    store: Store,
    config: Arc<Config>,
    updates: tokio::sync::broadcast::Receiver<BuildUpdate>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    let repos: Vec<String> =
        config.repos.iter().filter(|r| r.forge_settings().is_some()).map(|r| r.name.clone()).collect();
    if repos.is_empty() {
        return Ok(());
    }
    let client = http_client()?;
    let wakes: HashMap<String, Arc<Notify>> = repos.iter().map(|r| (r.clone(), Arc::new(Notify::new()))).collect();
    let feeder = Feeder { store: store.clone(), wakes: wakes.clone(), repos };
    tasks.spawn(feeder.run(updates, shutdown.clone()));
    for (repo, wake) in wakes {
        let sender = Sender { store: store.clone(), config: Arc::clone(&config), client: client.clone(), repo };
        tasks.spawn(sender.run(wake, shutdown.clone()));
    }
    Ok(())
}

/// The HTTP client of every forge: rustls with the system's roots, bounded in time.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
        .timeout(STATUS_REQUEST_TIMEOUT)
        .connect_timeout(STATUS_CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// The state a build in `status` reports.
pub fn commit_state(status: BuildStatus) -> CommitState {
    match status {
        BuildStatus::Queued => CommitState::Pending,
        BuildStatus::Provisioning | BuildStatus::Running => CommitState::Running,
        BuildStatus::Passed => CommitState::Success,
        BuildStatus::Failed => CommitState::Failure,
        BuildStatus::Errored | BuildStatus::Interrupted => CommitState::Error,
        BuildStatus::Cancelled => CommitState::Cancelled,
        BuildStatus::Skipped => CommitState::Skipped,
    }
}

/// The short description of `build` in `state`.
pub fn describe(build: &BuildRow, state: CommitState) -> String {
    let n = build.number;
    let why = || build.error.as_deref().and_then(|e| e.lines().next()).unwrap_or_default().to_string();
    let text = match state {
        CommitState::Pending => format!("Build #{n} is queued"),
        CommitState::Running => format!("Build #{n} is running"),
        CommitState::Success => match took(build) {
            Some(took) => format!("Build #{n} passed in {took}"),
            None => format!("Build #{n} passed"),
        },
        CommitState::Failure => format!("Build #{n} failed"),
        CommitState::Error if build.status == BuildStatus::Interrupted => format!("Build #{n} was interrupted"),
        CommitState::Error => format!("Build #{n} errored: {}", why()),
        CommitState::Cancelled => format!("Build #{n} was cancelled: {}", why()),
        CommitState::Skipped => format!("Not built: {}", why()),
    };
    text.trim_end_matches([':', ' ']).to_string()
}

fn took(build: &BuildRow) -> Option<String> {
    let ms = build.finished_at?.checked_sub(build.started_at?)?;
    let d = Duration::from_secs(u64::try_from(ms).ok()? / 1000);
    Some(humantime::format_duration(d.max(Duration::from_secs(1))).to_string())
}

/// Turns the scheduler's updates into queued states.
struct Feeder {
    store: Store,
    wakes: HashMap<String, Arc<Notify>>,
    repos: Vec<String>,
}

impl Feeder {
    async fn run(self, mut updates: tokio::sync::broadcast::Receiver<BuildUpdate>, shutdown: CancellationToken) {
        // Builds whose run has begun, so their first event queues `running` and the others none.
        let mut running: HashSet<BuildId> = HashSet::new();
        self.reconcile(&mut running).await;
        loop {
            let update = tokio::select! {
                update = updates.recv() => update,
                () = shutdown.cancelled() => return,
            };
            match update {
                Ok(BuildUpdate::Queued { build }) => self.queue(build, Some(CommitState::Pending)).await,
                Ok(BuildUpdate::Event { build, .. }) => {
                    if running.insert(build) {
                        self.queue(build, Some(CommitState::Running)).await;
                    }
                }
                Ok(BuildUpdate::Finished { build, status }) => {
                    running.remove(&build);
                    self.queue(build, Some(commit_state(status))).await;
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the status reporter fell behind the build updates; catching up");
                    self.reconcile(&mut running).await;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Queue `state` (the build's current one when `None`) for `build`, if its repo has a forge.
    async fn queue(&self, build: BuildId, state: Option<CommitState>) {
        let row = match self.store.build(build).await {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(build = %build, %error, "cannot read a build to report its state");
                return;
            }
        };
        let Some(wake) = self.wakes.get(&row.repo) else { return };
        let state = state.unwrap_or_else(|| commit_state(row.status));
        let new = NewStatus {
            repo: row.repo.clone(),
            build,
            commit: row.commit.clone(),
            context: STATUS_CONTEXT.to_string(),
            state,
            description: describe(&row, state),
        };
        match self.store.queue_status(&new).await {
            Ok(_) => wake.notify_one(),
            Err(error) => tracing::error!(build = %build, %error, "cannot queue a commit status"),
        }
    }

    /// Queue the current state of every recent or live build whose last queued state differs.
    async fn reconcile(&self, running: &mut HashSet<BuildId>) {
        let since = now_ms().saturating_sub(i64::try_from(RECONCILE_WINDOW.as_millis()).unwrap_or(i64::MAX));
        let builds = match self.store.builds_with_last_status(&self.repos, since).await {
            Ok(builds) => builds,
            Err(error) => {
                tracing::error!(%error, "cannot compare builds with their reported states");
                return;
            }
        };
        running.clear();
        for (build, last) in builds {
            let Ok(Some(row)) = self.store.build(build).await else { continue };
            let current = commit_state(row.status);
            if current == CommitState::Running {
                running.insert(build);
            }
            if last != Some(current) {
                self.queue(build, Some(current)).await;
            }
        }
    }
}

/// Sends one repo's queued states, one at a time, in order.
struct Sender {
    store: Store,
    config: Arc<Config>,
    client: reqwest::Client,
    repo: String,
}

impl Sender {
    async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let wait = match self.store.next_status_to_send(&self.repo, now_ms()).await {
                Ok(Some(row)) => {
                    self.send(row).await;
                    continue;
                }
                Ok(None) => match self.store.next_status_due_at(&self.repo).await {
                    Ok(Some(at)) => Some(Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0))),
                    Ok(None) => None,
                    Err(error) => {
                        tracing::error!(repo = %self.repo, %error, "cannot read the status outbox");
                        Some(STORE_RETRY_DELAY)
                    }
                },
                Err(error) => {
                    tracing::error!(repo = %self.repo, %error, "cannot read the status outbox");
                    Some(STORE_RETRY_DELAY)
                }
            };
            let sleep = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = wake.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn send(&self, row: StatusRow) {
        let Some(repo) = self.config.repo(&self.repo) else { return };
        let verdict = match self.attempt(repo, &row).await {
            Ok(verdict) => verdict,
            Err(reason) => Verdict::Refused { reason },
        };
        let store = &self.store;
        let result = match verdict {
            Verdict::Accepted => {
                tracing::debug!(repo = %self.repo, build = %row.build, state = row.state.as_str(), "commit status sent");
                match store.status_sent(row.id).await {
                    Ok(()) => store.set_forge_error(&self.repo, None).await,
                    Err(error) => Err(error),
                }
            }
            Verdict::Retry { after, reason } => {
                let attempts = row.attempts.saturating_add(1);
                if attempts >= MAX_STATUS_ATTEMPTS {
                    let reason = format!("{reason} (gave up after {attempts} attempts)");
                    self.refused(&row, &reason).await
                } else {
                    let wait = after.unwrap_or_else(|| backoff(attempts));
                    tracing::info!(repo = %self.repo, build = %row.build, %reason, attempts,
                        retry_in = %humantime::format_duration(wait), "commit status not taken; retrying");
                    let next = now_ms().saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                    let shown = self.notice(&row, &format!("{reason} (retrying)"));
                    match store.status_retry(row.id, attempts, next, &reason).await {
                        Ok(()) => store.set_forge_error(&self.repo, Some(&shown)).await,
                        Err(error) => Err(error),
                    }
                }
            }
            Verdict::Refused { reason } => self.refused(&row, &reason).await,
        };
        if let Err(error) = result {
            tracing::error!(repo = %self.repo, %error, "cannot record the outcome of a commit status");
        }
    }

    /// Give the state up and show why on the repo page.
    async fn refused(&self, row: &StatusRow, reason: &str) -> Result<(), crate::store::StoreError> {
        tracing::warn!(repo = %self.repo, build = %row.build, %reason, "commit status refused; not retried");
        self.store.status_failed(row.id, reason).await?;
        self.store.set_forge_error(&self.repo, Some(&self.notice(row, reason))).await
    }

    /// What the repo page shows about a failed report.
    fn notice(&self, row: &StatusRow, reason: &str) -> String {
        let short: String = row.commit.chars().take(12).collect();
        format!("Reporting the {} state of commit {short} failed: {reason}", row.state.as_str())
    }

    /// One attempt. `Err` is a problem on this side (no token, a bad project), never retried.
    async fn attempt(&self, repo: &RepoConfig, row: &StatusRow) -> Result<Verdict, String> {
        let settings = repo.forge_settings().ok_or("the repo has no forge configured")?;
        let token = settings.token.resolve("forge_token").map_err(|e| e.to_string())?;
        let build = self.store.build(row.build).await.map_err(|e| e.to_string())?;
        let target_url = self.config.public_url.as_ref().map(|url| format!("{}/builds/{}", url.as_str(), row.build));
        // GitLab wants the branch a status belongs to: a request's source branch, as its docs ask.
        let git_ref = build.as_ref().map(|b| b.branch.as_str());
        let status = Status {
            commit: &row.commit,
            state: row.state,
            context: &row.context,
            description: &row.description,
            target_url: target_url.as_deref(),
            git_ref,
        };
        let target = Target { kind: settings.kind, api: settings.api, project: settings.project };
        let request = status::request(target, &token, status).map_err(|e| e.to_string())?;
        let answer = self.client.post(&request.url).headers(request.headers).json(&request.body).send().await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                // reqwest names the URL, which holds no credentials; the token is in a header.
                let reason = format!("{} could not be reached: {}", settings.kind, error_chain(&error));
                return Ok(Verdict::Retry { after: None, reason: scrub(&reason, token.expose_secret()) });
            }
        };
        let code = answer.status();
        let headers = answer.headers().clone();
        let body = read_capped(answer).await;
        let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Ok(match status::judge(settings.kind, code, &headers, &body, now_unix) {
            Verdict::Accepted => Verdict::Accepted,
            Verdict::Retry { after, reason } => Verdict::Retry { after, reason: scrub(&reason, token.expose_secret()) },
            Verdict::Refused { reason } => Verdict::Refused { reason: scrub(&reason, token.expose_secret()) },
        })
    }
}

/// The answer's body, at most [`MAX_ANSWER_BYTES`] of it.
async fn read_capped(mut answer: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = answer.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ANSWER_BYTES {
            body.truncate(MAX_ANSWER_BYTES);
            break;
        }
    }
    body
}

/// An error with its causes, one after the other (reqwest's own message is terse).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A forge that echoes the token back must not get it shown.
fn scrub(text: &str, token: &str) -> String {
    if token.is_empty() {
        text.to_string()
    } else {
        text.replace(token, "***")
    }
}

/// The wait before attempt `attempts + 1` under the reporter's own backoff.
pub fn backoff(attempts: u32) -> Duration {
    ExponentialBuilder::new()
        .with_min_delay(RETRY_MIN_DELAY)
        .with_max_delay(RETRY_MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX))
        .unwrap_or(RETRY_MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RefKind, Trigger};

    fn build(status: BuildStatus, error: Option<&str>) -> BuildRow {
        BuildRow {
            id: BuildId(7),
            repo: "acme".into(),
            number: 12,
            commit: "a".repeat(40),
            branch: "main".into(),
            ref_kind: RefKind::Branch,
            trigger: Trigger::Push,
            status,
            created_at: 0,
            started_at: Some(1_000),
            finished_at: Some(66_000),
            error: error.map(str::to_string),
            rerun_of: None,
            pull_request: None,
            event_seq: 0,
        }
    }

    #[test]
    fn descriptions_are_short_and_say_what_happened() {
        let passed = build(BuildStatus::Passed, None);
        assert_eq!(describe(&passed, CommitState::Success), "Build #12 passed in 1m 5s");
        assert_eq!(describe(&passed, CommitState::Pending), "Build #12 is queued");
        let skipped =
            build(BuildStatus::Skipped, Some("the pipeline's on.pull_requests does not build requests into dev"));
        assert_eq!(
            describe(&skipped, CommitState::Skipped),
            "Not built: the pipeline's on.pull_requests does not build requests into dev"
        );
        let errored = build(BuildStatus::Errored, Some(".gantry.yml:3:5: unknown key\nmore"));
        assert_eq!(describe(&errored, CommitState::Error), "Build #12 errored: .gantry.yml:3:5: unknown key");
        assert_eq!(describe(&build(BuildStatus::Cancelled, None), CommitState::Cancelled), "Build #12 was cancelled");
    }

    #[test]
    fn every_build_status_has_a_state() {
        assert_eq!(commit_state(BuildStatus::Provisioning), CommitState::Running);
        assert_eq!(commit_state(BuildStatus::Interrupted), CommitState::Error);
        assert_eq!(commit_state(BuildStatus::Skipped), CommitState::Skipped);
    }

    #[test]
    fn the_backoff_grows_and_is_capped() {
        assert!(backoff(1) >= RETRY_MIN_DELAY && backoff(1) <= RETRY_MIN_DELAY * 2);
        assert!(backoff(4) >= RETRY_MIN_DELAY * 8);
        assert!(backoff(50) <= RETRY_MAX_DELAY * 2);
    }

    #[test]
    fn a_token_echoed_by_a_forge_is_scrubbed() {
        assert_eq!(scrub("bad token tok-1 given", "tok-1"), "bad token *** given");
        assert_eq!(scrub("nothing", ""), "nothing");
    }
}
