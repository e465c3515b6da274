"""PNG plots of one benchmark run (matplotlib, imported lazily; skipped when missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

METHOD_COLOURS = {"kale-magics": "#1f77b4", "pickle5": "#7f7f7f", "kale": "#ff7f0e"}


def save_plots(results: dict[str, Any], folder: Path) -> tuple[list[str], str]:
    """Write every plot the run has data for into ``folder``.

    Returns
    -------
    tuple
        The file names written, and a note ("" or why no plot was made).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: F401  (imported to fail early)
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (pip install matplotlib)"
    sections = results["sections"]
    makers: list[tuple[str, str, Callable[[Any, dict[str, Any]], None]]] = [
        ("compile_warm", "compile_scaling.png", compile_scaling),
        ("compile_process", "compile_process.png", compile_process),
        ("marshal", "marshal_throughput.png", marshal_throughput),
        ("local_run", "local_run.png", local_run),
        ("ir_size", "ir_size.png", ir_size)]
    written = []
    for key, name, draw in makers:
        section = sections.get(key)
        if section and "error" not in section:
            _save(draw, section, folder / name, results)
            written.append(name)
    return written, ""


def _save(draw: Callable[[Any, dict[str, Any]], None], section: dict[str, Any], path: Path,
          results: dict[str, Any]) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.8))
    draw(axes, section)
    machine = results["machine"]
    figure.text(0.99, 0.01, f"{results['mode']} mode, {machine['cpus']} cores, Python "
                f"{machine['python']}, {machine['commit']}", ha="right", va="bottom",
                fontsize=7, color="#555555")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def compile_scaling(axes: Any, section: dict[str, Any]) -> None:
    """Warm compile time per phase against notebook size, log-log, with the targets."""
    rows = section["sizes"]
    steps = [r["steps"] for r in rows]
    for key, label in (("total_s", "total"), ("read_analysis_s", "read + analysis"),
                       ("codegen_s", "codegen"), ("ir_compile_s", "KFP IR compile")):
        axes.plot(steps, [max(r[key], 1e-6) * 1000 for r in rows], marker="o", label=label,
                  linewidth=2.5 if key == "total_s" else 1.2)
    axes.scatter([10, 1000], [30, 1000], marker="_", s=400, color="red", zorder=5,
                 label="target (30 ms at 10, 1 s at 1000)")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("steps in the notebook")
    axes.set_ylabel("milliseconds (median)")
    axes.set_title("Compile in a warm kernel: api.compile_notebook")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)


def compile_process(axes: Any, section: dict[str, Any]) -> None:
    """Whole-process compile seconds, ours against Kale's, per notebook."""
    rows = section["notebooks"]
    _grouped_bars(axes, [r["notebook"] for r in rows],
                  {"kale-magics compile": [r["ours_s"] for r in rows],
                   "kale --nb (Kale 2.3)": [r["kale_s"] for r in rows]},
                  ["#1f77b4", "#ff7f0e"])
    axes.set_ylabel("seconds (median, whole process)")
    axes.set_title("Compile latency, whole process")


def marshal_throughput(axes: Any, section: dict[str, Any]) -> None:
    """Save+load throughput (GB/s of the pickle-5 size) per object and method."""
    objects = list(dict.fromkeys(r["obj"] for r in section["results"]))
    by_key = {(r["obj"], r["method"]): r["gb_per_s"] for r in section["results"]}
    methods = ("kale-magics", "pickle5", "kale")
    labels = {"kale-magics": "kale-magics marshal", "pickle5": "pickle protocol 5",
              "kale": "Kale (np.save / to_pickle / dill)"}
    _grouped_bars(axes, objects, {labels[m]: [by_key.get((o, m)) for o in objects]
                                  for m in methods}, [METHOD_COLOURS[m] for m in methods])
    axes.set_ylabel("GB/s (save + load)")
    axes.set_title("Data passing throughput per type")


def local_run(axes: Any, section: dict[str, Any]) -> None:
    """Local run totals per notebook: ours, nbclient, Kale's DSL under kfp.local (log scale)."""
    rows = section["notebooks"]
    _grouped_bars(axes, [r["notebook"] for r in rows],
                  {"kale-magics run (compile + kfp.local)": [r["ours"].get("total_s") for r in rows],
                   "nbclient, top to bottom": [r["nbclient_s"] for r in rows],
                   "Kale: kale --nb + kfp.local": [r["kale_total_s"] for r in rows]},
                  ["#1f77b4", "#2ca02c", "#ff7f0e"])
    axes.set_ylabel("seconds (median, whole process)")
    axes.set_title("Local run of a notebook")


def ir_size(axes: Any, section: dict[str, Any]) -> None:
    """IR bytes against notebook size (log-log), with Argo's and etcd's limits and the target."""
    rows = section["sizes"]
    steps = [r["steps"] for r in rows]
    for key, label, values in (
            ("ir", "IR YAML", [r["ir_bytes"] for r in rows]),
            ("free", "IR without the notebook's code", [r["ir_bytes"] - r["code_bytes"] for r in rows]),
            ("gzip", "IR gzip-compressed", [r["gzip_bytes"] for r in rows])):
        axes.plot(steps, [v / 1024 for v in values], marker="o", label=label,
                  linewidth=2.5 if key == "ir" else 1.2)
    for limit, label, colour in ((section["argo_limit_bytes"], "Argo: 1 MiB compressed", "red"),
                                 (section["etcd_limit_bytes"], "etcd: 1.5 MiB request", "purple")):
        axes.axhline(limit / 1024, color=colour, linestyle="--", linewidth=1, label=label)
    axes.scatter([100], [300], marker="_", s=400, color="black", zorder=5,
                 label="target: 300 KiB at 100 steps (without code)")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("steps in the notebook")
    axes.set_ylabel("KiB")
    axes.set_title("Size of the compiled IR")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)


def _grouped_bars(axes: Any, groups: list[str], series: dict[str, list[float | None]],
                  colours: list[str]) -> None:
    """Bars of each series side by side per group, labelled with their values.

    A None value draws no bar; a series without any value is listed in the
    legend as "not measured". The value axis turns logarithmic when the bars
    span more than a factor of 30.
    """
    width = 0.8 / len(series)
    values_shown = [v for values in series.values() for v in values if v]
    for index, ((label, values), colour) in enumerate(zip(series.items(), colours)):
        xs = [g + (index - (len(series) - 1) / 2) * width for g in range(len(groups))]
        shown = [(x, v) for x, v in zip(xs, values) if v is not None]
        if not shown:
            axes.bar([0], [0], 0, color=colour, label=f"{label} (not measured)")
            continue
        bars = axes.bar([x for x, _ in shown], [v for _, v in shown], width, label=label,
                        color=colour)
        axes.bar_label(bars, labels=[f"{v:.3g}" for _, v in shown], fontsize=7)
    if values_shown and max(values_shown) / min(values_shown) > 30:
        axes.set_yscale("log")
        axes.set_ylim(bottom=min(values_shown) / 3)
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels(groups, fontsize=8, rotation=10)
    axes.legend(fontsize=8)
