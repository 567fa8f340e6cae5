-- Version 6: follow-up iterations on review comments: how many a job has started (capped by the policy).
ALTER TABLE jobs ADD COLUMN iterations integer NOT NULL DEFAULT 0;
