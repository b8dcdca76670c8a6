-- Gantry's first schema: everything a build needs to be queued durably, run, shown and reaped
-- after a crash. Timestamps are INTEGER unix milliseconds; statuses are the contract's words
-- (runner/src/event.rs spells them), checked here so a typo cannot reach the dashboard.

-- The repositories named in the configuration, with what the poller and fetches learnt about them.
CREATE TABLE repos (
    name           TEXT PRIMARY KEY NOT NULL,
    url            TEXT NOT NULL,
    -- The last fetch error, shown on the repo page; NULL once a fetch succeeds again.
    last_error     TEXT,
    last_polled_at INTEGER
);

-- One row per build: the queue (status = 'queued') and the history.
CREATE TABLE builds (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    repo        TEXT NOT NULL REFERENCES repos (name),
    -- 1, 2, 3, ... per repo; what people call "build 12 of acme".
    number      INTEGER NOT NULL,
    commit_sha  TEXT NOT NULL,
    -- The branch name, or the tag name when ref_kind = 'tag'.
    branch      TEXT NOT NULL,
    ref_kind    TEXT NOT NULL CHECK (ref_kind IN ('branch', 'tag')),
    trigger     TEXT NOT NULL CHECK (trigger IN ('push', 'poll', 'manual')),
    status      TEXT NOT NULL CHECK (status IN ('queued', 'provisioning', 'running', 'passed',
                                                 'failed', 'cancelled', 'errored', 'interrupted')),
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    -- Why the build errored; for a bad pipeline file, every diagnostic with file:line:column.
    error       TEXT,
    UNIQUE (repo, number)
);

-- The scheduler claims the oldest queued build; supersede looks for a repo's live builds.
CREATE INDEX builds_by_status ON builds (status, id);
CREATE INDEX builds_by_repo ON builds (repo, branch, id);

-- The entries of a build as the executor planned them: provision, push, setup, stages, teardown.
CREATE TABLE steps (
    build_id    INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('provision', 'push', 'setup', 'stage', 'teardown')),
    name        TEXT NOT NULL,
    host        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'running', 'passed', 'failed', 'skipped',
                                                 'cancelled', 'timed_out')),
    exit_code   INTEGER,
    started_at  INTEGER,
    finished_at INTEGER,
    PRIMARY KEY (build_id, idx)
) WITHOUT ROWID;

-- Every host a build asked for, written BEFORE the provider is asked to create it, so a restarted
-- server can find and tear down what a crashed one left behind.
CREATE TABLE hosts (
    id             INTEGER PRIMARY KEY,
    build_id       INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    role           TEXT NOT NULL,
    -- The durable identity handed to the provider, e.g. 'b42-web'.
    host_id        TEXT NOT NULL UNIQUE,
    provider       TEXT NOT NULL,
    provider_id    TEXT,
    address        TEXT,
    state          TEXT NOT NULL CHECK (state IN ('requested', 'provisioned', 'torn_down',
                                                   'teardown_failed')),
    requested_at   INTEGER NOT NULL,
    provisioned_at INTEGER,
    torn_down_at   INTEGER,
    provision_ms   INTEGER,
    teardown_ms    INTEGER,
    error          TEXT,
    UNIQUE (build_id, role)
);

-- Start-up reaps every host that is not known to be gone.
CREATE INDEX hosts_not_torn_down ON hosts (state) WHERE state <> 'torn_down';

-- Every output line, as produced. `seq` counts a build's lines in arrival order, so the whole log
-- reads in the order things happened and one step's log is a range of the primary key.
CREATE TABLE log_lines (
    build_id INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    step_idx INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    stream   TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'system')),
    text     TEXT NOT NULL,
    PRIMARY KEY (build_id, step_idx, seq)
) WITHOUT ROWID;

-- JUnit XML files collected from hosts before teardown.
CREATE TABLE reports (
    build_id INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    step_idx INTEGER NOT NULL,
    path     TEXT NOT NULL,
    content  BLOB NOT NULL,
    PRIMARY KEY (build_id, step_idx, path)
);

-- Webhook delivery ids already handled, so a redelivery never queues a second build.
CREATE TABLE deliveries (
    repo        TEXT NOT NULL REFERENCES repos (name),
    delivery_id TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    build_id    INTEGER REFERENCES builds (id),
    PRIMARY KEY (repo, delivery_id)
) WITHOUT ROWID;

-- The branch heads the poller saw last, so it builds only heads that moved or appeared.
CREATE TABLE branch_heads (
    repo       TEXT NOT NULL REFERENCES repos (name),
    branch     TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    PRIMARY KEY (repo, branch)
) WITHOUT ROWID;
