-- Version 2: the awaiting_approval state, approvals, the policy hash, the kill switch and the usage ledger.
-- SQLite cannot change a CHECK constraint in place, so `jobs` is rebuilt. `deliveries` is rebuilt with it: dropping
-- `jobs` while a table references it would cascade-delete the deliveries (foreign keys are on, and cannot be
-- turned off inside the migration's transaction); renaming `jobs_v2` afterwards rewrites the new reference.
CREATE TABLE jobs_v2 (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    ticket        TEXT    NOT NULL,
    project       TEXT    NOT NULL,
    state         TEXT    NOT NULL
                  CHECK (state IN ('queued', 'running', 'awaiting_approval', 'succeeded', 'failed', 'cancelled')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    not_before    INTEGER NOT NULL,
    lease_owner   TEXT,
    lease_expires INTEGER,
    triggers      TEXT    NOT NULL DEFAULT '[]',
    last_error    TEXT,
    outcome       TEXT,
    progress      TEXT    NOT NULL DEFAULT '{}',
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    policy_hash   TEXT,
    approval_reason       TEXT,
    approval_approvers    TEXT,
    approval_requested_at INTEGER,
    approval_expires_at   INTEGER,
    approved_by           TEXT,
    approved_at           INTEGER,
    -- Failed by expiry and not yet handed out by expire_approvals.
    approval_expiry_unreported INTEGER NOT NULL DEFAULT 0
);
INSERT INTO jobs_v2 (seq, id, ticket, project, state, attempts, max_attempts, not_before, lease_owner, lease_expires,
                     triggers, last_error, outcome, progress, created_at, updated_at)
    SELECT seq, id, ticket, project, state, attempts, max_attempts, not_before, lease_owner, lease_expires,
           triggers, last_error, outcome, progress, created_at, updated_at FROM jobs;
CREATE TABLE deliveries_v2 (
    key        TEXT    PRIMARY KEY NOT NULL,
    job_id     TEXT    NOT NULL REFERENCES jobs_v2 (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);
INSERT INTO deliveries_v2 (key, job_id, created_at) SELECT key, job_id, created_at FROM deliveries;
DROP TABLE deliveries;
DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;
ALTER TABLE deliveries_v2 RENAME TO deliveries;
CREATE UNIQUE INDEX jobs_one_open_per_ticket ON jobs (ticket)
    WHERE state IN ('queued', 'running', 'awaiting_approval');
CREATE INDEX jobs_state_not_before ON jobs (state, not_before);
CREATE INDEX jobs_ticket ON jobs (ticket);
CREATE INDEX jobs_created ON jobs (created_at, seq);
CREATE INDEX jobs_open_by_age ON jobs (created_at, seq) WHERE state IN ('queued', 'running');
-- Every claim looks for lapsed approval requests.
CREATE INDEX jobs_awaiting_by_expiry ON jobs (approval_expires_at) WHERE state = 'awaiting_approval';
CREATE INDEX jobs_expiry_unreported ON jobs (seq) WHERE approval_expiry_unreported = 1;
CREATE INDEX deliveries_job ON deliveries (job_id);
-- Queue-wide settings, one row each; `pause` holds the kill switch (NULL: not paused).
CREATE TABLE control (
    name       TEXT    PRIMARY KEY NOT NULL,
    value      TEXT,
    updated_at INTEGER NOT NULL
);
INSERT INTO control (name, value, updated_at) VALUES ('pause', NULL, 0);
CREATE TABLE usage_ledger (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id        TEXT    NOT NULL,
    team          TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    input_tokens  INTEGER NOT NULL CHECK (input_tokens >= 0),
    output_tokens INTEGER NOT NULL CHECK (output_tokens >= 0),
    cost_micros   INTEGER NOT NULL CHECK (cost_micros >= 0),
    at            INTEGER NOT NULL
);
CREATE INDEX usage_ledger_team_at ON usage_ledger (team, at);
CREATE INDEX usage_ledger_job ON usage_ledger (job_id);
