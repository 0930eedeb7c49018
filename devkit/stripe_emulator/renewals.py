"""What happens to subscriptions while a test clock advances, in time order, as
Stripe does it:

- the period roll at the end of each period: `customer.subscription.updated`
  (new periods on the items), then the renewal invoice as a draft
  (`invoice.created`, billing_reason `subscription_cycle`, the new period's
  lines plus the pending invoice items such as prorations);
- an hour later the invoice is finalized (`automatically_finalizes_at`) and
  charged to the default payment method (the subscription's, else the
  customer's); a decline makes the subscription `past_due` and schedules
  retries (test_clocks.DunningSettings); a retry charges the default method
  as it is then, so a new card recovers the subscription; when the retries
  are exhausted the subscription ends `canceled` or `unpaid` (or stays
  `past_due`), as the settings say;
- trials: `customer.subscription.trial_will_end` three days before the end,
  then at the end the first paid period (the roll above);
- `cancel_at_period_end` and `cancel_at`: `customer.subscription.deleted`
  when the time comes.

Every subscription has at most one next thing due; a heap orders them across
the clock's subscriptions, and each runs on the time it is due (the emulator's
`now` is that time), so the events' `created` follow the clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from . import billing
from .state import JSON, new_id

if TYPE_CHECKING:
    from .emulator import Emulator

DAY = 86400
# A renewal invoice stays a draft this long before Stripe finalizes and charges it.
FINALIZE_AFTER = 3600
TRIAL_NOTICE = 3 * DAY
NO_SUBSCRIPTION_LIMIT = 2 * 365 * DAY
# Subscriptions carried their periods themselves until this API version (basil).
_PERIODS_MOVED = "2025-03-31"
_LIVE = ("active", "trialing", "past_due", "unpaid")

Action = Callable[[], None]


def subscriptions_on(emu: Emulator, clock: JSON) -> list[JSON]:
    """The subscriptions of the clock's customers, oldest first."""
    customers = {
        c["id"]
        for c in emu.store.all("customers")
        if c.get("test_clock") == clock["id"] and c["id"] not in emu.store.deleted
    }
    return [s for s in emu.store.all("subscriptions") if s["customer"] in customers]


def advance_limit(emu: Emulator, clock: JSON) -> int:
    """The latest frozen_time one advance may reach: two intervals of the clock's
    shortest subscription, or two years without one (Stripe's limit)."""
    frozen = clock["frozen_time"]
    limits = [
        billing.add_interval(frozen, r["interval"], 2 * r["interval_count"])
        for sub in subscriptions_on(emu, clock)
        if sub["status"] in _LIVE
        for r in (item["price"]["recurring"] for item in sub["items"]["data"])
    ]
    return min(limits, default=frozen + NO_SUBSCRIPTION_LIMIT)


def run_until(emu: Emulator, clock: JSON, target: int) -> None:
    """Run everything due on the clock's subscriptions up to `target`, earliest first."""
    _run(emu, subscriptions_on(emu, clock), clock["frozen_time"], target)


def run_real_time(emu: Emulator, since: int, until: int) -> None:
    """The emulator's own clock moved from `since` to `until`: what fell due in
    between for the subscriptions on no test clock (they live in real time, which
    the emulator's clock stands for)."""
    on_clock = {c["id"] for c in emu.store.all("customers") if c.get("test_clock")}
    subs = [s for s in emu.store.all("subscriptions") if s["customer"] not in on_clock]
    _run(emu, subs, since, until)


def _run(emu: Emulator, subs: list[JSON], floor: int, target: int) -> None:
    heap: list[tuple[int, int, int]] = []
    actions: dict[int, Action] = {}

    def schedule(index: int) -> None:
        due = _next_due(emu, subs[index])
        if due is not None:
            at, rank, action = due
            actions[index] = action
            heapq.heappush(heap, (max(at, floor), rank, index))

    for index in range(len(subs)):
        schedule(index)
    while heap and heap[0][0] <= target:
        at, _, index = heapq.heappop(heap)
        floor = at  # time never goes back, even for something due before the clock
        with emu.frozen_at(at):
            actions.pop(index)()
        schedule(index)


