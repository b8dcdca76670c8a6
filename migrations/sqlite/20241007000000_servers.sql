-- Several servers on one database (issue 13, contract section 8).
--
-- * servers: one row per `server_id`. A server registers at start (refused while another live
--   server holds the id), heartbeats every few seconds, and sets `stopped_at` when it stops. A
--   server silent for `server_timeout` is taken over by one live server, exactly once (the
--   conditional UPDATE that sets `stopped_at` and `taken_over_by` succeeds for one of them): its
--   running builds end `interrupted` and its SSH-pool and EC2 hosts are torn down.
--   `instance` is this run of the server (a new random id at each start), so a server never
--   updates the row of the run before it; `host` and `pid` say who holds the id in the refusal
--   message, and let a server restarted on the same machine after a crash take its id back at once.
-- * builds.server_id: the server that claimed the build (NULL while queued, and for builds
--   claimed before this migration). Start-up recovery and take-overs touch only the builds of
--   the server concerned.
CREATE TABLE servers (
    id            TEXT PRIMARY KEY NOT NULL,
    instance      TEXT NOT NULL,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL,
    stopped_at    INTEGER,
    taken_over_by TEXT
);

ALTER TABLE builds ADD COLUMN server_id TEXT;

CREATE INDEX builds_by_server ON builds (server_id, status) WHERE server_id IS NOT NULL;
