"""Plain-text tables of one benchmark run (what ``python -m bench`` prints)."""

from __future__ import annotations

from typing import Any, Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width table: columns of numbers right-aligned, the others left-aligned."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(row[i] is None or isinstance(row[i], (int, float)) for row in rows) and i > 0
               for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if right else c.ljust(w)
                         for c, w, right in zip(row, widths, numeric)).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)]
                     + [line(row) for row in cells[1:]])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def compile_process(section: dict[str, Any]) -> str:
    """Whole-process compile, ours and Kale's, per notebook."""
    rows = [(r["notebook"], r["steps"], r["ours_s"], r["kale_s"], r["kale_over_ours"],
             len(r["ours_runs"])) for r in section.get("notebooks", [])]
    text = table(("notebook", "steps", "kale-magics s", "Kale 2.3 s", "Kale/ours", "runs"), rows)
    notes = [f"  {r['notebook']}: {r['kale_note']}" for r in section.get("notebooks", [])
             if r.get("kale_note")]
    return "\n".join([text, *notes])


def compile_warm(section: dict[str, Any]) -> str:
    """Warm-kernel compile per size, split into phases."""
    rows = [(r["steps"], r["cells"], _ms(r["read_analysis_s"]), _ms(r["codegen_s"]),
             _ms(r["ir_compile_s"]), _ms(r["total_s"]), r["runs"])
            for r in section.get("sizes", [])]
    fit = section.get("fit", {})
    slope = fit.get("slope_s_per_step")
    exponent = fit.get("exponent")
    tail = (f"growth: {slope * 1000:.2f} ms per step, exponent {exponent:.2f} (1 = linear)"
            if slope is not None and exponent is not None else "")
    return "\n".join([table(("steps", "cells", "read+analysis ms", "codegen ms", "IR compile ms",
                             "total ms", "runs"), rows), tail])


def local_run(section: dict[str, Any]) -> str:
    """Local run totals per notebook and our overhead split."""
    rows = []
    for r in section.get("notebooks", []):
        ours = r["ours"]
        rows.append((r["notebook"], ours.get("steps"), ours.get("total_s"), ours.get("compile_s"),
                     ours.get("run_s"), ours.get("step_sum_s"), ours.get("imports_s"),
                     ours.get("overhead_per_step_s"),
                     ours.get("bookkeeping_per_step_s"), ours.get("largest_gap_s"), r["nbclient_s"], r["kale_total_s"],
                     r["ours_over_nbclient"], r["kale_over_ours"]))
    text = table(("notebook", "steps", "ours s", "compile", "run", "in steps", "imports", "ovh/step",
                  "bookkeep/step", "max gap", "nbclient s", "Kale s", "ours/nbcl", "Kale/ours"), rows)
    notes = [f"  {r['notebook']}: {note}" for r in section.get("notebooks", [])
             for note in ([r["kale_note"]] if r.get("kale_note") else []) + r.get("errors", [])]
    return "\n".join([text, *notes])


def marshal(section: dict[str, Any]) -> str:
    """Save+load seconds and GB/s per object and method."""
    ratios = section.get("ratios", {})
    rows = []
    for r in section.get("results", []):
        ratio = ratios.get(r["obj"], {}) if r["method"] == "kale-magics" else {}
        rows.append((r["obj"], r["method"], r["save_s"], r["load_s"], r["total_s"],
                     r["gb_per_s"], ratio.get("ours_over_pickle5"), ratio.get("kale_over_ours")))
    text = table(("object", "method", "save s", "load s", "total s", "GB/s", "ours/pickle5",
                  "Kale/ours"), rows)
    return "\n".join([text, *(f"  {note}" for note in section.get("notes", []))])


def magic(section: dict[str, Any]) -> str:
    """The magic's cost over a plain cell."""
    if "overhead_ms" not in section:
        return ""
    return (f"{section['cell_lines']}-line cell, median of {section['runs']}: plain "
            f"{section['plain_ms']:.3f} ms, %%kale step {section['magic_ms']:.3f} ms, "
            f"overhead {section['overhead_ms']:.3f} ms")


def _kib(size: float | None) -> float | None:
    return None if size is None else size / 1024


def ir_size(section: dict[str, Any]) -> str:
    """IR bytes per notebook size, against Argo's limit, and the largest component argument."""
    rows = [(r["notebook"], r["steps"], _kib(r["ir_bytes"]), _kib(r["ir_bytes"] - r["code_bytes"]),
             _kib(r["code_bytes"]), _kib(r["gzip_bytes"]), _kib(r["largest_argument_bytes"]),
             r["largest_argument_of"])
            for r in [*section.get("sizes", []), section["large_cell"]]]
    text = table(("notebook", "steps", "IR KiB", "without code", "code KiB", "gzip KiB",
                  "largest arg KiB", "largest arg of"), rows)
    return "\n".join([
        text,
        f"per step: {section['bytes_per_step']:.0f} bytes, {section['code_free_bytes_per_step']:.0f} "
        f"without the notebook's code; limits: Argo {_kib(section['argo_limit_bytes']):.0f} KiB "
        f"compressed, etcd {_kib(section['etcd_limit_bytes']):.0f} KiB, one argument "
        f"{_kib(section['argument_limit_bytes']):.0f} KiB",
        f"a step imports the runtime from the kale_runtime artifact in "
        f"{section['runtime_load_s'] * 1000:.1f} ms (fresh interpreter, median)"])


def limit_text(target: dict[str, Any]) -> str:
    """A target's limit as shown: ``<= 0.15s``, ``>= 4x``."""
    return f"{'<=' if target['at_most'] else '>='} {target['limit']:g}{target['unit']}"


def measured_text(target: dict[str, Any]) -> str:
    """A target's measured value as shown, ``-`` when not measured."""
    return "-" if target["measured"] is None else f"{target['measured']:.3g}{target['unit']}"


def targets(rows: Sequence[dict[str, Any]]) -> str:
    """One line per target: measured, limit, status."""
    return table(("target", "measured", "limit", "status", "detail"),
                 [(t["id"], measured_text(t), limit_text(t), t["status"], t["detail"]) for t in rows])


SECTIONS = (("compile_process", "1. Compile latency, whole process (median seconds)",
             compile_process),
            ("compile_warm", "2. Compile latency in a warm kernel", compile_warm),
            ("local_run", "3. Local run (median seconds; ovh/step = run - in steps - imports, per step)",
             local_run),
            ("marshal", "4. Data passing, save + load", marshal),
            ("magic", "5. Magic overhead", magic),
            ("ir_size", "6. IR size (KiB; without code = less the notebook's own code)", ir_size))


def render(results: dict[str, Any]) -> str:
    """The whole report: a header, each section that ran, and the targets."""
    machine = results["machine"]
    parts = [f"kale-magics benchmarks ({results['mode']} mode), {machine['cpus']} cores, "
             f"{machine['memory_gib']} GiB, Python {machine['python']}, commit {machine['commit']}, "
             f"Kale {results['kale'].get('version') or 'not available'}, load average "
             f"{machine.get('load_average')} at start, {results.get('load_average_end')} at end"]
    for key, title, render_section in SECTIONS:
        section = results["sections"].get(key)
        if section is None:
            continue
        body = (f"failed: {section['error']}" if "error" in section
                else render_section(section))
        parts.append(f"{title}\n{body}")
    parts.append("Targets\n" + targets(results["targets"]))
    parts += [f"note: {note}" for note in results.get("notes", [])]
    return "\n\n".join(parts)
