-- Version 1: jobs and the delivery keys that deduplicate their triggers.
CREATE TABLE jobs (
    seq           bigint      GENERATED ALWAYS AS IDENTITY,
    id            text        PRIMARY KEY,
    ticket        text        NOT NULL,
    project       text        NOT NULL,
    state         text        NOT NULL
                  CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts      integer     NOT NULL DEFAULT 0,
    max_attempts  integer     NOT NULL,
    not_before    timestamptz NOT NULL,
    lease_owner   text,
    lease_expires timestamptz,
    triggers      jsonb       NOT NULL DEFAULT '[]',
    last_error    text,
    outcome       jsonb,
    progress      jsonb       NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX jobs_one_open_per_ticket ON jobs (ticket) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_state_not_before ON jobs (state, not_before);
CREATE INDEX jobs_ticket ON jobs (ticket);
CREATE INDEX jobs_created ON jobs (created_at, seq);
-- Claims scan open jobs oldest first; finished jobs pile up and must not slow that down.
CREATE INDEX jobs_open_by_age ON jobs (created_at, seq) WHERE state IN ('queued', 'running');
CREATE TABLE deliveries (
    key        text        PRIMARY KEY,
    job_id     text        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_job ON deliveries (job_id);
