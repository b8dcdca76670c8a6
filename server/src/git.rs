//! Local bare mirrors of the configured repositories, under `data_dir/repos/<name>.git`.
//!
//! This module owns fetching (always from the URL in the server's configuration, never from a URL
//! in a webhook payload), finding commits and branch heads, and reading a file at a commit. git2
//! is blocking, so every operation runs on a blocking thread; fetches of one repo are serialized
//! by a lock per repo. It records nothing in the database: callers decide what a fetch error
//! means (a repo page's `last_error`, an errored build). A URL may carry credentials: this is the
//! one place that exposes them (to libgit2), and its errors name the repo, never the URL, with
//! the credentials scrubbed out of libgit2's own messages.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use gantry_runner::source::{GitCommitSource, Source};
use git2::{
    AutotagOption, Cred, CredentialType, ErrorCode, FetchOptions, FetchPrune, Oid, RemoteCallbacks, Repository,
};

use crate::repo_url::RepoUrl;

/// The refspecs of a mirror: every branch and every tag, force-updated.
const MIRROR_REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

/// A fetch still transferring after this long is aborted.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// How many times a fetch asks for credentials before giving up (libgit2 asks again after each
/// rejected one).
const MAX_CREDENTIAL_ATTEMPTS: u32 = 3;

/// libgit2's connect timeout for remote fetches, set once before the first fetch.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// libgit2's timeout for a stalled read or write on a remote, set once before the first fetch.
pub const NETWORK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `message` is libgit2's, with the URL's credentials scrubbed out.
    #[error("fetching repo {repo:?} failed: {message}")]
    Fetch { repo: String, message: String },
    #[error("commit {commit} is not in repo {repo:?}")]
    CommitNotFound { commit: String, repo: String },
    /// A pull request's head commit could not be reached through the request's ref.
    #[error("commit {commit} is not reachable through {head_ref} of repo {repo:?}: {reason}")]
    NotInRequest { commit: String, head_ref: String, repo: String, reason: String },
    #[error("{what:?} is not a commit id")]
    BadCommitId { what: String },
    #[error("git error in the mirror of {repo}: {source}")]
    Mirror { repo: String, source: git2::Error },
    #[error("reading {path} at {commit}: {message}")]
    Read { commit: String, path: String, message: String },
    #[error("a git task failed: {0}")]
    Task(String),
}

/// Set libgit2's process-wide network timeouts, once, before the process's first fetch.
///
/// Lazy on purpose: the first git2 call initializes libgit2 (and OpenSSL with it), about 4 MiB a
/// server that builds nothing yet does not need to hold; doing it in `main` cost every idle server
/// that. Every fetch of the process goes through [`fetch_blocking`], which calls this first.
fn set_network_timeouts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let millis = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: git2 marks these setters unsafe because they write two libgit2 globals without
        // synchronization. Those globals are read only by libgit2's network streams, that is by
        // fetches, and every fetch of this process runs after this initializer: `Once` runs it
        // exactly once (no two writes race) and makes its writes happen before every later
        // `call_once` returns, so before any fetch reads them. Other git2 calls that may run
        // meanwhile on other threads (reading trees, checking ref names) never touch them, and
        // libgit2's own initialization, which the setters do first, is itself behind a `Once`.
        let set = unsafe {
            git2::opts::set_server_connect_timeout_in_milliseconds(millis(CONNECT_TIMEOUT))
                .and_then(|()| git2::opts::set_server_timeout_in_milliseconds(millis(NETWORK_TIMEOUT)))
        };
        if let Err(error) = set {
            tracing::warn!(%error, "could not set git's network timeouts");
        }
    });
}

