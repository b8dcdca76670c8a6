//! A repository's URL as the configuration gives it, credentials and all
//! (`https://TOKEN@host/…`, `https://user:password@host/…`, `ssh://user:password@host/…`).
//!
//! This module owns the one rule for showing such a URL. [`RepoUrl`]'s `Display` and `Debug`
//! put `***` in place of the credentials, so formatting one anywhere (a page, the API, an error,
//! the log) cannot leak them; [`RepoUrl::expose`] hands the URL as written to libgit2 and
//! [`RepoUrl::for_git_command`] its parts to the `git` command, and neither is called outside
//! `server/src/git/` (a tidy test holds that). [`RepoUrl::scrub`] takes the credentials out of a
//! text that may quote the URL, such as git's error messages; [`redact_urls`] takes those of any
//! `scheme://user:password@…` out of a text, such as a configuration file's parse error that
//! quotes the line. Nothing here logs, stores or fetches.
//!
//! The URL is split by hand rather than by the `url` crate on purpose: what is shown must be the
//! text as written minus its userinfo (the `url` crate would normalise it), scp-like addresses
//! (`git@host:path`) and local paths are no URLs at all, and a string that does not parse must
//! still never be shown with its credentials.

use std::borrow::Cow;
use std::fmt;

use percent_encoding::percent_decode_str;
use serde::Deserialize;

/// What stands in for credentials wherever a URL or a message is shown.
pub const REDACTED: &str = "***";

/// URL schemes whose user name is a login name rather than a credential: ssh authenticates with
/// keys, so `ssh://git@host/…` shows its user.
const SSH_SCHEMES: [&str; 3] = ["ssh", "git+ssh", "ssh+git"];

/// A repo's URL: anything git can fetch, a local path included. Shown, it never carries its
/// credentials.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RepoUrl(String);

impl RepoUrl {
    pub fn new(url: impl Into<String>) -> RepoUrl {
        RepoUrl(url.into())
    }

    /// The URL as written, credentials included: for git's fetch only, never to be shown.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// Whether git reads this repository on this machine: a path, or a `file://` URL. Anything
    /// else names a host (`https://`, `ssh://`, `git://`, scp-like `user@host:path`), by git's own
    /// rule: a colon with no slash before it makes an ssh address.
    pub fn is_on_this_machine(&self) -> bool {
        if let Some(scheme_end) = self.0.find("://") {
            return self.0[..scheme_end].eq_ignore_ascii_case("file");
        }
        match self.0.find(':') {
            Some(colon) => self.0[..colon].contains('/'),
            None => true,
        }
    }

    /// The URL as the `git` command gets it, and the login to hand it apart from the URL (so the
    /// secret is in no process's argv): an http(s) URL loses its whole userinfo, which becomes
    /// the login (a bare token is the user name, with an empty password, as libgit2 sent it); an
    /// ssh address keeps its user name and loses its password, ssh authenticating with keys only.
    pub fn for_git_command(&self) -> (String, Option<Login>) {
        let Some(credentials) = self.credentials() else { return (self.0.clone(), None) };
        let (before, after) = (&self.0[..credentials.start], &self.0[credentials.end..]);
        let decoded = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        let (user, password) = match credentials.userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (credentials.userinfo, None),
        };
        let ssh = userinfo_span(&self.0).is_some_and(|(_, _, ssh)| ssh);
        if ssh {
            return (format!("{before}{user}{after}"), None);
        }
        // `after` starts at the `@` that ended the userinfo.
        let login = Login { username: decoded(user), password: password.map(decoded).unwrap_or_default() };
        (format!("{before}{}", &after[1..]), Some(login))
    }

    /// Whether the URL carries credentials that are hidden when it is shown.
    pub fn has_credentials(&self) -> bool {
        self.credentials().is_some()
    }

    /// `text` with every occurrence of this URL replaced by its shown form, every occurrence of
    /// its credentials (as written and percent-decoded) by `***`, and the credentials of any
    /// other URL in it (a redirect's, say) hidden by [`redact_urls`].
    pub fn scrub(&self, text: &str) -> String {
        let Some(credentials) = self.credentials() else { return redact_urls(text) };
        let mut scrubbed = text.replace(&self.0, &self.to_string());
        for secret in credentials.secrets() {
            scrubbed = scrubbed.replace(secret.as_ref(), REDACTED);
        }
        redact_urls(&scrubbed)
    }

    /// The userinfo, when it is a credential to hide.
    fn credentials(&self) -> Option<Credentials<'_>> {
        let (start, end, ssh) = userinfo_span(&self.0)?;
        let userinfo = &self.0[start..end];
        let password = userinfo.split_once(':').map(|(_, password)| password);
        // A bare user name is a login name on ssh, a token anywhere else.
        if userinfo.is_empty() || (ssh && password.is_none()) {
            return None;
        }
        Some(Credentials { start, end, userinfo, password })
    }
}

