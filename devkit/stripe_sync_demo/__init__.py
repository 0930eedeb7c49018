"""`stripe-sync demo` and the throwaway PostgreSQL cluster the demo, the tests
and the benchmarks start (devcluster.py); reaper.py cleans up after both even
when they are killed. Never imported by the daemon (stripe_sync)."""
