-- Which database a Stripe object belongs to. Several databases may share one
-- Stripe account (dev and staging on one test account, or test databases):
-- every object the outbox writes carries mc_source = "<database>/<installation>",
-- the metadata search that adopts a lost create only looks at objects with
-- this database's source, and idempotency keys carry it too. A restored copy
-- keeps its installation id: it is the same data.
CREATE TABLE integration.installation (
    id         integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    uuid       uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO integration.installation DEFAULT VALUES;
