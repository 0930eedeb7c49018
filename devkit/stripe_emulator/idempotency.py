"""Stored first responses for `Idempotency-Key`, mirroring Stripe's rules."""

from __future__ import annotations

from dataclasses import dataclass

# Stripe prunes keys after at least 24 hours.
DEFAULT_TTL = 24 * 3600.0


@dataclass(frozen=True)
class StoredResponse:
    method: str
    path: str
    fingerprint: bytes
    status: int
    body: bytes
    request_id: str
    stored_at: float
    # Response headers replayed with the body (e.g. Stripe-Should-Retry on a saved 500).
    headers: dict[str, str]


class IdempotencyStore:
    def __init__(self, ttl: float = DEFAULT_TTL) -> None:
        self.ttl = ttl
        self._entries: dict[tuple[str, str], StoredResponse] = {}
        # Keys whose first request began executing and has not saved its response.
        self._executing: set[tuple[str, str]] = set()

    def clear(self) -> None:
        self._entries.clear()
        self._executing.clear()

    def begin(self, api_key: str, key: str) -> bool:
        """Take the key for a request that begins executing; False while another
        request with it is still executing (Stripe answers that one 409)."""
        if (api_key, key) in self._executing:
            return False
        self._executing.add((api_key, key))
        return True

    def end(self, api_key: str, key: str) -> None:
        self._executing.discard((api_key, key))

    def lookup(self, api_key: str, key: str, now: float) -> StoredResponse | None:
        # Keys are scoped per API key (per account in Stripe) and expire by the emulator clock.
        entry = self._entries.get((api_key, key))
        if entry is not None and now - entry.stored_at >= self.ttl:
            del self._entries[(api_key, key)]
            return None
        return entry

    def store(self, api_key: str, key: str, entry: StoredResponse) -> None:
        self._entries[(api_key, key)] = entry

    def __len__(self) -> int:
        return len(self._entries)
