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
import copy
import time
from importlib import metadata
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from kale_magics import api
from kale_magics.views import rich
from kale_magics.views.text import (
    check_text,
    plan_text,
    run_summary,
    status_text,
    step_line,
    step_run_text,
)

STEP_MIME = api.STEP_MIME
#: The entry point group where an installed deploy panel registers itself (``kale_widgets``).
PANEL_ENTRY_POINTS = "kale_magics.panels"


def _action_parser(name: str, description: str, *options: tuple[tuple[str, ...], dict[str, Any]]
                   ) -> api.GrammarParser:
    parser = api.GrammarParser(prog=f"%kale {name}", add_help=False, description=description)
    parser.add_argument("--notebook", help="the .ipynb file, where the kernel cannot tell")
    for flags, kwargs in options:
        parser.add_argument(*flags, **kwargs)
    return parser


_CONTAINER_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--docker",), {"action": "store_true", "help": "run every step in a container of its image, "
                     "installing only its packages, as a cluster does"}),
    (("--docker-network",), {"metavar": "MODE", "help": "the containers' Docker network"}),
    (("--volume-map",), {"action": "append", "default": [], "metavar": "PVC=DIR",
                         "help": "local folder mounted where a step mounts PVC"}),
    (("--secret-env-file",), {"metavar": "FILE", "help": "ENV=VALUE lines for --secret"}),
    (("--fresh-installs",), {"action": "store_true", "help": "install in every step's container"}),
)

_REMOTE_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--host",), {"help": "KFP endpoint; default: %%kale pipeline --host, then $KF_PIPELINES_ENDPOINT"}),
    (("--namespace",), {"help": "KFP namespace (multi-user installs)"}),
    (("--token",), {"help": "bearer token (better: $KF_PIPELINES_TOKEN, not saved in the notebook)"}),
)

ACTION_PARSERS: dict[str, api.GrammarParser] = {
    "show": _action_parser("show", "Show the steps, edges, inputs with producers and live types."),
    "check": _action_parser("check", "Serialise every passed variable now; warn about unsaved cells."),
    "compile": _action_parser("compile", "Write the KFP DSL module and IR YAML.",
                              (("-o", "--output"), {"help": "output folder (default .kale/)"})),
    "run": _action_parser("run", "Compile and run the pipeline: locally with kfp.local, in "
                          "containers with --docker, or on a KFP server with --host (or "
                          "--remote to use the configured host).",
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
                                         "help": "run STEP and what depends on it (local, --docker)"}),
                          (("--interval",), {"type": float, "default": 2.0,
                                             "help": "seconds between status polls (remote)"}),
                          *_REMOTE_OPTIONS, *_CONTAINER_OPTIONS),
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
    step, pipeline = api.grammar_help()
    return ("Annotate notebook cells as a Kubeflow Pipelines v2 pipeline, then show, check, "
            "compile and run it.\n\nCell magic (first line of a cell; the cell still runs as "
            "usual)::\n\n    %%kale imports | functions | parameters | metrics | skip\n"
            "    %%kale notebook PATH [--param NAME=EXPR ...] [--outputs VAR ...]\n"
            f"{step}\nLine magics::\n\n{pipeline}\n{actions}")


def _usage_error(error: Exception) -> UsageError:
    return UsageError(f"{type(error).__name__}: {error}")


