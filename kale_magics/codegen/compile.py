"""Write the DSL module and compile it to KFP IR YAML.

The IR is what ``kfp.compiler.Compiler().compile`` writes for the module's
pipeline (KFP builds the spec; see :func:`ir_text`), produced without its slow
parts: the stack walks of task configuration and the pure-Python YAML dump.
"""

from __future__ import annotations

import contextlib
import functools
import linecache
import os
import re
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from kale_magics.atomic import write_text_atomic
from kale_magics.codegen.pipeline import RenderedModule, render_module
from kale_magics.errors import CompileError, KaleError, RunError
from kale_magics.notebook.annotations import check_pipeline_name
from kale_magics.model import Plan


@dataclass(frozen=True)
class CompiledPipeline:
    """The files compilation produced.

    Attributes
    ----------
    plan:
        The plan that was compiled.
    dsl_path:
        The generated KFP DSL module (``<pipeline>.py``).
    yaml_path:
        The compiled KFP IR (``<pipeline>.yaml``).
    warnings:
        Things the user should know that did not stop compilation.
    packages:
        Pinned requirements each step installs on the cluster, by step name.
    """

    plan: Plan
    dsl_path: str
    yaml_path: str
    warnings: tuple[str, ...] = ()
    packages: Mapping[str, list[str]] = field(default_factory=dict)


#: Column at which YAML folds long strings: never (KFP's writer folds at PyYAML's default 80).
YAML_WIDTH = 1 << 30


def dump_ir(documents: Sequence[dict[str, Any]]) -> str:
    """IR documents (the PipelineSpec, then the PlatformSpec if any) as YAML text, keys sorted
    as KFP writes them, with libyaml when PyYAML has it (about 25x faster than KFP's pure-Python
    dump on a 7-step pipeline).

    Strings are not folded (:data:`YAML_WIDTH`): each component's source stays one
    double-quoted line instead of lines of 80 columns, each indented again, which made
    the IR 4% larger (140 bytes per step). The documents are the same.
    """
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump_all(documents, Dumper=dumper, sort_keys=True, width=YAML_WIDTH)


