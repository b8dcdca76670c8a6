//! Rendering tests: every page renders with realistic data, hostile text stays text, and the
//! parts people look for (grid columns, open failed steps, notices, links) are there.

use gantry_event::{BuildStatus, StepKind, StepStatus, Stream};

use super::*;
use crate::grid::StageGrid;

const HOSTILE: &str = "<script>alert(1)</script>";
const ESCAPED: &str = "&#60;script&#62;alert(1)&#60;/script&#62;";
const NOW: i64 = 1_714_643_000_000;
const SHA: &str = "6b1f53303a732ccc8c6aae6640399827c15250e3";

/// Askama escapes `<` as `&#60;` (not `&lt;`); accept either spelling, reject the raw markup.
fn assert_escaped(html: &str, what: &str) {
    assert!(!html.contains(HOSTILE), "{what}: the raw markup reached the page");
    assert!(
        html.contains(ESCAPED) || html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{what}: the escaped text is missing"
    );
}

fn build(number: i64, status: BuildStatus) -> BuildSummary {
    BuildSummary {
        id: 40 + number,
        repo: "shop".to_string(),
        number,
        status,
        git_ref: GitRef::Branch("main".to_string()),
        commit: SHA.to_string(),
        trigger: "push".to_string(),
        created_at_ms: NOW - 600_000,
        started_at_ms: Some(NOW - 598_000),
        finished_at_ms: status.is_final().then_some(NOW - 400_000),
    }
}

fn step(index: i64, kind: StepKind, name: &str, status: StepStatus) -> StepSummary {
    let host = name.split_once(':').map(|(_, role)| role).unwrap_or("web").to_string();
    let started = NOW - 590_000 + index * 10_000;
    StepSummary {
        index,
        kind,
        name: name.to_string(),
        host,
        status,
        exit_code: match status {
            StepStatus::Passed => Some(0),
            StepStatus::Failed => Some(2),
            _ => None,
        },
        started_at_ms: (status != StepStatus::Pending && status != StepStatus::Skipped).then_some(started),
        finished_at_ms: status.is_final().then_some(started + 1_234),
    }
}

fn line(number: i64, at_ms: i64, stream: Stream, text: &str) -> LogLineView {
    LogLineView { number, at_ms, stream, text: text.to_string() }
}

