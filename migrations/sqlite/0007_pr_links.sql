-- Version 7: where each job's pull request stands (open, merged, closed) for its remote link on the ticket, kept
-- until Jira has been told (`pending`), then as the last state told, so a repeated delivery or poll is a no-op.
CREATE TABLE pr_links (
    job_id     TEXT    PRIMARY KEY,
    ticket     TEXT    NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('open', 'merged', 'closed')),
    link       TEXT    NOT NULL,
    generation INTEGER NOT NULL,
    pending    INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    not_before INTEGER NOT NULL,
    last_error TEXT,
    updated_at INTEGER NOT NULL
);
CREATE INDEX pr_links_due ON pr_links (not_before) WHERE pending = 1;