def read_ir(compiled: CompiledPipeline) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the compiled IR YAML: the PipelineSpec and the PlatformSpec (``{}`` when absent).

    kfp-kubernetes settings (timeouts, secrets, volumes, ...) live in the
    PlatformSpec, the YAML's second document.

    Raises
    ------
    RunError
        The file is missing or is not YAML; the message says to compile again.
    """
    import yaml

    try:
        with open(compiled.yaml_path, encoding="utf-8") as f:
            documents = list(yaml.load_all(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
        return documents[0], (documents[1] if len(documents) > 1 else {})
    except (OSError, yaml.YAMLError, IndexError) as error:
        raise RunError(f"cannot read compiled pipeline {compiled.yaml_path}: {error}; "
                       "compile the notebook again") from None


def compile_plan(plan: Plan, output_dir: str,
                 artifact_types: Mapping[str, str] | None = None) -> CompiledPipeline:
    """Generate ``<output_dir>/<name>.py`` and compile it to ``<output_dir>/<name>.yaml``.

    Both files are written atomically and are byte-identical for the same plan
    (apart from the ``sdkVersion`` field KFP writes into the YAML). Nothing is
    written outside ``output_dir``: the pipeline name is checked like
    ``%kale pipeline --name`` (no ``/``, ``.`` or ``..``) and the paths are
    checked again once resolved.

    Raises
    ------
    AnnotationError
        The plan's name is not a valid pipeline name.
    CompileError
        The output folder cannot be written, names in the plan would clash in
        the generated module or in KFP, or (a bug) the KFP compiler rejects the
        generated module.
    """
    check_pipeline_name(plan.name, "the pipeline's name")
    rendered = _render(plan, artifact_types)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as error:
        raise CompileError(f"cannot create output folder {output_dir}: {error.strerror or error}; "
                           "pass another folder with -o") from None
    dsl_path, yaml_path = (_confined(output_dir, f"{plan.name}{ext}") for ext in (".py", ".yaml"))
    try:
        _write_if_changed(dsl_path, rendered.source)
    except OSError as error:
        raise CompileError(f"cannot write {dsl_path}: {error.strerror or error}; pass another "
                           "folder with -o") from None
    _compile_module(plan, dsl_path, yaml_path)
    return CompiledPipeline(plan=plan, dsl_path=dsl_path, yaml_path=yaml_path,
                            warnings=(*plan.warnings, *rendered.warnings),
                            packages=rendered.packages)


def _render(plan: Plan, artifact_types: Mapping[str, str] | None) -> RenderedModule:
    """:func:`render_module`, with any failure that is not a KaleError reported as a bug in one line."""
    try:
        return render_module(plan, artifact_types)
    except KaleError:
        raise
    except Exception as error:  # a bug: one line for the user, not a traceback
        raise CompileError(f"generating the DSL module failed: {type(error).__name__}: {error}. "
                           f"{_BUG}") from error


#: The end of an error that only a defect of kale-magics can cause.
_BUG = "This is a kale-magics bug; please report it with the notebook"


def _confined(folder: str, name: str) -> str:
    """``folder/name``, refusing a path that would resolve outside ``folder``."""
    base = os.path.realpath(folder)
    path = os.path.join(base, name)
    if os.path.dirname(path) != base or os.path.basename(path) != name:
        raise CompileError(f"refusing to write {name!r}: it would land outside the output folder "
                           f"{folder}; use a pipeline name of lowercase letters, digits and -")
    return os.path.join(folder, name)


#: KFP keeps the pipeline being defined in a global, so one module is executed at a time.
_KFP_CONTEXT = threading.Lock()
#: KFP's switch for its runtime mode: ``kfp/__init__.py`` then imports none of its submodules.
_KFP_RUNTIME = "_KFP_RUNTIME"


def import_kfp_dsl() -> types.ModuleType:
    """Import ``kfp.dsl`` (and the compiler it uses) without ``kfp.client``; return ``kfp.dsl``.

    ``kfp/__init__.py`` (KFP 2.17) imports ``kfp.client``, which imports the
    Kubernetes client and google-auth: 0.3 s of the 0.45 s ``import kfp`` takes
    here, none of it used to compile. It skips those imports when ``_KFP_RUNTIME``
    is ``true`` (what KFP sets in a component's container), so the package is
    imported that way, then ``kfp.dsl`` normally (its ``__init__`` reads the same
    switch, so the variable is restored first). The ``kfp`` module then gets a
    module ``__getattr__`` (PEP 562) that imports ``Client``, ``components`` and
    ``client`` when something asks for them, as ``import kfp; kfp.Client(...)`` in
    the user's kernel may: ``kfp`` offers what it always did, loaded later.
    The compiled IR does not change (tests/test_codegen.py compares it with a
    process that imported ``kfp`` in full).
    """
    if "kfp" not in sys.modules:
        previous = os.environ.get(_KFP_RUNTIME)
        os.environ[_KFP_RUNTIME] = "true"
        try:
            import kfp
        finally:
            if previous is None:
                os.environ.pop(_KFP_RUNTIME, None)
            else:
                os.environ[_KFP_RUNTIME] = previous
        if not hasattr(kfp, "Client"):
            kfp.__getattr__ = _kfp_attribute
    import kfp.dsl

    return kfp.dsl


@contextlib.contextmanager
def memoized_task_names() -> Iterator[None]:
    """While active, ``kfp.dsl.utils.sanitize_task_name`` remembers its answers.

    KFP 2.17's ``pipeline_spec_builder.build_spec_by_group`` rebuilds the list of
    every task's sanitized name once per task of the DAG (a list comprehension
    inside the loop over the DAG's tasks), two regular-expression substitutions
    each: n squared calls, 1 million and about 2.5 s at 1000 steps. The function is
    pure (a name in, a name out), so remembering its answers changes nothing in
    the IR (tests/test_step_settings.py compares ours with ``kfp.compiler``'s).
    """
    from kfp.dsl import utils

    original = utils.sanitize_task_name
    utils.sanitize_task_name = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        utils.sanitize_task_name = original


def _kfp_attribute(name: str) -> Any:
    """``kfp.<name>`` for what ``kfp/__init__.py`` imports but :func:`import_kfp_dsl` did not."""
    import importlib

    if name == "Client":
        return importlib.import_module("kfp.client").Client
    if name in ("client", "components", "dsl"):
        return importlib.import_module(f"kfp.{name}")
    raise AttributeError(f"module 'kfp' has no attribute {name!r}")


def _compile_module(plan: Plan, dsl_path: str, yaml_path: str) -> None:
    """Execute the generated module and write its pipeline's IR YAML to ``yaml_path``.

    The module runs on a fresh thread: KFP calls ``inspect.stack()`` in every task
    configuration method (``PipelineTask._ensure_container_spec_exists``, KFP 2.17),
    which costs time per frame on the stack and per module loaded, so from a
    deep IPython kernel stack with pandas and scikit-learn loaded one
    ``set_memory_request`` took about 50 ms; on a thread of its own the whole
    module takes about 30 ms for seven steps.
    """
    outcome: dict[str, Any] = {}

    def build() -> None:
        with _KFP_CONTEXT:  # held by this thread, so an interrupted caller cannot release it
            try:
                import_kfp_dsl()
                with memoized_task_names():
                    outcome["text"] = ir_text(_execute(plan, dsl_path).pipeline)
            except Exception as error:  # handed to the calling thread below
                outcome["error"] = error

    thread = threading.Thread(target=build, name="kale-magics-compile", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, UnicodeEncodeError):  # settings given from Python, not a notebook
            raise CompileError(f"the pipeline's settings hold {error.object[error.start]!r}, a lone "
                               "surrogate, which is not Unicode text; remove it") from error
        raise CompileError(f"the KFP compiler rejected the generated module {dsl_path}: "
                           f"{type(error).__name__}: {error}. {_BUG}") from error
    _write_if_changed(yaml_path, outcome["text"])


def _write_if_changed(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically unless the file holds exactly that already.

    Compiling an unchanged notebook again leaves its files (and their times)
    alone, and saves the replace, which on ext4 can wait for the disk (it
    flushes the new data when a file is renamed over an older one).
    """
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if f.read() == text:
                return
    except (OSError, UnicodeDecodeError):
        pass
    write_text_atomic(path, text)


def _execute(plan: Plan, dsl_path: str) -> types.ModuleType:
    """Run the DSL module at ``dsl_path`` as a fresh module (importlib's loader frames
    would cost ``inspect.stack()`` a scan of ``sys.modules`` each)."""
    module_name = f"_kale_magics_dsl_{plan.name.replace('-', '_')}"
    linecache.checkcache(dsl_path)
    linecache.cache.pop(dsl_path, None)
    with open(dsl_path, encoding="utf-8") as f:
        code = compile(f.read(), dsl_path, "exec", dont_inherit=True)
    module = types.ModuleType(module_name)
    module.__file__ = dsl_path
    sys.modules[module_name] = module  # inspect.getsource needs the module
    try:
        exec(code, module.__dict__)
    finally:
        sys.modules.pop(module_name, None)
    return module


def ir_text(pipeline: Any) -> str:
    """The IR YAML of a ``@dsl.pipeline`` function, as ``kfp.compiler.Compiler().compile`` writes it.

    The same documents (the PipelineSpec, then the PlatformSpec when it has
    platform settings) and the same comment header as KFP's
    ``pipeline_spec_builder.write_pipeline_spec_to_file`` (KFP 2.17), dumped by
    :func:`dump_ir`: KFP's pure-Python dump took 280 ms of a 7-step compile,
    libyaml 10 ms. The header is made safe (see :func:`_safe_header`).
    """
    from google.protobuf import json_format
    from kfp.compiler.pipeline_spec_builder import extract_comments_from_pipeline_spec

    spec = json_format.MessageToDict(pipeline.pipeline_spec)
    documents = [spec]
    if pipeline.platform_spec.platforms:
        documents.append(json_format.MessageToDict(pipeline.platform_spec))
    header = _safe_header(extract_comments_from_pipeline_spec(spec, pipeline.description))
    return header + dump_ir(documents)


#: Characters YAML does not allow, even in a comment (PyYAML's ``Reader.NON_PRINTABLE``).
_NON_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD"
                            "\U00010000-\U0010ffff]")


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def _safe_header(header: str) -> str:
    """KFP's comment header with every line commented out and forbidden characters escaped.

    KFP 2.17 writes parameter defaults and the description into the ``#``
    comment header verbatim, so a default or description with a newline
    continues outside the comment, or a control character makes it invalid, and
    the YAML no longer parses (for KFP too).
    """
    return "".join(line if line.startswith("#") else f"#    {line}"
                   for line in _NON_PRINTABLE.sub(_escape, header).splitlines(keepends=True))
