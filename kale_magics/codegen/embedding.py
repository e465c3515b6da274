"""Ship the step runtime once per pipeline: a first task writes it as an artifact every step loads.

A compiled pipeline must run on a stock ``python:3.x`` image without
kale-magics installed, so the runtime (``kale_magics/runtime/*.py``) travels in
the pipeline. It travels ONCE: the ``kale_runtime`` component holds it,
compressed, with the notebook's imports and functions cells, and writes them as
a folder, the bundle (see ``kale_magics.runtime.bundle``), into its output
artifact. Every step takes that artifact as its input ``kale_runtime`` and
imports the runtime from it with :data:`LOADER` (three lines). Copied into
every component instead, the 17 KB runtime made the IR about 20 KiB per step:
2 MiB at 100 steps, over what Argo (1 MiB compressed workflow) and etcd (1.5 MiB
request) accept.

Why an artifact, and not a pipeline parameter holding the runtime: a parameter's
value is part of each step's executor input, which KFP's driver writes into the
pod spec patch it returns as an Argo output parameter, stored in the workflow's
status: once per step again. An artifact passes by URI.

The ``kale_runtime`` task is deterministic (the same notebook and kale-magics
version give the same command and the same files), so KFP's cache, on a server
and in ``kfp.local``, reuses it across runs and ``--from STEP`` resumes with it.
"""

from __future__ import annotations

import ast
import base64
import functools
import hashlib
import io
import json
import tokenize
import zlib
from importlib import resources
from typing import Iterator

from kale_magics import __version__
from kale_magics.codegen.literals import string_literal

#: The runtime modules shipped to every step: ``kale_magics/runtime/<name>.py``. The one list.
RUNTIME_MODULES = ("backends", "bundle", "channel", "marshal", "pickling", "registration", "shell",
                   "step")
#: The component (and the pipeline function's task variable is ``<this>_task``).
RUNTIME_COMPONENT = "kale_runtime"
#: Every step's input artifact holding the bundle.
RUNTIME_INPUT = "kale_runtime"
#: The ``kale_runtime`` component's output artifact.
RUNTIME_OUTPUT = "bundle"
#: Characters of base64 per line of the embedded runtime.
BLOB_LINE = 1024

#: The lines that start every step: import the runtime from the step's ``kale_runtime`` input
#: (``bundle.run_step`` takes the folder off ``sys.path`` again before the step's code runs).
#: The local names :data:`LOADER` binds in a step's component (no parameter may be called so).
LOADER_NAMES = ("sys", "run_step")
#: The module of the bundle a step imports (``runtime.bundle``).
RUNTIME_MODULE = "kale_magics.runtime.bundle"
LOADER = (f"    import sys\n"
          f"    sys.path.insert(0, {RUNTIME_INPUT}.path)\n"
          f"    from {RUNTIME_MODULE} import run_step\n")

_WRITER = '''\
def {name}({output}: Output[Artifact]):
    """Write the step runtime (with its bytecode) and the notebook's imports and functions cells.

    The runtime is kale_magics/runtime/{{{modules}}}.py
    of kale-magics {version}, as zlib-compressed JSON in base64; sha256 of the JSON:
    {digest}.
    """
    import base64
    import json
    import os
    import py_compile
    import zlib

    files = json.loads(zlib.decompress(base64.b64decode(
{blob}
    )))
    files["notebook.json"] = json.dumps({{
        "notebook": {notebook},
        "prelude": [
{prelude}        ],
        "places": {places},
    }})
    for name, text in files.items():
        path = os.path.join({output}.path, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        if name.endswith(".py"):  # steps on the same Python import bytecode, checked by hash
            py_compile.compile(path, doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
'''


def runtime_files() -> dict[str, str]:
    """The runtime as files of the bundle: ``{"kale_magics/runtime/step.py": source, ...}``.

    The sources are without docstrings and comments (:func:`without_docs`).
    ``kale_magics/__init__.py`` is a stub: the real one belongs to the
    compiling side and is not needed in a step.
    """
    package = resources.files("kale_magics.runtime")
    files = {"kale_magics/__init__.py": '"""The kale-magics step runtime, from a pipeline."""\n',
             "kale_magics/runtime/__init__.py": package.joinpath("__init__.py").read_text("utf-8")}
    for name in RUNTIME_MODULES:
        source = package.joinpath(f"{name}.py").read_text("utf-8")
        files[f"kale_magics/runtime/{name}.py"] = without_docs(source)
    return files


