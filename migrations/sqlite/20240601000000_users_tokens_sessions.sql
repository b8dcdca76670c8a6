-- Who may use Gantry (issue 9, contract section 5): users who sign in with a password, the API
-- tokens scripts use in their stead, and the server-side sessions behind the sign-in cookie.
-- Secrets are never stored as given: passwords as argon2id hashes, tokens and session ids as
-- their SHA-256, so a copy of this database lets nobody sign in. Removing a user removes their
-- tokens and sessions with them (ON DELETE CASCADE), which ends every way they were signed in.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    -- 1 to 64 characters of [A-Za-z0-9._-], checked by the server before it gets here.
    name          TEXT NOT NULL UNIQUE,
    -- A PHC string: '$argon2id$v=19$m=…,t=…,p=…$salt$hash'.
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'member', 'read_only')),
    created_at    INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- What the owner called it ("deploy script"), shown on the settings page.
    label        TEXT NOT NULL,
    -- The lowercase hex SHA-256 of the whole token; a request's token is looked up by it.
    token_hash   TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    -- Updated at most once a minute, so reading the API does not write on every request.
    last_used_at INTEGER
);

CREATE INDEX api_tokens_by_user ON api_tokens (user_id);

-- tower-sessions' records. A session exists before anyone signs in (the sign-in form's CSRF
-- token lives in it), so user_id is NULL until then.
CREATE TABLE sessions (
    -- The lowercase hex SHA-256 of the id the cookie carries.
    id_hash    TEXT PRIMARY KEY NOT NULL,
    user_id    INTEGER REFERENCES users (id) ON DELETE CASCADE,
    -- The session's data as JSON (the signed-in user's id, the CSRF token).
    data       TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX sessions_by_expiry ON sessions (expires_at);
CREATE INDEX sessions_by_user ON sessions (user_id);
