"""The issue's performance targets, checked against one run's figures.

Each check returns a :class:`Target` with the measured value, what it is
compared with, and MET, MISSED or NOT MEASURED (with the reason: Kale not
available, quick mode sizes, a section that failed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

MET, MISSED, NOT_MEASURED = "MET", "MISSED", "NOT MEASURED"


@dataclass(frozen=True)
class Target:
    """One target: ``measured`` against ``limit`` (``at_most`` or at least), and its status."""

    id: str
    what: str
    compared_with: str
    limit: float
    at_most: bool
    unit: str
    measured: float | None
    status: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _target(id: str, what: str, compared_with: str, limit: float, at_most: bool, unit: str,
            measured: float | None, detail: str, why_missing: str = "") -> Target:
    if measured is None:
        return Target(id, what, compared_with, limit, at_most, unit, None, NOT_MEASURED,
                      why_missing or detail)
    met = measured <= limit if at_most else measured >= limit
    return Target(id, what, compared_with, limit, at_most, unit, measured,
                  MET if met else MISSED, detail)


def compile_process(section: dict[str, Any]) -> list[Target]:
    """Target 1: whole-process compile at least 5x faster than Kale 2.3, about 10 steps (issue 18)."""
    rows = [r for r in section.get("notebooks", []) if 8 <= r["steps"] <= 12]
    row = next((r for r in rows if r.get("kale_over_ours")), rows[0] if rows else None)
    measured = row.get("kale_over_ours") if row else None
    detail = (f"{row['notebook']}: kale-magics {row['ours_s']:.2f} s, Kale "
              f"{_s(row['kale_s'])}" if row else "")
    why = (row or {}).get("kale_note") or section.get("error", "no notebook of about 10 steps")
    return [_target("compile-vs-kale", "whole-process compile, Kale time / ours", "kale --nb (2.3)",
                    5.0, False, "x", measured, detail, why)]


def compile_warm(section: dict[str, Any]) -> list[Target]:
    """Targets 2: warm compile under 30 ms at 10 steps and 0.3 s at 100 (issue 18), linear growth,
    under 1 s at 1000 cells."""
    rows = {r["steps"]: r for r in section.get("sizes", [])}
    ten = rows.get(10, {}).get("total_s")
    big = next((r for steps, r in sorted(rows.items()) if r["cells"] >= 1000), None)
    exponent = section.get("fit", {}).get("exponent")
    sizes = ", ".join(str(s) for s in sorted(rows)) or "none"
    return [
        _target("warm-10", "warm compile of 10 steps", "30 ms", 0.030, True, "s", ten,
                f"sizes run: {sizes}", "no 10-step size in this run"),
        _target("warm-100", "warm compile of 100 steps", "0.3 s", 0.3, True, "s",
                rows.get(100, {}).get("total_s"), f"sizes run: {sizes}",
                "no 100-step size in this run (quick mode)"),
        _target("warm-linear", "growth exponent (log-log, two largest sizes)", "1 = linear",
                1.2, True, "", exponent, f"sizes run: {sizes}", "fewer than 2 sizes"),
        _target("warm-1000", "warm compile of 1000 cells", "1 s", 1.0, True, "s",
                big["total_s"] if big else None, f"{big['cells']} cells" if big else "",
                "no size of 1000 cells in this run (quick mode)"),
    ]


def local_run(section: dict[str, Any]) -> list[Target]:
    """Targets 3: per-step overhead, against Kale's DSL under kfp.local, against nbclient."""
    rows = section.get("notebooks", [])
    overheads = _worst([(r["ours"].get("overhead_per_step_s"), r["notebook"]) for r in rows], max)
    vs_kale = _worst([(r.get("kale_over_ours"), r["notebook"]) for r in rows], min)
    vs_nbclient = _worst([(r.get("ours_over_nbclient"), r["notebook"]) for r in rows], max)
    kale_why = "; ".join(f"{r['notebook']}: {r['kale_note']}" for r in rows if r.get("kale_note"))
    return [
        _target("local-overhead", "our per-step overhead (worst notebook)", "0.15 s", 0.15, True,
                "s", overheads[0], overheads[1], section.get("error", "no successful run")),
        _target("local-vs-kale", "Kale DSL under kfp.local / ours, total (worst notebook)",
                "kale --nb + kfp.local", 10.0, False, "x", vs_kale[0], vs_kale[1],
                kale_why or "Kale did not run"),
        _target("local-vs-nbclient", "ours / nbclient top to bottom, total (worst notebook)",
                "nbclient", 2.0, True, "x", vs_nbclient[0], vs_nbclient[1],
                section.get("error", "no successful run")),
    ]