@magics_class
class KaleMagics(Magics):
    """The ``kale`` magic, usable as a line and a cell magic.

    The kernel's state (the registry of executed annotated cells, the
    ``%kale pipeline`` settings run here, the last run) is the shell's
    :class:`~kale_magics.api.NotebookSession`, which a deploy panel shares.

    Attributes
    ----------
    session:
        This kernel's session (a fresh one when the extension is loaded).
    panels:
        The deploy panel shown for each notebook path (shown again, it is the same panel).
    """

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.session = api.NotebookSession.of(shell, fresh=True)
        self.panels: dict[str, Any] = {}
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
        except api.KaleError as error:
            raise _usage_error(error) from None

    # -- cell magic ------------------------------------------------------------------------

    def _annotate(self, line: str, cell: str) -> Any:
        annotation = api.parse_annotation(line)
        if annotation.kind == "notebook":  # its body is not run: the sub-notebook's pipeline is
            note = api.run_notebook_cell(self.session, annotation, cell)
            display({"text/plain": note}, raw=True)
            return None
        tree, filename = self._parse_body(cell)
        entry = self.session.record(self._cell_id(), annotation, cell, tree)
        result, note = self.session.run_body(
            entry, lambda: self._run_tree(copy.deepcopy(tree), filename))
        if annotation.kind == "step":
            step = self.session.step_run(entry)
            text = "\n".join(t for t in (note, step_run_text(step)) if t)
            display({"text/plain": text, STEP_MIME: step.record()}, raw=True)
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

    # -- line magics ------------------------------------------------------------------------

    def _line(self, line: str) -> Any:
        action, _, rest = line.strip().partition(" ")
        if action == "pipeline":
            self.session.pipeline(rest)
            return None
        if action not in self.actions:
            raise UsageError(f"unknown action {action!r}; use one of: pipeline, "
                             f"{', '.join(self.actions)} (see %kale?)")
        args = ACTION_PARSERS[action].parse_args(api.split_args(rest))
        return self.actions[action](args)

    def _notebook(self, args: argparse.Namespace) -> str:
        return self.session.notebook(args.notebook)

    def _show(self, args: argparse.Namespace) -> None:
        plan = api.read_plan(self._notebook(args))
        live = api.live_values(plan, self.session.namespace)
        display({"text/plain": plan_text(plan), "text/html": rich.plan_html(plan, live)},
                raw=True)

    def _check(self, args: argparse.Namespace) -> None:
        result = api.check(self._notebook(args), self.session)
        display({"text/plain": check_text(result), "text/html": rich.check_html(result)},
                raw=True)
        if not result.ok:
            raise UsageError("some variables cannot be passed between steps; see above")

    def _compile(self, args: argparse.Namespace) -> None:
        compiled = api.compile_notebook(self._notebook(args), args.output)
        lines = [f"DSL:  {compiled.dsl_path}", f"YAML: {compiled.yaml_path}",
                 *(f"warning: {w}" for w in compiled.warnings)]
        print("\n".join(lines))

    def _target(self, args: argparse.Namespace) -> api.RunTarget:
        containers = api.chosen_docker_options(args.docker, bool(args.host or args.remote),
                                               args.docker_network, args.volume_map,
                                               args.secret_env_file, args.fresh_installs)
        if containers is not None:
            return api.DockerTarget(args.pipeline_root, options=containers,
                                    enable_caching=not args.no_cache, from_step=args.from_step)
        if not (args.host or args.remote):
            return api.LocalTarget(args.pipeline_root, enable_caching=not args.no_cache,
                                   from_step=args.from_step)
        reuse = not (args.host or args.namespace or args.token)
        return api.KfpTarget(args.host, args.namespace, args.token,
                             session=self.session.server if reuse else None,
                             settings=self.session.settings, experiment=args.experiment,
                             enable_caching=False if args.no_cache else None,
                             pipeline_root=args.pipeline_root,
                             watch_options=api.watch_options(args.interval))

    def _run(self, args: argparse.Namespace) -> None:
        compiled = api.compile_notebook(self._notebook(args), args.output)
        arguments = dict(api.parse_param(p) for p in args.param)
        target = self._target(args)
        for warning in compiled.warnings:
            print(f"warning: {warning}")
        for notice in target.notices(compiled):
            print(f"notice: {notice}")
        handle = display({"text/plain": f"running {compiled.plan.name}"}, raw=True, display_id=True)

        def show(status: api.RunStatus) -> None:
            handle.update({"text/plain": "\n".join(step_line(s) for s in status.steps.values()),
                           "text/html": rich.run_html(status, compiled.plan, time.time())},
                          raw=True)

        try:
            status = api.run(compiled, target, api.RunHooks(on_status=show, on_message=print),
                             arguments=arguments)
        finally:
            target.close()
            if isinstance(target, api.KfpTarget) and target.session is not None:
                self.session.server = target.session
        self.session.last_run = status
        print(run_summary(status))
        if status.state != "SUCCEEDED":
            raise UsageError(status.error or f"pipeline {status.pipeline} {status.state}")

    def _connect(self, args: argparse.Namespace) -> api.KfpSession:
        if args.host or args.namespace or args.token or self.session.server is None:
            self.session.server = api.connect(args.host, args.namespace, args.token,
                                              settings=self.session.settings)
        return self.session.server

    def _status(self, args: argparse.Namespace) -> None:
        last = self.session.last_run
        run_id = args.run_id or (last.run_id if last else "")
        if run_id:
            self.session.last_run = api.remote_status(self._connect(args), run_id)
            print(status_text(self.session.last_run))
        elif last is None:
            raise UsageError("no run yet in this kernel; start one with `%kale run`, or give a "
                             "KFP run id: `%kale status RUN_ID --host URL`")
        else:
            print(run_summary(last))

    def _cancel(self, args: argparse.Namespace) -> None:
        last = self.session.last_run
        run_id = args.run_id or (last.run_id if last else "")
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
        """The deploy panel, found through its entry point (this module imports no other front
        end); shown again, it is the same panel and run."""
        notebook = self._notebook(args)
        if notebook not in self.panels:
            self.panels[notebook] = _panel_class()(notebook, shell=self.shell)
        display(self.panels[notebook])


def _panel_class() -> Any:
    """The deploy panel class installed under :data:`PANEL_ENTRY_POINTS` (``kale_widgets``)."""
    for entry in metadata.entry_points(group=PANEL_ENTRY_POINTS):
        if entry.name == "deploy":
            return entry.load()
    raise UsageError("the deploy panel is not installed: reinstall kale-magics "
                     "(`pip install kale-magics`), which installs kale_widgets")


KaleMagics.kale.__doc__ = _help()


def load_ipython_extension(ipython: Any) -> None:
    """Register :class:`KaleMagics`; loading twice replaces the first registration."""
    ipython.register_magics(KaleMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the ``kale`` line and cell magics."""
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("kale", None)

