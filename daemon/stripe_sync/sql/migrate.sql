-- migrate.py: the ledger of applied schema/*.sql files, and the check the
-- daemon makes at start-up.

-- name: lock
-- Two concurrent migrate runs serialize; the second finds nothing to do.
SELECT pg_advisory_xact_lock(%(key)s)

-- name: ledger
CREATE SCHEMA IF NOT EXISTS integration;
CREATE TABLE IF NOT EXISTS integration.schema_migrations (
    filename   text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: checksum
SELECT checksum FROM integration.schema_migrations WHERE filename = %(filename)s

-- name: record
INSERT INTO integration.schema_migrations (filename, checksum) VALUES (%(filename)s, %(checksum)s)

-- name: has_ledger
SELECT to_regclass('integration.schema_migrations') IS NOT NULL

-- name: applied
SELECT filename FROM integration.schema_migrations
