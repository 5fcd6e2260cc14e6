-- Egress (sqlite): each VM's policy (JSON, as the API takes it), kept across
-- hibernate/resume and controller restarts; each user's egress identity (an
-- upstream proxy sealed by the vault, as credentials are, and a source
-- address from the host's pool); how long a VM's egress took to set up.
-- Keep in step with ../postgres/0003_egress.sql.

CREATE TABLE vm_egress (
    vm_id       TEXT PRIMARY KEY NOT NULL,
    policy      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE user_egress (
    user_id         TEXT PRIMARY KEY NOT NULL REFERENCES users (user_id),
    proxy_display   TEXT,
    proxy_data      BLOB,
    proxy_iv        BLOB,
    proxy_tag       BLOB,
    proxy_salt      BLOB,
    proxy_key_id    TEXT,
    source_address  TEXT,
    updated_at      INTEGER NOT NULL
);

ALTER TABLE vms ADD COLUMN egress_setup_ms INTEGER;
