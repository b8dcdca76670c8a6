-- The live event stream (issue 11, contract section 4: GET /api/builds/{id}/events) resumes
-- exactly with Last-Event-ID. For that, every event of a build (a log line, a step or host that
-- changed, a report, a status) takes the next number of one per-build sequence and is stored with
-- it in the same transaction, so a client that reconnects reads precisely what came after its
-- last id from here and then follows the live broadcast, skipping what it already read.
--
-- * builds.event_seq: the last number handed out for the build (0: none yet). The build's final
--   status is the event after it (event_seq + 1), once the build is final.
-- * log_lines gets `line`, a line's number within its step (1, 2, 3, ...), which the page's
--   anchors (#L<step>-<n>) and the log window API address, and becomes keyed by it; `seq` is now
--   the line's event id (the old per-build line counter plus one, so 0 never names an event), with
--   a unique index for reading a build's events in order.
-- * build_events: every other event, as the JSON the stream sends.

ALTER TABLE builds ADD COLUMN event_seq INTEGER NOT NULL DEFAULT 0;

CREATE TABLE log_lines_new (
    build_id INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    step_idx INTEGER NOT NULL,
    -- 1, 2, 3, ... within the step.
    line     INTEGER NOT NULL,
    -- The line's event id within the build.
    seq      INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    stream   TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'system')),
    text     TEXT NOT NULL,
    PRIMARY KEY (build_id, step_idx, line)
) WITHOUT ROWID;

INSERT INTO log_lines_new (build_id, step_idx, line, seq, at, stream, text)
SELECT build_id, step_idx, ROW_NUMBER() OVER (PARTITION BY build_id, step_idx ORDER BY seq), seq + 1, at, stream, text
FROM log_lines;

DROP TABLE log_lines;
ALTER TABLE log_lines_new RENAME TO log_lines;
CREATE UNIQUE INDEX log_lines_by_seq ON log_lines (build_id, seq);

UPDATE builds SET event_seq = COALESCE((SELECT MAX(seq) FROM log_lines WHERE build_id = builds.id), 0);

-- Events other than log lines: `data` is the event's JSON as the stream sends it.
CREATE TABLE build_events (
    build_id INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('build', 'step', 'host', 'report')),
    data     TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
) WITHOUT ROWID;
