-- Version 2: the awaiting_approval state, approvals, the policy hash, the kill switch and the usage ledger.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'awaiting_approval', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE jobs
    ADD COLUMN policy_hash           text,
    ADD COLUMN approval_reason       text,
    ADD COLUMN approval_approvers    jsonb,
    ADD COLUMN approval_requested_at timestamptz,
    ADD COLUMN approval_expires_at   timestamptz,
    ADD COLUMN approved_by           text,
    ADD COLUMN approved_at           timestamptz,
    -- Failed by expiry and not yet handed out by expire_approvals.
    ADD COLUMN approval_expiry_unreported boolean NOT NULL DEFAULT false;
DROP INDEX jobs_one_open_per_ticket;
CREATE UNIQUE INDEX jobs_one_open_per_ticket ON jobs (ticket)
    WHERE state IN ('queued', 'running', 'awaiting_approval');
-- Every claim looks for lapsed approval requests.
CREATE INDEX jobs_awaiting_by_expiry ON jobs (approval_expires_at) WHERE state = 'awaiting_approval';
CREATE INDEX jobs_expiry_unreported ON jobs (seq) WHERE approval_expiry_unreported;
-- Queue-wide settings, one row each; `pause` holds the kill switch (NULL: not paused). Claims share-lock the row,
-- so setting it waits for claims in flight, and no claim that commits after a pause has missed it.
CREATE TABLE control (
    name       text        PRIMARY KEY,
    value      jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO control (name) VALUES ('pause');
CREATE TABLE usage_ledger (
    seq           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id        text        NOT NULL,
    team          text        NOT NULL,
    model         text        NOT NULL,
    input_tokens  bigint      NOT NULL CHECK (input_tokens >= 0),
    output_tokens bigint      NOT NULL CHECK (output_tokens >= 0),
    cost_micros   bigint      NOT NULL CHECK (cost_micros >= 0),
    at            timestamptz NOT NULL
);
CREATE INDEX usage_ledger_team_at ON usage_ledger (team, at);
CREATE INDEX usage_ledger_job ON usage_ledger (job_id);
