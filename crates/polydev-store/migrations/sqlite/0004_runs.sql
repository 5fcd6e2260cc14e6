-- Runs (sqlite): each prompt run, its timings and outcome, and every normalized
-- event it produced, numbered from 1 so a reader resumes exactly
-- (Last-Event-ID), also after a restart; with them, where the reader of
-- the CLI's output stood (checkpoint), so it continues there. Credentials gain a kind (the CLI's
-- file from signing in, or an API key), an expiry when the file says, and
-- why the provider refused them. Keep in step with ../postgres/0004_runs.sql.

CREATE TABLE runs (
    run_id            TEXT PRIMARY KEY NOT NULL,
    user_id           TEXT NOT NULL REFERENCES users (user_id),
    provider          TEXT NOT NULL,
    prompt            TEXT NOT NULL,
    model             TEXT,
    resume_id         TEXT,
    timeout_secs      INTEGER NOT NULL,
    status            TEXT NOT NULL,
    vm_id             TEXT,
    vm_found          TEXT,
    agent_proc_id     TEXT,
    exit_code         INTEGER,
    answer            TEXT,
    error             TEXT,
    conversation_id   TEXT,
    input_tokens      INTEGER,
    output_tokens     INTEGER,
    cost_usd          REAL,
    totals            TEXT,
    checkpoint        TEXT,
    event_count       INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    vm_ready_at       INTEGER,
    cli_started_at    INTEGER,
    first_output_at   INTEGER,
    finished_at       INTEGER
);

CREATE INDEX runs_by_user ON runs (user_id, created_at);
CREATE INDEX runs_by_status ON runs (status);

CREATE TABLE run_events (
    run_id      TEXT NOT NULL REFERENCES runs (run_id),
    seq         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    data        TEXT NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
);

ALTER TABLE credentials ADD COLUMN kind TEXT NOT NULL DEFAULT 'oauth';
ALTER TABLE credentials ADD COLUMN expires_at INTEGER;
ALTER TABLE credentials ADD COLUMN invalid_reason TEXT;
