-- Version 5: an approval is bound to what it approved (ticket content hash, repository, base) and to the comment
-- that gave it; each comment id approves at most one job, ever (no foreign key: ids stay used whatever happens
-- to the job).
ALTER TABLE jobs ADD COLUMN approval_ticket_sha256 TEXT;
ALTER TABLE jobs ADD COLUMN approval_repo TEXT;
ALTER TABLE jobs ADD COLUMN approval_base TEXT;
ALTER TABLE jobs ADD COLUMN approval_comment_id TEXT;
CREATE TABLE approval_comments (
    comment_id TEXT    PRIMARY KEY NOT NULL,
    job_id     TEXT    NOT NULL,
    used_at    INTEGER NOT NULL
);
