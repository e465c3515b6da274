"""Execution options of a step: declared once, accepted on ``%%kale step`` and ``%kale pipeline``.

Values are checked here, when the line is read, so a bad one is an
:class:`~kale_magics.errors.AnnotationError` naming the option and a valid
example, never a KFP compiler error later. The accepted forms are KFP's own:
CPU ``2``, ``0.5`` or ``500m`` and memory ``4Gi``, ``512M`` or ``1000000``
(``kfp.dsl.PipelineTask.set_cpu_request`` / ``set_memory_request``); durations
``90s``, ``30m``, ``2h``.
"""

from __future__ import annotations

import argparse
import ast
import keyword
import re
import shlex
from typing import Any, Callable

from kale_magics.errors import AnnotationError
from kale_magics.model import Condition, Loop, Registration, StepSettings

CPU = re.compile(r"([0-9]*[.])?[0-9]+m?")
MEMORY = re.compile(r"[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?")
DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(s|m|h)")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
#: Names of registered models, their versions and formats: what the Model Registry's UI and
#: KServe's storage paths take without quoting.
REGISTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
REGISTRY_URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


def _bad(option: str, value: str, example: str, why: str = "") -> AnnotationError:
    reason = f" ({why})" if why else ""
    return AnnotationError(f"{option} {value!r} is not valid{reason}; for example {option} {example}",
                           line=value)


def cpu(value: str, option: str = "--cpu") -> str:
    """A Kubernetes CPU quantity: ``2``, ``0.5`` or ``500m``."""
    if not CPU.fullmatch(value):
        raise _bad(option, value, "2 (or 500m)")
    return value


def memory(value: str, option: str = "--memory") -> str:
    """A Kubernetes memory quantity: ``4Gi``, ``512Mi``, ``1G``."""
    if not MEMORY.fullmatch(value):
        raise _bad(option, value, "4Gi (or 512Mi)")
    return value


