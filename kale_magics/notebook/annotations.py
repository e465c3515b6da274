"""The one grammar of kale-magics annotations.

Both the ``%%kale`` cell magic running in a kernel and the notebook reader
parse magic lines with :func:`parse_cell_line` and :func:`parse_pipeline_line`,
so a line means the same thing wherever it is read.

Cell annotations (the first line of a code cell)::

    %%kale imports | functions | parameters | metrics | skip
    %%kale notebook PATH [--param NAME=EXPR ...] [--outputs VAR ...]
    %%kale step NAME [--after STEP ...] [--inputs NAME ...] [--outputs NAME ...]
                     [--for VAR in LIST [--parallelism N]] [--if "EXPR"] [OPTIONS]
                     [--register VAR[:NAME] ...] [--model-format FORMAT[:VERSION]]
                     [--register-version VERSION]

Pipeline settings (a line anywhere in a code cell)::

    %kale pipeline [--name NAME] [--experiment E] [--description D] [--host URL]
                   [--notebook PATH] [--pip-index-url URL] [--pip-trusted-host HOST]
                   [--on-exit STEP] [--model-registry URL] [OPTIONS]

OPTIONS are the step execution options of ``notebook.step_options`` (``--cpu``,
``--memory``, ``--gpu``, ``--image``, ``--retries``, ``--timeout``, ``--env``,
``--volume``, ...); on the pipeline line they are defaults for every step.
"""

from __future__ import annotations

import argparse
import ast
import keyword
import re
import shlex
from typing import NoReturn, Sequence

from kale_magics.errors import AnnotationError
from kale_magics.notebook import step_options
from kale_magics.model import CELL_KINDS, Annotation, PipelineSettings, SubNotebook

CELL_PREFIX = "%%kale"
LINE_PREFIX = "%kale"

