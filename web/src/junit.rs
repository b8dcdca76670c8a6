//! A summary of a JUnit XML report: how many test cases ran, failed, errored and were skipped,
//! and the failing cases with their messages.
//!
//! Counts come from the `<testcase>` elements themselves, never from the suites' `tests=` /
//! `failures=` attributes, which tools fill in inconsistently. The root may be `<testsuites>` or
//! a single `<testsuite>`, and suites may nest. The parse never fails: a report that is not
//! UTF-8 or not well-formed XML gives a summary with [`JunitSummary::error`] set and no counts,
//! so a bad file costs its own section of the page, not the page. Sizes are bounded: at most
//! [`MAX_FAILING_CASES`] failing cases are kept (the rest are only counted), and each case keeps
//! at most [`MAX_FAILURE_TEXT_BYTES`] of its message and of its text.
//!
//! [`parse_junit_cases`] reads the same file case by case (outcome, duration, message), for the
//! server to store each case when a report arrives: the one JUnit reader of the workspace serves
//! both the build page's summary and the tests across builds.

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

/// A report keeps at most this many failing cases; [`JunitSummary::omitted_failing`] counts the
/// rest.
pub const MAX_FAILING_CASES: usize = 200;

/// A failing case keeps at most this many bytes of its failure text, and of its message.
pub const MAX_FAILURE_TEXT_BYTES: usize = 2048;

/// What one JUnit report says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JunitSummary {
    /// Every `<testcase>`.
    pub tests: u64,
    /// Cases with a `<failure>` (and no `<error>` before it).
    pub failures: u64,
    /// Cases with an `<error>` (and no `<failure>` before it).
    pub errors: u64,
    /// Cases with a `<skipped>` and neither a failure nor an error.
    pub skipped: u64,
    /// The first [`MAX_FAILING_CASES`] failed or errored cases, in file order.
    pub failing: Vec<FailingCase>,
    /// How many more failed or errored cases the file has than `failing` holds.
    pub omitted_failing: u64,
    /// Why the file could not be read (`not valid JUnit XML: …`); the counts are then zero.
    pub error: Option<String>,
}

impl JunitSummary {
    /// Cases that neither failed, errored nor were skipped.
    pub fn passed(&self) -> u64 {
        self.tests.saturating_sub(self.failures + self.errors + self.skipped)
    }

    /// The report shows a failed or errored case, or could not be read.
    pub fn went_wrong(&self) -> bool {
        self.failures > 0 || self.errors > 0 || self.error.is_some()
    }

    fn invalid(reason: impl std::fmt::Display) -> JunitSummary {
        JunitSummary { error: Some(format!("not valid JUnit XML: {reason}")), ..JunitSummary::default() }
    }
}

/// How a failing case failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A `<failure>`: an assertion did not hold.
    Failure,
    /// An `<error>`: the test could not run to its assertions.
    Error,
}

impl FailureKind {
    /// `failure` or `error`, for labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Failure => "failure",
            FailureKind::Error => "error",
        }
    }
}

/// One failed or errored `<testcase>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingCase {
    pub kind: FailureKind,
    /// The case's `classname` attribute, empty when it has none.
    pub classname: String,
    /// The case's `name` attribute, empty when it has none.
    pub name: String,
    /// The `message` attribute of the failure or error, cut to [`MAX_FAILURE_TEXT_BYTES`].
    pub message: Option<String>,
    /// The text inside the failure or error element, trimmed and cut to
    /// [`MAX_FAILURE_TEXT_BYTES`].
    pub text: String,
    /// `text` was cut.
    pub text_truncated: bool,
}

/// How a case ended, as far as its children say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseOutcome {
    Passed,
    Skipped,
    Failed(FailureKind),
}

