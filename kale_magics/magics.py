"""The ``%kale`` / ``%%kale`` IPython magics: a thin front end over :mod:`kale_magics.api`.

``%%kale KIND ...`` annotates a cell and runs its body exactly as if the magic
line were not there (IPython's ``%%time`` in ``IPython/core/magics/execution.py``
is the model: the body is transformed, compiled under a filename whose lines
are the cell's own, and the value of a final expression is returned so IPython
displays it as ``Out``). A malformed line raises ``UsageError`` and the body is
not run. ``%kale ACTION ...`` shows, checks, compiles, runs and exports the
pipeline; actions are routed through a table, as jupysql's ``magic_cmd.py`` does.
Typed errors become ``UsageError(f"{type(e).__name__}: {e}")``, which IPython
shows without a traceback.
"""

from __future__ import annotations

import argparse
import ast
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from kale_magics import api, report
from kale_magics.analysis.names import NameUse, scan_trees
from kale_magics.errors import KaleError
from kale_magics.model import Annotation, PipelineSettings
from kale_magics.notebook.annotations import (
    PIPELINE_PARSER,
    STEP_PARSER,
    GrammarParser,
    parse_cell_line,
    parse_pipeline_line,
)
from kale_magics.notebook.registry import ExecutedCell, Registry
from kale_magics.runner.status_text import status_text

STEP_MIME = "application/vnd.kale-magics.step+json"
#: Kinds whose names the kernel tracks: steps (inputs, outputs) and what steps may read.
_ANALYSED_KINDS = ("step", "imports", "functions", "parameters")


def _action_parser(name: str, description: str, *options: tuple[tuple[str, ...], dict[str, Any]]
                   ) -> GrammarParser:
    parser = GrammarParser(prog=f"%kale {name}", add_help=False, description=description)
    parser.add_argument("--notebook", help="the .ipynb file, where the kernel cannot tell")
    for flags, kwargs in options:
        parser.add_argument(*flags, **kwargs)
    return parser


_REMOTE_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--host",), {"help": "KFP endpoint; default: %%kale pipeline --host, then $KF_PIPELINES_ENDPOINT"}),
    (("--namespace",), {"help": "KFP namespace (multi-user installs)"}),
    (("--token",), {"help": "bearer token (better: $KF_PIPELINES_TOKEN, not saved in the notebook)"}),
)

ACTION_PARSERS: dict[str, GrammarParser] = {
    "show": _action_parser("show", "Show the steps, edges, inputs with producers and live types."),
    "check": _action_parser("check", "Serialise every passed variable now; warn about unsaved cells."),
    "compile": _action_parser("compile", "Write the KFP DSL module and IR YAML.",
                              (("-o", "--output"), {"help": "output folder (default .kale/)"})),
    "run": _action_parser("run", "Compile and run the pipeline: locally with kfp.local, or on a "
                          "KFP server with --host (or --remote to use the configured host).",
                          (("--param",), {"action": "append", "default": [],
                                          "metavar": "NAME=VALUE", "help": "parameter value"}),
                          (("--pipeline-root",), {"help": "where the run's artifacts go"}),
                          (("-o", "--output"), {"help": "output folder (default .kale/)"}),
                          (("--remote",), {"action": "store_true",
                                           "help": "run on the configured KFP server"}),
                          (("--experiment",), {"help": "KFP experiment (remote runs)"}),
                          (("--no-cache",), {"action": "store_true",
                                             "help": "run every step; reuse no cached results"}),
                          (("--from",), {"dest": "from_step", "metavar": "STEP",
                                         "help": "run STEP and what depends on it (local)"}),
                          (("--interval",), {"type": float, "default": 2.0,
                                             "help": "seconds between status polls (remote)"}),
                          *_REMOTE_OPTIONS),
    "status": _action_parser("status", "Show the last run's steps and states, or a KFP run's.",
                             (("run_id",), {"nargs": "?", "help": "a KFP run id"}),
                             *_REMOTE_OPTIONS),
    "cancel": _action_parser("cancel", "Cancel the last remote run, or a KFP run by id.",
                             (("run_id",), {"nargs": "?", "help": "a KFP run id"}),
                             *_REMOTE_OPTIONS),
    "export": _action_parser("export", "Write a copy of the notebook annotated with Kale's tags.",
                             (("--kale-tags",), {"required": True, "metavar": "OUT.ipynb",
                                                 "help": "where to write the copy"})),
    "panel": _action_parser("panel", "Show the deploy panel: settings, Check, Compile, Run, "
                            "Cancel, and the DAG with every step's state, live."),
}


def _help() -> str:
    actions = "\n".join(p.format_help() for p in ACTION_PARSERS.values())
    return ("Annotate notebook cells as a Kubeflow Pipelines v2 pipeline, then show, check, "
            "compile and run it.\n\nCell magic (first line of a cell; the cell still runs as "
            "usual)::\n\n    %%kale imports | functions | parameters | metrics | skip\n"
            f"{STEP_PARSER.format_help()}\nLine magics::\n\n{PIPELINE_PARSER.format_help()}\n"
            f"{actions}")


