-- A cancel asked of a build that another server runs (several servers on one database).
--
-- * builds.cancel_requested: 'user' or 'superseded' once a server asked for the build to stop
--   for that reason, NULL otherwise. The asking server also sends a notice, which the running
--   server hears at once; a notice is lost while that server's listening connection is down, so
--   the running server also reads its builds' requests at every heartbeat.
ALTER TABLE builds ADD COLUMN cancel_requested TEXT;
