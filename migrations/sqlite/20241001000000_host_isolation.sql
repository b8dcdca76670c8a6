-- What kept each host apart from other builds' hosts (issue 10): on the local provider a user of
-- its own from the pool and the build's network namespace, a shared user when no pool exists, or
-- nothing when the server does not run as root. The build page and GET /api/builds/{id} show it,
-- so a build that ran without isolation says so. Hosts recorded before this column existed have
-- none (NULL): what isolated them was not recorded.

ALTER TABLE hosts ADD COLUMN isolation TEXT;
