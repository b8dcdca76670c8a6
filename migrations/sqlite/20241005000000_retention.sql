-- Retention (issue 13, contract section 8): with `[retention] builds = "90d"`, builds that
-- finished longer ago than that lose their log lines, JUnit reports and the test cases read from
-- them; the build rows, their steps and statuses stay, so history pages, badges and the API keep
-- working. Each step that had a log keeps one line: a notice saying the log was pruned.
--
-- * builds.logs_pruned_at: when the build's logs and reports were pruned (NULL: not yet). A
--   build is pruned once; the prune never looks at it again.
-- * builds_to_prune: the prune's select (`logs_pruned_at IS NULL AND finished_at < ?`, oldest
--   first) walks this index instead of the whole table; a pruned build leaves it. Unfinished
--   builds have no `finished_at`, so the range never reaches them.
ALTER TABLE builds ADD COLUMN logs_pruned_at INTEGER;

CREATE INDEX builds_to_prune ON builds (finished_at) WHERE logs_pruned_at IS NULL;