#: Step names: lowercase words of letters and digits joined by single ``_``, so the
#: same name is a valid DSL function and one KFP component and task name: KFP turns
#: every run of characters other than ``a-z0-9`` into one ``-`` and strips the ends
#: (``kfp.dsl.utils.maybe_rename_for_k8s``), which would make ``a_b``/``a__b`` or
#: ``a``/``a_`` one task; with single inner ``_`` the mapping is one to one both ways.
STEP_NAME = re.compile(r"(?=.{1,63}\Z)[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
#: Pipeline names as KFP accepts them in ``pipeline_info.name``; also the generated
#: files' names (``<name>.py``, ``<name>.yaml``), so no ``/``, ``.`` or ``..``.
PIPELINE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")
#: Step names the generated DSL module or KFP use themselves: the module's imports and
#: pipeline function, the builtins its signatures name, KFP's ``root`` DAG.
RESERVED_STEP_NAMES = frozenset({"dsl", "kubernetes", "pipeline", "compiler", "root",
                                 "int", "float", "str", "bool"})
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_EXAMPLES = {"%%kale step": "`%%kale step train --after load --memory 4Gi`",
             "%kale pipeline": "`%kale pipeline --name my-pipeline --experiment demo`"}


class GrammarParser(argparse.ArgumentParser):
    """argparse that raises AnnotationError instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        hint = (" (a value starting with - is written --option=VALUE)"
                if "expected one argument" in message else "")
        raise AnnotationError(f"{self.prog}: {message}{hint}; `%kale?` lists the options, e.g. "
                              f"{_EXAMPLES.get(self.prog, self.prog)}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise AnnotationError(message or f"{self.prog}: invalid arguments")


def _step_parser() -> GrammarParser:
    parser = GrammarParser(prog="%%kale step", add_help=False,
                     description="Mark the cell as a pipeline step (one KFP component).")
    parser.add_argument("name", help="step name: lowercase letters, digits and _, starting with a letter")
    parser.add_argument("--after", nargs="+", default=[], metavar="STEP",
                        help="run after these steps even without a data dependency")
    parser.add_argument("--inputs", nargs="+", default=[], metavar="NAME",
                        help="variables read from earlier steps that analysis cannot see")
    parser.add_argument("--outputs", nargs="+", default=[], metavar="NAME",
                        help="variables passed on that analysis cannot see (e.g. changed in place)")
    step_options.add_control_options(parser)
    step_options.add_options(parser)
    step_options.add_registration_options(parser)
    return parser


def _pipeline_parser() -> GrammarParser:
    parser = GrammarParser(prog="%kale pipeline", add_help=False,
                     description="Pipeline settings; later lines override earlier ones.")
    parser.add_argument("--name", help="KFP pipeline name: lowercase letters, digits and -")
    parser.add_argument("--experiment", help="KFP experiment for remote runs")
    parser.add_argument("--description", help="pipeline description")
    step_options.add_options(parser)
    parser.add_argument("--pip-index-url", action="append", default=[], metavar="URL",
                        help="package index the steps install from (repeatable)")
    parser.add_argument("--pip-trusted-host", action="append", default=[], metavar="HOST",
                        help="index host to trust without HTTPS (repeatable)")
    parser.add_argument("--host", help="KFP API endpoint for remote runs, e.g. http://kfp:8888")
    parser.add_argument("--notebook", help="path of this notebook, where the kernel cannot tell "
                        "(nbclient, papermill)")
    parser.add_argument("--on-exit", metavar="STEP", help="the step that runs after every other "
                        "step, whether they succeeded or not; it reads PIPELINE_STATUS")
    parser.add_argument("--model-registry", metavar="URL",
                        help="Kubeflow Model Registry address for steps that --register models")
    return parser


def _notebook_parser() -> GrammarParser:
    parser = GrammarParser(prog="%%kale notebook", add_help=False,
                           description="Run an annotated notebook's pipeline here (a sub-pipeline).")
    parser.add_argument("path", help="the notebook, relative to this one")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=EXPR",
                        help="set its parameter NAME from EXPR over this notebook's variables")
    parser.add_argument("--outputs", nargs="+", default=[], metavar="VAR",
                        help="its variables later steps here read")
    return parser


STEP_PARSER = _step_parser()
NOTEBOOK_PARSER = _notebook_parser()
PIPELINE_PARSER = _pipeline_parser()


def split_args(text: str) -> list[str]:
    """Split the arguments of a magic line like a shell.

    Raises
    ------
    AnnotationError
        Bad quoting, or a lone surrogate (text that is not Unicode, which no
        file or KFP field can hold).
    """
    check_unicode(text, "the line")
    try:
        return shlex.split(text)
    except ValueError as error:
        raise AnnotationError(f"cannot read `{text}`: {error}; close the quote", line=text) from None


def check_unicode(text: str, what: str) -> str:
    """Return ``text`` if it is valid Unicode, else raise AnnotationError naming ``what``.

    A lone surrogate (``"\\ud800"``, e.g. from a ``\\ud800`` escape in the
    notebook's JSON) is a Python ``str`` but not Unicode text: it cannot be
    encoded to UTF-8, so it would fail later in the parser, the YAML or KFP.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        line = text.count("\n", 0, error.start) + 1
        raise AnnotationError(
            f"{what} holds {text[error.start]!r} at line {line}, a lone surrogate, which is not "
            "Unicode text (a broken escape in the notebook's JSON?); remove it") from None
    return text


def step_name_hint(name: str) -> str:
    """A valid step name close to ``name`` (``"Load-Data"`` -> ``"load_data"``); a name that
    differs from a valid one only by its ``_`` gets a number, since that other name is likely
    taken (``"a__b"`` -> ``"a_b2"``, ``"a_"`` -> ``"a2"``)."""
    hint = "_".join(re.findall(r"[a-z0-9]+", name.lower())).lstrip("_0123456789")[:55].rstrip("_")
    if hint and hint != name and re.sub("_+", "_", name).strip("_") == hint:
        hint += "2"
    if not hint or keyword.iskeyword(hint) or keyword.issoftkeyword(hint):
        hint = f"{hint or 'step'}_1"
    if hint in RESERVED_STEP_NAMES or hint.startswith("kale"):
        hint = f"{hint}_step" if not hint.startswith("kale") else f"step_{hint}"
    return hint if STEP_NAME.fullmatch(hint) else "step_1"


def check_step_name(name: str, option: str = "step name") -> str:
    """Return ``name`` if it is a valid step name, else raise AnnotationError with the fix."""
    if not STEP_NAME.fullmatch(name) or keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise AnnotationError(
            f"invalid {option} {name!r}: use 1-63 lowercase letters and digits, words joined by "
            f"single _, starting with a letter, not a Python keyword (for example "
            f"{step_name_hint(name)!r})", line=name)
    if name in RESERVED_STEP_NAMES or name.startswith("kale"):
        raise AnnotationError(
            f"{option} {name!r} is reserved by the generated pipeline module or KFP; choose "
            f"another name (for example {name + '_step'!r})", line=name)
    return name


def check_pipeline_name(name: str, where: str = "%kale pipeline --name") -> str:
    """Return ``name`` if it is a valid pipeline name (also a file name), else raise AnnotationError.

    Parameters
    ----------
    name:
        The pipeline name, from ``%kale pipeline --name``, Kale's ``pipeline_name``
        metadata, or a caller.
    where:
        Where it was given, for the message.

    Raises
    ------
    AnnotationError
        Not 1-128 lowercase letters, digits and ``-`` starting with a letter or
        digit (so never a path: no ``/``, ``.``, ``..``); the message suggests one.
    """
    if not isinstance(name, str) or not PIPELINE_NAME.fullmatch(name):
        raise AnnotationError(
            f"invalid pipeline name {name!r} ({where}): use lowercase letters, digits and -, "
            f"starting with a letter or digit (for example {pipeline_name_from(str(name))!r})")
    return name


def _check_variables(names: Sequence[str], option: str) -> tuple[str, ...]:
    for name in names:
        if not VARIABLE_NAME.fullmatch(name) or keyword.iskeyword(name):
            raise AnnotationError(f"{option} {name!r} is not a Python variable name; "
                                  f"list variable names, for example `{option} df model`", line=name)
    return tuple(dict.fromkeys(names))


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """``" (did you mean 'step'?)"`` when ``word`` (in any case) is a near miss of one of
    ``choices`` (:func:`difflib.get_close_matches`, cutoff 0.6), else ``""``."""
    import difflib

    close = difflib.get_close_matches(word.lower(), choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_cell_line(line: str) -> Annotation:
    """Parse a ``%%kale KIND ...`` line (with or without the ``%%kale`` prefix).

    Parameters
    ----------
    line:
        The magic line, e.g. ``"%%kale step train --after load"``, or only its
        arguments, ``"step train --after load"``, as IPython passes them.

    Returns
    -------
    Annotation
        The parsed annotation.

    Raises
    ------
    AnnotationError
        Unknown kind, bad option, invalid step name or bad quoting; the message
        says how to fix it.
    """
    text = line.strip()
    if text.startswith(CELL_PREFIX):
        text = text[len(CELL_PREFIX):]
    args = split_args(text)
    if not args:
        raise AnnotationError(f"`%%kale` needs a kind: one of {', '.join(CELL_KINDS)} "
                              "(for example `%%kale step train`)", line=line)
    kind, rest = args[0], args[1:]
    if kind not in CELL_KINDS:
        raise AnnotationError(f"unknown annotation kind {kind!r}{did_you_mean(kind, CELL_KINDS)}; "
                              f"use one of {', '.join(CELL_KINDS)}", line=line)
    if kind == "notebook":
        return _notebook_annotation(rest, line)
    if kind != "step":
        if rest:
            raise AnnotationError(f"`%%kale {kind}` takes no arguments, got {' '.join(rest)!r}",
                                  line=line)
        return Annotation(kind=kind)
    ns = STEP_PARSER.parse_args(rest)
    name = check_step_name(ns.name)
    after = tuple(dict.fromkeys(check_step_name(a, "--after step") for a in ns.after))
    if name in after:
        raise AnnotationError(f"step {name!r} cannot run --after itself; remove it from --after",
                              line=line)
    return Annotation(kind="step", name=name, after=after,
                      inputs=_check_variables(ns.inputs, "--inputs"),
                      outputs=_check_variables(ns.outputs, "--outputs"),
                      settings=step_options.settings_from(ns), loop=step_options.loop_from(ns),
                      condition=(step_options.condition(ns.condition)
                                 if ns.condition is not None else None),
                      registrations=step_options.registrations_from(ns))


def _notebook_annotation(args: list[str], line: str) -> Annotation:
    """``%%kale notebook PATH [--param NAME=EXPR ...] [--outputs VAR ...]``."""
    ns = NOTEBOOK_PARSER.parse_args(args)
    if not ns.path.endswith(".ipynb"):
        raise AnnotationError(f"%%kale notebook {ns.path!r}: name a .ipynb file, for example "
                              "`%%kale notebook prep.ipynb --param N=N --outputs df`", line=line)
    params = []
    for text in ns.param:
        name, sep, expression = text.partition("=")
        name = name.strip()
        try:
            valid = bool(sep) and VARIABLE_NAME.fullmatch(name) is not None \
                and bool(ast.parse(expression.strip(), mode="eval"))
        except SyntaxError:
            valid = False
        if not valid or keyword.iskeyword(name):
            raise AnnotationError(f"--param {text!r} is not NAME=EXPR with EXPR a Python "
                                  "expression; for example --param N=N_ESTIMATORS*2", line=line)
        params.append((name, expression.strip()))
    return Annotation(kind="notebook", outputs=_check_variables(ns.outputs, "--outputs"),
                      notebook=SubNotebook(ns.path, tuple(params)))


def parse_pipeline_line(line: str) -> PipelineSettings:
    """Parse a ``%kale pipeline ...`` line (with or without the ``%kale pipeline`` prefix).

    Raises
    ------
    AnnotationError
        Unknown option, bad quoting or an invalid pipeline name.
    """
    text = line.strip()
    for prefix in (LINE_PREFIX, "pipeline"):
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
    ns = PIPELINE_PARSER.parse_args(split_args(text))
    if ns.name is not None:
        try:
            check_pipeline_name(ns.name)
        except AnnotationError as error:
            raise AnnotationError(error.message, line=line) from None
    defaults = step_options.settings_from(ns)
    on_exit = None if ns.on_exit is None else check_step_name(ns.on_exit, "--on-exit step")
    return PipelineSettings(name=ns.name, experiment=ns.experiment, description=ns.description,
                            host=ns.host, notebook=ns.notebook, on_exit=on_exit,
                            model_registry=_optional_url(ns.model_registry, line),
                            pip_index_urls=tuple(ns.pip_index_url),
                            pip_trusted_hosts=tuple(ns.pip_trusted_host), step_defaults=defaults)


def _optional_url(value: str | None, line: str) -> str | None:
    if value is None:
        return None
    try:
        return step_options.registry_url(value)
    except AnnotationError as error:
        raise AnnotationError(error.message, line=line) from None


def is_cell_annotation(first_line: str) -> bool:
    """True when ``first_line`` is a ``%%kale`` magic line."""
    return cell_magic(first_line) is not None


def cell_magic(source: str) -> tuple[str, str] | None:
    """``(arguments, body)`` when IPython runs ``source`` as the ``%%kale`` cell magic, else None.

    IPython's own rules decide (``IPython.core.inputtransformer2.TransformerManager``:
    its cleanup transforms drop leading blank lines, a common leading indent and
    ``>>>`` / ``In [1]:`` prompts, then ``cell_magic`` takes the first line if it
    starts with ``%%``), so the kernel and the notebook reader agree on which
    cells are annotated. ``body`` is the cell body as the magic receives it,
    after as many empty lines as the magic line and the lines before it took:
    its line numbers are the cell's own.

    Parameters
    ----------
    source:
        A code cell's whole source.
    """
    if CELL_PREFIX not in source:
        return None
    from IPython.core.inputtransformer2 import TransformerManager

    lines = (source if source.endswith("\n") else source + "\n").splitlines(keepends=True)
    leading = next((i for i, line in enumerate(lines) if line and not line.isspace()), 0)
    for transform in TransformerManager().cleanup_transforms:
        lines = transform(lines)
    if not lines or not lines[0].startswith("%%"):
        return None
    name, _, arguments = lines[0][2:].rstrip().partition(" ")
    if name != CELL_PREFIX[2:]:
        return None
    body = "".join(lines[1:])
    if not source.endswith("\n") and body.endswith("\n"):
        body = body[:-1]
    return arguments, "\n" * (leading + 1) + body


#: Lines of a tool-control cell besides ``%kale ...``: loading the extension.
_EXTENSION_LINES = frozenset({"%load_ext kale_magics", "%reload_ext kale_magics"})


def is_tool_line(line: str) -> bool:
    """True when ``line`` is a ``%kale ...`` line magic (``%kale panel``, ``%kale pipeline ...``)
    or loads the extension (``%load_ext kale_magics``): it drives the tool, it is no pipeline code."""
    text = line.strip()
    return text == LINE_PREFIX or text.startswith(LINE_PREFIX + " ") or text in _EXTENSION_LINES


def is_tool_cell(source: str) -> bool:
    """True when a code cell holds only tool control: ``%kale ...`` line magics (and
    ``%load_ext kale_magics``), blank lines and comments, at least one magic.

    Such a cell (``%kale panel`` placed under a ``%%kale metrics`` or a step cell, say)
    is never pipeline code and never continues the annotation of the cell above it:
    the reader leaves it out (README, "Annotations"). A cell with any other line is
    code as usual.
    """
    lines = [line.strip() for line in source.splitlines()]
    code = [line for line in lines if line and not line.startswith("#")]
    return bool(code) and all(is_tool_line(line) for line in code)


def is_pipeline_line(line: str) -> bool:
    """True when ``line`` is a ``%kale pipeline ...`` line."""
    args = line.strip().split(None, 2)
    return len(args) >= 2 and args[0] == LINE_PREFIX and args[1] == "pipeline"


def pipeline_name_from(text: str) -> str:
    """Make a KFP-safe pipeline name from any text (e.g. a notebook's file stem)."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:128]
    return name or "pipeline"


def cell_line(annotation: Annotation) -> str:
    """The ``%%kale`` line that parses to ``annotation``: the inverse of :func:`parse_cell_line`."""
    if annotation.kind == "notebook" and annotation.notebook is not None:
        words = ["notebook", shlex.quote(annotation.notebook.path)]
        for name, expression in annotation.notebook.params:
            words += step_options.option_words("--param", f"{name}={expression}")
        words += ["--outputs", *annotation.outputs] if annotation.outputs else []
        return " ".join([CELL_PREFIX, *words])
    if annotation.kind != "step":
        return f"{CELL_PREFIX} {annotation.kind}"
    words = ["step", annotation.name or ""]
    for option, names in (("--after", annotation.after), ("--inputs", annotation.inputs),
                          ("--outputs", annotation.outputs)):
        if names:
            words += [option, *names]
    return " ".join([CELL_PREFIX, *words, *step_options.control_text(annotation.loop, annotation.condition),
                     *step_options.options_text(annotation.settings),
                     *step_options.registration_words(annotation.registrations)])


def pipeline_line(settings: PipelineSettings) -> str:
    """The ``%kale pipeline`` line that parses to ``settings`` (inverse of :func:`parse_pipeline_line`)."""
    words = []
    for option, value in (("--name", settings.name), ("--experiment", settings.experiment),
                          ("--description", settings.description), ("--host", settings.host),
                          ("--notebook", settings.notebook), ("--on-exit", settings.on_exit),
                          ("--model-registry", settings.model_registry)):
        if value is not None:
            words += step_options.option_words(option, value)
    for option, values in (("--pip-index-url", settings.pip_index_urls),
                           ("--pip-trusted-host", settings.pip_trusted_hosts)):
        for value in values:
            words += step_options.option_words(option, value)
    words += step_options.options_text(settings.step_defaults)
    return " ".join([LINE_PREFIX, "pipeline", *words])
