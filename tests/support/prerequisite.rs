//! What a test does when something it needs is not installed: under `CI=true` it fails, naming
//! the step that provides it, so a CI machine without it can never pass quietly; elsewhere it is
//! skipped, saying so. Included by path from the runner's tests and the e2e suite.

/// A prerequisite of a test is missing; the test returns right after calling this.
#[track_caller]
pub fn missing_prerequisite(what: &str, provided_by: &str) {
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{what}: under CI=true this test must run ({provided_by})");
    }
    println!("note: {what} ({provided_by}); test skipped");
}