impl CaseOutcome {
    /// `passed`, `failed`, `errored` or `skipped`: the words the tests across builds use.
    pub fn as_str(self) -> &'static str {
        match self {
            CaseOutcome::Passed => "passed",
            CaseOutcome::Skipped => "skipped",
            CaseOutcome::Failed(FailureKind::Failure) => "failed",
            CaseOutcome::Failed(FailureKind::Error) => "errored",
        }
    }
}

/// One `<testcase>` of a report, whatever its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JunitCase {
    /// The case's `classname` attribute, empty when it has none.
    pub classname: String,
    /// The case's `name` attribute, empty when it has none.
    pub name: String,
    pub outcome: CaseOutcome,
    /// The case's `time` attribute (seconds) in milliseconds, when it has a readable one.
    pub duration_ms: Option<u64>,
    /// The failure's or error's `message`, cut to [`MAX_FAILURE_TEXT_BYTES`].
    pub message: Option<String>,
}

/// Every case of the JUnit XML report `content`, in file order; `Err` says why the file is not
/// valid JUnit XML (as [`JunitSummary::error`] would).
pub fn parse_junit_cases(content: &[u8]) -> Result<Vec<JunitCase>, String> {
    let mut cases = Vec::new();
    read_report(content, |open| {
        cases.push(JunitCase {
            classname: open.case.classname,
            name: open.case.name,
            outcome: open.outcome,
            duration_ms: open.duration_ms,
            message: open.case.message,
        })
    })
    .map_err(|reason| format!("not valid JUnit XML: {reason}"))?;
    Ok(cases)
}

/// The `<testcase>` being read.
struct OpenCase {
    /// The element depth of the `<testcase>` itself.
    depth: usize,
    outcome: CaseOutcome,
    /// The `time` attribute, in milliseconds.
    duration_ms: Option<u64>,
    case: FailingCase,
    /// The element depth of the `<failure>`/`<error>` whose text is being collected.
    collecting: Option<usize>,
}

/// Summarise the JUnit XML report `content` (the bytes the host had).
pub fn parse_junit(content: &[u8]) -> JunitSummary {
    let mut summary = JunitSummary::default();
    match read_report(content, |case| finish_case(&mut summary, case)) {
        Ok(()) => summary,
        Err(reason) => JunitSummary::invalid(reason),
    }
}

/// Read the report `content`, handing every case to `on_case` as it ends; `Err` says why the
/// file is not valid JUnit XML.
fn read_report(content: &[u8], on_case: impl FnMut(OpenCase)) -> Result<(), String> {
    let text =
        std::str::from_utf8(content).map_err(|e| format!("not UTF-8 (invalid byte at offset {})", e.valid_up_to()))?;
    read_cases(text.strip_prefix('\u{feff}').unwrap_or(text), on_case)
}

