"""List pagination, `created` range filters, the search query subset and update diffs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import StripeError, no_such
from .forms import check_known, get_bool, get_int, get_str
from .state import JSON, State

Predicate = Callable[[JSON], bool]

# What every list endpoint accepts besides its own filters.
PAGE_PARAMS = frozenset({"limit", "starting_after", "ending_before", "created"})


def _limit(params: dict[str, Any]) -> int:
    limit = get_int(params, "limit")
    if limit is None:
        return 10
    if not 1 <= limit <= 100:
        raise StripeError(
            400,
            f"This value must be between 1 and 100 (it currently is {limit}).",
            code="parameter_invalid_integer",
            param="limit",
        )
    return limit


def paginate(items: Iterable[JSON], params: dict[str, Any], url: str, kind: str) -> JSON:
    """`items` newest first, as Stripe lists them."""
    rows = list(items)
    limit = _limit(params)
    after, before = params.get("starting_after"), params.get("ending_before")
    ids = [row["id"] for row in rows]
    if after:
        if after not in ids:
            raise no_such(kind, str(after), "starting_after")
        rest = rows[ids.index(after) + 1 :]
        page, has_more = rest[:limit], len(rest) > limit
    elif before:
        if before not in ids:
            raise no_such(kind, str(before), "ending_before")
        rest = rows[: ids.index(before)]
        page, has_more = rest[-limit:], len(rest) > limit
    else:
        page, has_more = rows[:limit], len(rows) > limit
    return {"object": "list", "data": page, "has_more": has_more, "url": url}


def list_objects(
    store: State,
    params: dict[str, Any],
    kind: str,
    *,
    equal: tuple[str, ...] = (),
    flags: tuple[str, ...] = (),
    known: Iterable[str] = (),
    keep: Predicate | None = None,
) -> JSON:
    """`GET /v1/<kind>`: live objects newest first, paginated, `created` ranges; `equal`
    (strings) and `flags` (booleans) are parameters that must equal the object's field
    of the same name; `keep` filters by the other parameters, which `known` lists."""
    check_known(params, PAGE_PARAMS | set(equal) | set(flags) | set(known))
    wanted: dict[str, Any] = {name: get_str(params, name) for name in equal}
    wanted.update((name, get_bool(params, name)) for name in flags)
    wanted = {name: value for name, value in wanted.items() if value is not None}
    created = range_filter(params, "created")
    rows = (
        obj
        for obj in store.newest_first(kind)
        if all(obj[name] == value for name, value in wanted.items())
        and created(obj)
        and (keep is None or keep(obj))
    )
    return paginate(rows, params, f"/v1/{kind}", kind.removesuffix("s"))


def range_filter(params: dict[str, Any], name: str) -> Predicate:
    """`created=123` or `created[gte]=..&created[lt]=..`."""
    spec = params.get(name)
    if spec is None or spec == "":
        return lambda _obj: True
    if not isinstance(spec, dict):
        exact = get_int(params, name)
        return lambda obj: obj.get(name) == exact
    bounds = {op: get_int(spec, op) for op in ("gt", "gte", "lt", "lte") if op in spec}
    for op in bounds:
        if bounds[op] is None:
            raise StripeError(400, f"Invalid integer for {name}[{op}]", param=f"{name}[{op}]")

    def check(obj: JSON) -> bool:
        value = obj.get(name)
        if not isinstance(value, int):
            return False
        checks = {
            "gt": lambda b: value > b,
            "gte": lambda b: value >= b,
            "lt": lambda b: value < b,
            "lte": lambda b: value <= b,
        }
        return all(checks[op](bound) for op, bound in bounds.items())

    return check


# Stripe's search query language (docs.stripe.com/search): clauses `field op value`,
# optionally negated with `-`, joined by spaces, AND or OR (not both); values quoted with
# ' or " (a backslash escapes a quote inside) or bare (numbers).
_QUOTED = r"'(?:[^'\\]|\\.)*'" + r'|"(?:[^"\\]|\\.)*"'
_CLAUSE = re.compile(
    rf"""(?P<neg>-?)(?P<field>metadata\[(?P<mkey>{_QUOTED})\]|[a-z_][a-z_.]*)\s*"""
    rf"""(?P<op>:|~|>=|<=|>|<)\s*(?P<value>{_QUOTED}|[^\s'"]+)"""
)
_JOIN = re.compile(r"\s+(?:(AND|OR)\s+)?|$", re.IGNORECASE)
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True)
class _Clause:
    field: str
    metadata_key: str | None
    op: str
    value: str
    negate: bool

    def test(self, obj: JSON) -> bool:
        if self.metadata_key is not None:
            actual = (obj.get("metadata") or {}).get(self.metadata_key)
        else:
            actual = obj.get(self.field)
        return self._matches(actual) != self.negate

    def _matches(self, actual: Any) -> bool:
        if actual is None:
            return False
        if self.op == ":":
            return _text(actual).lower() == self.value.lower()
        if self.op == "~":
            return self.value.lower() in _text(actual).lower()
        try:
            number, bound = float(actual), float(self.value)
        except (TypeError, ValueError):
            return False
        return {">": number > bound, "<": number < bound, ">=": number >= bound}.get(
            self.op, number <= bound
        )


