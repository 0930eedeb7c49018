"""The idempotency keys of the outbox's Stripe requests: the one place they are
derived (docs/stripe.md 6.4 tells the policy around them).

Every key starts with ``stripe-sync:<source>`` (schema/0007): databases that
share a Stripe account never replay each other's answers.

``…:create:<noun>:<mc id>[:g<generation>]``
    A create. Keyed by the MC row, not the outbox row: two create rows for one
    account (app + seed, a DBA's double insert) make one customer. The
    generation (``create_generation`` of the mapping, schema/0006) moves on when
    the key can no longer help: the mapping was reset to re-create a vanished
    object, or the key got a 500 that Stripe saved and replays, and a search
    after STRIPE_SYNC_SEARCH_LAG found no object (schema/0008). It is committed
    before the first request with the new key, so a crash never sends two keys
    for one object.

``…:outbox:<row id>``, then ``…:outbox:<row id>:a<attempt>``
    An update or archive. It sets fields, so sending it again is safe: the
    row's own key first (a retry after a lost answer gets that answer
    replayed), and a fresh key of the row and the attempt when the row's key is
    spent, i.e. Stripe replays a saved 500 for it, or refuses it because the MC
    row changed since (other parameters under one key).
"""

from __future__ import annotations

from ..mappings import Family
from ..queue.jobs import Job


def create_key(source: str, family: Family, mc_id: int, generation: int) -> str:
    suffix = f":g{generation}" if generation else ""
    return f"stripe-sync:{source}:create:{family.noun}:{mc_id}{suffix}"


def write_key(source: str, job: Job, *, fresh: bool = False) -> str:
    suffix = f":a{job.attempts}" if fresh else ""
    return f"stripe-sync:{source}:outbox:{job.id}{suffix}"
