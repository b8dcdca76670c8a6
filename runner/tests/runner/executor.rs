//! Whole builds through `execute` on the local provider: event order, statuses, the variables
//! steps see, hosts reaching each other, skips, timeouts, cancellation, capped output, and
//! teardown on every path.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gantry_runner::event::{BuildEvent, BuildStatus, StepKind, StepStatus, Stream};
use gantry_runner::executor::{LogLimits, MAX_REPORT_BYTES};
use gantry_runner::pipeline::{DataPush, Pipeline};
use gantry_runner::process::host_processes;
use gantry_runner::source::{GitCommitSource, Source};

use crate::fixture::fixture_tree;
use crate::helpers::*;

/// A script that waits, with a deadline, until `url` answers, then prints the body: the two-host
/// fixture's `ci/fetch.py`, inline.
fn fetch_script(url_expr: &str) -> String {
    let fetch = include_str!("../../../tests/fixtures/pipelines/two-hosts/ci/fetch.py");
    format!("python3 - \"{url_expr}\" <<'PY'\n{fetch}PY")
}

fn git_source(repo: &TestRepo, commit: git2::Oid) -> Arc<dyn Source> {
    Arc::new(GitCommitSource { repo_path: repo.path().to_path_buf(), commit, label: "shop".into() })
}

/// Every step finished exactly once, after it started (when it started at all).
fn assert_every_step_finished_once(build: &Recorded) {
    for (index, step) in build.steps.iter().enumerate() {
        let started =
            build.events.iter().position(|e| matches!(e, BuildEvent::StepStarted { step, .. } if *step == index));
        let finished: Vec<usize> = build
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, BuildEvent::StepFinished { step, .. } if *step == index))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(finished.len(), 1, "{} finished {} times", step.name, finished.len());
        if let Some(started) = started {
            assert!(started < finished[0], "{} finished before it started", step.name);
        }
        assert!(build.status(&step.name).is_final());
    }
}

