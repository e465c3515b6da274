"""Kale's command line (``kale --nb NOTEBOOK``) on many notebooks, importing Kale once.

Importing ``kale.cli`` is about 3 s of the 3.5 s one ``kale --nb`` takes. :func:`run_kale`
starts one driver with the Python of Kale's venv; it imports ``kale.cli`` as Kale's console
script does, then forks one child per notebook. Each child changes to the notebook's folder,
sends its stdout and stderr to files of its own and runs ``sys.exit(main())`` with
``sys.argv`` as the console script sees it, so every notebook still gets a process of its
own, in the state the console script is in when it calls ``main``; the child's exit status
is what the command's would be.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

#: The driver: argv[1] is the ``kale`` script, argv[2] a JSON list of [folder, notebook,
#: stdout file, stderr file]; it prints the JSON list of the children's exit statuses.
DRIVER = r"""
import atexit, json, os, sys, traceback
from kale.cli import main

def child(script, folder, notebook, out, err):
    os.chdir(folder)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = [script, "--nb", notebook]
    try:
        sys.exit(main())
    except SystemExit as done:
        code = done.code
        status = 0 if code is None else code if isinstance(code, int) else 1
        if not isinstance(code, (int, type(None))):
            print(code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        status = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

statuses = []
for folder, notebook, out, err in json.loads(sys.argv[2]):
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(sys.argv[1], folder, notebook, out, err)
    statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(statuses))
"""


@dataclass(frozen=True)
class KaleResult:
    """What one ``kale --nb`` printed, and its exit status."""

    returncode: int
    stdout: str
    stderr: str


def run_kale(kale: Path, notebooks: Sequence[Path], timeout_s: float = 600) -> list[KaleResult]:
    """Run ``kale --nb NAME`` in the folder of each of ``notebooks`` (``kale``: the console
    script of Kale's venv), one after the other, importing Kale once; see the module docstring.

    ``timeout_s`` bounds each notebook, as it bounded each ``kale`` process before.
    """
    with tempfile.TemporaryDirectory(prefix="kale-cli-") as folder:
        logs = [(Path(folder) / f"{i}.out", Path(folder) / f"{i}.err") for i in range(len(notebooks))]
        jobs = [[str(nb.parent), nb.name, str(out), str(err)]
                for nb, (out, err) in zip(notebooks, logs)]
        driver = subprocess.run([str(kale.parent / "python"), "-c", DRIVER, str(kale),
                                 json.dumps(jobs)], capture_output=True, text=True,
                                timeout=timeout_s * max(1, len(notebooks)))
        if driver.returncode != 0:
            raise RuntimeError(f"the Kale driver failed ({driver.returncode}): {driver.stderr[-2000:]}")
        statuses = json.loads(driver.stdout.splitlines()[-1])
        return [KaleResult(status, out.read_text(errors="replace"), err.read_text(errors="replace"))
                for status, (out, err) in zip(statuses, logs)]
