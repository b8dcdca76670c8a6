//! The pipeline file, `.gantry.yml`: read → parse → validate → a [`Pipeline`].
//!
//! [`load_file`] (in `file`) is the one entry for a file: the server (a commit's tree), `gantry run`
//! (a working tree) and `gantry validate PATH` (a named file) all call it. It reads at most
//! [`MAX_PIPELINE_BYTES`], checking the size before reading, decodes UTF-8 (locating a bad byte at
//! its line and column) and hands the text to [`load`]. Parsing is two-staged (ripgrep's lowargs →
//! hiargs): `yaml` reads the text with a position for every node, `raw` holds serde types that
//! mirror the file, and `validate` turns them into the [`Pipeline`] below, collecting *every*
//! problem as a [`Diagnostic`] with file:line:column and a hint. The `on:` branch patterns are
//! compiled once into the pipeline's [`Trigger`] (`trigger`), which decides at run time whether a
//! push builds. Config templates are rendered by `template` (minijinja, strict undefined). Nothing
//! here touches a host; the executor only ever sees a validated `Pipeline`.

mod diagnostic;
mod file;
mod raw;
mod template;
mod trigger;
mod validate;
mod yaml;

use std::collections::BTreeMap;
use std::time::Duration;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use file::{load_file, LoadError, PipelineFile};
pub use template::{render_template, TemplateContext, TemplateError, TEMPLATE_FUEL};
pub use trigger::{PullRequests, Trigger};
pub use validate::{MAX_NAME_LEN, MAX_STEP_TIMEOUT};

use crate::source::Source;

/// The file name Gantry reads from the root of a commit.
pub const PIPELINE_FILE: &str = ".gantry.yml";

/// Files larger than this are refused before they are read (see [`load_file`]).
pub const MAX_PIPELINE_BYTES: usize = 256 * 1024;

/// A stage (or setup step) without `timeout` is stopped after this long.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// The secrets a pipeline may name: the ones its repo defines (a name it does not define is a
/// diagnostic), or any name, for a file checked without a server's configuration
/// (`gantry validate`, `gantry run`).
#[derive(Debug, Clone, Copy)]
pub enum SecretNames<'a> {
    Any,
    Defined(&'a std::collections::BTreeSet<String>),
}

/// A validated pipeline. Every name it mentions exists, `needs` is acyclic, every pushed path is
/// present in the source, every branch pattern is a valid glob.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// In file order.
    pub hosts: Vec<HostDef>,
    pub push: Push,
    /// Applies to every setup step and stage.
    pub env: BTreeMap<String, String>,
    /// In file order; `needs` only refers to stages in this list.
    pub stages: Vec<Stage>,
    pub on: Trigger,
}

#[derive(Debug, Clone)]
pub struct HostDef {
    pub role: String,
    pub image: Option<String>,
    pub size: Option<String>,
    /// A shell script run with `sh -e` after the push; `None` when the host has no setup.
    pub setup: Option<String>,
    pub setup_timeout: Duration,
    /// Secrets the setup gets as environment variables.
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Push {
    /// Roles that receive the tree of the commit in `~/src`.
    pub code_to: Vec<String>,
    pub data: Vec<DataPush>,
    pub config: Vec<ConfigPush>,
}

/// A file or directory of the repository copied into `~/data/` on one host.
#[derive(Debug, Clone)]
pub struct DataPush {
    /// Repository-relative path, normalised (no leading `./`, no trailing `/`).
    pub from: String,
    pub to: String,
}

/// A template rendered by the server and written to `HOST:PATH`.
#[derive(Debug, Clone)]
pub struct ConfigPush {
    /// Repository-relative path of the template.
    pub template: String,
    pub host: String,
    /// Relative to the host's home; never absolute, never escapes it with `..`.
    pub path: String,
    /// Secrets the template sees as `secrets.NAME`; no other secret is in its context.
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub host: String,
    pub needs: Vec<String>,
    pub timeout: Duration,
    pub env: BTreeMap<String, String>,
    /// A shell script run with `sh -e`.
    pub run: String,
    /// Paths of JUnit XML files, relative to the stage's working directory.
    pub reports: Vec<String>,
    /// Secrets the stage gets as environment variables.
    pub secrets: Vec<String>,
}

impl Pipeline {
    pub fn host(&self, role: &str) -> Option<&HostDef> {
        self.hosts.iter().find(|h| h.role == role)
    }

    /// Whether `role` receives the code, which decides a step's working directory
    /// (`~/src` when it does, `~` otherwise).
    pub fn has_code(&self, role: &str) -> bool {
        self.push.code_to.iter().any(|r| r == role)
    }

    /// The sum of every setup and stage timeout: an upper bound of a build's run time, used by
    /// providers that arm a dead-man switch.
    pub fn total_timeout(&self) -> Duration {
        self.hosts.iter().map(|h| h.setup_timeout).chain(self.stages.iter().map(|s| s.timeout)).sum()
    }
}

/// Parse and validate a pipeline file already in memory as text (tests, tools). `file_name` is
/// only used in diagnostics; `source` is the tree the file came from, used to check that pushed
/// paths and templates exist. A file read from a commit or a disk goes through [`load_file`].
pub fn load(file_name: &str, text: &str, source: &dyn Source) -> Result<Pipeline, Diagnostics> {
    validate::load(file_name, text, source, SecretNames::Any)
}
