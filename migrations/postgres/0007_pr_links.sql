-- Version 7: where each job's pull request stands (open, merged, closed) for its remote link on the ticket, kept
-- until Jira has been told (`pending`), then as the last state told, so a repeated delivery or poll is a no-op.
CREATE TABLE pr_links (
    job_id     text        PRIMARY KEY,
    ticket     text        NOT NULL,
    state      text        NOT NULL CHECK (state IN ('open', 'merged', 'closed')),
    link       jsonb       NOT NULL,
    generation bigint      NOT NULL,
    pending    boolean     NOT NULL,
    attempts   bigint      NOT NULL DEFAULT 0,
    not_before timestamptz NOT NULL,
    last_error text,
    updated_at timestamptz NOT NULL
);
CREATE INDEX pr_links_due ON pr_links (not_before) WHERE pending = true;
