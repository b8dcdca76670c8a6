//! Local bare mirrors of the configured repositories, under `data_dir/repos/<name>.git`.
//!
//! This module owns fetching (always from the URL in the server's configuration, never from a URL
//! in a webhook payload; how, in its `fetch` module), finding commits and branch heads, and
//! reading a file at a commit. git2 is blocking, so every read runs on a blocking thread; fetches
//! of one repo are serialized by a lock per repo. It records nothing in the database: callers
//! decide what a fetch error means (a repo page's `last_error`, an errored build). A URL may carry
//! credentials: this module is the one place that hands them on (to git), and its errors name the
//! repo, never the URL, with the credentials scrubbed out of git's own messages.

mod fetch;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_runner::source::{GitCommitSource, Source};
use git2::{ErrorCode, Oid, Repository};

use crate::repo_url::RepoUrl;
use fetch::FetchError;

/// The refspecs of a mirror: every branch and every tag, force-updated.
const MIRROR_REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

/// Why a request's head is not in it, when the request's ref does not exist.
const NO_SUCH_REF: &str = "the repository has no such ref";

/// A fetch still running after this long is stopped.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `message` is git's, with the URL's credentials scrubbed out.
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

/// Every mirror of this server.
#[derive(Debug)]
pub struct Mirrors {
    root: PathBuf,
    /// One lock per repo, so two fetches of one repo never run at once.
    fetch_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    fetch_timeout: Duration,
}

impl Mirrors {
    /// Mirrors live in `root` (`data_dir/repos`), created on first use.
    pub fn new(root: PathBuf) -> Mirrors {
        Mirrors { root, fetch_locks: Mutex::new(HashMap::new()), fetch_timeout: FETCH_TIMEOUT }
    }

