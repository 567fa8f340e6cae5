-- Version 4: delivery keys are pruned by age (`prune_deliveries`).
CREATE INDEX deliveries_created ON deliveries (created_at);
