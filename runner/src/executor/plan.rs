//! The plan of a build: which steps it has and in which order ([`plan_steps`]), when a stage may
//! start given its `needs` and its host's setup, and what every step sees: its working directory,
//! its environment (the pipeline's `env`, the stage's `env` and the `GANTRY_*` variables) and the
//! context its config templates render with.
//!
//! Nothing here runs anything or touches a host; it only reads the pipeline, the build's
//! information and the state of the steps.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use secrecy::SecretString;

use super::{Run, CODE_DIR};
use crate::event::{StepId, StepKind, StepStatus};
use crate::pipeline::{Pipeline, Stage, TemplateContext};
use crate::provider::HostId;
use crate::source::Source;

/// What the build is, as steps see it in `GANTRY_*` variables and templates see it in `build.*`.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    /// The build's key on its server (`b42`), unique among the server's builds; its hosts'
    /// ids start with it and providers group a build's hosts by it.
    pub key: String,
    pub number: u64,
    pub commit: String,
    pub branch: String,
    pub repo: String,
}

pub struct BuildPlan {
    pub info: BuildInfo,
    pub pipeline: Arc<Pipeline>,
    pub source: Arc<dyn Source>,
    /// One id per host role, recorded durably by the caller before `execute` runs.
    pub host_ids: BTreeMap<String, HostId>,
    /// The secrets this build may hand to the steps and templates that name them, by name. Their
    /// values are masked in everything the build reports, whether a step named them or not.
    pub secrets: BTreeMap<String, SecretString>,
    /// How much of each step's output is kept.
    pub log_limits: super::LogLimits,
}

/// The steps of a build, in the order [`BuildEvent::Planned`](crate::event::BuildEvent::Planned)
/// announces them.
pub fn plan_steps(pipeline: &Pipeline) -> Vec<StepId> {
    let mut steps = Vec::new();
    for host in &pipeline.hosts {
        steps.push(StepId::host_step(StepKind::Provision, &host.role));
    }
    for host in &pipeline.hosts {
        if receives_push(pipeline, &host.role) {
            steps.push(StepId::host_step(StepKind::Push, &host.role));
        }
    }
    for host in &pipeline.hosts {
        if host.setup.is_some() {
            steps.push(StepId::host_step(StepKind::Setup, &host.role));
        }
    }
    for stage in &pipeline.stages {
        steps.push(StepId { kind: StepKind::Stage, name: stage.name.clone(), host: stage.host.clone() });
    }
    for host in &pipeline.hosts {
        steps.push(StepId::host_step(StepKind::Teardown, &host.role));
    }
    steps
}

/// The variables every step sees besides the pipeline's own `env`: `GANTRY_BUILD`,
/// `GANTRY_COMMIT`, `GANTRY_BRANCH`, `GANTRY_REPO`, `GANTRY_HOST`, `GANTRY_HOST_ADDR` and
/// `GANTRY_HOST_<ROLE>` for every host.
pub fn gantry_env(info: &BuildInfo, role: &str, addresses: &BTreeMap<String, IpAddr>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("GANTRY_BUILD".to_string(), info.number.to_string()),
        ("GANTRY_COMMIT".to_string(), info.commit.clone()),
        ("GANTRY_BRANCH".to_string(), info.branch.clone()),
        ("GANTRY_REPO".to_string(), info.repo.clone()),
        ("GANTRY_HOST".to_string(), role.to_string()),
    ]);
    if let Some(address) = addresses.get(role) {
        env.insert("GANTRY_HOST_ADDR".to_string(), address.to_string());
    }
    for (other, address) in addresses {
        env.insert(format!("GANTRY_HOST_{}", other.to_uppercase().replace('-', "_")), address.to_string());
    }
    env
}

fn receives_push(pipeline: &Pipeline, role: &str) -> bool {
    pipeline.has_code(role)
        || pipeline.push.data.iter().any(|d| d.to == role)
        || pipeline.push.config.iter().any(|c| c.host == role)
}

/// Whether a stage may start.
pub(super) enum Readiness {
    Ready,
    Waiting,
    Blocked(String),
}

impl Run<'_> {
    /// The context a config template renders with: the build, the hosts, the pipeline's `env`,
    /// and the secrets its config push lists.
    pub(super) fn template_context(&self, secrets: &[String]) -> Result<TemplateContext, String> {
        let info = &self.plan.info;
        Ok(TemplateContext {
            hosts: self.addresses(),
            build_number: info.number,
            commit: info.commit.clone(),
            branch: info.branch.clone(),
            repo_name: info.repo.clone(),
            env: self.pipeline().env.clone(),
            secrets: self.step_secrets(secrets)?,
        })
    }

    /// The values of the secrets a step or template names. A name the build has no value for
    /// (a pull request's build, `gantry run`) is an error that says why, never an empty value.
    pub(super) fn step_secrets(&self, names: &[String]) -> Result<BTreeMap<String, SecretString>, String> {
        names
            .iter()
            .map(|name| match self.plan.secrets.get(name) {
                Some(value) => Ok((name.clone(), value.clone())),
                None => Err(format!(
                    "secret {name} is not available to this build (builds of pull requests get secrets only \
                     when the repo sets secrets_for_pull_requests; gantry run gets none)"
                )),
            })
            .collect()
    }

    pub(super) fn working_dir(&self, role: &str) -> &'static str {
        if self.pipeline().has_code(role) {
            CODE_DIR
        } else {
            ""
        }
    }

    pub(super) fn step_env(
        &self,
        role: &str,
        stage_env: Option<&BTreeMap<String, String>>,
    ) -> BTreeMap<String, String> {
        let mut env = self.pipeline().env.clone();
        if let Some(stage_env) = stage_env {
            env.extend(stage_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        env.extend(gantry_env(&self.plan.info, role, &self.addresses()));
        env
    }

    pub(super) fn readiness(&self, stage: &Stage) -> Readiness {
        if let Some(setup) = self.host_step(StepKind::Setup, &stage.host) {
            match self.status(setup) {
                StepStatus::Passed => {}
                StepStatus::Pending | StepStatus::Running => return Readiness::Waiting,
                other => return Readiness::Blocked(format!("setup:{} {}", stage.host, other.as_str())),
            }
        }
        let mut waiting = false;
        for need in &stage.needs {
            let Some(step) = self.index(StepKind::Stage, need) else {
                return Readiness::Blocked(format!("it needs {need}, which is not a stage"));
            };
            match self.status(step) {
                StepStatus::Passed => {}
                StepStatus::Pending | StepStatus::Running => waiting = true,
                other => return Readiness::Blocked(format!("{need} {}", other.as_str())),
            }
        }
        if waiting {
            Readiness::Waiting
        } else {
            Readiness::Ready
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_variables_are_upper_cased_with_underscores() {
        let info = BuildInfo {
            key: "b7".into(),
            number: 7,
            commit: "c".repeat(40),
            branch: "main".into(),
            repo: "shop".into(),
        };
        let addresses = BTreeMap::from([
            ("db".to_string(), IpAddr::from([127, 0, 10, 1])),
            ("web-app".to_string(), IpAddr::from([127, 0, 10, 2])),
        ]);
        let env = gantry_env(&info, "web-app", &addresses);
        assert_eq!(env["GANTRY_HOST_WEB_APP"], "127.0.10.2");
        assert_eq!(env["GANTRY_HOST_DB"], "127.0.10.1");
        assert_eq!(env["GANTRY_HOST_ADDR"], "127.0.10.2");
        assert_eq!(env["GANTRY_HOST"], "web-app");
        assert_eq!(env["GANTRY_BUILD"], "7");
    }
}
