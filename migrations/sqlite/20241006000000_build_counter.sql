-- Build numbers come from a counter on the repo's row (`repos.builds_numbered`: the last number
-- given), incremented in the statement that hands a number out. `MAX(number) + 1` inside the
-- INSERT was safe only while one connection wrote at a time; on PostgreSQL, with a pool of
-- writers and several servers, two inserts could read the same maximum. The increment is one
-- atomic UPDATE on both backends (PostgreSQL holds the row's lock until the transaction ends).
ALTER TABLE repos ADD COLUMN builds_numbered INTEGER NOT NULL DEFAULT 0;

UPDATE repos SET builds_numbered = (SELECT COALESCE(MAX(number), 0) FROM builds WHERE builds.repo = repos.name);