def _unquote(token: str) -> str:
    if token[:1] in ("'", '"'):
        return _ESCAPE.sub(r"\1", token[1:-1])
    return token


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _bad_query(message: str) -> StripeError:
    return StripeError(400, message, code="parameter_invalid_string", param="query")


def parse_query(query: str, fields: set[str]) -> tuple[list[_Clause], bool]:
    """The clauses of a search query, and whether they are OR-ed (else AND-ed)."""
    clauses: list[_Clause] = []
    joiners: set[str] = set()
    text = query.strip()
    pos = 0
    while pos < len(text):
        found = _CLAUSE.match(text, pos)
        if found is None:
            rest = text[pos:].split(" ")[0]
            raise _bad_query(f"Invalid search clause: {rest!r}")
        mkey = found["mkey"]
        if mkey is None and found["field"] not in fields:
            raise _bad_query(
                f"Field '{found['field']}' is an unsupported search field for this resource."
            )
        clauses.append(
            _Clause(
                field=found["field"],
                metadata_key=None if mkey is None else _unquote(mkey),
                op=found["op"],
                value=_unquote(found["value"]),
                negate=found["neg"] == "-",
            )
        )
        join = _JOIN.match(text, found.end())
        if join is None:
            raise _bad_query(f"Invalid search clause: {text[pos:]!r}")
        if join[1]:
            joiners.add(join[1].upper())
        pos = join.end()
    if not clauses:
        raise StripeError(
            400, "Missing required param: query.", code="parameter_missing", param="query"
        )
    if len(joiners) > 1:
        raise _bad_query("Cannot combine AND and OR in a search query.")
    return clauses, joiners == {"OR"}


def search(
    store: State,
    kind: str,
    params: dict[str, Any],
    fields: set[str],
    searchable_until: float | None = None,
) -> JSON:
    """`GET /v1/<kind>/search`. An AND query with a metadata equality reads only the
    objects the store's metadata index names; anything else scans the kind. Objects
    created after ``searchable_until`` are not in the index yet (Emulator.search_lag)."""
    query = params.get("query")
    if not isinstance(query, str):
        query = ""
    clauses, any_of = parse_query(query, fields)
    candidates: Iterable[JSON] = ()
    indexed = [c for c in clauses if c.metadata_key is not None and c.op == ":" and not c.negate]
    if indexed and not any_of:
        candidates = store.with_metadata(kind, indexed[0].metadata_key or "", indexed[0].value)
    else:
        candidates = store.newest_first(kind)
    combine = any if any_of else all
    if searchable_until is not None:
        candidates = [o for o in candidates if o.get("created", 0) <= searchable_until]
    matched = [obj for obj in candidates if combine(c.test(obj) for c in clauses)]
    limit = _limit(params)
    page_token = params.get("page")
    offset = int(page_token) if isinstance(page_token, str) and page_token.isdigit() else 0
    page = matched[offset : offset + limit]
    has_more = len(matched) > offset + limit
    return {
        "object": "search_result",
        "data": page,
        "has_more": has_more,
        "next_page": str(offset + limit) if has_more else None,
        "url": f"/v1/{kind}/search",
    }


def previous_attributes(before: JSON, after: JSON) -> JSON:
    """Old values of the top-level keys an update changed, as in `*.updated` events."""
    return {key: before.get(key) for key in after if before.get(key) != after[key]}
