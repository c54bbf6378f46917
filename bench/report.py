"""The table on stdout and the JSON file: medians, every round's value, ratios, failures."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from bench.scenarios import ScenarioResult, Series


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _verified(s: Series) -> str:
    """'yes' only when every run was counted and matched; else say what is known."""
    if not s.verified:
        return "-"
    if any(v is False for v in s.verified):
        return f"LOST {sum(v is False for v in s.verified)}/{len(s.verified)}"
    if all(v is True for v in s.verified):
        return "yes"
    if all(v is None for v in s.verified):
        return "unverified"
    return "partly"


def table(results: Sequence[ScenarioResult], rounds: int) -> str:
    """Plain-text table: one block per scenario, ratio column = reference / this side."""
    lines: list[str] = []
    for res in results:
        lines.append("")
        lines.append(f"== {res.title}")
        if res.status != "ok":
            lines.append(f"   {res.status.upper()}: {res.reason}")
            continue
        ratios = res.ratios()
        header = f"   {'case':<34} {'side':<16} {'median':>8} {'unit':<4} {'rounds':<18} {'ok':<10} {res.reference + ' /':>16}"
        lines.append(header)
        for case, sides in res.cases.items():
            for side, s in sides.items():
                vals = ",".join(_fmt(v) for v in s.values) or "-"
                ratio = ratios.get(case, {}).get(side)
                rtxt = (
                    f"{ratio:.2f}"
                    if ratio is not None
                    else ("(ref)" if side == res.reference else "-")
                )
                lines.append(
                    f"   {case:<34} {side:<16} {_fmt(s.median):>8} {s.unit:<4} {vals:<18} {_verified(s):<10} {rtxt:>16}"
                )
                for err in s.errors[:3]:
                    lines.append(f"      ! {side}: {err[:160]}")
                for note in s.notes[:2]:
                    lines.append(f"      ~ {side}: {note[:160]}")
        for side, why in res.unavailable.items():
            lines.append(f"   not available: {side}: {why[:200]}")
    lines.append("")
    load = os.getloadavg()[0]
    lines.append(f"medians over {rounds} round(s), side order reversed every other round;")
    lines.append(
        f"load average now {load:.2f} on {os.cpu_count()} cores (others' load skews seconds);"
    )
    lines.append(
        "ratio < 1 means the reference side (mqmta unless stated) used less time or memory."
    )
    return "\n".join(lines)


def to_json(results: Sequence[ScenarioResult], argv: Sequence[str], started: float) -> dict:
    return {
        "command": "python -m bench " + " ".join(argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            # a shared machine: the load others put on it while this ran
            "loadavg_at_end": os.getloadavg(),
        },
        "scenarios": {
            r.name: {
                "title": r.title,
                "status": r.status,
                "reason": r.reason,
                "reference": r.reference,
                "cases": {
                    case: {
                        side: {
                            "unit": s.unit,
                            "median": s.median,
                            "values": s.values,
                            "verified": s.verified,
                            "errors": s.errors,
                            "notes": s.notes,
                        }
                        for side, s in sides.items()
                    }
                    for case, sides in r.cases.items()
                },
                "ratios": r.ratios(),
                "unavailable": r.unavailable,
            }
            for r in results
        },
    }


def write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