def seconds(value: str, option: str) -> float:
    """A duration ``90s``, ``30m`` or ``2h`` in seconds."""
    match = DURATION.fullmatch(value)
    if not match:
        raise _bad(option, value, "30m (or 90s, 2h)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def count(value: str, option: str) -> int:
    """A whole number >= 0."""
    if not value.isdigit():
        raise _bad(option, value, "1")
    return int(value)


def pair(value: str, option: str, example: str, separator: str = "=") -> tuple[str, str]:
    """``NAME=VALUE`` (or ``A:B``) split in two; both parts non-empty."""
    left, sep, right = value.partition(separator)
    if not sep or not left or not right:
        raise _bad(option, value, example)
    return left, right


def env(value: str) -> tuple[str, str]:
    """``--env NAME=VALUE``: NAME an environment variable name, VALUE any text."""
    name, _, text = value.partition("=")
    if "=" not in value or not ENV_NAME.fullmatch(name):
        raise _bad("--env", value, "LOG_LEVEL=debug")
    return name, text


def secret(value: str) -> tuple[str, str, str]:
    """``--secret SECRET:KEY:ENV_NAME``."""
    parts = value.split(":")
    if len(parts) != 3 or not K8S_NAME.fullmatch(parts[0]) or not parts[1] \
            or not ENV_NAME.fullmatch(parts[2]):
        raise _bad("--secret", value, "db-creds:password:DB_PASSWORD")
    return parts[0], parts[1], parts[2]


def volume(value: str) -> tuple[str, str]:
    """``--volume PVC:/mount/path`` (an existing persistent volume claim)."""
    pvc, path = pair(value, "--volume", "data:/data", ":")
    if not K8S_NAME.fullmatch(pvc) or not path.startswith("/"):
        raise _bad("--volume", value, "data:/data", "a PVC name, then an absolute path")
    return pvc, path


def node_selector(value: str) -> tuple[str, str]:
    """``--node-selector LABEL=VALUE``."""
    return pair(value, "--node-selector", "cloud.google.com/gke-nodepool=gpu-pool")


def toleration(value: str) -> tuple[str, str, str]:
    """``--toleration KEY=VALUE:EFFECT`` (or ``KEY:EFFECT`` to tolerate any value)."""
    taint, sep, effect = value.rpartition(":")
    key, _, taint_value = taint.partition("=")
    if not sep or not key or effect not in EFFECTS:
        raise _bad("--toleration", value, "gpu=true:NoSchedule",
                   f"the effect is one of {', '.join(EFFECTS)}")
    return key, taint_value, effect


def package(value: str) -> str:
    """``--packages`` entries: pip requirements such as ``torch==2.1`` (checked with packaging)."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(value)
    except InvalidRequirement as error:
        raise _bad("--packages", value, "scikit-learn==1.5.2",
                   str(error).splitlines()[0]) from None
    return value


def add_registration_options(parser: argparse.ArgumentParser) -> None:
    """Declare ``--register``, ``--model-format`` and ``--register-version`` on a step line."""
    add = parser.add_argument
    add("--register", action="append", default=[], metavar="VAR[:NAME]",
        help="register the variable's value in the Model Registry after the step (as NAME)")
    add("--model-format", metavar="FORMAT[:VERSION]",
        help="model format of the registered models, e.g. sklearn:1.5 (default: from the type)")
    add("--register-version", metavar="VERSION",
        help="version name of the registered models (default: the run's name)")


def registrations_from(ns: argparse.Namespace) -> tuple[Registration, ...]:
    """``--register VAR[:NAME]`` entries (with the step's ``--model-format`` and
    ``--register-version``) as :class:`Registration`, one per variable.

    Raises
    ------
    AnnotationError
        VAR not a Python name, NAME, FORMAT or VERSION not a registry name, or
        ``--model-format`` / ``--register-version`` without ``--register``.
    """
    if not ns.register:
        for option, value in (("--model-format", ns.model_format),
                              ("--register-version", ns.register_version)):
            if value is not None:
                raise AnnotationError(f"{option} needs --register VAR[:NAME] on the same line; "
                                      "for example --register model:wine --model-format sklearn",
                                      line=value)
        return ()
    fmt, _, fmt_version = (ns.model_format or "").partition(":")
    for option, value in (("--model-format", fmt), ("--model-format", fmt_version),
                          ("--register-version", ns.register_version)):
        if value and not REGISTRY_NAME.fullmatch(value):
            raise _bad(option, value, "sklearn:1.5" if option == "--model-format" else "v2",
                       "letters, digits, '.', '_' and '-'")
    found = {}
    for entry in ns.register:
        variable, _, model = entry.partition(":")
        model = model or variable
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", variable) or not REGISTRY_NAME.fullmatch(model):
            raise _bad("--register", entry, "model:wine", "a variable, then a model name")
        found[variable] = Registration(variable, model, fmt or None, fmt_version or None,
                                       ns.register_version)
    return tuple(found.values())


def registration_words(registrations: tuple[Registration, ...]) -> list[str]:
    """The ``--register``/``--model-format``/``--register-version`` words that parse to
    ``registrations`` (the inverse of :func:`registrations_from`)."""
    words: list[str] = []
    for r in registrations:
        words += ["--register", r.variable if r.model == r.variable else f"{r.variable}:{r.model}"]
    first = registrations[0] if registrations else None
    if first and first.format:
        words += ["--model-format", first.format + (f":{first.format_version}"
                                                    if first.format_version else "")]
    if first and first.version:
        words += ["--register-version", first.version]
    return words


def registry_url(value: str, option: str = "--model-registry") -> str:
    """The Model Registry's address, ``http(s)://HOST[:PORT][/PATH]``, without a trailing ``/``.

    Raises
    ------
    AnnotationError
        Not of that form (no scheme, a user name or password in it, ...).
    """
    url = value.strip().rstrip("/")
    if not REGISTRY_URL.fullmatch(url):
        raise _bad(option, value, "https://model-registry.kubeflow:8443",
                   "http(s)://HOST[:PORT], with no user name or password")
    return url


def add_options(parser: argparse.ArgumentParser) -> None:
    """Declare the execution options on ``parser`` (a step line or the pipeline line)."""
    add = parser.add_argument
    add("--cpu", help="CPU request, e.g. 2 or 500m")
    add("--cpu-limit", help="CPU limit")
    add("--memory", help="memory request, e.g. 4Gi")
    add("--memory-limit", help="memory limit")
    add("--gpu", help="number of accelerators (GPUs)")
    add("--accelerator", help="accelerator type (default nvidia.com/gpu)")
    add("--image", help="base image, e.g. python:3.11")
    add("--retries", help="retries after a failure")
    add("--backoff", help="wait before the first retry, e.g. 30s")
    add("--timeout", help="deadline of the step's pod, e.g. 2h")
    add("--cache", action=argparse.BooleanOptionalAction, default=None,
        help="KFP caching for the step (--no-cache to turn it off)")
    add("--env", action="append", default=[], metavar="NAME=VALUE", help="environment variable")
    add("--secret", action="append", default=[], metavar="SECRET:KEY:ENV",
        help="Kubernetes secret key as an environment variable")
    add("--volume", action="append", default=[], metavar="PVC:/PATH", help="mount an existing PVC")
    add("--node-selector", action="append", default=[], metavar="LABEL=VALUE",
        help="node label the step's pod must match")
    add("--toleration", action="append", default=[], metavar="KEY=VALUE:EFFECT",
        help="taint the step's pod tolerates")
    add("--packages", nargs="+", default=[], metavar="REQ", help="packages to add or pin, e.g. torch==2.1")
    add("--label", action="append", default=[], metavar="KEY=VALUE", help="pod label")
    add("--annotation", action="append", default=[], metavar="KEY=VALUE", help="pod annotation")


def add_control_options(parser: argparse.ArgumentParser) -> None:
    """Declare the control-flow options of a step line: ``--for VAR in LIST``, ``--parallelism``."""
    parser.add_argument("--for", dest="loop", nargs=3, metavar=("VAR", "in", "LIST"),
                        help="run the step once per item of LIST (a list parameter or a list an "
                        "earlier step assigns), with VAR bound to the item")
    parser.add_argument("--parallelism", help="how many items of --for run at once at most")
    parser.add_argument("--if", dest="condition", metavar="EXPR",
                        help="run the step only when EXPR is true: comparisons of parameters or "
                        "scalar variables of earlier steps with literals, joined by and/or")


_COMPARISONS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_IF_EXAMPLE = 'for example --if "best_accuracy > 0.9 and MODE == \'full\'"'


def condition(text: str) -> Condition:
    """Parse and check the EXPR of ``--if "EXPR"`` with :mod:`ast`.

    EXPR is comparisons (``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``) of names with
    literals (numbers, text, True, False, None) or other names, joined by ``and``/``or``
    (parentheses allowed). Nothing else is accepted: no calls, attributes, subscripts,
    arithmetic, ``not`` or bare names, so EXPR means the same in the kernel, in the
    step runtime and on a KFP server.

    Raises
    ------
    AnnotationError
        EXPR is not Python, or holds something other than the above; the message names it.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise AnnotationError(f"--if {text!r} is not a Python expression ({error.msg}); "
                              f"{_IF_EXAMPLE}", line=text) from None
    _check_condition(tree.body, text)
    found = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Name)),
                   key=lambda n: (n.lineno, n.col_offset))
    names = [n.id for n in found]
    return Condition(ast.unparse(tree), tuple(dict.fromkeys(names)))