def _worst(pairs: list[tuple[float | None, str]], pick: Callable[..., Any],
           noun: str = "notebook") -> tuple[float | None, str]:
    """The worst (``pick``: min or max) of the ``(value, label)`` pairs that have a value."""
    measured = [(value, label) for value, label in pairs if value is not None]
    if not measured:
        return None, ""
    value, label = pick(measured, key=lambda pair: pair[0])
    return value, f"worst: {label} ({len(measured)} {noun}(s) measured)"


def marshal(section: dict[str, Any]) -> list[Target]:
    """Targets 4: within 1.5x of pickle 5 (every type), 2x Kale's formats on arrays and frames.

    Kale's format for a DataFrame is ``DataFrame.to_pickle``, which is pickle
    protocol 5 (pandas' default ``HIGHEST_PROTOCOL``); the frame's two targets
    can then only both be met if pickle 5 itself is beaten 2x.
    """
    ratios = section.get("ratios", {})
    quick = " (quick mode: small objects)" if section.get("quick") else ""
    why = section.get("error", "no objects measured")
    vs_pickle = _worst([(r["ours_over_pickle5"], o) for o, r in ratios.items()], max, "type")
    found = [_target("marshal-vs-pickle5", "save+load time, ours / pickle protocol 5 (worst type)",
                     "pickle 5", 1.5, True, "x", vs_pickle[0], vs_pickle[1] + quick, why)]
    for kind, prefix, compared in (("array", "float64 array", "np.save / np.load"),
                                   ("frame", "DataFrame", "to_pickle / read_pickle")):
        row = next(((o, r) for o, r in ratios.items() if o.startswith(prefix)), None)
        found.append(_target(f"marshal-vs-kale-{kind}", f"save+load time, Kale's format / ours "
                             f"({kind})", compared, 2.0, False, "x",
                             row[1]["kale_over_ours"] if row else None,
                             (row[0] if row else "") + quick, why))
    return found


def magic(section: dict[str, Any]) -> list[Target]:
    """Target 5: ``%%kale step`` costs at most 1 ms over the same plain cell."""
    overhead = section.get("overhead_ms")
    detail = (f"plain {section['plain_ms']:.3f} ms, %%kale step {section['magic_ms']:.3f} ms, "
              f"median of {section['runs']}" if overhead is not None else "")
    return [_target("magic-overhead", "%%kale step over a plain 50-line cell", "1 ms", 1.0, True,
                    "ms", overhead, detail, section.get("error", "not run"))]


def ir_size(section: dict[str, Any]) -> list[Target]:
    """Targets 6 (issue 18): under 3 KiB of IR per step and 300 KiB at 100 steps, the notebook's
    own code aside; every component argument under Linux's 128 KiB, a 142 KB cell included."""
    why = section.get("error", "not run")
    rows = {r["steps"]: r for r in section.get("sizes", [])}
    hundred = rows.get(100)
    per_step = section.get("code_free_bytes_per_step")
    rows_all = [*rows.values(), *([section["large_cell"]] if "large_cell" in section else [])]
    largest = _worst([(r["largest_argument_bytes"] / 1024, f"{r['notebook']} "
                       f"{r['largest_argument_of']}") for r in rows_all], max, "notebook")
    sizes = ", ".join(str(s) for s in sorted(rows)) or "none"
    return [
        _target("ir-per-step", "IR bytes per step, without the notebook's code", "3 KiB", 3.0,
                True, "KiB", per_step / 1024 if per_step is not None else None,
                f"sizes run: {sizes}", why),
        _target("ir-100", "IR of 100 steps, without the notebook's code", "300 KiB", 300.0, True,
                "KiB", (hundred["ir_bytes"] - hundred["code_bytes"]) / 1024 if hundred else None,
                f"with code {hundred['ir_bytes'] / 1024:.0f} KiB, gzip "
                f"{hundred['gzip_bytes'] / 1024:.0f} KiB" if hundred else "",
                "no 100-step size in this run (quick mode)" if rows else why),
        _target("ir-argument", "largest component argument (142 KB cell included)", "128 KiB",
                128.0, True, "KiB", largest[0], largest[1], why),
    ]


def check_all(results: dict[str, Any]) -> list[Target]:
    """Every target, from the sections of one run (missing sections: NOT MEASURED)."""
    sections = results.get("sections", {})
    return [*compile_process(sections.get("compile_process", {})),
            *compile_warm(sections.get("compile_warm", {})),
            *local_run(sections.get("local_run", {})),
            *marshal(sections.get("marshal", {})),
            *magic(sections.get("magic", {})),
            *ir_size(sections.get("ir_size", {}))]


def _s(seconds: float | None) -> str:
    return f"{seconds:.2f} s" if seconds is not None else "not run"
