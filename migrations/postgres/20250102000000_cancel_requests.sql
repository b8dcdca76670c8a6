-- A cancel asked of a build that another server runs: see the SQLite migration of the same name.
ALTER TABLE builds ADD COLUMN cancel_requested TEXT;
