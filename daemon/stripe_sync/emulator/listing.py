"""List pagination, `created` range filters, the search query subset and update diffs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from .errors import StripeError, no_such
from .forms import check_known, get_bool, get_int, get_str
from .state import JSON, Store

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
    store: Store,
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


_CLAUSE = re.compile(
    r"""^\s*(?P<neg>-?)(?P<field>metadata\[(?P<q>['"])(?P<mkey>.+?)(?P=q)\]|[a-z_]+)\s*"""
    r"""(?P<op>:|~|>=|<=|>|<)\s*(?:'(?P<sv>[^']*)'|"(?P<dv>[^"]*)"|(?P<bare>[^\s'"]+))\s*$"""
)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _clause(clause: str, fields: set[str]) -> Predicate:
    found = _CLAUSE.match(clause)
    if not found:
        raise _bad_query(f"Invalid search clause: {clause.strip()!r}")
    field, op = found["field"], found["op"]
    raw = found["sv"] if found["sv"] is not None else found["dv"]
    if raw is None:
        raw = found["bare"]
    value: str = raw
    mkey = found["mkey"]
    if mkey is None and field not in fields:
        raise _bad_query(f"Field '{field}' is an unsupported search field for this resource.")
    negate = found["neg"] == "-"

    def get(obj: JSON) -> Any:
        return (obj.get("metadata") or {}).get(mkey) if mkey is not None else obj.get(field)

    def test(obj: JSON) -> bool:
        actual = get(obj)
        if actual is None:
            return False
        if op == ":":
            return _text(actual).lower() == value.lower()
        if op == "~":
            return value.lower() in _text(actual).lower()
        try:
            number, bound = float(actual), float(value)
        except (TypeError, ValueError):
            return False
        return {">": number > bound, "<": number < bound, ">=": number >= bound}.get(
            op, number <= bound
        )

    return (lambda obj: not test(obj)) if negate else test


def _bad_query(message: str) -> StripeError:
    return StripeError(400, message, code="parameter_invalid_string", param="query")


def search(items: Iterable[JSON], params: dict[str, Any], url: str, fields: set[str]) -> JSON:
    query = params.get("query")
    if not isinstance(query, str) or not query.strip():
        raise StripeError(
            400, "Missing required param: query.", code="parameter_missing", param="query"
        )
    # Stripe forbids mixing AND and OR in one query.
    has_and = re.search(r"\sAND\s", query) is not None
    has_or = re.search(r"\sOR\s", query) is not None
    if has_and and has_or:
        raise _bad_query("Cannot combine AND and OR in a search query.")
    joiner = r"\sOR\s" if has_or else r"\sAND\s"
    predicates = [_clause(part, fields) for part in re.split(joiner, query)]
    combine = any if has_or else all
    matched = [obj for obj in items if combine(p(obj) for p in predicates)]
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
        "url": url,
    }


def previous_attributes(before: JSON, after: JSON) -> JSON:
    """Old values of the top-level keys an update changed, as in `*.updated` events."""
    return {key: before.get(key) for key in after if before.get(key) != after[key]}