/// Every mirror of this server.
#[derive(Debug)]
pub struct Mirrors {
    root: PathBuf,
    /// One lock per repo, so two fetches of one repo never run at once.
    fetch_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Mirrors {
    /// Mirrors live in `root` (`data_dir/repos`), created on first use.
    pub fn new(root: PathBuf) -> Mirrors {
        Mirrors { root, fetch_locks: Mutex::new(HashMap::new()) }
    }

    /// The bare repository of `repo`.
    pub fn path(&self, repo: &str) -> PathBuf {
        self.root.join(format!("{repo}.git"))
    }

    fn fetch_lock(&self, repo: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.fetch_locks.lock().expect("fetch lock table poisoned");
        Arc::clone(locks.entry(repo.to_string()).or_default())
    }

    /// Fetch every branch and tag of `url` into `repo`'s mirror, pruning what the remote deleted.
    pub async fn fetch(&self, repo: &str, url: &RepoUrl) -> Result<(), GitError> {
        let lock = self.fetch_lock(repo);
        let _guard = lock.lock().await;
        let (path, repo, url) = (self.path(repo), repo.to_string(), url.clone());
        blocking(move || fetch_blocking(&path, &repo, &url, &MIRROR_REFSPECS)).await
    }

    /// Make sure `commit`, the head of a pull (merge) request, is in the mirror, reachable
    /// through `head_ref` (`refs/pull/N/head`, `refs/merge-requests/N/head`) of the configured
    /// URL: the ref is fetched into the mirror under its own name, and `commit` must be its
    /// target or one of its ancestors (a newer push may already have moved it on). A request from
    /// a fork is fetched the same way: the forge keeps its head under the target repo's ref.
    pub async fn ensure_request_head(
        &self,
        repo: &str,
        url: &RepoUrl,
        head_ref: &str,
        commit: &str,
    ) -> Result<Oid, GitError> {
        let oid = Oid::from_str(commit).map_err(|_| GitError::BadCommitId { what: commit.to_string() })?;
        if !git2::Reference::is_valid_name(head_ref) {
            return Err(GitError::BadCommitId { what: head_ref.to_string() });
        }
        let lock = self.fetch_lock(repo);
        let _guard = lock.lock().await;
        let (path, name, url, head_ref) = (self.path(repo), repo.to_string(), url.clone(), head_ref.to_string());
        blocking(move || {
            let refspec = format!("+{head_ref}:{head_ref}");
            fetch_blocking(&path, &name, &url, &[refspec.as_str()])?;
            let not_in_request = |reason: String| GitError::NotInRequest {
                commit: oid.to_string(),
                head_ref: head_ref.clone(),
                repo: name.clone(),
                reason,
            };
            let mirror =
                Repository::open_bare(&path).map_err(|source| GitError::Mirror { repo: name.clone(), source })?;
            let target = match mirror.find_reference(&head_ref).and_then(|r| r.peel_to_commit()) {
                Ok(commit) => commit.id(),
                Err(_) => return Err(not_in_request("the repository has no such ref".to_string())),
            };
            let reachable = target == oid || mirror.graph_descendant_of(target, oid).unwrap_or(false);
            if reachable {
                Ok(oid)
            } else {
                Err(not_in_request(format!("the ref points at {target}, which does not contain it")))
            }
        })
        .await
    }

    /// Make sure `commit` (a full sha, or an abbreviation the mirror can resolve) is in the
    /// mirror, fetching only when it is missing. Returns its full id.
    pub async fn ensure_commit(&self, repo: &str, url: &RepoUrl, commit: &str) -> Result<Oid, GitError> {
        if let Some(oid) = self.find_commit(repo, commit).await? {
            return Ok(oid);
        }
        let lock = self.fetch_lock(repo);
        let _guard = lock.lock().await;
        // Another task may have fetched it while this one waited for the lock.
        if let Some(oid) = self.find_commit(repo, commit).await? {
            return Ok(oid);
        }
        let (path, name, url) = (self.path(repo), repo.to_string(), url.clone());
        blocking(move || fetch_blocking(&path, &name, &url, &MIRROR_REFSPECS)).await?;
        self.find_commit(repo, commit)
            .await?
            .ok_or_else(|| GitError::CommitNotFound { commit: commit.to_string(), repo: repo.to_string() })
    }

    /// The commit `spec` (a full sha or an abbreviation) names in the mirror, if it is there.
    pub async fn find_commit(&self, repo: &str, spec: &str) -> Result<Option<Oid>, GitError> {
        if spec.is_empty() || spec.len() > 40 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(GitError::BadCommitId { what: spec.to_string() });
        }
        let spec = spec.to_string();
        let found = self
            .read_mirror(repo, move |mirror, repo| {
                let object =
                    absent_as_none(mirror.revparse_single(&spec), repo, &[ErrorCode::NotFound, ErrorCode::Ambiguous])?;
                Ok(object.and_then(|o| o.peel_to_commit().ok()).map(|c| c.id()))
            })
            .await?;
        Ok(found.flatten())
    }

    /// The commit `branch` points at in the mirror (as of the last fetch).
    pub async fn resolve_branch(&self, repo: &str, branch: &str) -> Result<Option<Oid>, GitError> {
        self.resolve_ref(repo, format!("refs/heads/{branch}")).await
    }

    /// The commit `tag` points at in the mirror (annotated tags are peeled).
    pub async fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<Oid>, GitError> {
        self.resolve_ref(repo, format!("refs/tags/{tag}")).await
    }