#[tokio::test]
async fn a_two_host_build_runs_in_order_and_hosts_reach_each_other() {
    let repo = TestRepo::new();
    let commit = repo.commit(&[
        ("www/index.txt", Entry::File("served by db\n")),
        ("ci/tool.sh", Entry::Executable("#!/bin/sh\necho tool ran\n")),
        ("ci/seed.sql", Entry::File("INSERT 1;\n")),
    ]);
    let test = TestProvider::new();
    let mut pipeline = pipeline(
        vec![
            host(
                "db",
                Some("cd data/www && nohup python3 -m http.server --bind \"$GANTRY_HOST_ADDR\" 8000 >../../http.log 2>&1 &\necho db setup done"),
            ),
            host("web-app", None),
        ],
        vec![
            stage("env", "web-app", &[], "env | grep ^GANTRY_ | sort\npwd\n./ci/tool.sh\necho stage=$STAGE_ONLY app=$APP_ENV"),
            stage("fetch", "web-app", &["env"], &fetch_script("http://$GANTRY_HOST_DB:8000/index.txt")),
            stage("db-side", "db", &[], "cat data/seed.sql\npwd"),
        ],
    );
    pipeline.push.code_to = vec!["web-app".into()];
    pipeline.push.data = vec![
        DataPush { from: "www".into(), to: "db".into() },
        DataPush { from: "ci/seed.sql".into(), to: "db".into() },
    ];
    pipeline.env.insert("APP_ENV".into(), "test".into());
    pipeline.stages[0].env.insert("STAGE_ONLY".into(), "yes".into());
    let plan = plan(pipeline, git_source(&repo, commit));
    let ids = plan.host_ids.clone();
    let build = run_build(plan, test.provider.clone()).await;

    assert_eq!(build.result.status, BuildStatus::Passed, "{:?}\n{:#?}", build.result, build.events);
    let names: Vec<&str> = build.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "provision:db",
            "provision:web-app",
            "push:db",
            "push:web-app",
            "setup:db",
            "env",
            "fetch",
            "db-side",
            "teardown:db",
            "teardown:web-app"
        ]
    );
    assert_eq!(build.steps[5].kind, StepKind::Stage);
    assert_eq!(build.steps[5].host, "web-app");
    for (name, status) in build.all_statuses() {
        assert_eq!(status, StepStatus::Passed, "{name}: {:?}", build.log(&name));
    }
    assert_eq!(build.exit_code("fetch"), Some(0));
    assert_every_step_finished_once(&build);

    // Order: provisioning → pushes → Running → setup → stages → teardown, hosts announced.
    let finished = |name: &str| {
        let index = build.index(name);
        build.position(|e| matches!(e, BuildEvent::StepFinished { step, .. } if *step == index))
    };
    let started = |name: &str| {
        let index = build.index(name);
        build.position(|e| matches!(e, BuildEvent::StepStarted { step, .. } if *step == index))
    };
    let running = build.position(|e| matches!(e, BuildEvent::Running { .. }));
    assert!(finished("provision:db") < started("push:db"));
    assert!(finished("provision:web-app") < started("push:db"));
    assert!(finished("push:db") < running && finished("push:web-app") < running);
    assert!(running < started("setup:db"));
    assert!(finished("setup:db") < started("db-side"));
    assert!(finished("env") < started("fetch"));
    for stage in ["env", "fetch", "db-side"] {
        assert!(finished(stage) < started("teardown:db"));
        assert!(finished(stage) < started("teardown:web-app"));
    }
    let provisioned = build.position(|e| matches!(e, BuildEvent::HostProvisioned { role, .. } if role == "db"));
    assert!(provisioned < finished("provision:db"));
    let torn_down: Vec<&BuildEvent> =
        build.events.iter().filter(|e| matches!(e, BuildEvent::HostTornDown { error: None, .. })).collect();
    assert_eq!(torn_down.len(), 2);

    // Addresses: distinct, loopback, never 127.0.0.1, and what the steps saw.
    let addresses = build.addresses();
    assert_eq!(addresses.len(), 2);
    assert_ne!(addresses["db"], addresses["web-app"]);
    for address in addresses.values() {
        assert!(address.is_loopback());
        assert_ne!(*address, IpAddr::from([127, 0, 0, 1]));
    }
    let env = build.log("env");
    for expected in [
        "GANTRY_BUILD=42".to_string(),
        format!("GANTRY_COMMIT={}", "a".repeat(40)),
        "GANTRY_BRANCH=main".to_string(),
        "GANTRY_REPO=shop".to_string(),
        "GANTRY_HOST=web-app".to_string(),
        format!("GANTRY_HOST_ADDR={}", addresses["web-app"]),
        format!("GANTRY_HOST_DB={}", addresses["db"]),
        format!("GANTRY_HOST_WEB_APP={}", addresses["web-app"]),
        "tool ran".to_string(),
        "stage=yes app=test".to_string(),
    ] {
        assert!(env.contains(&expected), "{expected} missing from {env:?}");
    }
    assert!(env.iter().any(|l| l.ends_with("/src")), "a host with the code runs in ~/src: {env:?}");
    assert!(build.log("fetch").contains(&"served by db".to_string()), "{:?}", build.log("fetch"));
    let db_side = build.log("db-side");
    assert!(db_side.contains(&"INSERT 1;".to_string()), "{db_side:?}");
    assert!(db_side.last().unwrap().ends_with(&ids["db"].0), "a host without code runs in ~: {db_side:?}");
    assert!(build.log("setup:db").contains(&"db setup done".to_string()));
    assert!(build.log_lines("push:db").iter().all(|(stream, _)| *stream == Stream::System));

    // Nothing is left: the http.server the setup started is gone, and so are the homes.
    for id in ids.values() {
        assert!(host_processes(id, &[test.root().join(&id.0).as_path()]).unwrap().is_empty());
    }
    assert!(test.leftover_dirs().is_empty(), "{:?}", test.leftover_dirs());
    assert!(test.provider.leased_addresses().is_empty());
}

