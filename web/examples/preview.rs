//! Renders every dashboard page with realistic sample data into a directory, for looking at the
//! design without a server: `cargo run -p gantry-web --example preview -- /tmp/gantry-preview`,
//! then open `repos.html`, `repo.html`, `build.html`, `tests.html` or `error.html` in a browser. The stylesheet
//! is inlined, so the files work from `file://`.

use std::path::PathBuf;

use gantry_event::{BuildStatus, StepKind, StepStatus, Stream};
use gantry_web::{
    parse_junit, BuildPage, BuildSummary, ErrorPage, GitRef, HostView, LogLineView, Page, RepoListPage, RepoPage,
    RepoSummary, ReportView, StepSummary, StepView, CSS, CSS_PATH,
};

const NOW: i64 = 1_714_643_000_000;
const MINUTE: i64 = 60_000;

/// A pytest JUnit report with one failure, one error and a skip.
const UNIT_REPORT: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.test_cart" name="test_total" time="0.002"/>
<testcase classname="tests.test_cart" name="test_total_with_discount" time="0.004"><failure message="AssertionError: assert 90 == 81">def test_total_with_discount():
        cart = Cart(items=[Item(price=100)], discount="10%")
&gt;       assert cart.total() == 81
E       assert 90 == 81
E        +  where 90 = Cart(items=[Item(price=100)], discount="10%").total()

tests/test_cart.py:31: AssertionError</failure></testcase>
<testcase classname="tests.test_orders" name="test_refund" time="0.001"><error message="failed on setup with &quot;ConnectionRefusedError&quot;">ConnectionRefusedError: [Errno 111] Connection refused</error></testcase>
<testcase classname="tests.test_orders" name="test_export" time="0.000"><skipped message="needs S3"/></testcase>
<testcase classname="tests.test_orders" name="test_list" time="0.003"/>
</testsuite></testsuites>"#;

fn sha(seed: u32) -> String {
    // A stable, sha-looking hex string per seed.
    (0..5).map(|i| format!("{:08x}", seed.wrapping_mul(2_654_435_761).rotate_left(i * 7) ^ (i * 0x9e37))).collect()
}

fn build(number: i64, status: BuildStatus, branch: &str, minutes_ago: i64, took_ms: i64) -> BuildSummary {
    let created = NOW - minutes_ago * MINUTE;
    BuildSummary {
        id: 100 + number,
        repo: "shop".to_string(),
        number,
        status,
        git_ref: GitRef::Branch(branch.to_string()),
        commit: sha(number as u32),
        trigger: if number % 3 == 0 { "poll" } else { "push" }.to_string(),
        created_at_ms: created,
        started_at_ms: (status != BuildStatus::Queued).then_some(created + 400),
        finished_at_ms: status.is_final().then_some(created + 400 + took_ms),
    }
}

/// The plan of the demo pipeline, with each step's status and duration.
fn steps(build: &BuildSummary, outcome: &[(StepStatus, i64)]) -> Vec<StepSummary> {
    let plan = [
        (StepKind::Provision, "provision:db", "db"),
        (StepKind::Provision, "provision:web", "web"),
        (StepKind::Push, "push:db", "db"),
        (StepKind::Push, "push:web", "web"),
        (StepKind::Setup, "setup:db", "db"),
        (StepKind::Setup, "setup:web", "web"),
        (StepKind::Stage, "migrate", "web"),
        (StepKind::Stage, "unit", "web"),
        (StepKind::Stage, "lint", "web"),
        (StepKind::Stage, "e2e", "web"),
        (StepKind::Teardown, "teardown:db", "db"),
        (StepKind::Teardown, "teardown:web", "web"),
    ];
    let mut at = build.started_at_ms.unwrap_or(build.created_at_ms);
    plan.iter()
        .zip(outcome)
        .enumerate()
        .map(|(index, ((kind, name, host), (status, took)))| {
            let started = (!matches!(status, StepStatus::Pending | StepStatus::Skipped)).then_some(at);
            let finished = status.is_final().then(|| at + took).filter(|_| started.is_some());
            at += took;
            StepSummary {
                index: index as i64,
                kind: *kind,
                name: name.to_string(),
                host: host.to_string(),
                status: *status,
                exit_code: match status {
                    StepStatus::Passed => Some(0),
                    StepStatus::Failed => Some(1),
                    StepStatus::TimedOut => Some(143),
                    _ => None,
                },
                started_at_ms: started,
                finished_at_ms: finished,
            }
        })
        .collect()
}