def _scopes(node: ast.AST) -> Iterator[ast.AST]:
    """``node`` and every class and function in it: what can have a docstring."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from _scopes(child)
            else:
                yield from (n for n in _scopes(child) if n is not child)


@functools.lru_cache(maxsize=32)  # pure; the same runtime files at every compile
def without_docs(source: str) -> str:
    """``source`` without its docstrings and comments, every line where it was.

    The runtime travels compressed in the pipeline; its docstrings and comments
    are a third of it. Each docstring becomes an empty string literal spanning
    the same lines (a body that was only a docstring stays a body) and each
    comment is cut, so tracebacks through the runtime name the lines of the
    source in the repository.
    """
    lines = source.splitlines(keepends=True)
    cuts: list[tuple[int, int, int, int, str]] = []  # 1-based start line, col, end line, col, text
    for node in _scopes(ast.parse(source)):
        body = node.body
        if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            doc = body[0]
            blank = '"""' + "\n" * (doc.end_lineno - doc.lineno) + '"""'
            end_col = len(lines[doc.end_lineno - 1].encode("utf-8")[:doc.end_col_offset].decode("utf-8"))
            cuts.append((doc.lineno, doc.col_offset, doc.end_lineno, end_col, blank))  # ast: bytes
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            cuts.append((*token.start, *token.end, ""))
    for start, col, end, end_col, text in sorted(cuts, reverse=True):
        head, tail = lines[start - 1][:col], lines[end - 1][end_col:]
        lines[start - 1:end] = [(head + text + tail.rstrip(" ") if tail.strip() else
                                 (head + text).rstrip(" ") + "\n")]
        lines[start - 1:start] = lines[start - 1].splitlines(keepends=True)
    return "".join(lines)


@functools.lru_cache(maxsize=4)
def _packed_runtime(files_json: str) -> tuple[str, str]:
    """The base64 lines of ``files_json`` compressed, and its sha256."""
    data = files_json.encode("utf-8")
    encoded = base64.b64encode(zlib.compress(data, 9)).decode("ascii")
    lines = "".join(f"        {encoded[i:i + BLOB_LINE]!r}\n"
                    for i in range(0, len(encoded), BLOB_LINE))
    return lines.rstrip("\n"), hashlib.sha256(data).hexdigest()


def runtime_component_function(notebook: str, prelude: str, places: str = "[]") -> str:
    """Source of the ``kale_runtime`` function (without its decorator).

    Parameters
    ----------
    notebook:
        The notebook's file name (tracebacks name cells by it).
    prelude:
        ``(index, kind, source),`` lines of the imports and functions cells,
        indented by 12 (``cell_code.prelude_cells``).
    places:
        A list literal of ``(index, notebook, number)`` for the cells of notebooks
        that ``notebook:NAME`` cells reference (``cell_code.places``).
    """
    blob, digest = _packed_runtime(json.dumps(runtime_files(), sort_keys=True))
    return _WRITER.format(name=RUNTIME_COMPONENT, output=RUNTIME_OUTPUT, version=__version__,
                          modules=",".join(RUNTIME_MODULES), digest=digest, blob=blob,
                          notebook=string_literal(notebook), prelude=prelude, places=places)


def embedded_loader(notebook: str, prelude: str, places: str = "[]") -> str:
    """Lines that write the bundle into a new temporary folder and import the runtime from it.

    For the ``--on-exit`` step: KFP gives an exit task no input from another task
    (``dsl.ExitHandler``; the compiler refuses one), so it cannot take the
    ``kale_runtime`` artifact and carries the runtime itself, once. The arguments are
    those of :func:`runtime_component_function`.
    """
    writer = runtime_component_function(notebook, prelude, places).replace(
        f"{RUNTIME_OUTPUT}.path", f"{RUNTIME_INPUT}.path")
    body = writer.split('\n    """\n', 1)[1]
    return ("    import tempfile\n"
            "    import types\n"
            f"    {RUNTIME_INPUT} = types.SimpleNamespace(path=tempfile.mkdtemp(prefix='kale-runtime-'))\n"
            + body + LOADER)
