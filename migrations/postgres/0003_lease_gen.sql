-- Version 3: the lease's fencing token, bumped by every claim.
ALTER TABLE jobs ADD COLUMN lease_gen bigint NOT NULL DEFAULT 0;