impl From<&str> for RepoUrl {
    fn from(url: &str) -> RepoUrl {
        RepoUrl::new(url)
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.credentials() {
            Some(c) => write!(f, "{}{REDACTED}{}", &self.0[..c.start], &self.0[c.end..]),
            None => f.write_str(&self.0),
        }
    }
}

impl fmt::Debug for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoUrl({:?})", self.to_string())
    }
}

/// `text` with the userinfo of every `scheme://userinfo@host…` in it replaced by `***`. A URL in
/// running text ends at whitespace, a quote or an angle bracket.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find("://") {
        let start = found + "://".len();
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let authority_len = rest
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>') || c.is_whitespace())
            .unwrap_or(rest.len());
        if let Some(at) = rest[..authority_len].rfind('@') {
            out.push_str(REDACTED);
            rest = &rest[at..];
        }
    }
    out.push_str(rest);
    out
}

/// A URL's user name and password, percent-decoded, for git's credential helper. `Debug` hides
/// them.
pub struct Login {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Login(***)")
    }
}

/// The credentials of a URL: where they are in it and what they are.
struct Credentials<'a> {
    start: usize,
    end: usize,
    userinfo: &'a str,
    password: Option<&'a str>,
}

impl Credentials<'_> {
    /// The strings to take out of a message, longest first (so a part never leaves the rest of
    /// a longer one behind): the whole userinfo and the secret part of it (the password, or the
    /// token that is the user name), each as written and percent-decoded.
    fn secrets(&self) -> Vec<Cow<'_, str>> {
        let mut secrets: Vec<Cow<'_, str>> = Vec::new();
        for raw in [Some(self.userinfo), self.password].into_iter().flatten() {
            secrets.push(Cow::Borrowed(raw));
            secrets.push(percent_decode_str(raw).decode_utf8_lossy());
        }
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        secrets
    }
}