fn read_cases(text: &str, mut on_case: impl FnMut(OpenCase)) -> Result<(), String> {
    let mut reader = Reader::from_str(text);
    let mut depth = 0usize;
    let mut seen_root = false;
    let mut open: Option<OpenCase> = None;
    loop {
        let event = reader.read_event().map_err(|e| format!("{e} (at byte {})", reader.error_position()))?;
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                let empty = matches!(event, Event::Empty(_));
                let name = start.local_name();
                let name = name.as_ref();
                if depth == 0 {
                    if seen_root {
                        return Err(format!("a second root element <{name}>"));
                    }
                    if name != "testsuites" && name != "testsuite" {
                        return Err(format!("the root element is <{name}>, not <testsuites> or <testsuite>"));
                    }
                    seen_root = true;
                }
                depth += 1;
                match open.as_mut() {
                    None if name == "testcase" => {
                        let case = OpenCase {
                            depth,
                            outcome: CaseOutcome::Passed,
                            duration_ms: attribute(start, "time")?.as_deref().and_then(seconds_to_ms),
                            case: FailingCase {
                                kind: FailureKind::Failure,
                                classname: attribute(start, "classname")?.unwrap_or_default(),
                                name: attribute(start, "name")?.unwrap_or_default(),
                                message: None,
                                text: String::new(),
                                text_truncated: false,
                            },
                            collecting: None,
                        };
                        if empty {
                            on_case(case);
                        } else {
                            open = Some(case);
                        }
                    }
                    // The failure or error element is a direct child of its case.
                    Some(case) if depth == case.depth + 1 => match (name, case.outcome) {
                        ("failure" | "error", CaseOutcome::Passed | CaseOutcome::Skipped) => {
                            let kind = if name == "error" { FailureKind::Error } else { FailureKind::Failure };
                            case.outcome = CaseOutcome::Failed(kind);
                            case.case.kind = kind;
                            case.case.message =
                                attribute(start, "message")?.map(|m| truncate(m, MAX_FAILURE_TEXT_BYTES).0);
                            if !empty {
                                case.collecting = Some(depth);
                            }
                        }
                        ("skipped", CaseOutcome::Passed) => case.outcome = CaseOutcome::Skipped,
                        _ => {}
                    },
                    _ => {}
                }
                if empty {
                    depth -= 1;
                }
            }
            Event::End(_) => {
                if let Some(case) = open.as_mut() {
                    if case.collecting == Some(depth) {
                        case.collecting = None;
                    }
                    if case.depth == depth {
                        on_case(open.take().expect("a case is open"));
                    }
                }
                depth = depth.checked_sub(1).ok_or("an end tag without a start tag")?;
            }
            Event::Text(ref text) => collect(&mut open, &text.xml10_content()),
            Event::CData(ref data) => collect(&mut open, &data.xml10_content()),
            Event::GeneralRef(ref entity) => {
                let resolved = match entity.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c.to_string(),
                    None => match resolve_predefined_entity(entity) {
                        Some(text) => text.to_string(),
                        None => return Err(format!("an unknown entity &{};", &**entity)),
                    },
                };
                collect(&mut open, &resolved);
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
    if depth > 0 {
        return Err("the file ends inside an element".to_string());
    }
    if !seen_root {
        return Err("no <testsuites> or <testsuite> element".to_string());
    }
    Ok(())
}

/// A `time` attribute (seconds, `0.031`) in whole milliseconds; `None` when it is not a
/// non-negative number.
fn seconds_to_ms(seconds: &str) -> Option<u64> {
    let seconds: f64 = seconds.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| (seconds * 1000.0).round() as u64)
}

/// Add the text of a failure or error element being read to its case, up to the limit.
fn collect(open: &mut Option<OpenCase>, text: &str) {
    let Some(case) = open.as_mut().filter(|c| c.collecting.is_some()) else { return };
    // Keep a little more than the limit: the text is trimmed before it is cut.
    let room = (2 * MAX_FAILURE_TEXT_BYTES).saturating_sub(case.case.text.len());
    if text.len() > room {
        case.case.text.push_str(&truncate(text.to_string(), room).0);
        case.case.text_truncated = true;
        case.collecting = None;
    } else {
        case.case.text.push_str(text);
    }
}

fn finish_case(summary: &mut JunitSummary, open: OpenCase) {
    summary.tests += 1;
    match open.outcome {
        CaseOutcome::Passed => {}
        CaseOutcome::Skipped => summary.skipped += 1,
        CaseOutcome::Failed(kind) => {
            match kind {
                FailureKind::Failure => summary.failures += 1,
                FailureKind::Error => summary.errors += 1,
            }
            if summary.failing.len() < MAX_FAILING_CASES {
                let mut case = open.case;
                let (text, cut) = truncate(case.text.trim().to_string(), MAX_FAILURE_TEXT_BYTES);
                case.text = text;
                case.text_truncated |= cut;
                summary.failing.push(case);
            } else {
                summary.omitted_failing += 1;
            }
        }
    }
}

