//! Repeated failed sign-ins against the real binary: each failure is one log line naming the
//! client, answers slow down and then turn into 429 with `Retry-After` (for the address, whatever
//! name it tries), a proxy's header counts only when the proxy is trusted, and Debian's
//! `fail2ban-regex` with `contrib/fail2ban/filter.d/gantry.conf` matches every failure line of the
//! real log and no other line.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::auth::Browser;
use crate::helpers::*;
use crate::prerequisite::missing_prerequisite;

/// How many failures the server answers before it refuses an address (`auth::throttle`).
const LOCK_AFTER: usize = 10;
const FAIL2BAN_REGEX: &str = "/usr/bin/fail2ban-regex";

fn browser_at(base: &str) -> Browser {
    Browser { http: anonymous_client(), base: base.to_string(), cookie: None, csrf: String::new() }
}

#[tokio::test]
async fn failed_sign_ins_are_slowed_then_refused_and_fail2ban_matches_each_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gantry.toml");
    std::fs::write(&config, config_toml(dir.path(), &[], 1)).unwrap();
    let log = dir.path().join("gantry.log");
    let server = ServerProcess::start_logging_to(&config, &free_loopback_port(), &log).await;

    let mut browser = browser_at(&server.base);
    assert_eq!(browser.sign_in(ADMIN, ADMIN_PASSWORD).await.status(), 303, "a success first");
    let mut statuses = Vec::new();
    let mut slowest_early = Duration::ZERO;
    let mut slowest_late = Duration::ZERO;
    for i in 0..LOCK_AFTER {
        let mut attacker = browser_at(&server.base);
        let started = Instant::now();
        let status = attacker.sign_in(&format!("user{i}"), "guess").await.status().as_u16();
        let took = started.elapsed();
        if i < 3 {
            slowest_early = slowest_early.max(took);
        } else {
            slowest_late = slowest_late.max(took);
        }
        statuses.push(status);
    }
    assert_eq!(statuses, vec![401; LOCK_AFTER], "rotating names from one address");
    assert!(slowest_late >= Duration::from_secs(1), "later failures are slowed ({slowest_late:?})");
    assert!(slowest_late > slowest_early, "{slowest_early:?} then {slowest_late:?}");
    let refused = browser_at(&server.base).sign_in(ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(refused.status(), 429, "the address is locked, the right password included");
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after > 60, "{retry_after}");

    // A header naming another client counts for nothing: the server trusts no proxy here.
    let mut spoofer = browser_at(&server.base);
    spoofer.open_login().await;
    let csrf = spoofer.csrf.clone();
    spoofer.http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers([("x-forwarded-for".parse().unwrap(), "198.51.100.9".parse().unwrap())].into_iter().collect())
        .build()
        .unwrap();
    let answer =
        spoofer.send(Method::POST, "/login", Some(&[("csrf", &csrf), ("user", ADMIN), ("password", "x")])).await;
    assert_eq!(answer.status(), 429, "still this address");
    drop(server);

    let text = std::fs::read_to_string(&log).unwrap();
    let failures: Vec<&str> = text.lines().filter(|l| l.contains("sign-in failed")).collect();
    assert_eq!(failures.len(), LOCK_AFTER + 2, "one line per failure:\n{text}");
    assert!(failures.iter().all(|l| l.contains("client=127.0.0.1 ")), "{failures:#?}");
    assert!(text.lines().any(|l| l.contains("signed in")), "the success is logged too");

    if !std::path::Path::new(FAIL2BAN_REGEX).exists() {
        missing_prerequisite("fail2ban-regex is not installed", "scripts/install-deps --tests installs fail2ban");
        return;
    }
    let filter = workspace_path("contrib/fail2ban/filter.d/gantry.conf");
    let output = Command::new(FAIL2BAN_REGEX).arg(&log).arg(&filter).output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}\n{}", String::from_utf8_lossy(&output.stderr));
    // "Lines: 25 lines, 0 ignored, 12 matched, 13 missed"
    let counts = report.lines().find(|l| l.starts_with("Lines:")).unwrap_or_else(|| panic!("{report}"));
    let number = |word: &str| -> usize {
        let before = counts.split(&format!(" {word}")).next().unwrap();
        before.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(number("matched"), failures.len(), "every failure and nothing else: {counts}\n{report}");
    assert_eq!(number("lines"), number("matched") + number("missed"), "{counts}");
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_and_an_untrusted_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gantry.toml");
    let toml = config_toml(dir.path(), &[], 1) + "\n[auth]\ntrusted_proxies = [\"127.0.0.1/32\"]\n";
    std::fs::write(&config, toml).unwrap();
    let log = dir.path().join("gantry.log");
    let server = ServerProcess::start_logging_to(&config, &free_loopback_port(), &log).await;
    for forwarded in ["203.0.113.5", "10.9.9.9, 203.0.113.6"] {
        let mut client = browser_at(&server.base);
        client.open_login().await;
        let csrf = client.csrf.clone();
        client.http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .default_headers([("x-forwarded-for".parse().unwrap(), forwarded.parse().unwrap())].into_iter().collect())
            .build()
            .unwrap();
        let answer =
            client.send(Method::POST, "/login", Some(&[("csrf", &csrf), ("user", "bob"), ("password", "x")])).await;
        assert_eq!(answer.status(), 401);
    }
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("sign-in failed client=203.0.113.5 "), "{text}");
    assert!(text.contains("sign-in failed client=203.0.113.6 "), "the proxy's own entry is the last one: {text}");
}
