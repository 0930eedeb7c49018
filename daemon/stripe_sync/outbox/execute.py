"""The outbox dispatch table: one small executor per action_type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..errors import PermanentError
from ..queue.jobs import Done, Handler, Job
from . import customers, prices, products, subscriptions
from .common import Context

Executor = Callable[[Context, Job], Awaitable[Done]]

EXECUTORS: dict[str, Executor] = {
    "create_stripe_customer": customers.PUSHED.create,
    "update_stripe_customer": customers.PUSHED.update,
    "create_stripe_product": products.PUSHED.create,
    "update_stripe_product": products.PUSHED.update,
    "archive_stripe_product": products.PUSHED.archive,
    "create_stripe_price": prices.PUSHED.create,
    "update_stripe_price": prices.PUSHED.update,
    "archive_stripe_price": prices.PUSHED.archive,
    **subscriptions.EXECUTORS,
}


def make_handler(ctx: Context) -> Handler:
    async def handle(job: Job) -> Done:
        executor = EXECUTORS.get(job.type)
        if executor is None:  # the CHECK constraint and this table disagree
            raise PermanentError(f"action_type {job.type!r}: no executor in this daemon version")
        return await executor(ctx, job)

    return handle
