-- polydev store, initial schema (SQLite).
-- Times are Unix milliseconds (INTEGER). Booleans are INTEGER 0/1: the sqlx Any
-- driver cannot carry SQLite's BOOLEAN affinity, and the store reads both forms.
-- Keep in step with ../postgres/0001_initial.sql.

CREATE TABLE users (
    user_id     TEXT PRIMARY KEY NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    key_id        TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked       INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE vms (
    vm_id           TEXT PRIMARY KEY NOT NULL,
    user_id         TEXT NOT NULL REFERENCES users (user_id),
    vm_type         TEXT NOT NULL,
    status          TEXT NOT NULL,
    slot            INTEGER NOT NULL,
    -- 1 once the slot (and the netns/TAP named after it) may be given to
    -- another VM: set on destroy, and when a failed VM's resources are reclaimed.
    slot_released   INTEGER NOT NULL DEFAULT 0,
    netns           TEXT NOT NULL,
    tap_device      TEXT NOT NULL,
    vcpu_count      INTEGER NOT NULL,
    memory_mb       INTEGER NOT NULL,
    vmm             TEXT NOT NULL,
    vmm_pid         INTEGER,
    socket_path     TEXT,
    dir             TEXT NOT NULL,
    failure_reason  TEXT,
    kernel_boot_ms  INTEGER,
    agent_ready_ms  INTEGER,
    created_at      INTEGER NOT NULL,
    ready_at        INTEGER,
    destroyed_at    INTEGER
);

-- At most one VM holds a slot until it is released (destroyed VMs always are).
CREATE UNIQUE INDEX vms_live_slot ON vms (slot) WHERE slot_released = 0;
CREATE INDEX vms_user_created ON vms (user_id, created_at);

CREATE TABLE auth_sessions (
    session_id     TEXT PRIMARY KEY NOT NULL,
    user_id        TEXT NOT NULL REFERENCES users (user_id),
    provider       TEXT NOT NULL,
    status         TEXT NOT NULL,
    browser_vm_id  TEXT,
    auth_url       TEXT,
    error_message  TEXT,
    started_at     INTEGER NOT NULL,
    completed_at   INTEGER,
    expires_at     INTEGER NOT NULL
);

CREATE TABLE credentials (
    user_id            TEXT NOT NULL REFERENCES users (user_id),
    provider           TEXT NOT NULL,
    encrypted_data     BLOB NOT NULL,
    iv                 BLOB NOT NULL,
    tag                BLOB NOT NULL,
    salt               BLOB NOT NULL,
    key_id             TEXT NOT NULL,
    is_valid           INTEGER NOT NULL DEFAULT 1,
    created_at         INTEGER NOT NULL,
    last_validated_at  INTEGER,
    UNIQUE (user_id, provider)
);

CREATE TABLE vm_cleanup_tasks (
    task_id     TEXT PRIMARY KEY NOT NULL,
    vm_id       TEXT NOT NULL,
    session_id  TEXT,
    cleanup_at  INTEGER NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending',
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE INDEX vm_cleanup_tasks_due ON vm_cleanup_tasks (status, cleanup_at);
