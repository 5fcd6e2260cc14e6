-- Accounts (postgres): the people who sign in to the dashboard. An account's
-- user_id is the user id the rest of the API uses (VMs, runs, credentials).
CREATE TABLE accounts (
    user_id        TEXT PRIMARY KEY NOT NULL,
    email          TEXT,
    role           TEXT NOT NULL,
    password_hash  TEXT,
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE UNIQUE INDEX accounts_email ON accounts (email);

-- An OpenID Connect identity (issuer + subject) linked to an account.
CREATE TABLE account_identities (
    issuer      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES accounts (user_id),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);

-- Dashboard sessions: only the SHA-256 of the cookie is stored.
CREATE TABLE web_sessions (
    session_hash  TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL REFERENCES accounts (user_id),
    method        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX web_sessions_user ON web_sessions (user_id);

-- OpenID Connect sign-ins in flight (state → nonce, PKCE verifier), so a
-- restart between the redirect and the callback loses nothing.
CREATE TABLE oidc_logins (
    state          TEXT PRIMARY KEY NOT NULL,
    provider       TEXT NOT NULL,
    nonce          TEXT NOT NULL,
    pkce_verifier  TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);

-- API keys get a scope: NULL acts for every user (an operator's key), a
-- user id binds the key to that user.
ALTER TABLE api_keys ADD COLUMN user_id TEXT;