def _check_condition(node: ast.expr, text: str) -> None:
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check_condition(value, text)
        return
    if isinstance(node, ast.Compare) and all(isinstance(op, _COMPARISONS) for op in node.ops):
        for operand in (node.left, *node.comparators):
            _check_operand(operand, text)
        if not any(isinstance(o, ast.Name) for o in (node.left, *node.comparators)):
            raise _bad_condition(node, text, "compares no variable")
        return
    raise _bad_condition(node, text, "is not a comparison")


def _check_operand(node: ast.expr, text: str) -> None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return
    elif isinstance(node, ast.Name):
        return
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float, str, bool, type(None)):
        if not isinstance(node.value, str) or not ("{{" in node.value or "}}" in node.value):
            return
        raise _bad_condition(node, text, "holds {{ or }}, which KFP reads as a placeholder")
    what = {ast.Call: "a call", ast.Attribute: "an attribute", ast.Subscript: "a subscript"}.get(
        type(node), "not a name or a literal")
    raise _bad_condition(node, text, f"is {what}" if what.startswith("a") else f"is {what}")


def _bad_condition(node: ast.expr, text: str, why: str) -> AnnotationError:
    return AnnotationError(
        f"--if {text!r}: `{ast.unparse(node)}` {why}; EXPR compares parameters or scalar "
        f"variables of earlier steps with literals, joined by and/or ({_IF_EXAMPLE})", line=text)


def loop_from(ns: argparse.Namespace) -> Loop | None:
    """The :class:`Loop` of a parsed step line, or None without ``--for``.

    Raises
    ------
    AnnotationError
        ``--for`` not of the form ``VAR in LIST`` with two variable names, or
        ``--parallelism`` not a whole number >= 1, or given without ``--for``.
    """
    if ns.loop is None:
        if ns.parallelism is not None:
            raise AnnotationError("--parallelism caps the items of a --for loop; add "
                                  "`--for VAR in LIST` or remove --parallelism",
                                  line=ns.parallelism)
        return None
    variable, word, items = ns.loop
    names = [n for n in (variable, items) if not n.isidentifier() or keyword.iskeyword(n)]
    if word != "in" or names or variable == items:
        raise AnnotationError(f"--for {' '.join(ns.loop)!r} is not valid; write --for VAR in LIST "
                              "with two different variable names, for example --for c in C_VALUES",
                              line=" ".join(ns.loop))
    parallelism = None
    if ns.parallelism is not None:
        parallelism = count(ns.parallelism, "--parallelism")
        if parallelism < 1:
            raise _bad("--parallelism", ns.parallelism, "2", "at least 1")
    return Loop(variable, items, parallelism)