#[test]
fn repo_list_shows_each_repo_with_its_last_build_and_escapes_everything() {
    let mut hostile_build = build(7, BuildStatus::Failed);
    hostile_build.git_ref = GitRef::Branch(HOSTILE.to_string());
    let page = RepoListPage {
        repos: vec![
            RepoSummary {
                name: "shop".to_string(),
                url: "https://git.example.com/acme/shop.git".to_string(),
                last_build: Some(hostile_build),
                last_error: Some(format!("failed to fetch: {HOSTILE}")),
            },
            RepoSummary {
                name: "docs".to_string(),
                url: "/srv/git/docs".to_string(),
                last_build: None,
                last_error: None,
            },
        ],
        now_ms: NOW,
    };
    let html = page.render(&Viewer::Anonymous).unwrap();
    assert_escaped(&html, "repo list");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains(r#"href="/repos/shop""#));
    assert!(html.contains(r#"href="/builds/47""#), "the last build links to its page");
    assert!(html.contains(r#"class="badge status-failed""#));
    assert!(html.contains(">6b1f533<"), "the short commit is shown");
    assert!(html.contains("10m ago"));
    assert!(html.contains("3m 18s"), "the build's duration is shown");
    assert!(html.contains("never built"), "a repo without builds says so");
    assert!(html.contains(CSS_PATH));
    assert!(!html.contains("http-equiv=\"refresh\""), "nothing runs, so the page stays still");
}

#[test]
fn pages_with_running_builds_refresh_themselves() {
    let page = RepoListPage {
        repos: vec![RepoSummary {
            name: "shop".to_string(),
            url: "u".to_string(),
            last_build: Some(build(3, BuildStatus::Running)),
            last_error: None,
        }],
        now_ms: NOW,
    };
    let html = page.render(&Viewer::Anonymous).unwrap();
    assert!(html.contains(&format!(r#"<meta http-equiv="refresh" content="{REFRESH_SECONDS}">"#)));
    // A running build's duration counts up to now.
    assert!(html.contains("9m 58s"), "{html}");
}

fn repo_page(last_error: Option<String>) -> RepoPage {
    let mut tagged = build(2, BuildStatus::Failed);
    tagged.git_ref = GitRef::Tag(HOSTILE.to_string());
    let newest = vec![
        step(0, StepKind::Provision, "provision:web", StepStatus::Passed),
        step(1, StepKind::Push, "push:web", StepStatus::Passed),
        step(2, StepKind::Setup, "setup:web", StepStatus::Passed),
        step(3, StepKind::Stage, "migrate", StepStatus::Passed),
        step(4, StepKind::Stage, "unit", StepStatus::Failed),
        step(5, StepKind::Stage, "deploy-preview", StepStatus::Skipped),
        step(6, StepKind::Teardown, "teardown:web", StepStatus::Passed),
    ];
    let older = vec![
        step(0, StepKind::Provision, "provision:db", StepStatus::Passed),
        step(1, StepKind::Provision, "provision:web", StepStatus::Passed),
        step(2, StepKind::Push, "push:web", StepStatus::Passed),
        step(3, StepKind::Stage, "migrate", StepStatus::Passed),
        step(4, StepKind::Stage, HOSTILE, StepStatus::TimedOut),
        step(5, StepKind::Teardown, "teardown:db", StepStatus::Passed),
        step(6, StepKind::Teardown, "teardown:web", StepStatus::Passed),
    ];
    RepoPage::new(
        "shop".to_string(),
        "https://git.example.com/acme/shop.git".to_string(),
        last_error,
        vec![(tagged, newest), (build(1, BuildStatus::Passed), older)],
        NOW,
    )
}

#[test]
fn repo_page_has_a_stage_grid_with_the_union_of_steps() {
    let page = repo_page(None);
    let columns: Vec<&str> = page.grid.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        columns,
        [
            "provision:db",
            "provision:web",
            "push:web",
            "setup:web",
            "migrate",
            HOSTILE,
            "unit",
            "deploy-preview",
            "teardown:db",
            "teardown:web"
        ]
    );
    let html = page.render(&Viewer::Anonymous).unwrap();
    assert_escaped(&html, "repo page");
    // The two rows, newest first, link to their builds and their steps.
    let newest = html.find(r#"href="/builds/42""#).expect("build 2 is a row");
    let older = html.find(r#"href="/builds/41""#).expect("build 1 is a row");
    assert!(newest < older, "newest first");
    assert!(html.contains(r#"href="/builds/42#step-4""#), "a cell links to its step");
    assert!(html.contains(r#"<td class="cell status-failed""#));
    assert!(html.contains(r#"<td class="cell status-timed_out""#));
    assert!(html.contains(r#"<td class="cell cell-none">"#), "a step a build did not have is an empty cell");
    assert!(html.contains(r#"<th colspan="2" class="kind kind-provision">provision</th>"#));
    assert!(html.contains("1.2s"), "cells show durations");
    assert!(!html.contains("banner-error"), "no fetch error, no banner");
}

#[test]
fn repo_page_shows_a_fetch_error_banner() {
    let html = repo_page(Some(format!("failed to fetch origin: {HOSTILE}\nremote: not found")))
        .render(&Viewer::Anonymous)
        .unwrap();
    assert!(html.contains("banner-error"));
    assert!(html.contains("Fetching this repository failed."));
    assert!(html.contains("\nremote: not found"), "the error keeps its lines");
    assert_escaped(&html, "fetch error");
}

#[test]
fn repo_page_without_builds_says_so() {
    let page = RepoPage::new("shop".to_string(), "u".to_string(), None, Vec::new(), NOW);
    let html = page.render(&Viewer::Anonymous).unwrap();
    assert!(html.contains("No builds yet."));
    assert!(!html.contains("<table class=\"grid\">"));
}

fn build_page() -> BuildPage {
    let summary = build(12, BuildStatus::Failed);
    let steps = vec![
        StepView {
            step: step(0, StepKind::Provision, "provision:web", StepStatus::Passed),
            log: Vec::new(),
            omitted_lines: 0,
        },
        StepView {
            step: step(1, StepKind::Stage, "unit", StepStatus::Failed),
            log: vec![
                line(2_501, NOW - 579_000, Stream::Stdout, &format!("echo {HOSTILE}")),
                line(2_502, NOW - 578_500, Stream::Stderr, "FAILED tests/test_cart.py::test_total - AssertionError"),
                line(2_503, NOW - 578_400, Stream::Stdout, "\u{1b}[31mred\u{1b}[0m and a NUL \u{0} byte"),
                line(2_504, NOW - 578_300, Stream::System, "output truncated: 120000 more lines not stored"),
            ],
            omitted_lines: 2_500,
        },
        StepView {
            step: step(2, StepKind::Teardown, "teardown:web", StepStatus::Passed),
            log: vec![line(1, NOW - 570_000, Stream::System, "stopped 2 processes")],
            omitted_lines: 0,
        },
    ];
    BuildPage {
        build: summary,
        commit_message: Some(format!("Fix the cart {HOSTILE}\n\nLonger explanation.")),
        error: Some(
            ".gantry.yml:7:5: error: stage `unit` runs on host `wbe`, which is not declared\n  hint: did you mean `web`?"
                .to_string(),
        ),
        hosts: vec![HostView {
            role: "web".to_string(),
            provider: "local".to_string(),
            provider_id: Some("/var/lib/gantry/hosts/b52-web".to_string()),
            address: Some("127.0.10.2".to_string()),
            state: "torn_down".to_string(),
            provisioned_at_ms: Some(NOW - 597_000),
            torn_down_at_ms: Some(NOW - 401_000),
            provision_ms: Some(35),
            teardown_ms: Some(1_450),
            error: None,
            isolation: Some(format!("user gantry-host-3, network namespace of b52 {HOSTILE}")),
        }],
        steps,
        reports: vec![
            ReportView {
                stage: "unit".to_string(),
                path: format!("reports/{HOSTILE}.xml"),
                summary: parse_junit(UNIT_REPORT.as_bytes()),
            },
            ReportView {
                stage: "lint".to_string(),
                path: "reports/lint.xml".to_string(),
                summary: parse_junit(b"<testsuite><testcase"),
            },
        ],
        now_ms: NOW,
        actions: None,
        rerun_of: None,
        compared_with: None,
        new_failures: Vec::new(),
    }
}

/// A JUnit report whose failure message and text carry markup.
const UNIT_REPORT: &str = r#"<testsuites><testsuite name="unit">
<testcase classname="tests.test_cart" name="test_empty"/>
<testcase classname="tests.test_cart" name="test_render"><failure message="&lt;script&gt;alert(1)&lt;/script&gt; in the message">assert render() == ""
E   AssertionError: got &lt;script&gt;alert(1)&lt;/script&gt;</failure></testcase>
<testcase classname="tests.test_cart" name="test_later"><skipped/></testcase>
</testsuite></testsuites>"#;

#[test]
fn build_page_shows_the_build_its_hosts_and_its_steps() {
    let html = build_page().render(&Viewer::Anonymous).unwrap();
    assert_escaped(&html, "build page");
    assert!(html.contains(SHA), "the full commit is shown");
    assert!(html.contains("<title>shop #12 (failed) · Gantry</title>"));
    assert!(html.contains(r#"href="/api/builds/52""#), "links to the JSON API");
    assert!(html.contains(r#"href="/api/builds/52/log""#), "links to the raw log");
    assert!(html.contains(r#"href="/api/builds/52/log?stage=unit""#), "links to a step's raw log");
    assert!(html.contains(r#"href="/api/builds/52/log?stage=provision%3Aweb""#), "step names are URL-encoded");
    // Hosts.
    for cell in ["web", "local", "/var/lib/gantry/hosts/b52-web", "127.0.10.2", "torn down", "35ms", "1.4s"] {
        assert!(html.contains(cell), "the hosts table shows {cell:?}");
    }
    for cell in ["<th>Isolation</th>", "user gantry-host-3, network namespace of b52"] {
        assert!(html.contains(cell), "the hosts table shows which isolation each host had: {cell:?}");
    }
    // Steps, in order, with their kinds and hosts.
    let provision = html.find(r#"id="step-0""#).unwrap();
    let unit = html.find(r#"id="step-1""#).unwrap();
    let teardown = html.find(r#"id="step-2""#).unwrap();
    assert!(provision < unit && unit < teardown);
    assert!(html.contains("provision:web") && html.contains("teardown:web"));
    assert!(html.contains("exit 2"));
}

#[test]
fn build_page_opens_failed_steps_only() {
    let html = build_page().render(&Viewer::Anonymous).unwrap();
    assert!(html.contains(r#"<details class="step status-failed" id="step-1" open>"#), "{html}");
    assert!(html.contains(r#"<details class="step status-passed" id="step-0">"#));
    assert!(html.contains(r#"<details class="step status-passed" id="step-2">"#));
}

#[test]
fn build_page_logs_keep_streams_apart_and_show_notices() {
    let html = build_page().render(&Viewer::Anonymous).unwrap();
    assert!(html.contains(
        r##"<span class="line stream-stderr" id="L1-2502"><a class="ln" href="#L1-2502">2502</a><span class="at">+1.5s</span>FAILED tests/test_cart.py"##
    ));
    assert!(html.contains(r#"<span class="at">+1.7s</span>output truncated: 120000 more lines not stored</span>"#));
    assert!(html.contains("2500 earlier lines not shown here"), "the server's own cut is announced");
    assert!(
        html.contains("<span class=\"ansi-fg-1\">red</span> and a NUL \u{2400} byte"),
        "colours are classes and control bytes are shown: {html}"
    );
    assert!(html.contains(r#"data-lines="2504""#), "the script knows how long the log is");
    assert!(html.contains("no output"), "a step without output says so");
    // One line of output is one line of the `<pre>`: no blank lines between them.
    let log = &html[html.find("<pre class=\"log\">").unwrap()..];
    let log = &log[..log.find("</pre>").unwrap()];
    assert_eq!(log.matches('\n').count(), 4, "{log}");
}

#[test]
fn build_page_shows_test_reports_and_their_failing_cases_escaped() {
    let html = build_page().render(&Viewer::Anonymous).unwrap();
    let section = &html[html.find("<h2>Test reports</h2>").expect("the section is there")..];
    let section = &section[..section.find("<h2>Steps</h2>").expect("before the steps")];
    assert!(!section.contains("<script>"), "markup in a report stays text: {section}");
    assert_escaped(section, "test reports");
    assert!(section.contains("reports/&#60;script&#62;alert(1)&#60;/script&#62;.xml"), "the path is escaped");
    // Counts: 3 tests, 1 passed, 1 failure, 0 errors, 1 skipped.
    assert!(
        section.contains("<td>3</td>\n      <td>1</td>\n      <td>1</td>\n      <td>0</td>\n      <td>1</td>"),
        "{section}"
    );
    assert!(section.contains(r#"<span class="badge status-failed">failed</span>"#));
    // The failing case: its class, name, message, and text in a <pre> inside a <details>.
    let case = &section[section.find(r#"<details class="step test-case status-failed">"#).unwrap()..];
    let case = &case[..case.find("</details>").unwrap()];
    assert!(case.contains("tests.test_cart") && case.contains("test_render"));
    assert!(case.contains("&#60;script&#62;alert(1)&#60;/script&#62; in the message"), "{case}");
    assert!(
        case.contains(
            "<pre class=\"log test-text\">assert render() == &#34;&#34;\nE   AssertionError: got &#60;script&#62;"
        ),
        "{case}"
    );
    assert!(!section.contains("test_empty") && !section.contains("test_later"), "only failing cases are listed");
    // An unreadable report says why, without failing the page.
    assert!(section.contains(r#"<span class="badge status-errored">unreadable</span> <code>reports/lint.xml</code>"#));
    assert!(section.contains("not valid JUnit XML: "));
    assert!(html.contains(r#"href="/api/builds/52/reports""#), "links to the reports' JSON");
}

#[test]
fn build_page_without_reports_has_no_report_section() {
    let mut page = build_page();
    page.reports.clear();
    let html = page.render(&Viewer::Anonymous).unwrap();
    assert!(!html.contains("Test reports"));
}

#[test]
fn build_page_says_how_many_failing_cases_it_left_out() {
    let mut page = build_page();
    page.reports[0].summary.omitted_failing = 7;
    let html = page.render(&Viewer::Anonymous).unwrap();
    assert!(html.contains("… and 7 more failing tests not shown here."));
}

#[test]
fn build_page_error_keeps_its_lines_in_a_pre() {
    let html = build_page().render(&Viewer::Anonymous).unwrap();
    let error = html.find("<pre class=\"error\">").expect("the error is in a pre");
    let text = &html[error..];
    assert!(text.starts_with(
        "<pre class=\"error\">.gantry.yml:7:5: error: stage `unit` runs on host `wbe`, which is not declared\n  hint: did you mean `web`?</pre>"
    ), "{}", &text[..200.min(text.len())]);
}

#[test]
fn build_page_of_a_queued_build_has_no_steps_yet() {
    let mut page = build_page();
    page.build = build(13, BuildStatus::Queued);
    page.build.started_at_ms = None;
    page.steps.clear();
    page.hosts.clear();
    page.error = None;
    page.commit_message = None;
    let html = page.render(&Viewer::Anonymous).unwrap();
    assert!(html.contains("No steps yet"));
    assert!(html.contains("http-equiv=\"refresh\""));
    assert!(!html.contains("<h2>Hosts</h2>"));
}

#[test]
fn error_page_escapes_its_message() {
    let page = ErrorPage { status: 404, title: "Not found".to_string(), message: format!("no build {HOSTILE}") };
    let html = page.render(&Viewer::Anonymous).unwrap();
    assert_escaped(&html, "error page");
    assert!(html.contains("<title>404 Not found · Gantry</title>"));
}

#[test]
fn css_is_shipped_with_every_status_colour() {
    for status in ["passed", "failed", "timed_out", "errored", "running", "queued", "cancelled", "skipped"] {
        assert!(CSS.contains(&format!("status-{status}")), "no style for {status}");
    }
}

fn signed_in(csrf: Option<&str>) -> Viewer {
    Viewer::SignedIn(SignedInView {
        name: "alice".to_string(),
        role: "read_only".to_string(),
        csrf: csrf.map(str::to_string),
    })
}

#[test]
fn the_top_bar_names_the_user_with_a_sign_out_form_or_offers_to_sign_in() {
    let page = ErrorPage { status: 404, title: "Not found".to_string(), message: "no build 9".to_string() };
    let html = page.render(&signed_in(Some("t0k3n"))).unwrap();
    assert!(html.contains("signed in as <a href=\"/settings/tokens\""), "{html}");
    assert!(html.contains(">alice</a>") && html.contains("read-only"));
    assert!(html.contains(r#"<form class="inline" method="post" action="/logout">"#));
    assert!(html.contains(r#"<input type="hidden" name="csrf" value="t0k3n">"#));

    let by_token = page.render(&signed_in(None)).unwrap();
    assert!(by_token.contains(">alice</a>") && !by_token.contains("/logout"), "no session, nothing to sign out of");

    let anonymous = page.render(&Viewer::Anonymous).unwrap();
    assert!(anonymous.contains(r#"<a href="/login">Sign in</a>"#) && !anonymous.contains("signed in as"));
    let unknown = page.render(&Viewer::Unknown).unwrap();
    assert!(!unknown.contains("Sign in") && !unknown.contains("signed in as"));
    for html in [html, by_token, anonymous, unknown] {
        let without_the_file = html.replace(r#"<script src="/static/gantry.js" defer></script>"#, "");
        assert!(!without_the_file.contains("<script"), "no page has a script but the served file");
    }
}

#[test]
fn the_login_form_carries_its_csrf_token_and_escapes_what_was_typed() {
    let page = LoginPage {
        next: "/builds/7?x=\"><script>".to_string(),
        user: HOSTILE.to_string(),
        error: Some("wrong user name or password".to_string()),
        csrf: "c5rf".to_string(),
    };
    let html = page.render(&Viewer::Unknown).unwrap();
    assert_escaped(&html, "the typed user name");
    assert!(html.contains(r#"<input type="hidden" name="csrf" value="c5rf">"#));
    assert!(html.contains(r#"<form method="post" action="/login""#));
    assert!(html.contains("name=\"password\" type=\"password\""));
    assert!(!html.contains("\"><script>"), "next is escaped in its attribute");
    assert!(html.contains("wrong user name or password"));
}

#[test]
fn the_tokens_page_lists_tokens_shows_a_new_one_once_and_guards_every_form() {
    let mut page = TokensPage {
        user: "alice".to_string(),
        tokens: vec![
            TokenView { id: 3, label: HOSTILE.to_string(), created_at_ms: NOW - 60_000, last_used_at_ms: None },
            TokenView { id: 2, label: "ci".to_string(), created_at_ms: NOW - 86_400_000, last_used_at_ms: Some(NOW) },
        ],
        new_token: Some(NewTokenView { label: "deploy".to_string(), token: "gantry_abc".to_string() }),
        can_manage: true,
        error: None,
        csrf: "c5rf".to_string(),
        now_ms: NOW,
    };
    let html = page.render(&signed_in(Some("c5rf"))).unwrap();
    assert_escaped(&html, "a token's label");
    assert!(html.contains("gantry_abc") && html.contains("not shown again"));
    assert!(
        html.contains(r#"action="/settings/tokens/3/revoke""#)
            && html.contains(r#"action="/settings/tokens/2/revoke""#)
    );
    assert!(html.contains("never"), "an unused token says so");
    let forms = html.matches("<form").count();
    let guarded = html.matches(r#"<input type="hidden" name="csrf" value="c5rf">"#).count();
    assert_eq!((forms, guarded), (4, 4), "sign out, two revokes, create: each carries the token");

    page.new_token = None;
    page.can_manage = false;
    let html = page.render(&signed_in(Some("c5rf"))).unwrap();
    assert!(!html.contains("gantry_abc") && !html.contains("/revoke") && !html.contains("Create token"));
    assert!(html.contains("Read-only users cannot create"));
}

/// A member's view of the repo page: the build form, a filter on a hostile branch and links to
/// the pages beside it.
fn repo_page_for_a_member() -> RepoPage {
    let mut page = repo_page(None);
    page.actions = Some(ActionForms { csrf: "tok&en\"".to_string() });
    page.branches = vec!["main".to_string(), HOSTILE.to_string()];
    page.history = HistoryNav {
        filter: HistoryFilterView {
            branch: HOSTILE.to_string(),
            status: "failed".to_string(),
            trigger: "manual".to_string(),
        },
        older_href: Some("/repos/shop?branch=%3Cscript%3E&status=failed&before=41".to_string()),
        newer_href: Some("/repos/shop?branch=%3Cscript%3E&before=90".to_string()),
        newest_href: Some("/repos/shop?branch=%3Cscript%3E".to_string()),
        clear_href: Some("/repos/shop".to_string()),
    };
    page
}

#[test]
fn repo_page_offers_the_build_form_only_to_who_may_act() {
    let html = repo_page_for_a_member().render(&Viewer::Anonymous).unwrap();
    assert!(html.contains(r#"<form class="inline-form build-form" method="post" action="/repos/shop/builds">"#));
    assert!(html.contains(r#"<input type="hidden" name="csrf" value="tok&#38;en&#34;">"#), "the token is escaped");
    assert!(html.contains(r#"name="branch""#) && html.contains(r#"name="commit""#));
    assert_escaped(&html, "branch suggestions and filter");
    let scripts = html.matches("<script").count();
    assert_eq!(scripts, html.matches(r#"<script src="/static/gantry.js""#).count(), "no script but the served one");

    let reader = repo_page(None).render(&Viewer::Anonymous).unwrap();
    assert!(!reader.contains("build-form"), "a reader gets no build form");
    assert!(!reader.contains(r#"method="post""#), "and no other form that changes anything");
}

#[test]
fn repo_page_filter_keeps_its_choices_and_pages_link_to_each_other() {
    let html = repo_page_for_a_member().render(&Viewer::Anonymous).unwrap();
    assert!(html.contains(r#"<form class="inline-form history-filter" method="get" action="/repos/shop">"#));
    assert!(html.contains(r#"<option value="failed" selected>failed</option>"#), "{html}");
    assert!(html.contains(r#"<option value="manual" selected>manual</option>"#));
    assert!(html.contains(r#"<option value="passed">passed</option>"#));
    assert!(html.contains(&format!(r#"value="{ESCAPED}" aria-label="branch""#)), "the branch filter is escaped text");
    // Links keep their query; `&` is escaped in the attribute, which browsers read back as `&`.
    assert!(
        html.contains(
            r#"<a class="older" rel="next" href="/repos/shop?branch=%3Cscript%3E&#38;status=failed&#38;before=41">"#
        ),
        "{html}"
    );
    assert!(html.contains(r#"<a class="newer" rel="prev" href="/repos/shop?branch=%3Cscript%3E&#38;before=90">"#));
    assert!(html.contains(r#"<a class="newest" href="/repos/shop?branch=%3Cscript%3E">"#));
    assert!(html.contains(r#"<a class="clear-filter" href="/repos/shop">clear</a>"#));

    let mut nothing = repo_page_for_a_member();
    nothing.builds.clear();
    nothing.grid = StageGrid::default();
    let html = nothing.render(&Viewer::Anonymous).unwrap();
    assert!(html.contains("No build matches this filter."), "an empty filtered page says so: {html}");
    assert!(!html.contains("No builds yet."));
    assert!(html.contains("history-filter"), "and keeps the filter to change it");
}

#[test]
fn build_page_buttons_cancel_a_live_build_and_rerun_a_finished_one() {
    let mut page = build_page();
    assert!(!page.render(&Viewer::Anonymous).unwrap().contains("build-actions"), "no buttons for a reader");

    page.actions = Some(ActionForms { csrf: "abc".to_string() });
    let html = page.render(&Viewer::Anonymous).unwrap();
    assert!(html.contains(r#"<form class="inline" method="post" action="/builds/52/rerun">"#));
    assert!(html.contains(r#"<input type="hidden" name="csrf" value="abc">"#));
    assert!(!html.contains("/builds/52/cancel"), "a finished build cannot be cancelled");

    page.build.status = BuildStatus::Running;
    page.build.finished_at_ms = None;
    let html = page.render(&Viewer::Anonymous).unwrap();
    assert!(html.contains(r#"<form class="inline" method="post" action="/builds/52/cancel">"#));
    assert!(!html.contains("/builds/52/rerun"), "a running build is cancelled, not re-run");
}

#[test]
fn build_page_marks_new_failures_and_names_the_build_it_reruns() {
    let mut page = build_page();
    page.rerun_of = Some(BuildLink { id: 50, number: 10 });
    page.compared_with = Some(BuildLink { id: 51, number: 11 });
    page.new_failures = vec![TestKeyView {
        stage: "unit".to_string(),
        classname: "tests.test_cart".to_string(),
        name: "test_render".to_string(),
    }];
    let html = page.render(&Viewer::Anonymous).unwrap();
    assert!(html.contains(r#"re-run of <a href="/builds/50">#10</a>"#));
    assert!(html.contains(
        r#"<span class="badge new-failure" title="passed in the previous build of this branch (#11)">new</span>"#
    ));
    assert_eq!(html.matches("new-failure").count(), 1, "only the failure that is new is marked");

    // A test of the same name in another stage's report is another test.
    page.new_failures[0].stage = "lint".to_string();
    assert!(!page.render(&Viewer::Anonymous).unwrap().contains("new-failure"));
}

fn tests_page() -> TestsPage {
    let run = |number: i64, outcome: &str| TestRunView {
        build_id: 40 + number,
        number,
        commit: SHA.to_string(),
        branch: HOSTILE.to_string(),
        outcome: outcome.to_string(),
        duration_ms: Some(1_200),
        message: (outcome == "failed").then(|| format!("expected {HOSTILE}")),
    };
    TestsPage {
        repo: "shop".to_string(),
        tests: vec![
            TestHistoryView {
                key: TestKeyView {
                    stage: "unit".to_string(),
                    classname: "cart".to_string(),
                    name: HOSTILE.to_string(),
                },
                flaky: true,
                runs: vec![run(3, "passed"), run(2, "failed"), run(1, "passed")],
            },
            TestHistoryView {
                key: TestKeyView { stage: "unit".to_string(), classname: "cart".to_string(), name: "adds".to_string() },
                flaky: false,
                runs: vec![run(3, "failed")],
            },
        ],
        flaky_only: false,
        builds_looked_at: 50,
        now_ms: NOW,
    }
}

#[test]
fn tests_page_shows_runs_marks_flaky_tests_and_escapes_names() {
    let page = tests_page();
    assert_eq!((page.failing_now(), page.flaky()), (1, 1));
    let html = page.render(&Viewer::Anonymous).unwrap();
    assert_escaped(&html, "test names, branches in run titles and failure messages");
    assert!(html.contains(r#"<span class="badge flaky-badge">flaky</span>"#));
    assert_eq!(html.matches("flaky-badge").count(), 1);
    assert!(
        html.contains(r##"<a class="run status-failed" href="/builds/42" title="#2 on &#60;script&#62;"##),
        "{html}"
    );
    assert!(html.contains("2 tests · 1 failing in their newest run · 1 flaky"));
    assert!(html.contains(r#"href="/repos/shop/tests?flaky=true""#), "a link to the flaky tests only");
    assert!(html.contains("1.2s"), "durations are shown");

    let mut flaky_only = tests_page();
    flaky_only.flaky_only = true;
    flaky_only.tests.clear();
    let html = flaky_only.render(&Viewer::Anonymous).unwrap();
    assert!(html.contains("No flaky test in these builds."));
}

#[test]
fn the_badge_is_an_svg_of_the_status_with_its_text_escaped() {
    let svg = Badge::for_status(Some(BuildStatus::Passed)).render().unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
    assert!(svg.contains("<title>build: passed</title>"));
    assert!(svg.contains("fill=\"#2da44e\""));
    assert!(Badge::for_status(Some(BuildStatus::Failed)).render().unwrap().contains("build: failed"));
    assert!(Badge::for_status(None).render().unwrap().contains("build: no builds"));
    let longer = Badge::for_status(None).render().unwrap();
    let width = |svg: &str| svg.split("width=\"").nth(1).unwrap().split('"').next().unwrap().parse::<u32>().unwrap();
    assert!(width(&longer) > width(&svg), "the badge grows with its text");

    let hostile = Badge { label: HOSTILE.to_string(), message: "a & b".to_string(), color: "#000000" };
    let svg = hostile.render().unwrap();
    assert!(!svg.contains(HOSTILE) && svg.contains(ESCAPED), "{svg}");
    assert!(svg.contains("a &#38; b"));
}
