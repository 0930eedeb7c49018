"""What the outbox's NOTIFY trigger costs a bulk INSERT.

Times a 10,000-row ``INSERT … SELECT`` into integration.outbox (committed)
three ways on a throwaway cluster: with the shipped statement-level trigger,
with no trigger, and with a per-row NOTIFY trigger (the design River and Oban
moved away from), each repeated and reported as the median.

    .venv/bin/python bench/trigger_cost.py [--rows 10000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

from stripe_sync.migrate import migrate
from stripe_sync_demo.devcluster import ThrowawayCluster

INSERT = (
    "INSERT INTO integration.outbox (action_type, payload) "
    "SELECT 'create_stripe_customer', jsonb_build_object('account_id', g) "
    "FROM generate_series(1, %s) g"
)
PER_ROW = """
CREATE FUNCTION pg_temp.notify_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('stripe_sync_outbox', NEW.id::text); RETURN NULL; END $$;
CREATE TRIGGER per_row_notify AFTER INSERT ON integration.outbox
    FOR EACH ROW EXECUTE FUNCTION pg_temp.notify_row();
"""


def timed(conn: psycopg.Connection[tuple[object, ...]], rows: int, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        conn.execute("TRUNCATE integration.outbox")
        conn.commit()
        started = time.perf_counter()
        conn.execute(INSERT, (rows,))
        conn.commit()  # NOTIFY's cost lands at commit
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with ThrowawayCluster(durable=True) as cluster:
        migrate(cluster.dsn)
        with (
            psycopg.connect(cluster.dsn) as conn,
            psycopg.connect(cluster.dsn, autocommit=True) as listener,
        ):
            listener.execute("LISTEN stripe_sync_outbox")  # a daemon is listening
            shipped = timed(conn, args.rows, args.repeat)
            conn.execute("ALTER TABLE integration.outbox DISABLE TRIGGER USER")
            conn.commit()
            none = timed(conn, args.rows, args.repeat)
            conn.execute(PER_ROW)
            conn.commit()
            per_row = timed(conn, args.rows, args.repeat)
    print(f"INSERT of {args.rows:,} outbox rows, median of {args.repeat}, committed:")
    print(f"  no trigger                      {none:8.1f} ms")
    print(f"  shipped (one NOTIFY/statement)  {shipped:8.1f} ms  ({shipped / none - 1:+.0%})")
    print(f"  per-row NOTIFY (for contrast)   {per_row:8.1f} ms  ({per_row / none - 1:+.0%})")


if __name__ == "__main__":
    main()
