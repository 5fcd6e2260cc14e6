-- Egress (postgres): each VM's policy (JSON, as the API takes it), kept across
-- hibernate/resume and controller restarts; each user's egress identity (an
-- upstream proxy sealed by the vault, as credentials are, and a source
-- address from the host's pool); how long a VM's egress took to set up.
-- Keep in step with ../sqlite/0003_egress.sql.

CREATE TABLE vm_egress (
    vm_id       TEXT PRIMARY KEY NOT NULL,
    policy      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE user_egress (
    user_id         TEXT PRIMARY KEY NOT NULL REFERENCES users (user_id),
    proxy_display   TEXT,
    proxy_data      BYTEA,
    proxy_iv        BYTEA,
    proxy_tag       BYTEA,
    proxy_salt      BYTEA,
    proxy_key_id    TEXT,
    source_address  TEXT,
    updated_at      BIGINT NOT NULL
);

ALTER TABLE vms ADD COLUMN egress_setup_ms BIGINT;
