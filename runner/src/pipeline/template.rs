//! Rendering of `push.config` templates with minijinja in strict mode: an undefined name is an
//! error, never an empty string.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// What a config template can see: `hosts.<role>.address`, `build.number`, `build.commit`,
/// `build.branch`, `repo.name`, `env.<NAME>`.
#[derive(Debug, Clone)]
pub struct TemplateContext {
    pub hosts: BTreeMap<String, IpAddr>,
    pub build_number: u64,
    pub commit: String,
    pub branch: String,
    pub repo_name: String,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{name}:{line}: {message}")]
pub struct TemplateError {
    pub name: String,
    /// 1-based; 0 when the engine could not tell.
    pub line: usize,
    pub message: String,
}

/// Render `text` (the template file `name`) against `ctx`.
pub fn render_template(name: &str, text: &str, ctx: &TemplateContext) -> Result<String, TemplateError> {
    todo!("pipeline helper: {name} {text} {ctx:?}")
}