def control_text(loop: Loop | None, condition: Condition | None = None) -> list[str]:
    """The words of ``--for VAR in LIST [--parallelism N]`` and ``--if EXPR`` (shell-quoted),
    the inverse of :func:`loop_from` and :func:`condition`."""
    words = []
    if loop is not None:
        words += ["--for", loop.variable, "in", loop.items]
        words += ["--parallelism", str(loop.parallelism)] if loop.parallelism else []
    if condition is not None:
        words += option_words("--if", condition.expression)
    return words


def _optional(value: str | None, convert: Callable[[str], Any]) -> Any:
    return None if value is None else convert(value)


def settings_from(ns: argparse.Namespace) -> StepSettings:
    """Validate the parsed options into :class:`StepSettings`.

    Raises
    ------
    AnnotationError
        A value of the wrong form; the message names the option and a valid example.
    """
    gpu = _optional(ns.gpu, lambda v: count(v, "--gpu"))
    return StepSettings(
        cpu=_optional(ns.cpu, cpu), cpu_limit=_optional(ns.cpu_limit, lambda v: cpu(v, "--cpu-limit")),
        memory=_optional(ns.memory, memory),
        memory_limit=_optional(ns.memory_limit, lambda v: memory(v, "--memory-limit")),
        gpu=gpu, accelerator=ns.accelerator or ("nvidia.com/gpu" if gpu else None),
        image=ns.image, retries=_optional(ns.retries, lambda v: count(v, "--retries")),
        backoff_s=_optional(ns.backoff, lambda v: seconds(v, "--backoff")),
        timeout_s=_optional(ns.timeout, lambda v: int(seconds(v, "--timeout"))),
        cache=ns.cache, env=tuple(env(v) for v in ns.env),
        secrets=tuple(secret(v) for v in ns.secret), volumes=tuple(volume(v) for v in ns.volume),
        node_selector=tuple(node_selector(v) for v in ns.node_selector),
        tolerations=tuple(toleration(v) for v in ns.toleration),
        packages=tuple(package(v) for v in ns.packages),
        labels=tuple(pair(v, "--label", "team=ml") for v in ns.label),
        annotations=tuple(pair(v, "--annotation", "owner=alice") for v in ns.annotation))


def _seconds_text(value: float) -> str:
    return f"{value:g}s"


def options_text(s: StepSettings) -> list[str]:
    """The options that give ``s`` when parsed: the inverse of :func:`settings_from`.

    Returns
    -------
    list of str
        Shell-quoted ``--option value`` words, e.g. ``["--cpu", "2", "--env", "'A=b c'"]``.
    """
    words: list[str] = []
    singles = (("--cpu", s.cpu), ("--cpu-limit", s.cpu_limit), ("--memory", s.memory),
               ("--memory-limit", s.memory_limit), ("--gpu", s.gpu),
               ("--accelerator", s.accelerator if s.accelerator != "nvidia.com/gpu" else None),
               ("--image", s.image), ("--retries", s.retries),
               ("--backoff", None if s.backoff_s is None else _seconds_text(s.backoff_s)),
               ("--timeout", None if s.timeout_s is None else _seconds_text(s.timeout_s)))
    for option, value in singles:
        if value is not None:
            words += option_words(option, str(value))
    if s.cache is not None:
        words.append("--cache" if s.cache else "--no-cache")
    repeated = (("--env", [f"{k}={v}" for k, v in s.env]),
                ("--secret", [":".join(t) for t in s.secrets]),
                ("--volume", [f"{p}:{m}" for p, m in s.volumes]),
                ("--node-selector", [f"{k}={v}" for k, v in s.node_selector]),
                ("--toleration", [f"{k}{'=' + v if v else ''}:{e}" for k, v, e in s.tolerations]),
                ("--label", [f"{k}={v}" for k, v in s.labels]),
                ("--annotation", [f"{k}={v}" for k, v in s.annotations]))
    for option, values in repeated:
        for value in values:
            words += option_words(option, value)
    if s.packages:
        words += ["--packages", *map(shlex.quote, s.packages)]
    return words


def option_words(option: str, value: str) -> list[str]:
    """``[option, value]`` shell-quoted; ``[option=value]`` for a value starting with ``-``,
    which argparse would read as an option."""
    text = shlex.quote(value)
    return [f"{option}={text}"] if value.startswith("-") else [option, text]