/// An attribute's value with its references resolved, if the element has it.
fn attribute(start: &BytesStart<'_>, name: &str) -> Result<Option<String>, String> {
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| e.to_string())?;
        if attribute.key.local_name().as_ref() == name {
            let value = attribute.normalized_value(XmlVersion::Implicit1_0).map_err(|e| e.to_string())?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

/// `text` cut to at most `max` bytes at a character boundary, and whether it was cut.
fn truncate(mut text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `pytest --junitxml` writes for one passing, one failing and one skipped test.
    const PYTEST: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="3" time="0.031" timestamp="2024-05-02T09:43:20.123456+00:00" hostname="ci"><testcase classname="tests.test_cart" name="test_empty" time="0.001" /><testcase classname="tests.test_cart" name="test_total" time="0.002"><failure message="AssertionError: assert 41 == 42&#10; +  where 41 = total()">def test_total():
&gt;       assert total() == 42
E       AssertionError: assert 41 == 42 &amp; more

tests/test_cart.py:9: AssertionError</failure></testcase><testcase classname="tests.test_cart" name="test_later" time="0.000"><skipped type="pytest.skip" message="not yet">tests/test_cart.py:12: not yet</skipped></testcase></testsuite></testsuites>"#;

    #[test]
    fn a_pytest_report_counts_its_cases_and_keeps_the_failure() {
        let summary = parse_junit(PYTEST.as_bytes());
        assert_eq!(summary.error, None);
        assert_eq!((summary.tests, summary.failures, summary.errors, summary.skipped), (3, 1, 0, 1));
        assert_eq!(summary.passed(), 1);
        assert_eq!(summary.failing.len(), 1);
        let case = &summary.failing[0];
        assert_eq!(case.kind, FailureKind::Failure);
        assert_eq!(case.classname, "tests.test_cart");
        assert_eq!(case.name, "test_total");
        assert_eq!(case.message.as_deref(), Some("AssertionError: assert 41 == 42\n +  where 41 = total()"));
        assert!(case.text.starts_with("def test_total():\n>       assert total() == 42\n"), "{:?}", case.text);
        assert!(case.text.contains("42 & more"), "entities are resolved");
        assert!(case.text.ends_with("tests/test_cart.py:9: AssertionError"));
        assert!(!case.text_truncated);
        assert_eq!(summary.omitted_failing, 0);
    }

    #[test]
    fn testsuites_with_two_nested_suites_count_cases_not_attributes() {
        // The suites' own attributes are wrong on purpose: only the cases count.
        let xml = r#"<testsuites tests="99" failures="0">
  <testsuite name="unit" tests="1" failures="0">
    <testcase classname="cart" name="adds"/>
    <testcase classname="cart" name="errs"><error message="boom" type="RuntimeError"><![CDATA[Traceback <here>]]></error></testcase>
    <testsuite name="unit.nested">
      <testcase classname="cart.nested" name="fails"><failure>assert False</failure><system-out>noise</system-out></testcase>
    </testsuite>
  </testsuite>
  <testsuite name="integration">
    <testcase classname="api" name="passes"><system-out>ok</system-out></testcase>
    <testcase classname="api" name="skips"><skipped/></testcase>
  </testsuite>
</testsuites>"#;
        let summary = parse_junit(xml.as_bytes());
        assert_eq!(summary.error, None);
        assert_eq!((summary.tests, summary.failures, summary.errors, summary.skipped), (5, 1, 1, 1));
        let names: Vec<(&str, &str, FailureKind)> =
            summary.failing.iter().map(|c| (c.classname.as_str(), c.name.as_str(), c.kind)).collect();
        assert_eq!(names, [("cart", "errs", FailureKind::Error), ("cart.nested", "fails", FailureKind::Failure)]);
        assert_eq!(summary.failing[0].message.as_deref(), Some("boom"));
        assert_eq!(summary.failing[0].text, "Traceback <here>");
        assert_eq!(summary.failing[1].message, None);
        assert_eq!(summary.failing[1].text, "assert False", "other children of the case are not its failure text");
    }

    #[test]
    fn a_single_testsuite_root_is_accepted() {
        let summary =
            parse_junit(br#"<testsuite><testcase name="a"/><testcase name="b"><failure/></testcase></testsuite>"#);
        assert_eq!(summary.error, None);
        assert_eq!((summary.tests, summary.failures), (2, 1));
        assert_eq!(summary.failing[0].name, "b");
        assert_eq!(summary.failing[0].text, "");
    }

    #[test]
    fn malformed_xml_gives_an_error_instead_of_counts() {
        for xml in [
            "<testsuites><testsuite><testcase name=\"a\"></testsuite></testsuites>",
            "<testsuites><testsuite>",
            "",
            "not xml at all",
            "<html><body>502 Bad Gateway</body></html>",
            "<testsuite/><testsuite/>",
            "<testsuite><testcase name=\"a\"><failure>&bogus;</failure></testcase></testsuite>",
        ] {
            let summary = parse_junit(xml.as_bytes());
            let error = summary.error.as_deref().unwrap_or_else(|| panic!("{xml:?} was accepted: {summary:?}"));
            assert!(error.starts_with("not valid JUnit XML: "), "{error}");
            assert_eq!((summary.tests, summary.failing.len()), (0, 0), "{xml:?}");
        }
    }

    #[test]
    fn non_utf8_bytes_give_an_error() {
        let summary = parse_junit(b"<testsuite><testcase name=\"caf\xe9\"/></testsuite>");
        assert_eq!(summary.error.as_deref(), Some("not valid JUnit XML: not UTF-8 (invalid byte at offset 30)"));
        assert_eq!(summary.tests, 0);
    }

    #[test]
    fn long_failure_text_and_many_failures_are_cut() {
        let long = "é".repeat(3 * MAX_FAILURE_TEXT_BYTES);
        let mut xml = String::from("<testsuite>");
        for i in 0..MAX_FAILING_CASES + 5 {
            xml.push_str(&format!(r#"<testcase name="t{i}"><failure message="{long}">{long}</failure></testcase>"#));
        }
        xml.push_str("</testsuite>");
        let summary = parse_junit(xml.as_bytes());
        assert_eq!(summary.error, None);
        assert_eq!(summary.failures, MAX_FAILING_CASES as u64 + 5);
        assert_eq!(summary.failing.len(), MAX_FAILING_CASES);
        assert_eq!(summary.omitted_failing, 5);
        let case = &summary.failing[0];
        assert!(case.text_truncated);
        assert!(case.text.len() <= MAX_FAILURE_TEXT_BYTES && case.text.len() > MAX_FAILURE_TEXT_BYTES - 4);
        assert!(case.message.as_ref().unwrap().len() <= MAX_FAILURE_TEXT_BYTES);
    }
    #[test]
    fn every_case_is_read_with_its_outcome_and_duration() {
        let cases = parse_junit_cases(PYTEST.as_bytes()).unwrap();
        let seen: Vec<(&str, &str, Option<u64>)> =
            cases.iter().map(|c| (c.name.as_str(), c.outcome.as_str(), c.duration_ms)).collect();
        assert_eq!(
            seen,
            [("test_empty", "passed", Some(1)), ("test_total", "failed", Some(2)), ("test_later", "skipped", Some(0))]
        );
        assert_eq!(cases[1].classname, "tests.test_cart");
        assert_eq!(cases[1].message.as_deref(), Some("AssertionError: assert 41 == 42\n +  where 41 = total()"));
        assert_eq!(cases[0].message, None);

        let odd = br#"<testsuite><testcase name="e" time="-1"><error/></testcase><testcase name="n" time="soon"/></testsuite>"#;
        let cases = parse_junit_cases(odd).unwrap();
        assert_eq!((cases[0].outcome.as_str(), cases[0].duration_ms), ("errored", None));
        assert_eq!(cases[1].duration_ms, None, "an unreadable time is no time");
        let error = parse_junit_cases(b"<html/>").unwrap_err();
        assert!(error.starts_with("not valid JUnit XML: the root element is <html>"), "{error}");
    }
}
