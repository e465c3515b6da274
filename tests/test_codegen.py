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
    if os.environ.get("KALE_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(yaml.safe_dump(got, sort_keys=True))
    assert golden.is_file(), f"{golden} is missing: write it with KALE_UPDATE_GOLDEN=1"
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


def ir_arguments(ir: dict[str, Any]) -> dict[str, list[str]]:
    """Every executor's command and args, by executor name."""
    return {name: [*e["container"]["command"], *e["container"].get("args", [])]
            for name, e in ir["deploymentSpec"]["executors"].items()}


def test_runtime_is_in_the_ir_once_and_each_step_adds_under_3_kib(tmp_path: Path) -> None:
    from bench.ir_size import code_bytes
    from bench.notebooks import write_synthetic

    code_free = {}
    for steps in (10, 20, 100):
        compiled = api.compile_notebook(write_synthetic(tmp_path, steps), str(tmp_path / str(steps)))
        text = Path(compiled.yaml_path).read_text(encoding="utf-8")
        code_free[steps] = len(text.encode("utf-8")) - code_bytes(compiled.plan)
        carriers = [n for n, args in ir_arguments(yaml.safe_load(text)).items()
                    if any("b64decode" in a for a in args)]
        assert carriers == ["exec-kale-runtime"]
    assert (code_free[20] - code_free[10]) / 10 < 3 * 1024
    assert code_free[100] <= 300 * 1024


def test_dsl_names_each_package_list_once_and_keeps_lines_short(notebook, tmp_path: Path) -> None:
    many = ", ".join(f"P{i}" for i in range(30))
    path = notebook("%%kale parameters\n" + "\n".join(f"P{i} = {i}" for i in range(30)),
                    "%%kale imports\nimport json",
                    "%%kale step first\nx = [" + many + "]",
                    "%%kale step second\nimport yaml\ny = yaml.safe_dump(x)",
                    "%%kale step third\nz = x\nprint(json.dumps(z))", name="long")
    _, dsl = compile_to_dict(path, tmp_path / "out")
    tree = ast.parse(dsl)
    constants = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets]
    assert [c for c in constants if c.startswith("PACKAGES")] == ["PACKAGES", "PACKAGES_SECOND"]
    decorators = {f.name: next(k.value for d in f.decorator_list for k in getattr(d, "keywords", [])
                               if k.arg == "packages_to_install")
                  for f in tree.body if isinstance(f, ast.FunctionDef) and f.name in
                  ("first", "second", "third")}
    assert {name: getattr(v, "id", None) for name, v in decorators.items()} == {
        "first": "PACKAGES", "second": "PACKAGES_SECOND", "third": "PACKAGES"}
    assert long_code_lines(dsl) == []


def long_code_lines(source: str, limit: int = 120) -> list[str]:
    """Lines over ``limit`` characters once the string literals on them are left out."""
    import io
    import tokenize

    strings: dict[int, int] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING and token.start[0] == token.end[0]:
            strings[token.start[0]] = strings.get(token.start[0], 0) + len(token.string)
    return [line for number, line in enumerate(source.splitlines(), 1)
            if len(line) - strings.get(number, 0) > limit]


def test_long_code_lines_sees_code_not_strings() -> None:
    assert long_code_lines("x = '" + "a" * 200 + "'\n") == []
    assert long_code_lines("x = [" + ", ".join(["1"] * 80) + "]\n") != []


@pytest.mark.integration
def test_a_142_kb_functions_cell_compiles_under_the_argument_limit_and_runs(notebook,
                                                                           tmp_path: Path) -> None:
    from bench.notebooks import large_functions_cell, write_large_cell
    from kale_magics.codegen.cell_code import ARGUMENT_MAX

    path = write_large_cell(tmp_path, 142_000)
    cell = large_functions_cell(142_000)
    ir, dsl = compile_to_dict(path, tmp_path / "out")
    assert "'xz': (" in dsl  # the cell is compressed, once, in the runtime component
    longest = max(len(a.encode("utf-8")) for args in ir_arguments(ir).values() for a in args)
    assert longest < ARGUMENT_MAX
    status = api.run_local(path, output_dir=str(tmp_path / "out"))
    assert status.state == "SUCCEEDED", status.error
    count = cell.count("def f_")
    assert f"RESULT {count}" in status.steps["use"].log
    assert f"AGAIN {count}" in status.steps["again"].log


