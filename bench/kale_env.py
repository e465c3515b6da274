"""Kale 2.3 (``kubeflow-kale``) in its own virtual environment, for side-by-side runs.

Kale is never installed into the project's environment: it gets a venv of its
own under a cache folder (default ``~/.cache/kale-magics-bench/kale-venv``),
created on first use with ``pip install kubeflow-kale`` plus the example
notebooks' libraries (its steps run in that venv under ``kfp.local``). When it
cannot be created the benchmark says why and measures kale-magics alone.

Kale's CLI (``kale/cli.py``) writes the DSL to ``<notebook folder>/.kale/
<pipeline>.kale.py``, prints ``dsl_script_path: PATH`` and compiles it to
``<pipeline>.pipeline.yaml`` beside it; the DSL's pipeline function is
``auto_generated_pipeline``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.timing import error_summary, last_line, strip_ansi

DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
    "kale-magics-bench" / "kale-venv"
#: What the venv gets: Kale, and what the example notebooks import.
REQUIREMENTS = ("kubeflow-kale", "scikit-learn", "pandas")

#: Run Kale's generated DSL with kfp.local inside Kale's venv; prints one JSON line.
DRIVER = """
import importlib.util, json, sys, time
from kfp import local
dsl, root = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location("kale_generated_dsl", dsl)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root, raise_on_error=True)
start, state, error = time.perf_counter(), "SUCCEEDED", ""
try:
    module.auto_generated_pipeline()
except Exception as exc:
    state, error = "FAILED", (type(exc).__name__ + ": " + str(exc)).splitlines()[0][:300]
print("KALE_BENCH " + json.dumps({"run_s": time.perf_counter() - start, "state": state,
                                  "error": error}))
"""


@dataclass(frozen=True)
class KaleEnv:
    """Kale's venv: where it is, Kale's version, or why it is not available."""

    venv: Path
    version: str | None = None
    note: str = ""

    @property
    def available(self) -> bool:
        """Whether Kale can be run."""
        return self.version is not None

    @property
    def python(self) -> str:
        """The venv's interpreter."""
        return str(self.venv / "bin" / "python")

    @property
    def kale(self) -> str:
        """The venv's ``kale`` console script."""
        return str(self.venv / "bin" / "kale")


def kale_env(venv: Path = DEFAULT_VENV, may_install: bool = True) -> KaleEnv:
    """Find Kale's venv at ``venv``, creating it when missing and ``may_install``.

    Never raises: a venv that cannot be made gives a :class:`KaleEnv` whose
    ``note`` says why.
    """
    if not (venv / "bin" / "kale").exists():
        if not may_install:
            return KaleEnv(venv, note=f"Kale not measured: no Kale venv at {venv} and quick mode "
                                      "does not build one (run the full mode once, or pass "
                                      "--kale-venv PATH)")
        error = _create(venv)
        if error:
            return KaleEnv(venv, note=f"Kale not measured: installing kubeflow-kale into {venv} "
                                      f"failed: {error}")
    return _probe(venv)


def _create(venv: Path) -> str:
    """Create the venv and install Kale; return "" or the reason it failed."""
    print(f"creating Kale's venv at {venv} (pip install {' '.join(REQUIREMENTS)}) ...",
          file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                       capture_output=True, text=True, timeout=600)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", *REQUIREMENTS],
                       check=True, capture_output=True, text=True, timeout=1800)
    except subprocess.CalledProcessError as error:
        return last_line(error.stderr or error.stdout or "") or f"exit code {error.returncode}"
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{type(error).__name__}: {error}"
    return ""


def _probe(venv: Path) -> KaleEnv:
    code = "import importlib.metadata as m; print(m.version('kubeflow-kale'))"
    try:
        version = subprocess.run([str(venv / "bin" / "python"), "-c", code], check=True,
                                 capture_output=True, text=True, timeout=120).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return KaleEnv(venv, note=f"Kale not measured: the venv at {venv} is broken ({error}); "
                                  "delete it to have it rebuilt")
    return KaleEnv(venv, version=version)


def compile_with_kale(env: KaleEnv, tagged: Path) -> tuple[Path | None, str]:
    """``kale --nb TAGGED``: ``(dsl_path, "")``, or ``(None, "Kale rejected ...")``."""
    result = subprocess.run([env.kale, "--nb", tagged.name], cwd=tagged.parent,
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        return None, f"Kale rejected the notebook: {error_summary(result.stderr or result.stdout)}"
    for line in result.stdout.splitlines():
        if line.startswith("dsl_script_path:"):
            return Path(line.partition(":")[2].strip()), ""
    return None, "Kale printed no dsl_script_path"


def private_dsl(dsl: Path, root: Path) -> Path:
    """A copy of Kale's DSL whose data folder is private to this run.

    Kale's steps keep their data in a fixed ``/tmp/marshal`` (``set_data_dir``
    in the DSL). On a cluster every pod has its own ``/tmp``; under kfp.local
    all runs share it, and files left by an earlier pipeline make a later one
    fail (``Found multiple files/folders with name X_test_artifact``). The copy
    points every step at ``ROOT/marshal`` instead, which emulates the pods.
    """
    root.mkdir(parents=True, exist_ok=True)
    copy = root / dsl.name
    copy.write_text(dsl.read_text().replace('"/tmp/marshal"', json.dumps(str(root / "marshal"))))
    return copy


def run_kale_dsl(env: KaleEnv, dsl: Path, cwd: Path, root: Path) -> dict[str, object]:
    """Run Kale's DSL with ``kfp.local`` (``SubprocessRunner(use_venv=False)``) in Kale's venv.

    The DSL runs from a copy with a private data folder (:func:`private_dsl`);
    kfp.local's pipeline root is ``root``.

    Returns
    -------
    dict
        ``run_s`` (seconds of the pipeline call), ``state`` and ``error``.
    """
    with tempfile.TemporaryDirectory(prefix="kale-run-", dir=root.parent) as private:
        copy = private_dsl(dsl, Path(private))
        result = subprocess.run([env.python, "-c", DRIVER, str(copy), str(root)], cwd=cwd,
                                capture_output=True, text=True, timeout=3600)
    for line in result.stdout.splitlines():
        if line.startswith("KALE_BENCH "):
            figures = json.loads(line[len("KALE_BENCH "):])
            return {**figures, "error": strip_ansi(figures["error"])}
    return {"run_s": None, "state": "FAILED",
            "error": error_summary(result.stderr) or f"exit code {result.returncode}"}
