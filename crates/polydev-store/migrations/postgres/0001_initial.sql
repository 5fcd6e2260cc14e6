-- polydev store, initial schema (PostgreSQL).
-- Times are Unix milliseconds (BIGINT). Every integer is BIGINT so the sqlx Any
-- driver hands back the same width as on SQLite.
-- Keep in step with ../sqlite/0001_initial.sql.

CREATE TABLE users (
    user_id     TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    key_id        TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    revoked       BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE vms (
    vm_id           TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users (user_id),
    vm_type         TEXT NOT NULL,
    status          TEXT NOT NULL,
    slot            BIGINT NOT NULL,
    -- TRUE once the slot (and the netns/TAP named after it) may be given to
    -- another VM: set on destroy, and when a failed VM's resources are reclaimed.
    slot_released   BOOLEAN NOT NULL DEFAULT FALSE,
    netns           TEXT NOT NULL,
    tap_device      TEXT NOT NULL,
    vcpu_count      BIGINT NOT NULL,
    memory_mb       BIGINT NOT NULL,
    vmm             TEXT NOT NULL,
    vmm_pid         BIGINT,
    socket_path     TEXT,
    dir             TEXT NOT NULL,
    failure_reason  TEXT,
    kernel_boot_ms  BIGINT,
    agent_ready_ms  BIGINT,
    created_at      BIGINT NOT NULL,
    ready_at        BIGINT,
    destroyed_at    BIGINT
);

-- At most one VM holds a slot until it is released (destroyed VMs always are).
CREATE UNIQUE INDEX vms_live_slot ON vms (slot) WHERE slot_released = FALSE;
CREATE INDEX vms_user_created ON vms (user_id, created_at);

CREATE TABLE auth_sessions (
    session_id     TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (user_id),
    provider       TEXT NOT NULL,
    status         TEXT NOT NULL,
    browser_vm_id  TEXT,
    auth_url       TEXT,
    error_message  TEXT,
    started_at     BIGINT NOT NULL,
    completed_at   BIGINT,
    expires_at     BIGINT NOT NULL
);

CREATE TABLE credentials (
    user_id            TEXT NOT NULL REFERENCES users (user_id),
    provider           TEXT NOT NULL,
    encrypted_data     BYTEA NOT NULL,
    iv                 BYTEA NOT NULL,
    tag                BYTEA NOT NULL,
    salt               BYTEA NOT NULL,
    key_id             TEXT NOT NULL,
    is_valid           BOOLEAN NOT NULL DEFAULT TRUE,
    created_at         BIGINT NOT NULL,
    last_validated_at  BIGINT,
    UNIQUE (user_id, provider)
);

CREATE TABLE vm_cleanup_tasks (
    task_id     TEXT PRIMARY KEY,
    vm_id       TEXT NOT NULL,
    session_id  TEXT,
    cleanup_at  BIGINT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending',
    attempts    BIGINT NOT NULL DEFAULT 0,
    error       TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE INDEX vm_cleanup_tasks_due ON vm_cleanup_tasks (status, cleanup_at);