    /// Fetch `refspecs` of `url` into `repo`'s mirror; a remote without a ref the refspecs name
    /// gives `NoSuchRef`.
    async fn fetch_refspecs(&self, repo: &str, url: &RepoUrl, refspecs: &[&str]) -> Result<(), FetchError> {
        let result = fetch::fetch(&self.path(repo), url, refspecs, self.fetch_timeout).await;
        if let Err(error) = &result {
            tracing::debug!(%repo, ?error, "fetch failed");
        }
        result
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
        self.fetch_refspecs(repo, url, &MIRROR_REFSPECS).await.map_err(|e| fetch_error(repo, e))
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
        let not_in_request = {
            let (head_ref, repo) = (head_ref.to_string(), repo.to_string());
            move |reason: String| GitError::NotInRequest { commit: oid.to_string(), head_ref, repo, reason }
        };
        let refspec = format!("+{head_ref}:{head_ref}");
        match self.fetch_refspecs(repo, url, &[refspec.as_str()]).await {
            Ok(()) => {}
            Err(FetchError::NoSuchRef) => return Err(not_in_request(NO_SUCH_REF.to_string())),
            Err(error) => return Err(fetch_error(repo, error)),
        }
        let (path, name, head_ref) = (self.path(repo), repo.to_string(), head_ref.to_string());
        blocking(move || {
            let mirror = Repository::open_bare(&path).map_err(|source| GitError::Mirror { repo: name, source })?;
            let target = match mirror.find_reference(&head_ref).and_then(|r| r.peel_to_commit()) {
                Ok(commit) => commit.id(),
                Err(_) => return Err(not_in_request(NO_SUCH_REF.to_string())),
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
        self.fetch_refspecs(repo, url, &MIRROR_REFSPECS).await.map_err(|e| fetch_error(repo, e))?;
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

/// A fetch's error as the callers see it, naming the repo.
fn fetch_error(repo: &str, error: FetchError) -> GitError {
    let message = match error {
        FetchError::NoSuchRef => "the remote has no such ref".to_string(),
        FetchError::Failed(message) => message,
    };
    GitError::Fetch { repo: repo.to_string(), message }
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
    use std::path::Path;

    use super::*;

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

    /// A git server on loopback speaking git's "dumb" HTTP protocol (the files of a repository,
    /// as `git update-server-info` lists them), with HTTP basic authentication when a login is
    /// given: what a fetch over the network meets. While it answers a request, the fetch's
    /// processes are alive: each request records the `Authorization` it came with and every
    /// process whose arguments hold `secret`.
    struct DumbHttp {
        port: u16,
        seen: Arc<Mutex<Seen>>,
        server: tokio::task::JoinHandle<()>,
    }

    #[derive(Default)]
    struct Seen {
        requests: usize,
        authorizations: Vec<String>,
        secret_in_argv: Vec<String>,
    }

    impl DumbHttp {
        /// Serve the repository whose git directory is `git_dir` as `/x.git`, asking for `login`.
        async fn start(git_dir: PathBuf, login: Option<&str>, secret: &str) -> DumbHttp {
            use axum::http::{header, StatusCode};
            use axum::response::IntoResponse;
            use base64::Engine as _;
            let expected = login.map(|l| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(l)));
            let seen = Arc::new(Mutex::new(Seen::default()));
            let (record, secret) = (Arc::clone(&seen), secret.to_string());
            let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
                let (seen, expected, secret, git_dir) =
                    (Arc::clone(&record), expected.clone(), secret.clone(), git_dir.clone());
                async move {
                    let given = request.headers().get(header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_string());
                    {
                        let mut seen = seen.lock().unwrap();
                        seen.requests += 1;
                        seen.authorizations.extend(given.clone());
                        seen.secret_in_argv.extend(processes_whose_argv_holds(&secret));
                    }
                    if expected.is_some() && given != expected {
                        let challenge = [(header::WWW_AUTHENTICATE, "Basic realm=\"gantry-test\"")];
                        return (StatusCode::UNAUTHORIZED, challenge).into_response();
                    }
                    let path = request.uri().path().strip_prefix("/x.git/").unwrap_or_default().to_string();
                    match std::fs::read(git_dir.join(&path)) {
                        Ok(bytes) if !path.contains("..") => bytes.into_response(),
                        _ => StatusCode::NOT_FOUND.into_response(),
                    }
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            DumbHttp { port, seen, server }
        }
    }

    impl Drop for DumbHttp {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    /// List what a dumb HTTP server serves of the repo at `dir` (after each change to its refs).
    fn update_server_info(dir: &Path) {
        let status = std::process::Command::new("git").arg("-C").arg(dir).arg("update-server-info").status().unwrap();
        assert!(status.success());
    }

    /// Every process whose arguments hold `needle`, as `pid: argv`.
    fn processes_whose_argv_holds(needle: &str) -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(argv) = std::fs::read(entry.path().join("cmdline")) {
                let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
                if argv.contains(needle) {
                    found.push(format!("{pid}: {argv}"));
                }
            }
        }
        found
    }

    #[tokio::test]
    async fn a_fetch_over_http_sends_the_login_but_no_process_argv_holds_it() {
        let upstream = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let first = testing::commit(upstream.path(), "main", &[("a", "1")]);
        testing::commit(upstream.path(), "gone", &[("b", "2")]);
        update_server_info(upstream.path());
        let mirrors = Mirrors::new(data.path().join("repos"));

        let remote = DumbHttp::start(upstream.path().join(".git"), Some("bot:s3cretPW"), "s3cretPW").await;
        let url = RepoUrl::new(format!("http://bot:s3cretPW@127.0.0.1:{}/x.git", remote.port));
        mirrors.fetch("acme", &url).await.unwrap();
        assert_eq!(mirrors.resolve_branch("acme", "main").await.unwrap().map(|o| o.to_string()), Some(first));
        assert!(mirrors.resolve_branch("acme", "gone").await.unwrap().is_some());
        // A branch the remote deleted is pruned, a new commit arrives.
        git2::Repository::open(upstream.path())
            .unwrap()
            .find_branch("gone", git2::BranchType::Local)
            .unwrap()
            .delete()
            .unwrap();
        let second = testing::commit(upstream.path(), "main", &[("a", "2")]);
        update_server_info(upstream.path());
        mirrors.fetch("acme", &url).await.unwrap();
        assert_eq!(mirrors.branch_heads("acme").await.unwrap(), BTreeMap::from([("main".to_string(), second)]));
        {
            let seen = remote.seen.lock().unwrap();
            assert!(seen.requests > 2, "the fetches asked for refs and objects");
            assert!(seen.authorizations.contains(&"Basic Ym90OnMzY3JldFBX".to_string()), "bot:s3cretPW was sent");
            assert_eq!(seen.secret_in_argv, Vec::<String>::new());
        }

        // A bare token is the user name, with an empty password.
        let data = tempfile::tempdir().unwrap();
        let mirrors = Mirrors::new(data.path().join("repos"));
        let remote = DumbHttp::start(upstream.path().join(".git"), Some("TOKENxyz9:"), "TOKENxyz9").await;
        let url = RepoUrl::new(format!("http://TOKENxyz9@127.0.0.1:{}/x.git", remote.port));
        mirrors.fetch("acme", &url).await.unwrap();
        {
            let seen = remote.seen.lock().unwrap();
            assert!(seen.authorizations.contains(&"Basic VE9LRU54eXo5Og==".to_string()));
            assert_eq!(seen.secret_in_argv, Vec::<String>::new());
        }

        // A wrong password fails, once, without a prompt, and the error does not show it.
        let url = RepoUrl::new(format!("http://TOKENxyz9:wr0ngPW@127.0.0.1:{}/x.git", remote.port));
        let err = mirrors.fetch("acme", &url).await.unwrap_err();
        let shown = err.to_string();
        assert!(shown.starts_with("fetching repo \"acme\" failed: "), "{shown}");
        assert!(shown.contains("Authentication failed"), "{shown}");
        assert!(!shown.contains("wr0ngPW") && !shown.contains("TOKENxyz9"), "{shown}");
    }

    #[tokio::test]
    async fn a_request_head_over_the_network_is_fetched_through_its_ref() {
        let upstream = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        testing::commit(upstream.path(), "main", &[("a", "1")]);
        let head = testing::commit(upstream.path(), "fork-branch", &[("b", "2")]);
        let stray = testing::commit(upstream.path(), "elsewhere", &[("c", "3")]);
        let repo = git2::Repository::open(upstream.path()).unwrap();
        repo.reference("refs/pull/5/head", head.parse().unwrap(), true, "forge").unwrap();
        repo.find_branch("fork-branch", git2::BranchType::Local).unwrap().delete().unwrap();
        update_server_info(upstream.path());
        let remote = DumbHttp::start(upstream.path().join(".git"), None, "-").await;
        let url = &RepoUrl::new(format!("http://127.0.0.1:{}/x.git", remote.port));
        let mirrors = Mirrors::new(data.path().join("repos"));

        let oid = mirrors.ensure_request_head("acme", url, "refs/pull/5/head", &head).await.unwrap();
        assert_eq!(oid.to_string(), head);
        let err = mirrors.ensure_request_head("acme", url, "refs/pull/5/head", &stray).await.unwrap_err();
        assert!(err.to_string().contains("is not reachable through refs/pull/5/head"), "{err}");
        // A ref the remote does not have is the request's problem, not the remote's.
        let err = mirrors.ensure_request_head("acme", url, "refs/pull/6/head", &head).await.unwrap_err();
        assert!(matches!(err, GitError::NotInRequest { .. }), "{err}");
        assert!(err.to_string().ends_with(NO_SUCH_REF), "{err}");
    }

    #[tokio::test]
    async fn a_fetch_that_outlives_its_timeout_is_stopped_with_every_process_it_started() {
        let data = tempfile::tempdir().unwrap();
        let mut mirrors = Mirrors::new(data.path().join("repos"));
        mirrors.fetch_timeout = Duration::from_secs(1);
        // A server that takes connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}/stalled.git", listener.local_addr().unwrap().port());
        let watched = url.clone();
        let stalled = tokio::spawn(async move {
            let (connection, _) = listener.accept().await.unwrap();
            // Seen from here, while git waits for an answer: its processes, the URL in their arguments.
            let running = processes_whose_argv_holds(&watched);
            (connection, running)
        });
        let err = mirrors.fetch("acme", &RepoUrl::new(url.clone())).await.unwrap_err();
        assert!(err.to_string().ends_with("git fetch did not finish within 1s"), "{err}");
        let (_connection, running) = stalled.await.unwrap();
        assert!(running.iter().any(|p| p.contains("git-remote-http") || p.contains("remote-http")), "{running:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !processes_whose_argv_holds(&url).is_empty() {
            assert!(std::time::Instant::now() < deadline, "left running: {:?}", processes_whose_argv_holds(&url));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
