-- scoreserver's whole schema. Applied to a new database in one transaction; the version is
-- PRAGMA user_version, checked at every start. Times are epoch milliseconds (INTEGER).

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE COLLATE NOCASE,    -- NFKC, see names.py
    name_skeleton TEXT,                     -- look-alike key, names.skeleton
    password_hash TEXT NOT NULL,            -- Argon2id, PHC string
    created_at    INTEGER NOT NULL,
    banned_until  INTEGER,                  -- NULL: not banned; a huge value: until unbanned
    ban_note      TEXT,
    -- erased: personal data gone, results kept
    deleted_at    INTEGER,
    -- a one-time password reset code (its SHA-256) and when it expires
    reset_hash    BLOB,
    reset_expires_at INTEGER
);

-- No two names that look alike (NULL only for accounts older than schema 2 that collided).
CREATE UNIQUE INDEX users_name_skeleton ON users(name_skeleton);

CREATE TABLE login_tokens (
    token_hash BLOB PRIMARY KEY,            -- SHA-256 of the token; the token itself is not kept
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE games (
    id                   TEXT PRIMARY KEY,
    duration_ms          INTEGER NOT NULL CHECK (duration_ms > 0),
    burst_window_ms      INTEGER NOT NULL DEFAULT 1000 CHECK (burst_window_ms > 0),
    burst_threshold      INTEGER NOT NULL DEFAULT 12 CHECK (burst_threshold > 0),
    burst_limit          INTEGER NOT NULL DEFAULT 3 CHECK (burst_limit >= 0),
    burst_period_ms      INTEGER NOT NULL DEFAULT 10000 CHECK (burst_period_ms > 0),
    latency_ms           INTEGER NOT NULL DEFAULT 1000 CHECK (latency_ms >= 0),
    submission_window_ms INTEGER NOT NULL DEFAULT 300000 CHECK (submission_window_ms >= 0),
    human_floor_ms       INTEGER NOT NULL DEFAULT 60 CHECK (human_floor_ms >= 0),   -- 0: off
    min_rhythm_cv        REAL NOT NULL DEFAULT 0.05 CHECK (min_rhythm_cv >= 0),      -- 0: off
    max_score            INTEGER CHECK (max_score >= 0),                            -- NULL: none
    hold_outliers        INTEGER NOT NULL DEFAULT 1,
    title                TEXT,                                                      -- for pages
    -- points a second nobody sustains (0: off); the review range (core/review.py)
    human_max_rate       REAL NOT NULL DEFAULT 10 CHECK (human_max_rate >= 0),
    review_above         INTEGER CHECK (review_above >= 0),   -- NULL: from the rate ceiling
    review_min_players   INTEGER NOT NULL DEFAULT 10 CHECK (review_min_players >= 1),
    review_account_age_h REAL NOT NULL DEFAULT 24 CHECK (review_account_age_h >= 0),
    -- archived: no new games, board kept
    archived_at          INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);

-- One row per game session. A session still 'running' when the server starts was cut off by
-- a crash; the server voids it at start.
CREATE TABLE game_sessions (
    id              TEXT PRIMARY KEY,       -- 32 hex digits, also inside every token
    game_id         TEXT NOT NULL REFERENCES games(id),
    user_id         INTEGER REFERENCES users(id),   -- NULL for a guest
    guest_addr      TEXT,                   -- a guest's address, for flags
    user_agent      TEXT,
    settings_json   TEXT NOT NULL,          -- the game's settings as the session started
    started_at      INTEGER NOT NULL,
    client_start_ts INTEGER NOT NULL,
    start_token     TEXT NOT NULL,
    end_token       TEXT,
    ended_at        INTEGER,
    end_reason      TEXT,                   -- time_up | burst_limit | server_shutdown | crashed
    state           TEXT NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'ended', 'voided', 'submitted')),
    node_id         TEXT                    -- the node (nodes.id) whose socket runs it
);
CREATE INDEX game_sessions_user ON game_sessions(user_id, game_id);
-- A user plays one game of a kind at a time: the database refuses a second running session,
-- whatever interleaving of requests (or second process) tries it.
CREATE UNIQUE INDEX game_sessions_one_running ON game_sessions(user_id, game_id)
    WHERE state = 'running' AND user_id IS NOT NULL;
CREATE INDEX game_sessions_state ON game_sessions(state);
CREATE INDEX game_sessions_node ON game_sessions(node_id) WHERE state = 'running';

-- The server processes sharing this database (nodes, and the workers of one), each holding a
-- lease it renews every few seconds. A node whose lease ran out is gone: its running sessions
-- are void (any node notices); a node's own row goes when it stops or is found gone.
CREATE TABLE nodes (
    id          TEXT PRIMARY KEY,           -- random, new at every start
    url         TEXT NOT NULL,              -- its game socket (`session_elsewhere` names it)
    host        TEXT NOT NULL,              -- its machine (host name and boot id) and process:
    pid         INTEGER NOT NULL,           -- a node of the same machine sees at once it is gone
    kid         TEXT,                       -- the key it signs with
    started_at  INTEGER NOT NULL,
    seen_at     INTEGER NOT NULL,           -- its last heartbeat
    lease_ms    INTEGER NOT NULL            -- gone when seen_at + lease_ms has passed
);

