//! Secrets through a whole build on the local provider: a step that names a secret gets it, one
//! that does not never sees it, a template that lists it renders it, and no form of the value
//! (plain, in pieces, across the cut of an overlong line, base64) reaches an event.

use std::collections::BTreeMap;

use base64::Engine;
use gantry_runner::event::{BuildEvent, BuildStatus, StepStatus};
use gantry_runner::mask::MASK;
use gantry_runner::pipeline::{self, SecretNames};
use gantry_runner::source::{GitCommitSource, Source};
use gantry_runner::transport::MAX_LINE_BYTES;
use secrecy::SecretString;

use crate::helpers::*;

const VALUE: &str = "s3cr3t-Pa55w0rd-that-no-log-may-hold";

/// Every piece of text the build reported: log lines, report contents, the error.
fn everything_reported(build: &Recorded) -> String {
    let mut all = String::new();
    for event in &build.events {
        match event {
            BuildEvent::Log { text, .. } => all.push_str(text),
            BuildEvent::Report { content, .. } => all.push_str(&String::from_utf8_lossy(content)),
            _ => {}
        }
        all.push('\n');
    }
    all.push_str(build.result.error.as_deref().unwrap_or_default());
    all
}

fn with_secrets(mut plan: gantry_runner::BuildPlan) -> gantry_runner::BuildPlan {
    plan.secrets = BTreeMap::from([("DB_PASSWORD".to_string(), SecretString::from(VALUE))]);
    plan
}

#[tokio::test]
async fn a_secret_reaches_only_the_steps_that_name_it_and_no_output() {
    let repo = TestRepo::new();
    let pad = MAX_LINE_BYTES - 7;
    let yaml = format!(
        r#"version: 1
hosts:
  app:
    secrets: [DB_PASSWORD]
    setup: test "$DB_PASSWORD" = "{VALUE}" && echo "setup sees $DB_PASSWORD"
push:
  code:
    to: [app]
  config:
    - template: ci/app.env.j2
      to: app:src/app.env
      secrets: [DB_PASSWORD]
stages:
  - name: uses
    host: app
    secrets: [DB_PASSWORD]
    reports: [report.xml]
    run: |
      test "$DB_PASSWORD" = "{VALUE}"
      echo "plain: $DB_PASSWORD"
      printf 'split: %s' "${{DB_PASSWORD%????????????????????}}"; sleep 0.2; printf '%s\n' "${{DB_PASSWORD#????????????????}}"
      printf 'b64: '; printf '%s' "$DB_PASSWORD" | base64 -w0; echo
      head -c {pad} /dev/zero | tr '\0' x; echo "$DB_PASSWORD"
      grep -q "PASSWORD=$DB_PASSWORD" app.env && cat app.env
      echo "<testsuite><testcase name=\"t\"><system-out>$DB_PASSWORD</system-out></testcase></testsuite>" > report.xml
  - name: does-not-name-it
    host: app
    run: test -z "${{DB_PASSWORD:-}}" && echo "no secret here"
"#
    );
    let commit = repo.commit(&[
        (".gantry.yml", Entry::File(&yaml)),
        ("ci/app.env.j2", Entry::File("PASSWORD={{ secrets.DB_PASSWORD }}\n")),
    ]);
    let source = GitCommitSource { repo_path: repo.path().to_path_buf(), commit, label: "shop".into() };
    let defined = ["DB_PASSWORD".to_string()].into();
    let text = String::from_utf8(source.read_file(".gantry.yml").unwrap().unwrap()).unwrap();
    assert!(pipeline::load(".gantry.yml", &text, &source).is_ok());
    let pipeline = pipeline::load_file(
        ".gantry.yml",
        pipeline::PipelineFile::InSource(".gantry.yml"),
        &source,
        SecretNames::Defined(&defined),
    )
    .unwrap();
    let test = TestProvider::new();
    let build = run_build(with_secrets(plan(pipeline, std::sync::Arc::new(source))), test.provider.clone()).await;

    assert_eq!(build.result.status, BuildStatus::Passed, "{:?}\n{:?}", build.result, build.log("uses"));
    let all = everything_reported(&build);
    let base64 = base64::engine::general_purpose::STANDARD.encode(VALUE);
    for leaked in [VALUE, &VALUE[..20], &VALUE[16..], base64.as_str()] {
        assert!(!all.contains(leaked), "{leaked:?} reached the events");
    }
    let uses = build.log("uses");
    for expected in ["plain: ", "split: ", "b64: ", "PASSWORD="] {
        assert!(uses.iter().any(|l| l == &format!("{expected}{MASK}")), "no masked {expected:?} line in {uses:?}");
    }
    assert!(uses.iter().any(|l| l.ends_with(MASK) && l.starts_with("xxxx")), "the overlong line lost its mask");
    assert!(build.log("setup:app").contains(&format!("setup sees {MASK}")));
    assert_eq!(build.status("does-not-name-it"), StepStatus::Passed);
    assert!(build.log("does-not-name-it").contains(&"no secret here".to_string()));
    assert!(test.leftover_dirs().is_empty());
}

#[tokio::test]
async fn naming_a_secret_the_repo_does_not_define_is_a_diagnostic_with_its_position() {
    let (_dir, source) = empty_source();
    let defined = ["DB_PASSWORD".to_string()].into();
    let yaml = "version: 1\nhosts:\n  app: {}\nstages:\n  - name: s\n    host: app\n    secrets: [DB_PASWORD]\n    run: true\n";
    std::fs::write(_dir.path().join(".gantry.yml"), yaml).unwrap();
    let error = pipeline::load_file(
        ".gantry.yml",
        pipeline::PipelineFile::InSource(".gantry.yml"),
        source.as_ref(),
        SecretNames::Defined(&defined),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains(".gantry.yml:7:15"), "{error}");
    assert!(error.contains("secret `DB_PASWORD` is not defined for this repo"), "{error}");
    assert!(error.contains("did you mean `DB_PASSWORD`?"), "{error}");
}

#[tokio::test]
async fn a_step_naming_a_secret_the_build_did_not_get_fails_and_says_why() {
    let (_dir, source) = empty_source();
    let mut stage = stage("deploy", "app", &[], "echo should not run");
    stage.secrets = vec!["DB_PASSWORD".into()];
    let pipeline = pipeline(vec![host("app", None)], vec![stage]);
    let test = TestProvider::new();
    // As for a pull request's build: the pipeline names the secret, the build has no value.
    let build = run_build(plan(pipeline, source), test.provider.clone()).await;
    assert_eq!(build.result.status, BuildStatus::Errored);
    assert_eq!(build.status("deploy"), StepStatus::Failed);
    assert!(!build.log("deploy").iter().any(|l| l.contains("should not run")));
    assert!(build.result.error.as_deref().unwrap().contains("secret DB_PASSWORD is not available to this build"));
    assert_eq!(build.status("teardown:app"), StepStatus::Passed);
}
