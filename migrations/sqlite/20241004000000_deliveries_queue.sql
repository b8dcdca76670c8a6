-- no-transaction
-- Issue 12: a webhook is answered as soon as its delivery is stored, pull requests are built, and
-- every build's state is reported on its commit through the forge's API.
--
-- * `deliveries` becomes a durable queue: a delivery is stored (with the SHA-256 of the exact
--   body its signature covers, so a captured body replayed under a new delivery id builds nothing)
--   together with its queued build, and the scheduler resolves it afterwards (fetch, read
--   .gantry.yml, apply `on`). A delivery whose `processed_at` is NULL was not resolved yet: its
--   build is not claimed, and a restarted server resolves it.
-- * `builds` learns `ref_kind = 'pull_request'` (with the request's number, source and target
--   branch and the ref its head is fetched through) and the status `skipped` (the pipeline's `on`
--   does not build this ref). SQLite cannot change a CHECK constraint in place, so the table is
--   rebuilt (SQLite's documented twelve-step procedure: foreign keys off, copy, drop, rename,
--   check); ids, numbers and every child row stay as they are. That needs foreign keys off, which
--   a transaction cannot switch, hence `no-transaction` above and the explicit BEGIN/COMMIT.
-- * `commit_statuses` is the outbox of states to report on forges, sent and retried off the
--   build's path; `repos.forge_error` is the forge's answer when reporting failed, shown on the
--   repo page until a report succeeds again.

PRAGMA foreign_keys = OFF;

BEGIN;

CREATE TABLE new_builds (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    repo        TEXT NOT NULL REFERENCES repos (name),
    number      INTEGER NOT NULL,
    commit_sha  TEXT NOT NULL,
    -- The branch name, the tag name when ref_kind = 'tag', the request's source branch when
    -- ref_kind = 'pull_request'.
    branch      TEXT NOT NULL,
    ref_kind    TEXT NOT NULL CHECK (ref_kind IN ('branch', 'tag', 'pull_request')),
    trigger     TEXT NOT NULL CHECK (trigger IN ('push', 'poll', 'manual')),
    status      TEXT NOT NULL CHECK (status IN ('queued', 'provisioning', 'running', 'passed',
                                                 'failed', 'cancelled', 'errored', 'interrupted',
                                                 'skipped')),
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    -- Why the build errored, was cancelled or skipped; for a bad pipeline file, every diagnostic
    -- with file:line:column.
    error       TEXT,
    -- Pull requests only (all four set, or none): the request's number on its forge, its target
    -- branch, and the ref of the configured repository its head commit is fetched through
    -- ('refs/pull/N/head', 'refs/merge-requests/N/head').
    pr_number   INTEGER,
    pr_target   TEXT,
    pr_head_ref TEXT,
    -- Kept from earlier migrations: the build a re-run repeats (20241002000000_build_history)
    -- and the last id of the build's event sequence (20241003000000_event_ids).
    rerun_of    INTEGER REFERENCES builds (id),
    event_seq   INTEGER NOT NULL DEFAULT 0,
    UNIQUE (repo, number),
    CHECK ((ref_kind = 'pull_request') = (pr_number IS NOT NULL)),
    CHECK ((pr_number IS NULL) = (pr_target IS NULL) AND (pr_number IS NULL) = (pr_head_ref IS NULL))
);

INSERT INTO new_builds (id, repo, number, commit_sha, branch, ref_kind, trigger, status, created_at,
                        started_at, finished_at, error, rerun_of, event_seq)
SELECT id, repo, number, commit_sha, branch, ref_kind, trigger, status, created_at, started_at,
       finished_at, error, rerun_of, event_seq
FROM builds;

DROP TABLE builds;
ALTER TABLE new_builds RENAME TO builds;

-- The scheduler claims the oldest queued build; supersede looks for a repo's live builds.
CREATE INDEX builds_by_status ON builds (status, id);
CREATE INDEX builds_by_repo ON builds (repo, branch, id);
-- A newer push to a request supersedes its older builds; closing it cancels the queued ones.
CREATE INDEX builds_by_pull_request ON builds (repo, pr_number, id) WHERE pr_number IS NOT NULL;
-- The history's indexes (20241002000000_build_history), dropped with the old table.
CREATE INDEX builds_history ON builds (repo, id);
CREATE INDEX builds_history_by_status ON builds (repo, status, id);
CREATE INDEX builds_history_by_trigger ON builds (repo, trigger, id);

CREATE TABLE new_deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    repo         TEXT NOT NULL REFERENCES repos (name),
    -- The forge's id of the delivery (X-GitHub-Delivery, X-Gitlab-Event-UUID, ...); NULL when it
    -- sent none. A redelivery repeats it.
    delivery_id  TEXT,
    -- The lowercase hex SHA-256 of the exact body the signature covers. NULL for deliveries
    -- recorded before this migration and for builds queued without a body.
    body_sha256  TEXT,
    -- 'github', 'gitlab' or 'gitea' (Forgejo speaks Gitea's dialect); 'unknown' before this
    -- migration.
    forge        TEXT NOT NULL,
    -- The forge's event name ('push', 'pull_request', 'Merge Request Hook', ...).
    event        TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    -- The build the delivery queued, if it queued one.
    build_id     INTEGER REFERENCES builds (id),
    -- When the scheduler resolved the delivery; NULL: not yet, its build waits.
    processed_at INTEGER,
    UNIQUE (repo, delivery_id),
    UNIQUE (repo, body_sha256)
);

INSERT INTO new_deliveries (repo, delivery_id, body_sha256, forge, event, received_at, build_id, processed_at)
SELECT repo, delivery_id, NULL, 'unknown', 'push', received_at, build_id, received_at
FROM deliveries;

DROP TABLE deliveries;
ALTER TABLE new_deliveries RENAME TO deliveries;

-- Each repo's resolver takes its oldest unprocessed delivery; the claim skips builds whose
-- delivery is not processed yet.
CREATE INDEX deliveries_unprocessed ON deliveries (repo, id) WHERE processed_at IS NULL;
CREATE INDEX deliveries_by_build ON deliveries (build_id) WHERE processed_at IS NULL;

-- States to report on forges, oldest first. Per (repo, commit, context) only the newest row is
-- ever sent: older unsent rows of the same key are marked superseded, so the last state wins.
CREATE TABLE commit_statuses (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    repo            TEXT NOT NULL REFERENCES repos (name),
    build_id        INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    commit_sha      TEXT NOT NULL,
    context         TEXT NOT NULL,
    -- Gantry's words; each forge's client maps them to its own.
    state           TEXT NOT NULL CHECK (state IN ('pending', 'running', 'success', 'failure',
                                                    'error', 'cancelled', 'skipped')),
    description     TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    outcome         TEXT NOT NULL DEFAULT 'queued' CHECK (outcome IN ('queued', 'sent', 'superseded',
                                                                      'failed')),
    finished_at     INTEGER,
    -- Why it was not sent (the forge's words), for a failed row.
    error           TEXT
);

CREATE INDEX commit_statuses_to_send ON commit_statuses (next_attempt_at, id) WHERE outcome = 'queued';
CREATE INDEX commit_statuses_by_key ON commit_statuses (repo, commit_sha, context, id);
CREATE INDEX commit_statuses_by_build ON commit_statuses (build_id, id);

ALTER TABLE repos ADD COLUMN forge_error TEXT;
ALTER TABLE repos ADD COLUMN forge_error_at INTEGER;

COMMIT;

PRAGMA foreign_keys = ON;
