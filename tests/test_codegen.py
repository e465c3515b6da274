"""Code generation: golden comparison of the compiled IR (as data), determinism, literal safety.

Set KALE_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change.
"""

from __future__ import annotations

import ast
import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kale_magics import api
from kale_magics.codegen.literals import text_literal
from kale_magics.errors import CompileError

GOLDEN = Path(__file__).parent / "golden"

CELLS = (
    "%load_ext kale_magics\n%kale pipeline --name golden --description 'a \"golden\" test'",
    "%%kale imports\nimport math",
    "%%kale functions\nFACTOR = 3\ndef scale(v):\n    return v * FACTOR",
    "%%kale parameters\nN = 4\nRATE = -0.25\nLABEL = 'it\\'s \"quoted\"\\nand \\\\ more'\n"
    "FLAG = True\nSIZES = [1, 2]\nOPTS = {'a': 1}",
    "%%kale step load\ndata = list(range(N))\n!echo loaded",
    "%%kale step left\nleft = [scale(v) for v in data]",
    "%%kale step right\nright = [math.sqrt(v) for v in data]",
    "%%kale step join --after load\ntotal = sum(left) + sum(right) + RATE\nprint(LABEL, FLAG, SIZES, OPTS)",
    "%%kale metrics\ntotal",
)


def normalise(ir: dict[str, Any]) -> dict[str, Any]:
    """Drop what legitimately varies: the SDK version, pinned versions, the embedded runtime."""
    ir = copy.deepcopy(ir)
    ir.pop("sdkVersion", None)
    for executor in ir["deploymentSpec"]["executors"].values():
        command = executor["container"]["command"]
        executor["container"]["command"] = [_normalise_text(part) for part in command]
    return ir


def _normalise_text(text: str) -> str:
    text = re.sub(r"'([A-Za-z0-9_.\-]+)==[^']+'", r"'\1==<pinned>'", text)
    text = re.sub(r"'kfp==[^']+'", "'kfp==<sdk>'", text)
    # the embedded runtime (and its digest) changes with any edit of kale_magics/runtime
    text = re.sub(r"base64\.b64decode\(\n(\s+'[A-Za-z0-9+/=]+'\n)+", "base64.b64decode(<runtime>", text)
    return re.sub(r"sha256 of the JSON:\s+[0-9a-f]{64}", "sha256 of the JSON: <digest>", text)


def compile_to_dict(notebook_path: Path, out: Path) -> tuple[dict[str, Any], str]:
    compiled = api.compile_notebook(notebook_path, str(out))
    with open(compiled.yaml_path, encoding="utf-8") as f:
        return yaml.safe_load(f), Path(compiled.dsl_path).read_text()


def test_golden_ir(notebook, tmp_path: Path) -> None:
    ir, _ = compile_to_dict(notebook(*CELLS, name="golden"), tmp_path / "out")
    got = normalise(ir)
    golden = GOLDEN / "golden.yaml"
    if os.environ.get("KALE_UPDATE_GOLDEN") or not golden.exists():
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(yaml.safe_dump(got, sort_keys=True))
    assert got == yaml.safe_load(golden.read_text())


def test_ir_shape(notebook, tmp_path: Path) -> None:
    ir, _ = compile_to_dict(notebook(*CELLS, name="golden"), tmp_path / "out")
    tasks = ir["root"]["dag"]["tasks"]
    assert set(tasks) == {"kale-runtime", "load", "left", "right", "join"}
    assert sorted(tasks["join"]["dependentTasks"]) == ["kale-runtime", "left", "load", "right"]
    assert sorted(tasks["left"]["dependentTasks"]) == ["kale-runtime", "load"]
    join_inputs = ir["components"]["comp-join"]["inputDefinitions"]
    assert set(join_inputs["artifacts"]) == {"kale_runtime", "in_left", "in_right"}
    assert set(join_inputs["parameters"]) == {"FLAG", "LABEL", "OPTS", "RATE", "SIZES"}
    outputs = ir["components"]["comp-join"]["outputDefinitions"]["artifacts"]
    assert outputs["kale_metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert params["RATE"]["defaultValue"] == -0.25
    assert params["LABEL"]["defaultValue"] == "it's \"quoted\"\nand \\ more"
    # lists and dicts travel as JSON text, so ints stay ints (KFP's LIST would make them floats)
    assert (params["SIZES"]["parameterType"], params["SIZES"]["defaultValue"]) == ("STRING", "[1, 2]")
    assert (params["OPTS"]["parameterType"], params["OPTS"]["defaultValue"]) == ("STRING", '{"a": 1}')
    assert ir["pipelineInfo"]["description"] == 'a "golden" test'


def test_same_notebook_gives_identical_files(notebook, tmp_path: Path) -> None:
    path = notebook(*CELLS, name="golden")
    first, first_dsl = compile_to_dict(path, tmp_path / "a")
    second, second_dsl = compile_to_dict(path, tmp_path / "b")
    assert first_dsl == second_dsl
    assert first == second


def test_user_text_enters_only_as_literals(notebook, tmp_path: Path) -> None:
    nasty = ("s = '''\"\"\"'''  # ') \\\n"
             "t = \"\\\\'\\\"\\n\"\n"
             "u = \"\"\"a'''b\"\"\"\n"
             "print(s, t, u)")
    compile(nasty, "nasty", "exec")
    path = notebook("%%kale step only\n" + nasty, name="nasty")
    _, dsl = compile_to_dict(path, tmp_path / "out")
    tree = ast.parse(dsl)
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
               and isinstance(n.value, str)]
    assert "\n" + nasty + "\n" in strings  # the cell's code, exactly, as one literal


def test_text_literal_round_trips() -> None:
    for text in ["", "a", "a\nb\n", "'''\"\"\"\\", "\r\n x", "ünï\tcode\n\n"]:
        assert ast.literal_eval(text_literal(text, "        ")) == text


def test_parameter_name_clash_is_a_compile_error(notebook, tmp_path: Path) -> None:
    path = notebook("%%kale parameters\nin_x = 1", "%%kale step a\nx = in_x",
                    "%%kale step b\ny = x + in_x")
    with pytest.raises(CompileError, match="rename the parameter"):
        api.compile_notebook(path, str(tmp_path / "out"))