def _next_due(emu: Emulator, sub: JSON) -> tuple[int, int, Action] | None:
    """The subscription's next step: (when, rank among simultaneous steps, what)."""
    if sub["status"] not in _LIVE:
        return None
    steps: list[tuple[int, int, Action]] = []
    for inv_id in emu.time.collecting.get(sub["id"], []):
        inv = emu.store.get("invoices", inv_id)
        if inv is None:
            continue
        if inv["status"] == "draft":
            at = inv["automatically_finalizes_at"]
            steps.append((at, 0, partial(_finalize, emu, sub, inv)))
        elif inv["next_payment_attempt"] is not None:
            at = inv["next_payment_attempt"]
            steps.append((at, 0, partial(_attempt, emu, sub, inv)))
    trial_end = sub["trial_end"]
    if sub["status"] == "trialing" and trial_end and sub["id"] not in emu.time.trial_warned:
        steps.append((trial_end - TRIAL_NOTICE, 1, lambda: _warn_trial(emu, sub)))
    resumes_at = (sub["pause_collection"] or {}).get("resumes_at")
    if resumes_at is not None:
        steps.append((resumes_at, 1, partial(_resume_collection, emu, sub)))
    end = sub["items"]["data"][0]["current_period_end"]
    cancel_at = sub["cancel_at"]
    if cancel_at is not None and cancel_at <= end:
        steps.append((cancel_at, 2, lambda: _end(emu, sub, cancel_at)))
    else:
        steps.append((end, 2, lambda: _renew(emu, sub, end)))
    return min(steps, key=lambda step: (step[0], step[1]))


def _warn_trial(emu: Emulator, sub: JSON) -> None:
    emu.time.trial_warned.add(sub["id"])
    emu.record_event(None, "customer.subscription.trial_will_end", sub)


def _resume_collection(emu: Emulator, sub: JSON) -> None:
    with emu.updating(None, sub, "customer.subscription.updated"):
        sub["pause_collection"] = None


def _end(emu: Emulator, sub: JSON, at: int) -> None:
    """cancel_at (or cancel_at_period_end's period end) has come."""
    sub.update(status="canceled", ended_at=at, canceled_at=sub["canceled_at"] or at)
    if sub["cancellation_details"]["reason"] is None:
        sub["cancellation_details"] = {
            **sub["cancellation_details"],
            "reason": "cancellation_requested",
        }
    emu.record_event(None, "customer.subscription.deleted", sub)


def _next_end(anchor: int, at: int, recurring: JSON) -> int:
    """The end of the period that starts at `at`: the next anniversary of the billing
    cycle anchor (Jan 31 renews on Feb 28, then Mar 31)."""
    interval, count = recurring["interval"], recurring["interval_count"]
    periods = 1
    while (end := billing.add_interval(anchor, interval, count * periods)) <= at:
        periods += 1
    return end


def _renew(emu: Emulator, sub: JSON, at: int) -> None:
    """The period roll, then the renewal invoice as a draft."""
    items = sub["items"]["data"]
    previous = (items[0]["current_period_start"], at)
    with emu.updating(None, sub, "customer.subscription.updated"):
        for item in items:
            end = _next_end(sub["billing_cycle_anchor"], at, item["price"]["recurring"])
            item.update(current_period_start=at, current_period_end=end)
        if sub["status"] == "trialing":
            sub["status"] = "active"
        sub["latest_invoice"] = new_id("in")
        periods_on_subscription(emu, sub)
    inv = billing.cycle_invoice(emu, sub, previous, at + FINALIZE_AFTER)
    emu.time.collecting.setdefault(sub["id"], []).append(inv["id"])