    async fn resolve_ref(&self, repo: &str, name: String) -> Result<Option<Oid>, GitError> {
        let found = self
            .read_mirror(repo, move |mirror, repo| {
                let reference =
                    absent_as_none(mirror.find_reference(&name), repo, &[ErrorCode::NotFound, ErrorCode::InvalidSpec])?;
                Ok(reference.and_then(|r| r.peel_to_commit().ok()).map(|c| c.id()))
            })
            .await?;
        Ok(found.flatten())
    }

    /// Every branch of the mirror and the commit it points at.
    pub async fn branch_heads(&self, repo: &str) -> Result<BTreeMap<String, String>, GitError> {
        let heads = self
            .read_mirror(repo, |mirror, repo| {
                let mirror_err = |source| GitError::Mirror { repo: repo.to_string(), source };
                let mut heads = BTreeMap::new();
                for reference in mirror.references_glob("refs/heads/*").map_err(mirror_err)? {
                    let reference = reference.map_err(mirror_err)?;
                    let (Ok(name), Ok(commit)) = (reference.shorthand(), reference.peel_to_commit()) else {
                        continue;
                    };
                    heads.insert(name.to_string(), commit.id().to_string());
                }
                Ok(heads)
            })
            .await?;
        Ok(heads.unwrap_or_default())
    }

    /// The message of `commit`, `None` when the mirror does not have it.
    pub async fn commit_message(&self, repo: &str, commit: Oid) -> Result<Option<String>, GitError> {
        let message = self
            .read_mirror(repo, move |mirror, _| {
                Ok(mirror.find_commit(commit).ok().map(|c| String::from_utf8_lossy(c.message_bytes()).into_owned()))
            })
            .await?;
        Ok(message.flatten())
    }

    /// Run `read` on the repo's mirror off the async threads; `None` when the mirror was never
    /// fetched. `read` gets the repo's name for its errors.
    async fn read_mirror<T: Send + 'static>(
        &self,
        repo: &str,
        read: impl FnOnce(&Repository, &str) -> Result<T, GitError> + Send + 'static,
    ) -> Result<Option<T>, GitError> {
        let (path, repo) = (self.path(repo), repo.to_string());
        blocking(move || match Repository::open_bare(&path) {
            Ok(mirror) => read(&mirror, &repo).map(Some),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(source) => Err(GitError::Mirror { repo, source }),
        })
        .await
    }

    /// The tree of `commit` as a runner [`Source`].
    pub fn source(&self, repo: &str, commit: Oid) -> GitCommitSource {
        GitCommitSource { repo_path: self.path(repo), commit, label: repo.to_string() }
    }

    /// The contents of `path` at `commit`, `None` when the commit has no such file.
    pub async fn read_file_at(&self, repo: &str, commit: Oid, path: &str) -> Result<Option<Vec<u8>>, GitError> {
        let source = self.source(repo, commit);
        let path = path.to_string();
        blocking(move || {
            source.read_file(&path).map_err(|e| GitError::Read {
                commit: commit.to_string(),
                path: path.clone(),
                message: e.to_string(),
            })
        })
        .await
    }
}

/// Run a blocking git operation off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, GitError> + Send + 'static) -> Result<T, GitError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| GitError::Task(e.to_string()))?
}

/// A lookup's result, with the error codes that mean "not there" as `None`.
fn absent_as_none<T>(result: Result<T, git2::Error>, repo: &str, absent: &[ErrorCode]) -> Result<Option<T>, GitError> {
    match result {
        Ok(found) => Ok(Some(found)),
        Err(e) if absent.contains(&e.code()) => Ok(None),
        Err(source) => Err(GitError::Mirror { repo: repo.to_string(), source }),
    }
}