#[tokio::test]
async fn a_failing_stage_skips_its_dependents_but_not_independent_stages() {
    let test = TestProvider::new();
    let (_dir, source) = empty_source();
    let pipeline = pipeline(
        vec![host("a", None)],
        vec![
            stage("fails", "a", &[], "echo about to fail\nexit 7"),
            stage("dependent", "a", &["fails"], "echo never"),
            stage("transitive", "a", &["dependent"], "echo never"),
            stage("independent", "a", &[], "echo fine"),
        ],
    );
    let build = run_build(plan(pipeline, source), test.provider.clone()).await;
    assert_eq!(build.result.status, BuildStatus::Failed);
    assert_eq!(build.result.error, None);
    assert_eq!(build.status("fails"), StepStatus::Failed);
    assert_eq!(build.exit_code("fails"), Some(7));
    assert_eq!(build.status("dependent"), StepStatus::Skipped);
    assert_eq!(build.status("transitive"), StepStatus::Skipped);
    assert_eq!(build.status("independent"), StepStatus::Passed);
    assert_eq!(build.status("teardown:a"), StepStatus::Passed);
    assert!(!build.log("dependent").contains(&"never".to_string()));
    assert_every_step_finished_once(&build);
    assert!(test.leftover_dirs().is_empty());
}

#[tokio::test]
async fn a_failing_setup_skips_its_hosts_stages() {
    let test = TestProvider::new();
    let (_dir, source) = empty_source();
    let pipeline = pipeline(
        vec![host("broken", Some("echo setting up\nfalse\necho unreachable")), host("fine", Some("true"))],
        vec![stage("on-broken", "broken", &[], "echo never"), stage("on-fine", "fine", &[], "echo ran")],
    );
    let build = run_build(plan(pipeline, source), test.provider.clone()).await;
    assert_eq!(build.result.status, BuildStatus::Failed);
    assert_eq!(build.status("setup:broken"), StepStatus::Failed);
    assert_eq!(build.exit_code("setup:broken"), Some(1));
    assert_eq!(build.log("setup:broken")[0], "setting up");
    assert_eq!(build.status("on-broken"), StepStatus::Skipped);
    assert_eq!(build.status("on-fine"), StepStatus::Passed);
    assert_eq!(build.status("teardown:broken"), StepStatus::Passed);
    assert_every_step_finished_once(&build);
}

#[tokio::test]
async fn a_stage_past_its_timeout_is_killed_with_its_processes() {
    let test = TestProvider::new();
    let (_dir, source) = empty_source();
    let mut pipeline = pipeline(
        vec![host("a", None)],
        vec![
            stage("slow", "a", &[], "sleep 1000 &\necho pid=$!\necho pid=$$\nsleep 1000"),
            stage("after", "a", &["slow"], "true"),
        ],
    );
    pipeline.stages[0].timeout = Duration::from_millis(500);
    let build = run_build(plan(pipeline, source), test.provider.clone()).await;
    assert_eq!(build.result.status, BuildStatus::Failed);
    assert_eq!(build.status("slow"), StepStatus::TimedOut);
    assert_eq!(build.exit_code("slow"), None);
    assert_eq!(build.status("after"), StepStatus::Skipped);
    let log = build.log_lines("slow");
    assert!(log.iter().any(|(stream, text)| *stream == Stream::System && text.contains("timed out")), "{log:?}");
    for pid in pids_in(&build.log("slow")) {
        assert!(process_gone(pid), "{pid} survived the timeout");
    }
    assert!(test.leftover_dirs().is_empty());
}

