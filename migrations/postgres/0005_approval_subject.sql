-- Version 5: an approval is bound to what it approved (ticket content hash, repository, base) and to the comment
-- that gave it; each comment id approves at most one job, ever (no foreign key: ids stay used whatever happens
-- to the job).
ALTER TABLE jobs
    ADD COLUMN approval_ticket_sha256 text,
    ADD COLUMN approval_repo          text,
    ADD COLUMN approval_base          text,
    ADD COLUMN approval_comment_id    text;
CREATE TABLE approval_comments (
    comment_id text        PRIMARY KEY,
    job_id     text        NOT NULL,
    used_at    timestamptz NOT NULL DEFAULT now()
);