def test_a_cell_too_large_even_compressed_is_refused_naming_it_and_its_size(notebook,
                                                                         tmp_path: Path) -> None:
    import base64
    import random

    noise = base64.b64encode(random.Random(7).randbytes(200_000)).decode("ascii")
    path = notebook("%%kale step load\nx = 1", f"%%kale step blob\nDATA = {noise!r}", name="huge")
    with pytest.raises(CompileError, match=r"^cell 2 \(\"DATA = '.*\"\) is 260 KiB of code: with "
                                           r"it the component of step 'blob' would be \d+ KiB even "
                                           r"compressed, over the 128 KiB Linux allows"):
        api.compile_notebook(path, str(tmp_path / "out"))


@pytest.mark.integration
def test_steps_run_the_runtime_from_the_artifact_not_the_installed_package(notebook,
                                                                          tmp_path: Path) -> None:
    path = notebook("%%kale step where\nimport sys\n"
                    "print('FROM', sys.modules['kale_magics.runtime.step'].__file__)\n"
                    "print('IN_PATH', any('kale_runtime' in p for p in sys.path))", name="where")
    status = api.run_local(path, output_dir=str(tmp_path / "out"))
    assert status.state == "SUCCEEDED", status.error
    origin = next(l for l in status.steps["where"].log if l.startswith("FROM "))[5:]
    assert origin.startswith(str(tmp_path / "out" / "local_runs"))
    assert origin.endswith("kale_magics/runtime/step.py") and "kale-runtime" in origin
    assert "IN_PATH False" in status.steps["where"].log


COMPILE_IN_A_FRESH_PROCESS = """
import sys
if sys.argv[3] == "full":
    import kfp
from kale_magics import api
api.compile_notebook(sys.argv[1], sys.argv[2])
loaded = "kubernetes" in sys.modules
import kfp
print(loaded, kfp.Client.__name__, kfp.components.__name__)
"""


def test_ir_is_the_same_when_kfp_is_imported_without_its_client(notebook, tmp_path: Path) -> None:
    import subprocess
    import sys

    path = notebook(*CELLS, name="golden")
    out = {}
    for how in ("full", "ours"):
        result = subprocess.run([sys.executable, "-c", COMPILE_IN_A_FRESH_PROCESS, str(path),
                                 str(tmp_path / how), how], capture_output=True, text=True,
                                check=True)
        out[how] = result.stdout.split()
    assert out["ours"] == ["False", "Client", "kfp.components"]  # kfp.client only when asked for
    assert out["full"] == ["True", "Client", "kfp.components"]
    assert ((tmp_path / "full" / "golden.yaml").read_bytes()
            == (tmp_path / "ours" / "golden.yaml").read_bytes())


def test_a_parameter_too_large_for_the_executor_input_is_refused_naming_it(notebook,
                                                                         tmp_path: Path) -> None:
    path = notebook("%%kale parameters\nSMALL = 1\nDATA = " + repr("x" * 150_000),
                    "%%kale step use\nprint(len(DATA), SMALL)", name="bigparam")
    with pytest.raises(CompileError, match=r"^parameter 'DATA' is 146 KiB: KFP hands step 'use' "
                                           r"its parameters in one command-line argument"):
        api.compile_notebook(path, str(tmp_path / "out"))


def code_lines(code: Any) -> list[tuple[str, int, tuple[Any, ...]]]:
    """Every code object's name, first line and line table, depth first."""
    found = [(code.co_name, code.co_firstlineno, tuple(line for *_, line in code.co_lines()))]
    for const in code.co_consts:
        if hasattr(const, "co_lines"):
            found += code_lines(const)
    return found