#[tokio::test]
async fn cancelling_mid_stage_kills_it_cancels_the_rest_and_still_tears_down() {
    let test = TestProvider::new();
    let (_dir, source) = empty_source();
    let pipeline = pipeline(
        vec![host("a", Some("setsid sleep 1000 >/dev/null 2>&1 </dev/null &"))],
        vec![stage("long", "a", &[], "echo pid=$$\nsleep 1000"), stage("next", "a", &["long"], "true")],
    );
    let plan = plan(pipeline, source);
    let id = plan.host_ids["a"].clone();
    let mut steps = Vec::new();
    let build = run_build_with(plan, test.provider.clone(), |event, cancel| match event {
        BuildEvent::Planned { steps: planned } => steps = planned.clone(),
        BuildEvent::Log { step, text, .. } if steps[*step].name == "long" && text.starts_with("pid=") => {
            cancel.cancel()
        }
        _ => {}
    })
    .await;
    assert_eq!(build.result.status, BuildStatus::Cancelled, "{:?}", build.result);
    assert_eq!(build.status("setup:a"), StepStatus::Passed);
    assert_eq!(build.status("long"), StepStatus::Cancelled);
    assert_eq!(build.status("next"), StepStatus::Cancelled);
    assert_eq!(build.status("teardown:a"), StepStatus::Passed);
    assert!(build.events.iter().any(|e| matches!(e, BuildEvent::HostTornDown { error: None, .. })));
    for pid in pids_in(&build.log("long")) {
        assert!(process_gone(pid));
    }
    assert!(
        host_processes(&id, &[test.root().join(&id.0).as_path()]).unwrap().is_empty(),
        "the setup's daemon is gone"
    );
    assert!(test.leftover_dirs().is_empty());
    assert_every_step_finished_once(&build);
}

#[tokio::test]
async fn a_flood_is_capped_with_a_notice_where_it_was_cut_and_binary_output_is_stored_as_text() {
    const MAX_LINES: usize = 5_000;
    let test = TestProvider::new();
    let (_dir, source) = empty_source();
    let extra = 1234;
    let pipeline = pipeline(
        vec![host("a", None)],
        vec![stage(
            "noisy",
            "a",
            &[],
            &format!("printf 'bin\\000\\377\\033[31mred\\n'\nyes flood | head -n {}", MAX_LINES - 1 + extra),
        )],
    );
    let mut plan = plan(pipeline, source);
    plan.log_limits = LogLimits { max_lines: MAX_LINES, ..LogLimits::default() };
    let build = run_build(plan, test.provider.clone()).await;
    assert_eq!(build.status("noisy"), StepStatus::Passed);
    let lines = build.log_lines("noisy");
    assert_eq!(lines.len(), MAX_LINES + 2, "the cap, the notice where it was cut, the count");
    assert_eq!(lines[0].1, "bin\u{FFFD}\u{FFFD}\u{1b}[31mred");
    let (stream, cut) = &lines[MAX_LINES];
    assert_eq!(*stream, Stream::System);
    assert!(cut.starts_with("[gantry] output cut here: a step keeps at most 5000 lines"), "{cut}");
    let (stream, notice) = lines.last().unwrap();
    assert_eq!(*stream, Stream::System);
    assert_eq!(notice, &format!("[gantry] output truncated: {extra} more lines not stored"));
    assert!(lines.iter().all(|(_, text)| !text.contains('\0')));
}

#[tokio::test]
async fn reports_are_collected_before_teardown() {
    let test = TestProvider::new();
    let (_dir, source) = empty_source();
    let mut pipeline = pipeline(
        vec![host("a", None)],
        vec![stage(
            "tests",
            "a",
            &[],
            &format!("mkdir -p reports\necho '<testsuite/>' > reports/unit.xml\nhead -c {} /dev/zero > reports/huge.xml\nexit 1", MAX_REPORT_BYTES + 1),
        )],
    );
    pipeline.stages[0].reports =
        vec!["reports/unit.xml".into(), "reports/missing.xml".into(), "reports/huge.xml".into()];
    let build = run_build(plan(pipeline, source), test.provider.clone()).await;
    assert_eq!(build.status("tests"), StepStatus::Failed, "reports are collected from failed stages too");
    let reports: Vec<(&str, &[u8])> = build
        .events
        .iter()
        .filter_map(|e| match e {
            BuildEvent::Report { path, content, .. } => Some((path.as_str(), content.as_slice())),
            _ => None,
        })
        .collect();
    assert_eq!(reports, [("reports/unit.xml", &b"<testsuite/>\n"[..])]);
    let report_at = build.position(|e| matches!(e, BuildEvent::Report { .. }));
    let teardown = build.index("teardown:a");
    assert!(report_at < build.position(|e| matches!(e, BuildEvent::StepStarted { step, .. } if *step == teardown)));
    let log = build.log("tests");
    assert!(log.iter().any(|l| l.contains("reports/missing.xml not found")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("reports/huge.xml is larger")), "{log:?}");
}