/// Fetch `refspecs` of `url` into the mirror at `path` (created on first use). Pruning applies to
/// what the refspecs name: a branch or tag the remote deleted goes, other refs stay.
fn fetch_blocking(path: &Path, repo: &str, url: &RepoUrl, refspecs: &[&str]) -> Result<(), GitError> {
    set_network_timeouts();
    let fetch_err = |e: git2::Error| GitError::Fetch { repo: repo.to_string(), message: url.scrub(e.message()) };
    let mirror = match Repository::open_bare(path) {
        Ok(mirror) => mirror,
        Err(_) => Repository::init_bare(path).map_err(fetch_err)?,
    };
    let mut remote = mirror.remote_anonymous(url.expose()).map_err(fetch_err)?;
    let started = Instant::now();
    let mut callbacks = RemoteCallbacks::new();
    // Returning false from the progress callback aborts a transfer that takes too long.
    callbacks.transfer_progress(move |_| started.elapsed() < FETCH_TIMEOUT);
    let mut attempts = 0;
    callbacks.credentials(move |url, username, allowed| {
        attempts += 1;
        if attempts > MAX_CREDENTIAL_ATTEMPTS {
            return Err(git2::Error::from_str("no credentials were accepted"));
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            return Cred::ssh_key_from_agent(username.unwrap_or("git"));
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            let config = git2::Config::open_default()?;
            return Cred::credential_helper(&config, url, username);
        }
        Cred::default()
    });
    let mut options = FetchOptions::new();
    options.remote_callbacks(callbacks).prune(FetchPrune::On).download_tags(AutotagOption::None);
    remote.fetch(refspecs, Some(&mut options), None).map_err(fetch_err)?;
    tracing::debug!(%repo, elapsed_ms = started.elapsed().as_millis() as u64, "fetched");
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    /// Commit `files` on top of `branch` (creating it) in the non-bare repo at `dir`; returns the
    /// commit's sha.
    pub fn commit(dir: &Path, branch: &str, files: &[(&str, &str)]) -> String {
        let repo = git2::Repository::open(dir)
            .or_else(|_| git2::Repository::init_opts(dir, git2::RepositoryInitOptions::new().initial_head("main")))
            .unwrap();
        let parent = repo.find_branch(branch, git2::BranchType::Local).ok().map(|b| b.get().peel_to_commit().unwrap());
        let mut builder = repo.treebuilder(parent.as_ref().map(|p| p.tree().unwrap()).as_ref()).unwrap();
        for (path, contents) in files {
            assert!(!path.contains('/'), "test commits hold top-level files only");
            let blob = repo.blob(contents.as_bytes()).unwrap();
            builder.insert(path, blob, 0o100644).unwrap();
        }
        let tree = repo.find_tree(builder.write().unwrap()).unwrap();
        let sig = git2::Signature::now("Test", "test@gantry.invalid").unwrap();
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        repo.commit(Some(&format!("refs/heads/{branch}")), &sig, &sig, "test", &tree, &parents).unwrap().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The timeouts are not set at start (nothing in `main` touches libgit2 any more) but before
    /// a fetch goes to the network.
    #[tokio::test]
    async fn a_fetch_sets_the_network_timeouts_first() {
        let upstream = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        testing::commit(upstream.path(), "main", &[("x", "1")]);
        let mirrors = Mirrors::new(data.path().join("repos"));
        mirrors.fetch("acme", &RepoUrl::new(upstream.path().to_str().unwrap())).await.unwrap();
        // SAFETY: the getters read the two globals `set_network_timeouts` writes once; the fetch
        // above went through its `Once`, so that write happened before these reads, and no other
        // code of this process writes them.
        let (connect, network) = unsafe {
            (
                git2::opts::get_server_connect_timeout_in_milliseconds().unwrap(),
                git2::opts::get_server_timeout_in_milliseconds().unwrap(),
            )
        };
        assert_eq!((connect, network), (15_000, 60_000));
    }

    #[tokio::test]
    async fn a_mirror_follows_branches_tags_and_deletions() {
        let upstream = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let url = &RepoUrl::new(upstream.path().to_str().unwrap());
        let first = testing::commit(upstream.path(), "main", &[(".gantry.yml", "version: 1\n")]);
        let dev = testing::commit(upstream.path(), "dev", &[("x", "1")]);
        let mirrors = Mirrors::new(data.path().join("repos"));

        assert_eq!(mirrors.resolve_branch("acme", "main").await.unwrap(), None);
        assert!(mirrors.branch_heads("acme").await.unwrap().is_empty());
        let oid = mirrors.ensure_commit("acme", url, &first).await.unwrap();
        assert_eq!(oid.to_string(), first);
        assert_eq!(mirrors.resolve_branch("acme", "main").await.unwrap(), Some(oid));
        assert_eq!(
            mirrors.read_file_at("acme", oid, ".gantry.yml").await.unwrap().as_deref(),
            Some(&b"version: 1\n"[..])
        );
        assert_eq!(mirrors.read_file_at("acme", oid, "missing").await.unwrap(), None);
        assert_eq!(mirrors.commit_message("acme", oid).await.unwrap().as_deref(), Some("test"));
        // An abbreviation of a fetched commit resolves without fetching.
        assert_eq!(mirrors.ensure_commit("acme", &"/nonexistent".into(), &first[..10]).await.unwrap(), oid);

        let upstream_repo = git2::Repository::open(upstream.path()).unwrap();
        upstream_repo.tag_lightweight("v1", &upstream_repo.revparse_single(&first).unwrap(), false).unwrap();
        upstream_repo.find_branch("dev", git2::BranchType::Local).unwrap().delete().unwrap();
        let second = testing::commit(upstream.path(), "main", &[("y", "2")]);
        mirrors.fetch("acme", url).await.unwrap();
        let heads = mirrors.branch_heads("acme").await.unwrap();
        assert_eq!(heads, BTreeMap::from([("main".to_string(), second.clone())]));
        assert_eq!(mirrors.resolve_tag("acme", "v1").await.unwrap(), Some(oid));
        // The deleted branch's commit stays readable: a queued build of it can still run.
        assert!(mirrors.ensure_commit("acme", url, &dev).await.is_ok());
    }

    #[tokio::test]
    async fn a_request_head_is_fetched_through_its_ref_and_must_be_reachable_from_it() {
        let upstream = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let url = &RepoUrl::new(upstream.path().to_str().unwrap());
        testing::commit(upstream.path(), "main", &[("a", "1")]);
        // A fork's commits: on no branch of the upstream, only under the request's ref.
        let first = testing::commit(upstream.path(), "fork-branch", &[("b", "2")]);
        let head = testing::commit(upstream.path(), "fork-branch", &[("b", "3")]);
        let stray = testing::commit(upstream.path(), "elsewhere", &[("c", "4")]);
        let repo = git2::Repository::open(upstream.path()).unwrap();
        repo.reference("refs/pull/5/head", head.parse().unwrap(), true, "forge").unwrap();
        repo.find_branch("fork-branch", git2::BranchType::Local).unwrap().delete().unwrap();
        let mirrors = Mirrors::new(data.path().join("repos"));
        mirrors.fetch("acme", url).await.unwrap();

        let oid = mirrors.ensure_request_head("acme", url, "refs/pull/5/head", &head).await.unwrap();
        assert_eq!(oid.to_string(), head);
        // An older head of the same request is still reachable (a newer push moved the ref on).
        assert!(mirrors.ensure_request_head("acme", url, "refs/pull/5/head", &first).await.is_ok());
        let err = mirrors.ensure_request_head("acme", url, "refs/pull/5/head", &stray).await.unwrap_err();
        assert!(matches!(err, GitError::NotInRequest { .. }), "{err}");
        assert!(err.to_string().contains("is not reachable through refs/pull/5/head"), "{err}");
        let err = mirrors.ensure_request_head("acme", url, "refs/pull/6/head", &head).await.unwrap_err();
        assert!(matches!(err, GitError::NotInRequest { .. }), "{err}");
    }

    #[tokio::test]
    async fn unreachable_urls_and_unknown_commits_are_errors() {
        let data = tempfile::tempdir().unwrap();
        let mirrors = Mirrors::new(data.path().join("repos"));
        let missing = data.path().join("no-such-repo");
        let err = mirrors.fetch("acme", &missing.to_str().unwrap().into()).await.unwrap_err();
        assert!(matches!(err, GitError::Fetch { .. }), "{err}");
        assert!(err.to_string().starts_with("fetching repo \"acme\" failed: "), "{err}");

        let upstream = tempfile::tempdir().unwrap();
        testing::commit(upstream.path(), "main", &[("a", "1")]);
        let url = &RepoUrl::new(upstream.path().to_str().unwrap());
        let err = mirrors.ensure_commit("acme", url, &"0123456789".repeat(4)).await.unwrap_err();
        assert!(matches!(err, GitError::CommitNotFound { .. }), "{err}");
        assert!(err.to_string().ends_with("is not in repo \"acme\""), "{err}");
        let err = mirrors.ensure_commit("acme", url, "main; rm -rf /").await.unwrap_err();
        assert!(matches!(err, GitError::BadCommitId { .. }), "{err}");
    }

    #[tokio::test]
    async fn fetch_errors_name_the_repo_and_never_the_credentials() {
        let data = tempfile::tempdir().unwrap();
        let mirrors = Mirrors::new(data.path().join("repos"));
        // Port 1 of loopback: nothing listens there, so the connection is refused at once.
        for (url, secret) in [
            ("http://TOKENxyz@127.0.0.1:1/x.git", "TOKENxyz"),
            ("https://bot:PASSxyz@127.0.0.1:1/x.git", "PASSxyz"),
            ("ssh://deploy:SSHxyz@127.0.0.1:1/x.git", "SSHxyz"),
        ] {
            let err = mirrors.fetch("shop", &RepoUrl::new(url)).await.unwrap_err();
            let shown = err.to_string();
            assert!(shown.starts_with("fetching repo \"shop\" failed: "), "{shown}");
            assert!(!shown.contains(secret), "{shown}");
            assert!(!format!("{err:?}").contains(secret), "{err:?}");
        }
    }
}