fn outcome_passed() -> Vec<(StepStatus, i64)> {
    use StepStatus::*;
    vec![
        (Passed, 41),
        (Passed, 38),
        (Passed, 120),
        (Passed, 310),
        (Passed, 4_820),
        (Passed, 21_400),
        (Passed, 2_300),
        (Passed, 48_700),
        (Passed, 6_100),
        (Passed, 95_000),
        (Passed, 1_450),
        (Passed, 220),
    ]
}

fn outcome_failed() -> Vec<(StepStatus, i64)> {
    use StepStatus::*;
    vec![
        (Passed, 44),
        (Passed, 40),
        (Passed, 118),
        (Passed, 290),
        (Passed, 4_700),
        (Passed, 20_900),
        (Passed, 2_250),
        (Failed, 12_300),
        (Passed, 5_900),
        (Skipped, 0),
        (Passed, 1_390),
        (Passed, 240),
    ]
}

fn outcome_running() -> Vec<(StepStatus, i64)> {
    use StepStatus::*;
    vec![
        (Passed, 40),
        (Passed, 39),
        (Passed, 121),
        (Passed, 300),
        (Passed, 4_900),
        (Passed, 21_100),
        (Passed, 2_310),
        (Running, 0),
        (Running, 0),
        (Pending, 0),
        (Pending, 0),
        (Pending, 0),
    ]
}

