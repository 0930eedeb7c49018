"""billing.accounts → Stripe customers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..mappings import CUSTOMERS
from .common import MappedRow, Pushed


@dataclass(frozen=True, kw_only=True)
class Account(MappedRow):
    email: str
    name: str | None


def _fields(account: Account) -> dict[str, Any]:
    return {"email": account.email, "name": account.name}


PUSHED = Pushed(
    CUSTOMERS,
    Account,
    load="load_account",
    fields=_fields,
    limits={"email": 512, "name": 256},
)