/// Where the userinfo of `url` is (the byte range before its `@`), and whether it is an ssh
/// address. `scheme://userinfo@host/…` by RFC 3986 (the authority ends at the first `/`, `?` or
/// `#`; the userinfo at its last `@`), or scp-like `userinfo@host:path`. A local path has none.
fn userinfo_span(url: &str) -> Option<(usize, usize, bool)> {
    if let Some(scheme_end) = url.find("://") {
        let scheme = &url[..scheme_end];
        let start = scheme_end + "://".len();
        let authority_len = url[start..].find(['/', '?', '#']).unwrap_or(url.len() - start);
        let at = url[start..start + authority_len].rfind('@')?;
        let ssh = SSH_SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme));
        return Some((start, start + at, ssh));
    }
    // scp-like: `[userinfo@]host:path`, with no `/` before the host's `:` (a path would have one).
    let head = &url[..url.find('/').unwrap_or(url.len())];
    let at = head.rfind('@')?;
    head[at..].contains(':').then_some((0, at, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(url: &str) -> String {
        RepoUrl::new(url).to_string()
    }

    #[test]
    fn credentials_are_never_shown() {
        assert_eq!(shown("https://TOKEN@git.example.com/a/b.git"), "https://***@git.example.com/a/b.git");
        assert_eq!(shown("https://bot:tok3n@git.example.com/a/b.git"), "https://***@git.example.com/a/b.git");
        assert_eq!(shown("http://user:p%40ss@127.0.0.1:3000/x.git"), "http://***@127.0.0.1:3000/x.git");
        assert_eq!(shown("ssh://deploy:hunter2@host:2222/a.git"), "ssh://***@host:2222/a.git");
        assert_eq!(shown("user:hunter2@host:a/b.git"), "***@host:a/b.git");
        // The userinfo ends at the authority's last `@`, as RFC 3986 and libgit2 read it.
        assert_eq!(shown("https://a@b:c@host/x.git"), "https://***@host/x.git");
        assert_eq!(shown("HTTPS://T@host?q"), "HTTPS://***@host?q");
    }

    #[test]
    fn urls_without_credentials_are_shown_as_written() {
        for url in [
            "https://git.example.com/a/b.git",
            "https://git.example.com/a@b.git",
            "https://git.example.com/a?x=1@2",
            "ssh://git@host/a.git",
            "git@github.com:acme/shop.git",
            "/srv/git/a@v2",
            "relative/dir@x:y",
            "C:\\repos\\a",
            "",
        ] {
            assert_eq!(shown(url), url);
            assert!(!RepoUrl::new(url).has_credentials(), "{url}");
        }
    }

    #[test]
    fn debug_hides_credentials_and_expose_keeps_them() {
        let url = RepoUrl::new("https://bot:tok3n@host/x.git");
        assert_eq!(format!("{url:?}"), r#"RepoUrl("https://***@host/x.git")"#);
        assert_eq!(url.expose(), "https://bot:tok3n@host/x.git");
        assert!(url.has_credentials());
        #[derive(Deserialize)]
        struct Repo {
            url: RepoUrl,
        }
        let parsed: Repo = toml::from_str("url = \"https://T@h/x\"").unwrap();
        assert_eq!(parsed.url.expose(), "https://T@h/x");
    }

    #[test]
    fn paths_and_file_urls_are_on_this_machine_and_everything_else_names_a_host() {
        for local in ["/srv/git/shop.git", "relative/dir", "./a:b", "dir/x@y:z", "file:///srv/git/a.git", "FILE:///x"] {
            assert!(RepoUrl::new(local).is_on_this_machine(), "{local}");
        }
        for remote in [
            "https://git.example.com/a.git",
            "http://127.0.0.1:1/x.git",
            "ssh://git@host/a.git",
            "git://127.0.0.1:9418/a",
            "git@github.com:acme/shop.git",
            "host:repo.git",
        ] {
            assert!(!RepoUrl::new(remote).is_on_this_machine(), "{remote}");
        }
    }

    #[test]
    fn the_git_command_gets_the_url_without_its_secret_and_the_login_apart() {
        let split = |url: &str| {
            let (url, login) = RepoUrl::new(url).for_git_command();
            (url, login.map(|l| (l.username, l.password)))
        };
        let login = |user: &str, password: &str| Some((user.to_string(), password.to_string()));
        assert_eq!(
            split("https://bot:p%40ss@git.example.com/a.git"),
            ("https://git.example.com/a.git".to_string(), login("bot", "p@ss"))
        );
        assert_eq!(
            split("http://TOKEN@127.0.0.1:3000/x.git"),
            ("http://127.0.0.1:3000/x.git".to_string(), login("TOKEN", ""))
        );
        // The userinfo ends at the authority's last `@`.
        assert_eq!(split("https://a@b:c@host/x.git"), ("https://host/x.git".to_string(), login("a@b", "c")));
        // ssh keeps its login name and drops the password: keys only.
        assert_eq!(split("ssh://deploy:hunter2@host:2222/a.git"), ("ssh://deploy@host:2222/a.git".to_string(), None));
        assert_eq!(split("user:hunter2@host:a/b.git"), ("user@host:a/b.git".to_string(), None));
        for plain in ["ssh://git@host/a.git", "git@github.com:acme/shop.git", "https://host/a.git", "/srv/a@b"] {
            assert_eq!(split(plain), (plain.to_string(), None));
        }
        let (_, login) = RepoUrl::new("https://bot:s3cret@host/x").for_git_command();
        assert_eq!(format!("{login:?}"), "Some(Login(***))");
    }

    #[test]
    fn scrub_takes_the_url_and_its_credentials_out_of_a_message() {
        let url = RepoUrl::new("https://bot:s3cr%2Ft@host/x.git");
        assert_eq!(
            url.scrub("unexpected http status code: 401 for https://bot:s3cr%2Ft@host/x.git"),
            "unexpected http status code: 401 for https://***@host/x.git"
        );
        // libgit2 may quote the userinfo alone, the password alone, or either decoded.
        assert_eq!(
            url.scrub("failed to resolve address for bot:s3cr%2Ft@host"),
            "failed to resolve address for ***@host"
        );
        assert_eq!(url.scrub("auth as bot with s3cr/t failed"), "auth as bot with *** failed");
        assert_eq!(url.scrub("s3cr%2Ft"), "***");

        let token = RepoUrl::new("http://TOKENxyz@127.0.0.1:1/x.git");
        assert_eq!(
            token.scrub("failed to connect to TOKENxyz@127.0.0.1:1 (http://TOKENxyz@127.0.0.1:1/x.git)"),
            "failed to connect to ***@127.0.0.1:1 (http://***@127.0.0.1:1/x.git)"
        );
        // Without credentials there is nothing to take out.
        let plain = RepoUrl::new("git@host:a.git");
        assert_eq!(plain.scrub("git@host:a.git: no such repo"), "git@host:a.git: no such repo");
        // Another URL's credentials (a redirect's) are hidden too.
        assert_eq!(
            plain.scrub("redirected to https://u:other@elsewhere/x.git"),
            "redirected to https://***@elsewhere/x.git"
        );
    }

    #[test]
    fn redact_urls_hides_the_credentials_of_every_url_in_a_text() {
        assert_eq!(
            redact_urls("5 | url = \"https://bot:tok3n@host/a.git\n  |  ^ and ssh://d:p@h:22/x, http://T@h"),
            "5 | url = \"https://***@host/a.git\n  |  ^ and ssh://***@h:22/x, http://***@h"
        );
        assert_eq!(redact_urls("url = 'https://T@h' \"http://U@h\""), "url = 'https://***@h' \"http://***@h\"");
        for plain in ["no url here", "https://host/a@b and mail me@host", "ends with ://", "git@host:a.git"] {
            assert_eq!(redact_urls(plain), plain);
        }
    }
}
