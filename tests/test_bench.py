"""The benchmark harness: ``python -m bench --quick`` end to end, and its pure parts.

The quick run checks that the harness works and writes well-formed outputs; it
asserts no speeds. It never downloads Kale: quick mode uses Kale's venv only
when it already exists (here it is pointed at an empty folder, so Kale is
reported as not measured).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import targets
from bench.compile_latency import growth
from bench.notebooks import step_sources, write_synthetic
from bench.tables import table
from bench.timing import alternate, error_summary
from kale_magics import api
from tests.conftest import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str],
                                                                  Path]:
    """One ``python -m bench --quick`` into a temporary folder, without a Kale venv."""
    out = tmp_path_factory.mktemp("bench-out")
    no_kale = tmp_path_factory.mktemp("no-kale") / "venv"
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out),
                             "--kale-venv", str(no_kale)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    return result, out


@pytest.mark.integration
def test_quick_run_writes_json_table_and_plots(quick_run) -> None:
    result, out = quick_run
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "latest.json").read_text())
    assert data["mode"] == "quick"
    assert data["machine"]["cpus"] >= 1 and data["machine"]["python"].count(".") == 2
    assert set(data["sections"]) == {"compile_process", "compile_warm", "local_run", "marshal",
                                     "magic", "ir_size"}
    assert not [name for name, s in data["sections"].items() if "error" in s]
    for name in data["plots"]:
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert set(data["plots"]) == {"compile_scaling.png", "compile_process.png",
                                  "marshal_throughput.png", "local_run.png", "ir_size.png"}
    assert "Targets" in result.stdout and "compile-vs-kale" in result.stdout


@pytest.mark.integration
def test_quick_run_measures_every_section(quick_run) -> None:
    _, out = quick_run
    sections = json.loads((out / "latest.json").read_text())["sections"]
    process = sections["compile_process"]["notebooks"][0]
    assert process["steps"] == 10 and process["ours_s"] > 0
    warm = sections["compile_warm"]["sizes"]
    assert [row["steps"] for row in warm] == [5, 10, 20]
    assert all(row["total_s"] >= row["read_analysis_s"] > 0 for row in warm)
    local = sections["local_run"]["notebooks"][0]
    assert local["ours"]["steps"] == 4 and local["ours"]["run_s"] >= local["ours"]["step_sum_s"]
    assert local["nbclient_s"] > 0 and not local["errors"]
    assert {r["method"] for r in sections["marshal"]["results"]} == {"kale-magics", "pickle5",
                                                                     "kale"}
    assert sections["magic"]["runs"] == 30
    ir = sections["ir_size"]
    assert [row["steps"] for row in ir["sizes"]] == [5, 10, 20]
    for row in [*ir["sizes"], ir["large_cell"]]:
        assert row["ir_bytes"] > row["code_bytes"] > 0 and row["gzip_bytes"] > 0
        assert row["largest_argument_bytes"] == max(row["arguments_per_component"].values())
        assert "exec-kale-runtime" in row["arguments_per_component"]
    assert ir["large_cell"]["code_bytes"] > ir["sizes"][0]["code_bytes"]
    assert ir["bytes_per_step"] > ir["code_free_bytes_per_step"] > 0 and ir["runtime_load_s"] > 0


@pytest.mark.integration
def test_quick_run_without_kale_says_so_and_marks_targets(quick_run) -> None:
    result, out = quick_run
    data = json.loads((out / "latest.json").read_text())
    assert data["kale"]["version"] is None
    assert "quick mode does not build one" in data["kale"]["note"]
    assert "quick mode does not build one" in result.stdout
    by_id = {t["id"]: t for t in data["targets"]}
    assert by_id["compile-vs-kale"]["status"] == targets.NOT_MEASURED
    assert by_id["warm-1000"]["status"] == targets.NOT_MEASURED
    assert {t["status"] for t in data["targets"]} <= {targets.MET, targets.MISSED,
                                                      targets.NOT_MEASURED}
    assert not (Path(data["kale"]["venv"])).exists()  # nothing was installed


@pytest.mark.parametrize("steps", [2, 3, 4, 5, 10, 11, 37])
def test_synthetic_notebook_has_the_requested_steps_with_fan_out(tmp_path: Path,
                                                                 steps: int) -> None:
    assert len(step_sources(steps)) == steps
    plan = api.read_plan(write_synthetic(tmp_path, steps))
    assert [s.name for s in plan.steps] == [f"s{i}" for i in range(steps)]
    assert all(s.inputs for s in plan.steps[1:])  # every later step receives a variable
    if steps >= 6:
        assert plan.step("s4").upstream == ("s1", "s2", "s3")  # fan-in after a fan-out of 3
    assert {p.type for p in plan.parameters} == {"int", "float", "str", "bool"}


def test_synthetic_notebook_exports_to_kale_tags(tmp_path: Path) -> None:
    from bench.notebooks import kale_tagged

    tagged, note = kale_tagged(write_synthetic(tmp_path / "src", 5), tmp_path / "kale")
    assert note == "" and tagged is not None
    tags = [t for cell in json.loads(tagged.read_text())["cells"]
            for t in cell["metadata"].get("tags", [])]
    assert "pipeline-parameters" in tags and "step:s4" in tags and "prev:s3" in tags


def test_growth_fits_a_line_and_its_exponent() -> None:
    linear = growth([(10, 0.01), (100, 0.1), (1000, 1.0)])
    assert linear["slope_s_per_step"] == pytest.approx(0.001)
    assert linear["exponent"] == pytest.approx(1.0)
    assert growth([(10, 0.01), (100, 1.0)])["exponent"] == pytest.approx(2.0)
    assert growth([(10, 0.01)])["exponent"] is None


def test_alternate_takes_turns_and_stops_at_the_budget() -> None:
    calls: list[str] = []
    times = alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=3)
    assert calls == ["a", "b"] * 3 and [len(v) for v in times.values()] == [3, 3]
    calls.clear()
    alternate({"a": lambda: calls.append("a")}, runs=5, budget_s=0)
    assert calls == ["a"]


def test_error_summary_finds_the_exception_message() -> None:
    syntax = ('Traceback (most recent call last):\n  File "x", line 1\n'
              "    %time forest.fit(X)\n    ^\nSyntaxError: invalid syntax\n")
    assert error_summary(syntax) == "SyntaxError: invalid syntax (at `%time forest.fit(X)`)"
    flakes = ("Traceback ...\nRuntimeError: Flakes reported the following error:\n"
              "\tkale:35:1: invalid syntax\n\t!ls -l data\n\t^\n")
    assert error_summary(flakes).startswith("RuntimeError: Flakes reported the following error: "
                                            "| kale:35:1: invalid syntax | !ls -l data")
    assert error_summary("no traceback here\n") == "no traceback here"


def test_targets_met_missed_and_not_measured() -> None:
    results = {"sections": {
        "compile_process": {"notebooks": [{"notebook": "n.ipynb", "steps": 10, "ours_s": 0.5,
                                           "kale_s": 2.5, "kale_over_ours": 5.0,
                                           "kale_note": ""}]},
        "compile_warm": {"sizes": [{"steps": 10, "cells": 14, "total_s": 0.05}],
                         "fit": {"exponent": None}},
        "marshal": {"ratios": {"float64 array 1 MiB": {"ours_over_pickle5": 0.9,
                                                      "kale_over_ours": 3.0},
                               "DataFrame 10 rows": {"ours_over_pickle5": 1.6,
                                                     "kale_over_ours": 1.1}}},
        "magic": {"overhead_ms": 0.4, "plain_ms": 1.0, "magic_ms": 1.4, "runs": 10}}}
    by_id = {t.id: t for t in targets.check_all(results)}
    assert by_id["marshal-vs-pickle5"].status == targets.MISSED
    assert by_id["marshal-vs-pickle5"].detail.startswith("worst: DataFrame 10 rows")
    assert by_id["marshal-vs-kale-array"].status == targets.MET
    assert by_id["marshal-vs-kale-frame"].status == targets.MISSED
    assert by_id["compile-vs-kale"].status == targets.MET
    assert by_id["warm-10"].status == targets.MISSED
    assert by_id["warm-linear"].status == targets.NOT_MEASURED
    assert by_id["magic-overhead"].status == targets.MET
    assert by_id["local-vs-kale"].status == targets.NOT_MEASURED
    assert by_id["ir-per-step"].status == targets.NOT_MEASURED


def test_ir_targets_from_sizes_and_the_large_cell() -> None:
    row = {"notebook": "synthetic_100.ipynb", "steps": 100, "ir_bytes": 320 * 1024,
           "code_bytes": 16 * 1024, "gzip_bytes": 28 * 1024, "largest_argument_bytes": 20 * 1024,
           "largest_argument_of": "exec-kale-runtime"}
    large = {**row, "notebook": "large_cell.ipynb", "steps": 2, "largest_argument_bytes": 130 * 1024}
    section = {"sizes": [row], "large_cell": large, "code_free_bytes_per_step": 2900.0}
    by_id = {t.id: t for t in targets.ir_size(section)}
    assert (by_id["ir-per-step"].status, by_id["ir-100"].status) == (targets.MET, targets.MISSED)
    assert by_id["ir-100"].measured == 304.0
    assert by_id["ir-argument"].status == targets.MISSED
    assert by_id["ir-argument"].detail.startswith("worst: large_cell.ipynb exec-kale-runtime")


def test_table_aligns_numbers_right_and_text_left() -> None:
    text = table(("name", "seconds"), [("a", 1.5), ("longer", None)])
    assert text.splitlines() == ["name    seconds", "------  -------", "a         1.500",
                                 "longer        -"]


@pytest.mark.integration
def test_report_shows_a_stored_run_as_markdown(quick_run, capsys) -> None:
    from bench import report

    _, out = quick_run
    report.main([str(out / "latest.json")])
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| ")]
    assert rows[0] == "| target | measured | value | limit | status |"
    ids = {row.split(" | ")[0][2:] for row in rows[1:]}
    assert {"compile-vs-kale", "warm-10", "local-overhead", "magic-overhead"} <= ids