#[tokio::test]
async fn a_failed_provisioning_errors_the_build_and_tears_every_host_down() {
    // Two usable addresses (127.x.y.1 is not localhost, .2), three hosts.
    let test = TestProvider::with(|config| {
        let pool = address_pool();
        config.addresses = format!("{}/30", pool.network()).parse().unwrap();
    });
    let (_dir, source) = empty_source();
    let pipeline =
        pipeline(vec![host("a", Some("true")), host("b", None), host("c", None)], vec![stage("s", "a", &[], "true")]);
    let build = run_build(plan(pipeline, source), test.provider.clone()).await;
    assert_eq!(build.result.status, BuildStatus::Errored);
    assert!(build.result.error.as_deref().unwrap().contains("no free host"), "{:?}", build.result.error);
    let failed =
        ["provision:a", "provision:b", "provision:c"].iter().filter(|s| build.status(s) == StepStatus::Failed).count();
    assert_eq!(failed, 1);
    assert_eq!(build.status("setup:a"), StepStatus::Skipped);
    assert_eq!(build.status("s"), StepStatus::Skipped);
    for role in ["a", "b", "c"] {
        assert_eq!(build.status(&format!("teardown:{role}")), StepStatus::Passed);
    }
    assert!(!build.events.iter().any(|e| matches!(e, BuildEvent::Running { .. })));
    assert!(test.leftover_dirs().is_empty());
    assert!(test.provider.leased_addresses().is_empty());
    assert_every_step_finished_once(&build);
}

#[tokio::test]
async fn a_missing_data_path_errors_the_build_at_the_push() {
    let test = TestProvider::new();
    let (_dir, source) = empty_source();
    let mut pipeline = pipeline(vec![host("a", Some("true"))], vec![stage("s", "a", &[], "true")]);
    pipeline.push.data = vec![DataPush { from: "not/there".into(), to: "a".into() }];
    let build = run_build(plan(pipeline, source), test.provider.clone()).await;
    assert_eq!(build.result.status, BuildStatus::Errored);
    assert!(build.result.error.as_deref().unwrap().contains("not/there"), "{:?}", build.result.error);
    assert_eq!(build.status("push:a"), StepStatus::Failed);
    assert_eq!(build.status("setup:a"), StepStatus::Skipped);
    assert_eq!(build.status("teardown:a"), StepStatus::Passed);
    assert!(test.leftover_dirs().is_empty());
}

