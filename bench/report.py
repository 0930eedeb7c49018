"""The one table a run prints, the targets it is judged against, and the machine."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

# The targets for a 2-core machine (each verdict's label is written from these): issue 11's,
# tightened by issue 27 where it set its own (L1 p50/p99, T2 CPU, the T2 mix).
L1_TARGET = {"p50_ms": 1.6, "p99_ms": 4.0, "max_ms": 10.0}
T1_TARGET = 1_000.0  # rows/s
T1_LATENCY_TARGET = 900.0  # rows/s with 50 ms of Stripe latency, concurrency 64
T2_TARGET = 2_000.0  # events/s, stored and applied
T2_P99_TARGET = 20.0  # ms
T2_MIX_TARGET = 1_200.0  # events/s, stripe-sync-engine's sample events, stored and applied
P_TARGET = 0.95  # of the limit, with 0 429s
IDLE_RSS_TARGET = 64.0  # MB
# Issue #11: the daemon's own CPU (utime+stime from /proc), which load hardly moves.
T1_CPU_TARGET = 1.0  # ms per synced row
T2_CPU_TARGET = 0.45  # ms per event stored and applied
# objects/s imported by backfill at the default rate limit share (#24): both
# paced runs (the whole limit with no daemon running, half beside one) are held to it.
B1_TARGET = 500.0


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _num(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _lat(r: dict[str, Any], unit: str = "ms") -> str:
    if unit == "s":
        return (f"p50 {r['p50_ms'] / 1000:.2f} / p99 {r['p99_ms'] / 1000:.2f} / "
                f"max {r['max_ms'] / 1000:.2f} s")  # fmt: skip
    return f"p50 {r['p50_ms']:.2f} / p99 {r['p99_ms']:.2f} / max {r['max_ms']:.2f} ms"


def _verdict(ok: bool, why: str = "") -> str:
    return "met" if ok else f"MISSED{f' ({why})' if why else ''}"


def _ratio(ours: float, peer: float) -> str:
    if not ours or not peer or math.isnan(ours) or math.isnan(peer):
        return ""
    return f"{ours / peer:.1f}x"


def _cpu_line(r: dict[str, Any], unit: str, target: float) -> tuple[str, str, str, str, str, str]:
    """The daemon's own CPU per row/event (and the emulator's, when measured)."""
    ours = r.get(f"daemon_cpu_ms_per_{unit}", math.nan)
    text = f"daemon {_num(ours, 2)} ms/{unit}"
    if "emulator_cpu_ms_per_row" in r:
        text += f", emulator {_num(r['emulator_cpu_ms_per_row'], 2)} ms/row"
    text += _per_core(r, unit)
    return ("", f"  CPU time per {unit} (utime+stime, /proc)", text, "", "",
            f"daemon ≤{target} ms/{unit}: {_verdict(ours <= target)}")  # fmt: skip


def _per_core(r: dict[str, Any], unit: str) -> str:
    """What a core buys: the daemon's cores busy (CPU s / wall s, all its processes),
    and its rate per busy core (the rate / cores busy: 1 s / its CPU per unit)."""
    cpu = r.get(f"daemon_cpu_ms_per_{unit}", math.nan)
    if "daemon_cores" not in r or not cpu or math.isnan(cpu):
        return ""
    return f"; busy {r['daemon_cores']:.2f} cores, {_num(1000 / cpu)} {unit}s/s per core"


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(id, measurement, stripe-sync, peer, speed-up, target → verdict) per line."""
    out: list[tuple[str, str, str, str, str, str]] = []
    peer = results.get("peer")
    if r := results.get("L1"):
        missed = [k.split("_")[0] for k, lim in L1_TARGET.items() if not r[k] <= lim]
        p_lat = _lat(peer["pickup"]) if peer else ""
        speed = _ratio(peer["pickup"]["p50_ms"], r["p50_ms"]) if peer else ""
        out.append(("L1", f"pickup, NOTIFY (n={r['n']}, commit→request)", _lat(r), p_lat,
                    speed and f"{speed} (p50)",
                    " ".join(f"{k.split('_')[0]}≤{v:g}" for k, v in L1_TARGET.items())
                    + " ms: " + _verdict(not missed, ",".join(missed))))  # fmt: skip
        if g := results.get("peer_graphile"):
            out.append(("", f"  peer {g['name']}: no-op job pickup", "", _lat(g["pickup"]),
                        _ratio(g["pickup"]["p50_ms"], r["p50_ms"]) + " (p50)", ""))  # fmt: skip
        cpu = (f"; daemon CPU {r['daemon_cpu_ms_per_row']:.2f} ms/row"
               if "daemon_cpu_ms_per_row" in r else "")  # fmt: skip
        out.append(("", f"  samples over 10 ms (stalls): {r['over_stall']}; COMMIT "
                    f"itself p50 {r['commit_p50_ms']:.2f} ms{cpu}", "", "", "", ""))  # fmt: skip
        if "mapping_p50_ms" in r:
            ok = r["mapping_p50_ms"] <= 4 and r["mapping_p99_ms"] <= 8
            out.append(("", "  commit → mapping committed (processed_at)",
                        f"p50 {r['mapping_p50_ms']:.2f} / p99 {r['mapping_p99_ms']:.2f} ms", "",
                        "", "p50≤4 p99≤8 ms: " + _verdict(ok, "")))  # fmt: skip
    if r := results.get("L1_sweep"):
        out.append(("L1", f"pickup, sweep only (n={r['n']}, {r['sweep_interval_s']:.0f} s sweep)",
                    _lat(r, "s"), "", "", "shows what NOTIFY buys"))  # fmt: skip
    if r := results.get("T1"):
        p = peer["drain"]["rows_per_s"] if peer else math.nan
        out.append(("T1", f"outbox drain ({r['rows']:,} creates, end to end)",
                    f"{_num(r['rows_per_s'])} rows/s", f"{_num(p)} jobs/s" if peer else "",
                    _ratio(r["rows_per_s"], p),
                    f"≥{T1_TARGET:,.0f} rows/s: "
                    + _verdict(r["rows_per_s"] >= T1_TARGET)))  # fmt: skip
        if g := results.get("peer_graphile"):
            p = g["drain"]["rows_per_s"]
            out.append(("", f"  peer {g['name']}: no-op jobs drained", "",
                        f"{_num(p)} jobs/s", _ratio(r["rows_per_s"], p), ""))  # fmt: skip
        out.append(_cpu_line(r, "row", T1_CPU_TARGET))
    if r := results.get("T1_latency"):
        out.append(("T1", f"  same, 50 ms Stripe latency, concurrency {r['concurrency']}",
                    f"{_num(r['rows_per_s'])} rows/s", "", "",
                    f"≥{T1_LATENCY_TARGET:,.0f} rows/s (ceiling {r['concurrency'] / 0.05:,.0f}/s): "
                    + _verdict(r["rows_per_s"] >= T1_LATENCY_TARGET)))  # fmt: skip
        out.append(_cpu_line(r, "row", T1_CPU_TARGET))
    if r := results.get("T2"):
        out.append(("T2", f"webhooks accepted ({r['events']:,} events, {r['clients']} clients)",
                    f"{_num(r['accepted_per_s'])} ev/s; p50 {r['p50_ms']:.1f} / "
                    f"p99 {r['p99_ms']:.1f} / max {r['max_ms']:.1f} ms", "", "",
                    f"p99≤{T2_P99_TARGET:g} ms: "
                    + _verdict(r["p99_ms"] <= T2_P99_TARGET)))  # fmt: skip
        out.append(("T2", "  all stored and applied (status processed)",
                    f"{_num(r['applied_per_s'])} ev/s ({r['applied_seconds']:.1f} s)", "", "",
                    f"≥{T2_TARGET:,.0f} ev/s: "
                    + _verdict(r["applied_per_s"] >= T2_TARGET)))  # fmt: skip
        if s := results.get("peer_sse"):
            out.append(("", f"  peer {s['name']}: applied in the request, no event log", "",
                        f"{_num(s['applied_per_s'])} ev/s; p99 {s['p99_ms']:.1f} ms; "
                        f"{s['cpu_ms_per_event']:.2f} ms CPU/ev",
                        _ratio(r["applied_per_s"], s["applied_per_s"]), ""))  # fmt: skip
        out.append(_cpu_line(r, "event", T2_CPU_TARGET))
    if r := results.get("T2_mix"):
        outcomes = ", ".join(f"{n:,} {what}" for what, n in sorted(r["outcomes"].items()))
        out.append(("T2", f"  mix: stripe-sync-engine's {r['types']} sample events "
                          f"({r['events']:,})",
                    f"{_num(r['accepted_per_s'])} ev/s accepted; p99 {r['p99_ms']:.1f} ms", "", "",
                    ""))  # fmt: skip
        out.append(("T2", f"    all stored and applied ({outcomes})",
                    f"{_num(r['applied_per_s'])} ev/s ({r['applied_seconds']:.1f} s); "
                    f"{r['daemon_cpu_ms_per_event']:.2f} ms CPU/ev" + _per_core(r, "event"),
                    "", "",
                    f"≥{T2_MIX_TARGET:,.0f} ev/s: "
                    + _verdict(r["applied_per_s"] >= T2_MIX_TARGET)))  # fmt: skip
        if s := results.get("peer_sse_mix"):
            out.append(("", f"    peer {s['name']}, same events", "",
                        f"{_num(s['applied_per_s'])} ev/s; p99 {s['p99_ms']:.1f} ms; "
                        f"{s['cpu_ms_per_event']:.2f} ms CPU/ev",
                        _ratio(r["applied_per_s"], s["applied_per_s"]), ""))  # fmt: skip
    if r := results.get("P"):
        ok = r["fraction"] >= P_TARGET and r["rate_limited"] == 0
        out.append(("P", f"pacing at {r['limit']} req/s ({r['seconds']:.0f} s)",
                    f"{r['achieved_per_s']:.2f} req/s ({r['fraction']:.1%}), "
                    f"{r['rate_limited']} x 429", "", "",
                    f"≥95 %, 0 x 429: {_verdict(ok)}"))  # fmt: skip
    if b := results.get("B1"):
        runs = (
            ("paced", "paced, no daemon (default: whole limit, 25 req/s)"),
            ("again", "again: idempotent, nothing to change"),
            ("beside", "paced beside a daemon (default: half)"),
            ("unpaced", "unpaced (STRIPE_SYNC_RATE_LIMIT=0), a fresh database"),
        )
        for name, what in runs:
            if name not in b:  # results of before the "beside" run
                continue
            r = b[name]
            first = name == "paced"
            out.append(("B1" if first else "",
                        (f"backfill {b['customers']} customers x {b['months']} months: "
                         if first else "  ") + what,
                        f"{_num(r['objects_per_s'])} objects/s, {r['requests_per_s']:.1f} req/s "
                        f"at share {r.get('share', 0):g} "
                        f"({r['objects']:,} objects, {r['changed']:,} changed, "
                        f"{r['requests']:,} requests, {r['seconds']:.1f} s); "
                        f"CPU/object: backfill {r['cpu_ms_per_object']:.2f} ms, PostgreSQL "
                        f"{r['pg_cpu_ms_per_object']:.2f} ms; load {r['load_average']:.1f}",
                        "", "",
                        f"≥{B1_TARGET:,.0f} objects/s: "
                        + _verdict(r["objects_per_s"] >= B1_TARGET, _b1_ceiling(r))
                        if name in ("paced", "beside") else ""))  # fmt: skip
    if m := results.get("M"):
        parts = [f"idle {m['idle_mb']:.1f}"] if "idle_mb" in m else []
        parts += [f"after T1 {m['after_t1_mb']:.1f}"] if "after_t1_mb" in m else []
        parts += [f"after T2 {m['after_t2_mb']:.1f}"] if "after_t2_mb" in m else []
        if parts:
            idle_ok = m.get("idle_mb", math.inf) <= IDLE_RSS_TARGET
            out.append(("M", "daemon RSS (VmRSS)", " / ".join(parts) + " MB", "", "",
                        f"idle ≤{IDLE_RSS_TARGET:g} MB: {_verdict(idle_ok)}"))  # fmt: skip
    return out


