//! The view models of signing in and of a user's own settings: who the top bar shows, the
//! sign-in form, and the API tokens page.
//!
//! Every form these pages render carries the session's CSRF token in a hidden `csrf` field; the
//! server checks it. No page needs JavaScript.

use crate::format::{format_age, format_timestamp};

/// The name of the hidden form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// Who is looking at a page, for the top bar.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Viewer {
    /// Not known (an error page rendered before anyone was identified): the top bar says nothing.
    #[default]
    Unknown,
    /// Nobody signed in (public reading): the top bar offers to sign in.
    Anonymous,
    /// A signed-in user: the top bar names them and offers their settings and signing out.
    SignedIn(SignedInView),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedInView {
    pub name: String,
    /// `admin`, `member` or `read_only`.
    pub role: String,
    /// The session's CSRF token for the sign-out form; `None` when the page was asked for with an
    /// API token (there is no session to end).
    pub csrf: Option<String>,
}

impl SignedInView {
    /// The role for people: `read-only` rather than `read_only`.
    pub fn role_label(&self) -> String {
        self.role.replace('_', "-")
    }
}

/// `GET /login` and a failed `POST /login`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPage {
    /// Where to go after signing in: a path on this server.
    pub next: String,
    /// The user name typed before, kept when the form comes back.
    pub user: String,
    /// Why the last attempt failed.
    pub error: Option<String>,
    pub csrf: String,
}

/// One API token on its owner's settings page. The token itself is never shown again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenView {
    pub id: i64,
    pub label: String,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
}

impl TokenView {
    pub fn created(&self) -> String {
        format_timestamp(self.created_at_ms)
    }

    /// `3 min ago`, or `never`.
    pub fn last_used(&self, now_ms: i64) -> String {
        self.last_used_at_ms.map_or_else(|| "never".to_string(), |at| format_age(at, now_ms))
    }
}

/// `GET /settings/tokens`, and the answer to creating a token (which shows it once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokensPage {
    pub user: String,
    pub tokens: Vec<TokenView>,
    /// A token just created: shown on this page only.
    pub new_token: Option<NewTokenView>,
    /// Whether the user's role may create and revoke tokens (read-only users may not).
    pub can_manage: bool,
    /// Why the last form was refused (a bad label).
    pub error: Option<String>,
    /// The session's CSRF token for the forms; empty when the page was asked for with an API
    /// token.
    pub csrf: String,
    pub now_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTokenView {
    pub label: String,
    /// The token itself.
    pub token: String,
}