#[tokio::test]
async fn concurrent_builds_never_share_an_address() {
    let test = TestProvider::new();
    let (_dir, source) = empty_source();
    let rendezvous = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(rendezvous.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    const BUILDS: usize = 3;
    // Every stage waits (with a deadline) until all six hosts' stages are running, so all hosts
    // are alive at the same time.
    let script = format!(
        "touch {dir}/$GANTRY_HOST_ADDR\ni=0\nwhile [ $(ls {dir} | wc -l) -lt {n} ]; do i=$((i+1)); [ $i -lt 3000 ] || exit 9; sleep 0.01; done\necho addr=$GANTRY_HOST_ADDR",
        dir = rendezvous.path().display(),
        n = BUILDS * 2
    );
    let builds = (0..BUILDS).map(|_| {
        let pipeline: Pipeline = pipeline(
            vec![host("x", None), host("y", None)],
            vec![stage("sx", "x", &[], &script), stage("sy", "y", &[], &script)],
        );
        run_build(plan(pipeline, source.clone()), test.provider.clone())
    });
    let builds = futures::future::join_all(builds).await;
    let mut seen = BTreeSet::new();
    for build in &builds {
        assert_eq!(build.result.status, BuildStatus::Passed, "{:?}", build.log("sx"));
        for address in build.addresses().values() {
            assert!(seen.insert(*address), "{address} handed out twice");
        }
    }
    assert_eq!(seen.len(), BUILDS * 2);
    assert_eq!(std::fs::read_dir(rendezvous.path()).unwrap().count(), BUILDS * 2);
}

/// The newest installed PostgreSQL's `bin` directory, if any.
fn postgres_bin() -> Option<std::path::PathBuf> {
    let mut versions: Vec<_> =
        std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
    versions.sort();
    versions.pop().filter(|bin| bin.join("pg_ctl").exists())
}

#[tokio::test]
async fn a_postgresql_server_started_by_a_setup_serves_other_hosts_and_is_gone_after_teardown() {
    let Some(bin) = postgres_bin() else {
        missing_prerequisite("PostgreSQL is not installed", "scripts/install-deps installs it");
        return;
    };
    let as_root = nix::unistd::geteuid().is_root();
    if as_root && run_as_user().is_none() {
        return;
    }
    // initdb refuses to run as root: as root, host steps run as the unprivileged user.
    let test = TestProvider::with(|config| {
        if as_root {
            config.run_as = Some(RUN_AS_USER.to_string());
        }
    });
    let (_dir, source) = empty_source();
    let setup = format!(
        "{bin}/initdb --pgdata=\"$HOME/pgdata\" --username=postgres --auth=trust --no-sync >/dev/null\n\
         printf \"listen_addresses = '%s'\\nunix_socket_directories = '%s'\\nfsync = off\\n\" \"$GANTRY_HOST_ADDR\" \"$HOME\" >> \"$HOME/pgdata/postgresql.conf\"\n\
         echo 'host all all 127.0.0.0/8 trust' >> \"$HOME/pgdata/pg_hba.conf\"\n\
         {bin}/pg_ctl --pgdata=\"$HOME/pgdata\" --log=\"$HOME/postgres.log\" --wait start >/dev/null\n\
         echo postmaster=$(head -n 1 \"$HOME/pgdata/postmaster.pid\")",
        bin = bin.display()
    );
    let pipeline = pipeline(
        vec![host("db", Some(&setup)), host("web", None)],
        vec![stage(
            "query",
            "web",
            &[],
            &format!("{}/psql -h \"$GANTRY_HOST_DB\" -U postgres -tA -c 'select 40 + 2'", bin.display()),
        )],
    );
    let plan = plan(pipeline, source);
    let db = plan.host_ids["db"].clone();
    let build = run_build(plan, test.provider.clone()).await;
    assert_eq!(build.result.status, BuildStatus::Passed, "{:?} {:?}", build.log("setup:db"), build.log("query"));
    assert_eq!(build.log("query"), ["42"]);
    let postmaster: i32 =
        build.log("setup:db").iter().find_map(|l| l.strip_prefix("postmaster=")).unwrap().parse().unwrap();
    assert!(process_gone(postmaster), "the postmaster survived teardown");
    // Stopped with SIGTERM first, PostgreSQL removes its System V shared memory itself; killed
    // outright it would leave one segment per build behind.
    let segments = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    let leaked: Vec<&str> =
        segments.lines().skip(1).filter(|l| l.split_whitespace().nth(4) == Some(&postmaster.to_string())).collect();
    assert!(leaked.is_empty(), "shared memory left behind: {leaked:?}");
    assert!(host_processes(&db, &[test.root().join(&db.0).as_path()]).unwrap().is_empty());
    assert!(test.leftover_dirs().is_empty());
}

/// The end-to-end shape of a real pipeline file (`tests/fixtures/pipelines/two-hosts`, shared with
/// the end-to-end suite): loaded from YAML in a commit, code, data and a config rendered into a
/// subdirectory pushed, a service on one host used from the other.
#[tokio::test]
async fn a_pipeline_loaded_from_a_commit_pushes_rendered_config_and_runs() {
    let repo = TestRepo::new();
    let files = fixture_tree("two-hosts");
    let entries: Vec<(&str, Entry<'_>)> = files
        .iter()
        .map(|file| {
            let entry = if file.executable { Entry::Executable(&file.text) } else { Entry::File(&file.text) };
            (file.path.as_str(), entry)
        })
        .collect();
    let commit = repo.commit(&entries);
    let source = git_source(&repo, commit);
    let text = String::from_utf8(source.read_file(".gantry.yml").unwrap().unwrap()).unwrap();
    let pipeline = gantry_runner::pipeline::load(".gantry.yml", &text, source.as_ref()).unwrap();
    let test = TestProvider::new();
    let build = run_build(plan(pipeline, source), test.provider.clone()).await;

    assert_eq!(
        build.result.status,
        BuildStatus::Passed,
        "{:?}\n{:?}\n{:?}",
        build.result,
        build.log("push:web"),
        build.log("fetch-from-db")
    );
    let db = build.addresses()["db"];
    assert_eq!(
        build.log("check-env"),
        [
            format!("DB={db}"),
            "BUILD=42".into(),
            format!("COMMIT={}", info().commit),
            "REPO=shop".into(),
            "APP=test".into(),
            "tool ran".into()
        ]
    );
    let fetched = build.log("fetch-from-db");
    assert!(fetched.contains(&"hello from the db host".to_string()), "{fetched:?}");
    assert_eq!(build.status("web-listens-too"), StepStatus::Passed);
    assert!(build.log("setup:web").contains(&format!("web setup sees {db}")));
    assert!(test.leftover_dirs().is_empty());
}

#[tokio::test]
async fn a_template_naming_an_undefined_variable_errors_the_build_before_any_step_runs() {
    let repo = TestRepo::new();
    let commit = repo.commit(&[("ci/app.env.j2", Entry::File("DB={{ hosts.nosuchhost.address }}\n"))]);
    let mut pipeline = pipeline(vec![host("web", Some("echo setup ran"))], vec![stage("s", "web", &[], "true")]);
    pipeline.push.config = vec![gantry_runner::pipeline::ConfigPush {
        template: "ci/app.env.j2".into(),
        host: "web".into(),
        path: "app.env".into(),
        secrets: Vec::new(),
    }];
    let test = TestProvider::new();
    let build = run_build(plan(pipeline, git_source(&repo, commit)), test.provider.clone()).await;
    assert_eq!(build.result.status, BuildStatus::Errored);
    let error = build.result.error.clone().unwrap();
    assert!(error.contains("ci/app.env.j2"), "{error}");
    assert_eq!(build.status("push:web"), StepStatus::Failed);
    assert_eq!(build.status("setup:web"), StepStatus::Skipped);
    assert_eq!(build.status("s"), StepStatus::Skipped);
    assert_eq!(build.status("teardown:web"), StepStatus::Passed);
    assert!(build.log("push:web").iter().any(|l| l.contains("ci/app.env.j2")));
    assert!(test.leftover_dirs().is_empty());
}

#[tokio::test]
async fn a_transport_error_fails_the_step_in_its_log_and_errors_the_build() {
    let repo = TestRepo::new();
    let commit = repo.commit(&[("README.md", Entry::File("hi\n"))]);
    let test = TestProvider::new();
    // The setup removes the directory the stage is to run in, so the transport cannot start it.
    let mut pipeline = pipeline(vec![host("a", Some("rm -rf \"$HOME/src\""))], vec![stage("s", "a", &[], "true")]);
    pipeline.push.code_to = vec!["a".into()];
    let build = run_build(plan(pipeline, git_source(&repo, commit)), test.provider.clone()).await;
    assert_eq!(build.result.status, BuildStatus::Errored);
    assert!(build.result.error.as_deref().unwrap().contains("working directory"), "{:?}", build.result.error);
    assert_eq!(build.status("s"), StepStatus::Failed);
    let log = build.log_lines("s");
    assert!(
        log.iter().any(|(stream, text)| *stream == Stream::System && text.contains("~/src does not exist")),
        "{log:?}"
    );
    assert_eq!(build.status("teardown:a"), StepStatus::Passed);
    assert!(test.leftover_dirs().is_empty());
}