-- Attempts charged to the shared budgets (logins, admin logins), so that every node counts
-- the same guesses. Rows older than the longest window are deleted now and then.
CREATE TABLE attempts (
    id      INTEGER PRIMARY KEY,
    budget  TEXT NOT NULL,                  -- e.g. 'login_account'
    key     TEXT NOT NULL,                  -- an account or an address
    at      INTEGER NOT NULL
);
CREATE INDEX attempts_key ON attempts(budget, key, at);

CREATE TABLE issued_points (
    session_id TEXT NOT NULL REFERENCES game_sessions(id),
    seq        INTEGER NOT NULL,
    server_ts  INTEGER NOT NULL,
    client_ts  INTEGER NOT NULL,
    token      TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;

-- Evidence for review: points that counted for nothing, and bursts.
CREATE TABLE rejected_points (
    session_id TEXT NOT NULL REFERENCES game_sessions(id),
    server_ts  INTEGER NOT NULL,
    client_ts  INTEGER NOT NULL,
    reason     TEXT NOT NULL
);
CREATE INDEX rejected_points_session ON rejected_points(session_id);

CREATE TABLE bursts (
    session_id TEXT NOT NULL REFERENCES game_sessions(id),
    at_ms      INTEGER NOT NULL
);
CREATE INDEX bursts_session ON bursts(session_id);

CREATE TABLE scores (
    id         INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL UNIQUE REFERENCES game_sessions(id),
    game_id    TEXT NOT NULL REFERENCES games(id),
    user_id    INTEGER NOT NULL REFERENCES users(id),
    score      INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    hidden     INTEGER NOT NULL DEFAULT 0,  -- hidden by an admin (scores hide)
    held       INTEGER NOT NULL DEFAULT 0,  -- above the trusted range: off boards until cleared
    reviewed_at INTEGER,                    -- a reviewer cleared it: it counts as trusted
    log_index  INTEGER                      -- its entry in the results log (log_entries.idx)
);
CREATE INDEX scores_board ON scores(game_id, score DESC, created_at);
CREATE INDEX scores_user ON scores(user_id, game_id);
CREATE INDEX scores_created ON scores(created_at);  -- what other nodes' pollers look at

CREATE TABLE flags (
    id          INTEGER PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    game_id     TEXT,
    session_id  TEXT,
    user_id     INTEGER REFERENCES users(id),
    guest_addr  TEXT,                       -- for a guest (or an unknown submitter)
    user_agent  TEXT,
    detail_json TEXT NOT NULL DEFAULT '{}',
    status      TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'cleared', 'banned')),
    holds       INTEGER NOT NULL DEFAULT 1,  -- while open, the player is off boards (0: review only)
    resolved_at INTEGER,
    resolution_note TEXT
);
CREATE INDEX flags_open ON flags(status, user_id);
CREATE INDEX flags_session ON flags(session_id);  -- a result's own flags (core/review.py)

-- Public keys that ever signed tokens; the private key lives in the key file.
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,           -- 16 hex digits
    public_key  BLOB NOT NULL,              -- raw 32 bytes
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER                     -- when a rotation replaced it
);

CREATE TABLE audit (
    id      INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,                  -- the OS user or 'admin page'
    command TEXT NOT NULL,                  -- e.g. 'flags resolve'
    target  TEXT,
    note    TEXT
);

-- Sessions of the /admin console (the token itself is not kept). Setting a new admin
-- password deletes them all; logging out deletes one.
CREATE TABLE admin_sessions (
    token_hash BLOB PRIMARY KEY,            -- SHA-256 of the bearer token
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    address    TEXT
) WITHOUT ROWID;

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- The results log (docs/verification.md): every change to what a board shows, appended in
-- one order for the whole deployment; its Merkle tree's leaves are the entries' texts.
CREATE TABLE log_entries (
    idx        INTEGER PRIMARY KEY,         -- 0, 1, 2, ... with no gap
    body       TEXT NOT NULL,               -- the entry as served and hashed (receipts.py)
    created_at INTEGER NOT NULL
);

-- Signed tree heads, in the transparency-log checkpoint format.
CREATE TABLE log_checkpoints (
    size       INTEGER PRIMARY KEY,
    root       BLOB NOT NULL,               -- 32 bytes
    note       TEXT NOT NULL,               -- the signed note
    created_at INTEGER NOT NULL
);

-- A player's salt: log entries name a player by a commitment to it. Erasure deletes it.
CREATE TABLE player_salts (
    user_id INTEGER PRIMARY KEY REFERENCES users(id),
    salt    BLOB NOT NULL                   -- 16 random bytes
);

PRAGMA user_version = 6;
