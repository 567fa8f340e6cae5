-- Version 1: jobs and the delivery keys that deduplicate their triggers.
CREATE TABLE jobs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    ticket        TEXT    NOT NULL,
    project       TEXT    NOT NULL,
    state         TEXT    NOT NULL
                  CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
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
    updated_at    INTEGER NOT NULL
);
CREATE UNIQUE INDEX jobs_one_open_per_ticket ON jobs (ticket) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_state_not_before ON jobs (state, not_before);
CREATE INDEX jobs_ticket ON jobs (ticket);
CREATE INDEX jobs_created ON jobs (created_at, seq);
-- Claims scan open jobs oldest first; finished jobs pile up and must not slow that down.
CREATE INDEX jobs_open_by_age ON jobs (created_at, seq) WHERE state IN ('queued', 'running');
CREATE TABLE deliveries (
    key        TEXT    PRIMARY KEY NOT NULL,
    job_id     TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);
CREATE INDEX deliveries_job ON deliveries (job_id);
