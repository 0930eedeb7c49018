"""Durations as operators write them: ``30m``, ``6h``, ``3d``, ``2w`` (and ``0``)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(text: str) -> float | None:
    """Seconds of ``text`` (``0`` alone is 0), or None when it is not a duration."""
    if text.strip() == "0":
        return 0.0
    found = _DURATION.match(text)
    if found is None:
        return None
    return float(found.group(1)) * _UNIT_SECONDS[found.group(2)]