fn lines(start: i64, stream: Stream, texts: &[&str]) -> Vec<LogLineView> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| LogLineView {
            number: i as i64 + 1,
            at_ms: start + i as i64 * 37,
            stream,
            text: text.to_string(),
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "gantry-preview".to_string()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("failed to create {}: {e}", dir.display()))?;

    let history = vec![
        (build(14, BuildStatus::Running, "main", 1, 0), outcome_running()),
        (build(13, BuildStatus::Failed, "feature/<b>cart</b>", 26, 48_000), outcome_failed()),
        (build(12, BuildStatus::Passed, "main", 95, 201_000), outcome_passed()),
        (build(11, BuildStatus::Passed, "release/1.4", 180, 198_000), outcome_passed()),
        (build(10, BuildStatus::Cancelled, "main", 260, 9_000), {
            let mut o = outcome_passed();
            for step in o.iter_mut().skip(6).take(4) {
                step.0 = StepStatus::Cancelled;
            }
            o
        }),
    ];
    let history: Vec<(BuildSummary, Vec<StepSummary>)> =
        history.into_iter().map(|(b, outcome)| (b.clone(), steps(&b, &outcome))).collect();

    let repos = RepoListPage {
        repos: vec![
            RepoSummary {
                name: "shop".to_string(),
                url: "https://git.example.com/acme/shop.git".to_string(),
                last_build: Some(history[0].0.clone()),
                last_error: None,
            },
            RepoSummary {
                name: "billing".to_string(),
                url: "git@git.example.com:acme/billing.git".to_string(),
                last_build: Some(build(3, BuildStatus::Errored, "main", 3 * 60, 900)),
                last_error: Some("failed to fetch: authentication required (ssh key rejected)".to_string()),
            },
            RepoSummary {
                name: "docs".to_string(),
                url: "/srv/git/docs.git".to_string(),
                last_build: None,
                last_error: None,
            },
        ],
        now_ms: NOW,
    };
    let mut repo = RepoPage::new(
        "shop".to_string(),
        "https://git.example.com/acme/shop.git".to_string(),
        Some("failed to fetch refs/heads/*: connection refused (git.example.com:443)".to_string()),
        history.clone(),
        NOW,
    );
    repo.actions = Some(gantry_web::ActionForms { csrf: "preview".to_string() });
    repo.branches = vec!["main".to_string(), "feature/discounts".to_string()];
    repo.history = gantry_web::HistoryNav {
        filter: gantry_web::HistoryFilterView { branch: "main".to_string(), ..Default::default() },
        older_href: Some("/repos/shop?branch=main&before=109".to_string()),
        newer_href: Some("/repos/shop?branch=main&before=140".to_string()),
        newest_href: Some("/repos/shop?branch=main".to_string()),
        clear_href: Some("/repos/shop".to_string()),
    };
    let run = |number: i64, outcome: &str, duration_ms: i64| gantry_web::TestRunView {
        build_id: number,
        number,
        commit: "6b1f53303a732ccc8c6aae6640399827c15250e3".to_string(),
        branch: "main".to_string(),
        outcome: outcome.to_string(),
        duration_ms: Some(duration_ms),
        message: (outcome == "failed").then(|| "AssertionError: assert 90 == 81".to_string()),
    };
    let test =
        |classname: &str, name: &str, flaky: bool, runs: Vec<gantry_web::TestRunView>| gantry_web::TestHistoryView {
            key: gantry_web::TestKeyView {
                stage: "unit".to_string(),
                classname: classname.to_string(),
                name: name.to_string(),
            },
            flaky,
            runs,
        };
    let tests = gantry_web::TestsPage {
        repo: "shop".to_string(),
        tests: vec![
            test("tests.test_cart", "test_empty", false, (105..=113).rev().map(|n| run(n, "passed", 3)).collect()),
            test(
                "tests.test_cart",
                "test_total_with_discount",
                false,
                vec![run(113, "failed", 4), run(112, "passed", 4), run(111, "passed", 5)],
            ),
            test(
                "tests.test_orders",
                "test_concurrent_checkout",
                true,
                vec![run(113, "passed", 840), run(112, "failed", 2_010), run(111, "passed", 790)],
            ),
        ],
        flaky_only: false,
        builds_looked_at: 50,
        now_ms: NOW,
    };

    let (summary, failed_steps) = history[1].clone();
    let mut steps: Vec<StepView> =
        failed_steps.into_iter().map(|step| StepView { step, log: Vec::new(), omitted_lines: 0 }).collect();
    let starts: Vec<i64> = steps.iter().map(|s| s.step.started_at_ms.unwrap_or(NOW)).collect();
    let at = |i: usize| starts[i];
    let setup_db = at(4);
    steps[4].log = lines(
        setup_db,
        Stream::Stdout,
        &[
            "The files belonging to this database system will be owned by user \"gantry-host\".",
            "creating configuration files ... ok",
            "running bootstrap script ... ok",
            "waiting for server to start.... done",
            "server started",
            "CREATE ROLE",
            "CREATE DATABASE",
        ],
    );
    let unit = at(7);
    steps[7].log = [
        lines(unit, Stream::Stdout, &["============================= test session starts ==============================", "collected 214 items", "", "tests/test_cart.py ........F....                                          [  7%]", "tests/test_orders.py .................................................. [ 30%]"]),
        lines(unit + 400, Stream::Stderr, &["WARNING: <script>alert('xss')</script> is not a valid fixture name", "\u{1b}[31mFAILED\u{1b}[0m tests/test_cart.py::test_total_with_discount - AssertionError: assert 90 == 81", "E       assert 90 == 81", "E        +  where 90 = Cart(items=[Item(price=100)], discount=\"10%\").total()"]),
        lines(unit + 900, Stream::Stdout, &["=========================== short test summary info ============================", "FAILED tests/test_cart.py::test_total_with_discount", "========================= 1 failed, 213 passed in 11.84s ========================="]),
        lines(unit + 1_000, Stream::System, &["output truncated: 48213 more lines not stored"]),
    ]
    .concat();
    steps[7].omitted_lines = 1_840;
    steps[8].log = lines(at(8), Stream::Stdout, &["All checks passed!"]);
    steps[10].log =
        lines(at(10), Stream::System, &["stopped 3 processes (postgres)", "removed /var/lib/gantry/hosts/b113-db"]);
    let build_page = BuildPage {
        build: summary,
        commit_message: Some(
            "Apply discounts after tax\n\nThe cart total was off by the tax on the discount.".to_string(),
        ),
        error: None,
        hosts: vec![
            HostView {
                role: "db".to_string(),
                provider: "local".to_string(),
                provider_id: Some("/var/lib/gantry/hosts/b113-db".to_string()),
                address: Some("127.0.10.7".to_string()),
                state: "torn_down".to_string(),
                provisioned_at_ms: Some(NOW - 26 * MINUTE + 441),
                torn_down_at_ms: Some(NOW - 25 * MINUTE),
                provision_ms: Some(41),
                teardown_ms: Some(1_390),
                error: None,
                isolation: Some("user gantry-host-3, network namespace of b113".to_string()),
            },
            HostView {
                role: "web".to_string(),
                provider: "local".to_string(),
                provider_id: Some("/var/lib/gantry/hosts/b113-web".to_string()),
                address: Some("127.0.10.8".to_string()),
                state: "torn_down".to_string(),
                provisioned_at_ms: Some(NOW - 26 * MINUTE + 440),
                torn_down_at_ms: Some(NOW - 25 * MINUTE),
                provision_ms: Some(38),
                teardown_ms: Some(240),
                error: None,
                isolation: Some("user gantry-host-4, network namespace of b113".to_string()),
            },
        ],
        steps,
        reports: vec![ReportView {
            stage: "unit".to_string(),
            path: "reports/unit.xml".to_string(),
            summary: parse_junit(UNIT_REPORT.as_bytes()),
        }],
        now_ms: NOW,
        actions: Some(gantry_web::ActionForms { csrf: "preview".to_string() }),
        rerun_of: Some(gantry_web::BuildLink { id: 110, number: 110 }),
        compared_with: Some(gantry_web::BuildLink { id: 112, number: 112 }),
        new_failures: vec![gantry_web::TestKeyView {
            stage: "unit".to_string(),
            classname: "tests.test_cart".to_string(),
            name: "test_total_with_discount".to_string(),
        }],
    };
    let mut errored = build_page.clone();
    errored.reports.clear();
    errored.build = build(15, BuildStatus::Errored, "main", 0, 80);
    errored.hosts.clear();
    errored.steps.clear();
    errored.error = Some(
        "the pipeline file has 2 errors:\n.gantry.yml:12:11: error: stage `unit` runs on host `wbe`, which is not declared\n  hint: did you mean `web`?\n.gantry.yml:19:9: error: `needs` names `migrat`, which is not a stage\n  hint: did you mean `migrate`?"
            .to_string(),
    );
    let error =
        ErrorPage { status: 404, title: "Not found".to_string(), message: "There is no build 999.".to_string() };

    let inline = |html: String| {
        html.replace(&format!(r#"<link rel="stylesheet" href="{CSS_PATH}">"#), &format!("<style>\n{CSS}</style>"))
    };
    for (name, html) in [
        ("repos.html", repos.render(&gantry_web::Viewer::Unknown)?),
        ("repo.html", repo.render(&gantry_web::Viewer::Unknown)?),
        ("build.html", build_page.render(&gantry_web::Viewer::Unknown)?),
        ("build-errored.html", errored.render(&gantry_web::Viewer::Unknown)?),
        ("tests.html", tests.render(&gantry_web::Viewer::Unknown)?),
        ("error.html", error.render(&gantry_web::Viewer::Unknown)?),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, inline(html)).map_err(|e| format!("failed to write {}: {e}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}
