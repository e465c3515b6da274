"""Write the DSL module and compile it to KFP IR YAML with ``kfp.compiler.Compiler``."""

from __future__ import annotations

import importlib.util
import linecache
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

from kale_magics.atomic import write_text_atomic
from kale_magics.codegen.pipeline import render_module
from kale_magics.errors import CompileError, RunError
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
    (apart from the ``sdkVersion`` field KFP writes into the YAML).

    Raises
    ------
    CompileError
        The output folder cannot be written or the KFP compiler rejects the
        generated module (a bug: the message says to report it).
    """
    rendered = render_module(plan, artifact_types)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as error:
        raise CompileError(f"cannot create output folder {output_dir}: {error}; pass another "
                           "folder with -o") from None
    dsl_path = os.path.join(output_dir, f"{plan.name}.py")
    yaml_path = os.path.join(output_dir, f"{plan.name}.yaml")
    write_text_atomic(dsl_path, rendered.source)
    _compile_module(plan, dsl_path, yaml_path)
    return CompiledPipeline(plan=plan, dsl_path=dsl_path, yaml_path=yaml_path,
                            warnings=(*plan.warnings, *rendered.warnings),
                            packages=rendered.packages)


def _compile_module(plan: Plan, dsl_path: str, yaml_path: str) -> None:
    """Import the generated module fresh and compile its ``pipeline`` function."""
    from kfp import compiler

    module_name = f"_kale_magics_dsl_{plan.name.replace('-', '_')}"
    linecache.checkcache(dsl_path)
    linecache.cache.pop(dsl_path, None)
    spec = importlib.util.spec_from_file_location(module_name, dsl_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    tmp = yaml_path[:-len(".yaml")] + ".tmp.yaml"
    try:
        spec.loader.exec_module(module)
        compiler.Compiler().compile(module.pipeline, tmp)
        _repair_header(tmp, module.pipeline)
        os.replace(tmp, yaml_path)
    except Exception as error:
        raise CompileError(f"the KFP compiler rejected the generated module {dsl_path}: "
                           f"{type(error).__name__}: {error}. This is a kale-magics bug; please "
                           "report it with the notebook") from error
    finally:
        sys.modules.pop(module_name, None)
        if os.path.exists(tmp):
            os.unlink(tmp)


#: Characters YAML does not allow, even in a comment (PyYAML's ``Reader.NON_PRINTABLE``).
_NON_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD"
                            "\U00010000-\U0010ffff]")


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def _repair_header(path: str, pipeline: Any) -> None:
    """Comment out every line of the header KFP writes above the IR.

    KFP 2.17 writes parameter defaults and the description into a ``#`` comment
    header verbatim, so a default or description with a newline continues
    outside the comment, or a control character makes it invalid, and the YAML
    no longer parses (for KFP too). The header is recomputed with KFP's own
    function, characters YAML forbids are escaped and each line made a comment.
    """
    from google.protobuf import json_format
    from kfp.compiler.pipeline_spec_builder import extract_comments_from_pipeline_spec

    header = extract_comments_from_pipeline_spec(
        json_format.MessageToDict(pipeline.pipeline_spec), pipeline.description)
    with open(path, encoding="utf-8", newline="") as f:  # keep a "\r" in a default as it is
        text = f.read()
    if not text.startswith(header):
        return
    fixed = "".join(line if line.startswith("#") else f"#    {line}"
                    for line in _NON_PRINTABLE.sub(_escape, header).splitlines(keepends=True))
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(fixed + text[len(header):])
