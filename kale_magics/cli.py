"""The ``kale-magics`` command line: compile, show and run annotated notebooks.

A thin front end: it parses arguments, calls :mod:`kale_magics.api`, and turns
a :class:`~kale_magics.errors.KaleError` into one line on stderr and exit code 2.
A pipeline that runs and fails exits with 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from kale_magics import __version__
from kale_magics.errors import KaleError


def _compile(args: argparse.Namespace) -> int:
    from kale_magics import api

    compiled = api.compile_notebook(args.notebook, args.output)
    for warning in compiled.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"DSL:  {compiled.dsl_path}\nYAML: {compiled.yaml_path}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from kale_magics import api
    from kale_magics.report import plan_text

    print(plan_text(api.read_plan(args.notebook)))
    return 0


def _run(args: argparse.Namespace) -> int:
    from kale_magics import api
    from kale_magics.report import run_summary, step_line

    arguments = dict(_param(p) for p in args.param)
    compiled = api.compile_notebook(args.notebook, args.output)
    hooks = api.RunHooks()
    if not args.json:
        print(f"running {compiled.plan.name} locally ({len(compiled.plan.steps)} steps)", flush=True)
        hooks.on_step = lambda step: print(step_line(step), flush=True)
    status = api.run_local(compiled, arguments, pipeline_root=args.pipeline_root, hooks=hooks)
    if args.json:
        print(json.dumps(status.to_json(), default=str))
    else:
        print(run_summary(status))
    return 0 if status.state == "SUCCEEDED" else 1


def _param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise KaleError(f"--param {text!r} is not NAME=VALUE; for example --param N_ESTIMATORS=50")
    return name.strip(), value


def build_parser() -> argparse.ArgumentParser:
    """The ``kale-magics`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="kale-magics",
        description="Turn a %%kale-annotated Jupyter notebook into a Kubeflow Pipelines v2 pipeline.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
        "compile": (_compile, "write the KFP DSL module and IR YAML"),
        "show": (_show, "print the steps, their edges and each step's inputs with producers"),
        "run": (_run, "compile and run the pipeline locally with kfp.local (no cluster)"),
    }
    for name, (handler, help_text) in commands.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("notebook", help="the annotated .ipynb file (only read)")
        cmd.set_defaults(handler=handler)
        if name != "show":
            cmd.add_argument("-o", "--output", help="folder for generated files (default: .kale/ "
                             "next to the notebook)")
    run = sub.choices["run"]
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="override a pipeline parameter (repeatable)")
    run.add_argument("--json", action="store_true", help="print one JSON object with the result")
    run.add_argument("--pipeline-root", help="folder for the run's artifacts "
                     "(default: .kale/local_runs next to the notebook)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kale-magics`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KaleError as error:
        print(f"kale-magics: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kale-magics: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
