//! Rendering: one askama template per page, all extending `templates/base.html`, behind the
//! [`Page`] trait the server calls.
//!
//! The template structs here are private wrappers pairing a view model with the layout's data
//! (title, auto-refresh); the view models stay plain data. Templates are `.html`, so askama
//! escapes every value by default; no template marks user data `|safe`.

use askama::Template;

use crate::account::{LoginPage, TokensPage, Viewer};
use crate::test_history::TestsPage;
use crate::view::{BuildPage, ErrorPage, RepoListPage, RepoPage};

/// How often a page showing a queued or running build reloads itself, in seconds.
pub const REFRESH_SECONDS: u32 = 5;

/// The error type of rendering (a template's `fmt::Write` failing, in practice never).
pub type RenderError = askama::Error;

/// A page of the dashboard: renders to a complete HTML document, its top bar showing `viewer`.
pub trait Page {
    fn render(&self, viewer: &Viewer) -> Result<String, RenderError>;
}

/// What `base.html` needs besides the page's content.
struct Layout<'a> {
    title: String,
    /// Seconds between reloads while something on the page is still running.
    refresh_seconds: Option<u32>,
    /// Who the top bar names.
    viewer: &'a Viewer,
}

/// The reload interval of a page that shows something still changing.
fn refresh_while(live: bool) -> Option<u32> {
    live.then_some(REFRESH_SECONDS)
}

#[derive(Template)]
#[template(path = "repo_list.html")]
struct RepoListTemplate<'a> {
    layout: Layout<'a>,
    page: &'a RepoListPage,
}

#[derive(Template)]
#[template(path = "repo.html")]
struct RepoTemplate<'a> {
    layout: Layout<'a>,
    page: &'a RepoPage,
}

#[derive(Template)]
#[template(path = "build.html")]
struct BuildTemplate<'a> {
    layout: Layout<'a>,
    page: &'a BuildPage,
}

#[derive(Template)]
#[template(path = "tests.html")]
struct TestsTemplate<'a> {
    layout: Layout<'a>,
    page: &'a TestsPage,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorTemplate<'a> {
    layout: Layout<'a>,
    page: &'a ErrorPage,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginTemplate<'a> {
    layout: Layout<'a>,
    page: &'a LoginPage,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensTemplate<'a> {
    layout: Layout<'a>,
    page: &'a TokensPage,
}

impl Page for RepoListPage {
    fn render(&self, viewer: &Viewer) -> Result<String, RenderError> {
        let layout = Layout {
            title: "Repositories".to_string(),
            refresh_seconds: refresh_while(self.has_live_builds()),
            viewer,
        };
        RepoListTemplate { layout, page: self }.render()
    }
}

impl Page for RepoPage {
    fn render(&self, viewer: &Viewer) -> Result<String, RenderError> {
        let layout =
            Layout { title: self.name.clone(), refresh_seconds: refresh_while(self.has_live_builds()), viewer };
        RepoTemplate { layout, page: self }.render()
    }
}

impl Page for BuildPage {
    fn render(&self, viewer: &Viewer) -> Result<String, RenderError> {
        let title = format!("{} #{} ({})", self.build.repo, self.build.number, self.build.status.as_str());
        let layout = Layout { title, refresh_seconds: refresh_while(self.build.is_live()), viewer };
        BuildTemplate { layout, page: self }.render()
    }
}

impl Page for TestsPage {
    fn render(&self, viewer: &Viewer) -> Result<String, RenderError> {
        let layout = Layout { title: format!("{} tests", self.repo), refresh_seconds: None, viewer };
        TestsTemplate { layout, page: self }.render()
    }
}

impl Page for ErrorPage {
    fn render(&self, viewer: &Viewer) -> Result<String, RenderError> {
        let layout = Layout { title: format!("{} {}", self.status, self.title), refresh_seconds: None, viewer };
        ErrorTemplate { layout, page: self }.render()
    }
}

impl Page for LoginPage {
    fn render(&self, viewer: &Viewer) -> Result<String, RenderError> {
        let layout = Layout { title: "Sign in".to_string(), refresh_seconds: None, viewer };
        LoginTemplate { layout, page: self }.render()
    }
}

impl Page for TokensPage {
    fn render(&self, viewer: &Viewer) -> Result<String, RenderError> {
        let layout = Layout { title: "API tokens".to_string(), refresh_seconds: None, viewer };
        TokensTemplate { layout, page: self }.render()
    }
}