def periods_on_subscription(emu: Emulator, sub: JSON) -> None:
    """Before API 2025-03-31 a subscription carried its current period itself."""
    if emu.config.api_version < _PERIODS_MOVED:
        item = sub["items"]["data"][0]
        sub["current_period_start"] = item["current_period_start"]
        sub["current_period_end"] = item["current_period_end"]


def _finalize(emu: Emulator, sub: JSON, inv: JSON) -> None:
    """Finalize and charge the renewal, unless collection is paused (the invoice is
    kept as a draft, voided or marked uncollectible, as `pause_collection` says) or
    the subscription sends invoices (open until paid, due in days_until_due)."""
    pause = (sub["pause_collection"] or {}).get("behavior")
    if pause == "keep_as_draft":
        inv.update(automatically_finalizes_at=None, auto_advance=False)
        _done_collecting(emu, sub, inv)
        return
    billing.finalize(emu, None, inv)
    now = emu.now()
    if pause is not None:
        _done_collecting(emu, sub, inv)
        if pause == "void":
            inv.update(status="void", amount_remaining=0, auto_advance=False)
            inv["status_transitions"]["voided_at"] = now
            emu.record_event(None, "invoice.voided", inv)
        else:
            inv.update(status="uncollectible", auto_advance=False)
            inv["status_transitions"]["marked_uncollectible_at"] = now
            emu.record_event(None, "invoice.marked_uncollectible", inv)
        return
    if sub["collection_method"] == "send_invoice":
        inv.update(
            collection_method="send_invoice",
            due_date=now + (sub["days_until_due"] or 30) * DAY,
        )
        _done_collecting(emu, sub, inv)
        emu.record_event(None, "invoice.sent", inv)
        return
    _attempt(emu, sub, inv)


def _attempt(emu: Emulator, sub: JSON, inv: JSON) -> None:
    """Charge the invoice; on a decline, past_due and the next retry, or the end
    the dunning settings name once the retries are exhausted."""
    dunning = emu.time.dunning
    if billing.collect(emu, None, sub, inv, may_fail=True):
        _done_collecting(emu, sub, inv)
        _set_delinquent(emu, sub, False)
        if sub["status"] in ("past_due", "unpaid"):
            _set_status(emu, sub, "active")
        return
    _set_delinquent(emu, sub, True)
    retry = inv["attempt_count"] - 1
    if retry < len(dunning.retry_days):
        inv["next_payment_attempt"] = emu.now() + dunning.retry_days[retry] * DAY
    else:
        inv["next_payment_attempt"] = None
        _done_collecting(emu, sub, inv)
    emu.record_event(None, "invoice.payment_failed", inv)
    if inv["next_payment_attempt"] is not None:
        if sub["status"] == "active":
            _set_status(emu, sub, "past_due")
    elif dunning.exhausted == "canceled":
        sub["cancellation_details"] = {**sub["cancellation_details"], "reason": "payment_failed"}
        _end(emu, sub, emu.now())
    else:
        _set_status(emu, sub, dunning.exhausted)


def _set_delinquent(emu: Emulator, sub: JSON, delinquent: bool) -> None:
    """A failed automatic payment makes the customer delinquent; paying clears it."""
    cus = emu.store.get("customers", sub["customer"])
    if cus is not None and cus["delinquent"] != delinquent:
        with emu.updating(None, cus, "customer.updated"):
            cus["delinquent"] = delinquent


def _set_status(emu: Emulator, sub: JSON, status: str) -> None:
    if sub["status"] != status:
        with emu.updating(None, sub, "customer.subscription.updated"):
            sub["status"] = status


def _done_collecting(emu: Emulator, sub: JSON, inv: JSON) -> None:
    waiting = emu.time.collecting.get(sub["id"], [])
    if inv["id"] in waiting:
        waiting.remove(inv["id"])