def _usage_error(error: Exception) -> UsageError:
    return UsageError(f"{type(error).__name__}: {error}")


@magics_class
class KaleMagics(Magics):
    """The ``kale`` magic, usable as a line and a cell magic.

    Holds the kernel's state: the registry of executed annotated cells, the
    ``%kale pipeline`` settings run here, and the last run's status.
    """

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.registry = Registry()
        self.settings = PipelineSettings()
        self.last_run: api.RunStatus | None = None
        self.session: Any = None  # the KFP connection of the last remote action
        self.actions: dict[str, Callable[[argparse.Namespace], Any]] = {
            "show": self._show, "check": self._check, "compile": self._compile,
            "run": self._run, "status": self._status, "cancel": self._cancel,
            "export": self._export, "panel": self._panel}

    @line_cell_magic
    def kale(self, line: str, cell: str | None = None) -> Any:
        try:
            if cell is None:
                return self._line(line)
            return self._annotate(line, cell)
        except KaleError as error:
            raise _usage_error(error) from None

    # -- cell magic ------------------------------------------------------------------------

    def _annotate(self, line: str, cell: str) -> Any:
        annotation = parse_cell_line(line)
        unknown = [a for a in annotation.after if a not in self.registry.step_names()]
        if unknown:
            raise UsageError(f"step {annotation.name!r} runs --after {unknown[0]!r}, which has not "
                             "run as a step in this kernel; run that step's cell first, or fix "
                             "the name")
        tree, filename = self._parse_body(cell)
        use = scan_trees([tree]) if annotation.kind in _ANALYSED_KINDS else NameUse((), (), ())
        entry = self.registry.record(self._cell_id(), annotation, cell, use)
        result = self._run_tree(tree, filename)
        if annotation.kind == "step":
            self._show_step(annotation, entry)
        return result

    def _cell_id(self) -> str | None:
        """The front end's id of the cell being run (JupyterLab, Notebook 7, VS Code send it)."""
        kernel = getattr(self.shell, "kernel", None)
        try:
            parent = kernel.get_parent() if kernel is not None else {}
        except Exception:  # an older ipykernel or no parent message
            return None
        return (parent or {}).get("metadata", {}).get("cellId")

    def _parse_body(self, cell: str) -> tuple[ast.Module, str]:
        """Transform and parse ``cell`` as IPython would, keeping the cell's line numbers.

        Raises the cell's SyntaxError, shown by IPython like any other.
        """
        shell = self.shell
        source = "\n" + cell  # line 1 is the magic line
        lines = source.splitlines(keepends=True)
        blank = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
        # IPython drops leading blank lines when transforming; put them back
        transformed = "\n" * blank + shell.transform_cell(source)
        filename = shell.compile.cache(source, shell.execution_count)
        return shell.transform_ast(shell.compile.ast_parse(transformed, filename=filename)), filename

    def _run_tree(self, tree: ast.Module, filename: str) -> Any:
        """Run ``tree`` in the user namespace; return the last expression's value."""
        shell = self.shell
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(shell.compile(tree, filename, "exec"), shell.user_ns)
        if last is not None:
            return eval(shell.compile(last, filename, "eval"), shell.user_ns)
        return None

    def _show_step(self, annotation: Annotation, entry: ExecutedCell) -> None:
        """One compact line under a step cell, with the structured annotation as JSON."""
        producers = self.registry.producers(entry.key)
        inputs = {n: producers[n] for n in entry.use.reads if n in producers}
        outputs = [n for n in entry.use.writes if not n.startswith("_")]
        names = [*inputs, *outputs]
        live = {n: api.describe(self.shell.user_ns[n]) for n in names if n in self.shell.user_ns}
        by_producer: dict[str, list[str]] = {}
        for name, producer in inputs.items():
            by_producer.setdefault(producer, []).append(report.live_text(name, live))
        text = f"step {annotation.name}"
        if by_producer:
            text += "  <- " + "; ".join(f"{', '.join(v)} ({p})" for p, v in by_producer.items())
        if outputs:
            text += "  -> " + ", ".join(report.live_text(n, live) for n in outputs)
        data = {"kind": "step", "name": annotation.name, "after": list(annotation.after),
                "inputs": inputs, "outputs": outputs,
                "types": {n: v.type_name for n, v in live.items()}}
        display({"text/plain": text, STEP_MIME: data}, raw=True)

    # -- line magics ------------------------------------------------------------------------

    def _line(self, line: str) -> Any:
        action, _, rest = line.strip().partition(" ")
        if action == "pipeline":
            self.settings = self.settings.merged(parse_pipeline_line(rest))
            return None
        if action not in self.actions:
            raise UsageError(f"unknown action {action!r}; use one of: pipeline, "
                             f"{', '.join(self.actions)} (see %kale?)")
        args = ACTION_PARSERS[action].parse_args(api.split_args(rest))
        return self.actions[action](args)

    def _notebook(self, args: argparse.Namespace) -> str:
        return api.locate_notebook(args.notebook or self.settings.notebook, self.shell.user_ns)

    def _show(self, args: argparse.Namespace) -> None:
        plan = api.read_plan(self._notebook(args))
        live = api.live_values(plan, self.shell.user_ns)
        display({"text/plain": report.plan_text(plan), "text/html": report.plan_html(plan, live)},
                 raw=True)

    def _check(self, args: argparse.Namespace) -> None:
        result = api.check(self._notebook(args), self.shell.user_ns, self.registry.cells())
        display({"text/plain": report.check_text(result), "text/html": report.check_html(result)},
                raw=True)
        if not result.ok:
            raise UsageError("some variables cannot be passed between steps; see above")

    def _compiled(self, args: argparse.Namespace) -> api.CompiledPipeline:
        notebook = self._notebook(args)
        types = api.artifact_types(api.read_plan(notebook), self.shell.user_ns)
        return api.compile_notebook(notebook, args.output, types)

    def _compile(self, args: argparse.Namespace) -> None:
        compiled = self._compiled(args)
        lines = [f"DSL:  {compiled.dsl_path}", f"YAML: {compiled.yaml_path}",
                 *(f"warning: {w}" for w in compiled.warnings)]
        print("\n".join(lines))

    def _run(self, args: argparse.Namespace) -> None:
        compiled = self._compiled(args)
        arguments = dict(api.parse_param(p) for p in args.param)
        remote = bool(args.host or args.remote)
        for warning in compiled.warnings:
            print(f"warning: {warning}")
        for notice in ([] if remote else api.local_notices(compiled)):
            print(f"notice: {notice}")
        handle = display({"text/plain": f"running {compiled.plan.name}"}, raw=True, display_id=True)

        def show(status: api.RunStatus) -> None:
            handle.update({"text/plain": "\n".join(report.step_line(s) for s in status.steps.values()),
                           "text/html": report.run_html(status, compiled.plan)}, raw=True)

        hooks = api.RunHooks(on_status=show)
        if remote:
            status = self._run_remote(args, compiled, arguments, hooks)
        else:
            status = api.run_local(compiled, arguments, pipeline_root=args.pipeline_root,
                                   hooks=hooks, enable_caching=not args.no_cache,
                                   from_step=args.from_step)
        self.last_run = status
        print(report.run_summary(status))
        if status.state != "SUCCEEDED":
            raise UsageError(status.error or f"pipeline {status.pipeline} {status.state}")

    def _connect(self, args: argparse.Namespace, settings: PipelineSettings | None = None) -> Any:
        if args.host or args.namespace or args.token or self.session is None:
            merged = (settings or PipelineSettings()).merged(self.settings)
            self.session = api.connect(args.host, args.namespace, args.token, settings=merged)
        return self.session

    def _run_remote(self, args: argparse.Namespace, compiled: api.CompiledPipeline,
                    arguments: dict[str, str], hooks: api.RunHooks) -> api.RunStatus:
        session = self._connect(args, compiled.plan.settings)
        submission = api.submit(compiled, session, arguments, experiment=args.experiment,
                                enable_caching=False if args.no_cache else None,
                                pipeline_root=args.pipeline_root)
        print(f"run {submission.run_id}: {submission.url}")
        return api.watch_remote(session, submission.run_id, hooks, plan=compiled.plan,
                                interval_s=args.interval)

    def _status(self, args: argparse.Namespace) -> None:
        run_id = args.run_id or (self.last_run.run_id if self.last_run else "")
        if run_id:
            self.last_run = api.remote_status(self._connect(args), run_id)
            print(status_text(self.last_run))
        elif self.last_run is None:
            raise UsageError("no run yet in this kernel; start one with `%kale run`, or give a "
                             "KFP run id: `%kale status RUN_ID --host URL`")
        else:
            print(report.run_summary(self.last_run))

    def _cancel(self, args: argparse.Namespace) -> None:
        run_id = args.run_id or (self.last_run.run_id if self.last_run else "")
        if not run_id:
            raise UsageError("no remote run to cancel; give its id: `%kale cancel RUN_ID --host URL`")
        status = api.cancel_remote(self._connect(args), run_id)
        ended = "" if status.state in ("CANCELED", "CANCELING") else " (it ended before it could be canceled)"
        print(f"run {run_id}: {status.state}{ended}")

    def _export(self, args: argparse.Namespace) -> None:
        written, warnings = api.convert(self._notebook(args), args.kale_tags, "kale-tags")
        print("\n".join([*(f"warning: {w}" for w in warnings),
                         f"wrote {written} (annotated with Kale's cell tags)"]))

    def _panel(self, args: argparse.Namespace) -> None:
        """The deploy panel (``kale_widgets``); shown again, it is the same panel and run."""
        from kale_widgets import DeployPanel

        notebook = self._notebook(args)
        panels = self.__dict__.setdefault("_panels", {})
        if notebook not in panels:
            panels[notebook] = DeployPanel(notebook, shell=self.shell)
        display(panels[notebook])


KaleMagics.kale.__doc__ = _help()


def load_ipython_extension(ipython: Any) -> None:
    """Register :class:`KaleMagics`; loading twice replaces the first registration."""
    ipython.register_magics(KaleMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the ``kale`` line and cell magics."""
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("kale", None)

