"""The operator commands' work: status, seed/retry/dismiss/replay, prune,
catch-up, reconcile, and the one shape they answer in (outcome.py)."""
