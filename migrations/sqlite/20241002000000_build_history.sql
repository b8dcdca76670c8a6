-- History that goes back, re-runs, and tests across builds (issue 11).
--
-- 1. Paging through a repo's builds newest first is keyset pagination:
--    `WHERE repo = ? [AND branch|status|trigger = ?] AND id < ? ORDER BY id DESC LIMIT n`.
--    Each of these indexes ends in `id`, so a page is one backward walk over an index range,
--    with no sort and no rows skipped, however many builds the repo has (the repo page at
--    100,000 builds is as fast as at 100: `cargo bench -p gantry --bench builds -- --history`).
--    `builds_by_repo (repo, branch, id)` from the first migration already serves the branch filter.
CREATE INDEX builds_history ON builds (repo, id);
CREATE INDEX builds_history_by_status ON builds (repo, status, id);
CREATE INDEX builds_history_by_trigger ON builds (repo, trigger, id);

-- 2. A re-run is a new build of the same commit and ref, asked for by a person: its trigger is
--    'manual' (the trigger vocabulary is push / poll / manual), and this names the build it
--    re-runs. NULL for every other build.
ALTER TABLE builds ADD COLUMN rerun_of INTEGER REFERENCES builds (id);

-- 3. Every test case of every stored JUnit report, one row each, written when the report is
--    stored: the tests page, flaky detection and the build page's new failures query these rows
--    instead of parsing every report again. A test is known by its stage, classname and name.
CREATE TABLE test_cases (
    build_id    INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    step_idx    INTEGER NOT NULL,
    -- The report file (as in `reports.path`): a report stored again replaces its rows.
    path        TEXT NOT NULL,
    -- The case's position in its report: a report may name one case twice.
    seq         INTEGER NOT NULL,
    -- The stage's name, which stays the same from build to build (step indexes may not).
    stage       TEXT NOT NULL,
    classname   TEXT NOT NULL,
    name        TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('passed', 'failed', 'errored', 'skipped')),
    -- The case's `time` attribute, when it has one.
    duration_ms INTEGER,
    -- The failure's or error's message, cut to a few kilobytes.
    message     TEXT,
    PRIMARY KEY (build_id, step_idx, path, seq)
) WITHOUT ROWID;