def _b1_ceiling(r: dict[str, Any]) -> str:
    """What the run's requests allow at its paced rate: its objects over the seconds
    its requests need at that rate alone (however fast the database)."""
    rate = (r.get("shares") or [{}])[-1].get("rate") or 0
    if not rate or not r.get("requests"):
        return ""
    allowed = r["objects"] * rate / r["requests"]
    return f"its {r['requests']:,} requests at {rate:g} req/s allow {allowed:,.0f}"


def table(results: dict[str, Any], only: set[str]) -> str:
    header = ("", "measurement", "stripe-sync", results.get("peer", {}).get("name", "peer"),
              "vs peer", "target")  # fmt: skip
    body = rows(results)
    lines = [header, *body]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    text = [fmt(header), rule, *(fmt(line) for line in body)]
    missing = [m for m in ("L1", "T1", "T2", "P", "M", "B1") if m in only and not
               any(line[0] == m for line in body)]  # fmt: skip
    if missing:
        text.append(f"(no result for {', '.join(missing)}: see the error above)")
    info = results.get("machine", {})
    if info:
        text.append(
            f"machine: {info.get('nproc')} cores, {info.get('cpu')}, {info.get('ram_gib')} GiB; "
            f"PostgreSQL {info.get('postgresql')} (durable: fsync on); "
            f"Python {info.get('python')}; wall {results.get('wall_seconds', 0):.0f} s"
        )
    if peer := results.get("peer"):
        text.append(f"peer: {peer['name']}, worker CLI in its own process, concurrency "
                    f"{peer['concurrency']}, no-op tasks; deferred with its own SQL, timed "
                    f"from just before COMMIT like ours")  # fmt: skip
    text += [f"note: {n}" for n in results.get("notes", [])]
    if pinned := results.get("affinity"):
        text.append("affinity (Cpus_allowed_list, read back): "
                    + "; ".join(f"{k}: {v}" for k, v in pinned.items()))  # fmt: skip
    return "\n".join(text)