def test_shipped_runtime_has_no_docs_and_keeps_every_line_number() -> None:
    from kale_magics.codegen.embedding import RUNTIME_MODULES, runtime_files

    files = runtime_files()
    runtime = Path(__file__).parents[1] / "kale_magics" / "runtime"
    for name in RUNTIME_MODULES:
        original = (runtime / f"{name}.py").read_text(encoding="utf-8")
        shipped = files[f"kale_magics/runtime/{name}.py"]
        assert len(shipped) < len(original) and "#" not in "".join(
            line for line in shipped.splitlines() if line.lstrip().startswith("#"))
        assert code_lines(compile(shipped, name, "exec")) == code_lines(compile(original, name, "exec"))


def test_without_docs_cuts_docstrings_and_comments_only() -> None:
    from kale_magics.codegen.embedding import without_docs

    source = ('"""Module."""\nimport os  # why\n\n\ndef f(x):\n    """Doc, é\n    more é."""\n'
              '    return ", ".join([x, "# not a comment"])  # comment é\n\n\nclass C:\n'
              '    """Only a docstring."""\n')
    out = without_docs(source)
    assert out.splitlines() == ['""""""', "import os", "", "", "def f(x):", '    """', '"""',
                                '    return ", ".join([x, "# not a comment"])', "", "", "class C:",
                                '    """"""']
    namespace: dict[str, Any] = {}
    exec(out, namespace)
    assert namespace["f"]("a") == "a, # not a comment" and namespace["f"].__doc__ == "\n"


@pytest.mark.parametrize("name", ["sys", "run_step", "kale_runtime", "kale_runtime_task"])
def test_a_parameter_named_like_a_name_of_the_runtime_loader_is_refused(notebook, tmp_path: Path,
                                                                       name: str) -> None:
    path = notebook(f"%%kale parameters\n{name} = 1", f"%%kale step use\nprint({name})",
                    name="loadernames")
    with pytest.raises(CompileError, match=f"^parameter `{name}` has the name of .*; rename the "
                                           f"parameter \\(for example `{name}_value`\\)"):
        api.compile_notebook(path, str(tmp_path / "out"))


@pytest.mark.integration
def test_a_failing_cell_of_a_referenced_notebook_is_named_by_its_notebook_and_number(
        tmp_path: Path) -> None:
    from tests.test_kale_rules import composed, reference

    root = composed(tmp_path, [reference("part", "./part.ipynb"),
                               ("c = b * 2\nraise ValueError(c)", ["step:final"])])
    (tmp_path / "part.ipynb").write_text((tmp_path / "part.ipynb").read_text().replace(
        "b = a + 1", "b = a + undefined_name"))
    status = api.run_local(root, output_dir=str(tmp_path / "out"))
    failed = status.steps["part_use"]
    assert failed.state == "FAILED" and failed.cell == "part.ipynb, cell 3 (step part_use)"
    assert "NameError" in failed.error


def test_the_runtime_task_gets_the_pipelines_placement_defaults_not_its_resources(
        notebook, tmp_path: Path) -> None:
    path = notebook("%kale pipeline --name placed --memory 4Gi --gpu 1 --env PROXY=p "
                    "--node-selector pool=cpu --toleration spot:NoExecute --timeout 1h",
                    "%%kale step a\nx = 1", name="placed")
    compiled = api.compile_notebook(path, str(tmp_path / "out"))
    with open(compiled.yaml_path, encoding="utf-8") as f:
        spec, platform = yaml.safe_load_all(f)
    runtime = spec["deploymentSpec"]["executors"]["exec-kale-runtime"]["container"]
    step = spec["deploymentSpec"]["executors"]["exec-a"]["container"]
    assert runtime["env"] == step["env"] == [{"name": "PROXY", "value": "p"}]
    assert "resources" in step and "resources" not in runtime
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-kale-runtime"]["nodeSelector"] == k8s["exec-a"]["nodeSelector"]
    assert k8s["exec-kale-runtime"]["tolerations"] == k8s["exec-a"]["tolerations"]
    assert "activeDeadlineSeconds" in k8s["exec-a"] and "activeDeadlineSeconds" not in k8s["exec-kale-runtime"]
