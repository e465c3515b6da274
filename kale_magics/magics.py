"""The ``%kale`` / ``%%kale`` IPython magics: a thin front end over :mod:`kale_magics.api`.

``%%kale KIND ...`` annotates a cell and runs its body exactly as if the magic
line were not there (IPython's ``%%time`` in ``IPython/core/magics/execution.py``
is the model: the body is transformed, compiled under a filename whose lines
are the cell's own, and the value of a final expression is returned so IPython
displays it as ``Out``). A malformed line raises ``UsageError`` and the body is
not run. ``%kale ACTION ...`` shows, checks, compiles, runs and exports the
pipeline; actions are routed through a table, as jupysql's ``magic_cmd.py`` does.
Typed errors become ``UsageError(str(e))``, which IPython shows without a
traceback; the message is the user's one line, never led by our class name.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import time
from importlib import metadata
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from kale_magics import api
from kale_magics.views import history as history_views
from kale_magics.views import rich
from kale_magics.views.text import (
    check_text,
    models_text,
    plan_text,
    run_summary,
    status_text,
    step_line,
    step_run_text,
    sweep_text,
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
    "runs": _action_parser("runs", "List this notebook's runs (local, and on the KFP server with "
                           "--remote or --host): state, start, duration, parameters, metrics.",
                           (("--compare",), {"nargs": 2, "metavar": "RUN_ID",
                                             "help": "two runs side by side; * marks what differs"}),
                           (("--pipeline-root",), {"action": "append", "default": [],
                                                   "help": "also look for local runs here"}),
                           (("--remote",), {"action": "store_true",
                                            "help": "also list the configured KFP server's runs"}),
                           *_REMOTE_OPTIONS),
    "load": _action_parser("load", "Load a step's saved outputs (or a failed step's inputs) from a "
                           "local run into the kernel, to debug it.",
                           (("step",), {"metavar": "STEP", "help": "the step"}),
                           (("names",), {"nargs": "*", "metavar": "VAR",
                                         "help": "only these variables (default: all)"}),
                           (("--run",), {"dest": "run_id", "metavar": "RUN_ID",
                                         "help": "a local run's id, or a part only it holds "
                                         "(default: the latest; see %%kale runs)"}),
                           (("--pipeline-root",), {"action": "append", "default": [],
                                                   "help": "also look for local runs here"})),
    "models": _action_parser("models", "List the registered versions of the models this "
                             "notebook's steps --register in the Model Registry.",
                             (("--model-registry",), {"metavar": "URL", "help": "registry address; "
                              "default: %%kale pipeline --model-registry, then $MODEL_REGISTRY_URL"})),
    "sweep": _action_parser("sweep", "Run the pipeline once per combination of parameter values "
                            "(or --random N picks), locally or on a KFP server with --host (or "
                            "--remote), at most --parallel K at once; a live table marks the best "
                            "trial by --metric; the result goes to _kale_sweep.",
                            (("specs",), {"nargs": "*", "metavar": "NAME=VALUES",
                                          "help": "v1,v2,... (Python literals of the parameter's "
                                          "type); with --random also lo:hi or lo:hi:log"}),
                            (("--metric",), {"required": True, "help": "the metric ranking trials"}),
                            (("--maximize",), {"dest": "goal", "action": "store_const",
                                               "const": "maximize", "help": "larger is better"}),
                            (("--minimize",), {"dest": "goal", "action": "store_const",
                                               "const": "minimize", "help": "smaller is better"}),
                            (("--random",), {"type": int, "metavar": "N", "help": "random picks"}),
                            (("--seed",), {"type": int, "metavar": "S", "help": "their seed"}),
                            (("--parallel",), {"type": int, "default": 1, "metavar": "K",
                                               "help": "trials at once (default 1)"}),
                            (("--pipeline-root",), {"help": "where the trials' artifacts go"}),
                            (("-o", "--output"), {"help": "output folder (default .kale/)"}),
                            (("--remote",), {"action": "store_true",
                                             "help": "run on the configured KFP server"}),
                            (("--experiment",), {"help": "KFP experiment (remote)"}),
                            (("--interval",), {"type": float, "default": 2.0,
                                               "help": "seconds between status polls (remote)"}),
                            *_REMOTE_OPTIONS),
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
    """A typed error as IPython shows it without a traceback: its one-line message only
    (``AnalysisError`` and friends are ours, not the user's words)."""
    return UsageError(str(error))


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
        #: The line shown under each step cell run here: (display handle, registry entry, StepRun).
        self.step_lines: dict[str, tuple[Any, Any, api.StepRun]] = {}
        self.actions: dict[str, Callable[[argparse.Namespace], Any]] = {
            "show": self._show, "check": self._check, "compile": self._compile,
            "run": self._run, "status": self._status, "cancel": self._cancel,
            "export": self._export, "panel": self._panel, "runs": self._runs,
            "load": self._load, "models": self._models,
            "sweep": self._sweep}

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
            if note:
                display({"text/plain": note}, raw=True)
            self._show_step(entry, step)
        return result

    def _show_step(self, entry: Any, step: api.StepRun) -> None:
        """Display the line under a step cell (HTML, text for terminals, and the step's record);
        the lines of the steps it reads from are updated in place to name it as a reader."""
        handle = display(_step_output(step), raw=True, display_id=True)
        self.step_lines[entry.key] = (handle, entry, step)
        producers = set(step.inputs.values())
        for key, (shown, earlier, line) in list(self.step_lines.items()):
            if key == entry.key or line.name not in producers or shown is None:
                continue
            updated = dataclasses.replace(line, readers=self.session.readers(earlier))
            if updated != line:
                shown.update(_step_output(updated), raw=True)
                self.step_lines[key] = (shown, earlier, updated)

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
            known = ["pipeline", *self.actions]
            raise UsageError(f"unknown action {action!r}{api.did_you_mean(action, known)}; use one "
                             f"of: {', '.join(known)} (see %kale?)")
        parser = ACTION_PARSERS[action]
        # a sweep's NAME=VALUES may come before or after its options
        parse = parser.parse_intermixed_args if action == "sweep" else parser.parse_args
        args = parse(api.split_args(rest))
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
        arguments = dict(api.parse_param(p) for p in args.param)
        target = self._target(args)
        target.prepare()  # a local run's process starts while the notebook compiles
        try:
            compiled = api.compile_notebook(self._notebook(args), args.output)
            api.coerce_arguments(compiled.plan, arguments)  # a bad value: refused before output
            for warning in compiled.warnings:
                print(f"warning: {warning}")
            for notice in target.notices(compiled):
                print(f"notice: {notice}")
            handle = display({"text/plain": f"running {compiled.plan.name}"}, raw=True,
                             display_id=True)

            def show(status: api.RunStatus) -> None:
                handle.update({"text/plain": "\n".join(step_line(s) for s in status.steps.values()),
                               "text/html": rich.run_html(status, compiled.plan, time.time())},
                              raw=True)

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

    def _sweep(self, args: argparse.Namespace) -> None:
        if args.goal is None:
            raise UsageError("%kale sweep: say which way the metric is better: --maximize or "
                             "--minimize")
        compiled = api.compile_notebook(self._notebook(args), args.output)
        for warning in compiled.warnings:
            print(f"warning: {warning}")
        remote = bool(args.host or args.remote)
        handle = display({"text/plain": f"sweep of {compiled.plan.name}"}, raw=True,
                         display_id=True)

        def show(sweep: api.Sweep) -> None:
            handle.update({"text/plain": sweep_text(sweep), "text/html": rich.sweep_html(sweep)},
                          raw=True)

        result = api.sweep(compiled, args.specs, metric=args.metric, goal=args.goal,
                           random=args.random, seed=args.seed, parallel=args.parallel,
                           session=self._connect(args) if remote else None,
                           experiment=args.experiment, pipeline_root=args.pipeline_root,
                           watch=api.watch_options(args.interval), on_plan=show, on_change=show)
        table, note = result.table()
        self.shell.user_ns["_kale_sweep"] = table
        print(f"_kale_sweep: {note}" if note else
              "_kale_sweep holds the trials as a pandas DataFrame")
        if not any(t.state == "SUCCEEDED" for t in result.trials):
            raise UsageError(f"sweep of {result.pipeline}: no trial succeeded; see the table above")

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

    def _models(self, args: argparse.Namespace) -> None:
        print(models_text(*api.model_versions(self._notebook(args), args.model_registry)))

    def _export(self, args: argparse.Namespace) -> None:
        written, warnings = api.convert(self._notebook(args), args.kale_tags, "kale-tags")
        print("\n".join([*(f"warning: {w}" for w in warnings),
                         f"wrote {written} (annotated with Kale's cell tags)"]))

    def _run_roots(self, given: list[str]) -> list[str]:
        """``--pipeline-root`` folders, then the last local run's pipeline root in this kernel."""
        last = self.session.last_run
        extra = [last.pipeline_root] if last is not None and not last.run_id \
            and last.pipeline_root else []
        return [*given, *extra]

    def _runs(self, args: argparse.Namespace) -> None:
        notebook = self._notebook(args)
        remote = args.host or args.remote or self.session.server is not None
        found = api.run_history(notebook, pipeline_roots=self._run_roots(args.pipeline_root),
                                server=self._connect(args) if remote else None)
        if args.compare:
            first, second = (found.find(run_id, "listed") for run_id in args.compare)
            rows = api.compare_runs(first, second)
            display({"text/plain": history_views.comparison_text(first, second, rows),
                     "text/html": history_views.comparison_html(first, second, rows)}, raw=True)
            return
        display({"text/plain": history_views.runs_text(found),
                 "text/html": history_views.runs_html(found)}, raw=True)

    def _load(self, args: argparse.Namespace) -> None:
        loaded = api.load_step(self._notebook(args), args.step, args.names, self.shell.user_ns,
                               run_id=args.run_id,
                               pipeline_roots=self._run_roots(args.pipeline_root))
        print(history_views.loaded_text(loaded))

    def _panel(self, args: argparse.Namespace) -> None:
        """The deploy panel, found through its entry point (this module imports no other front
        end); shown again, it is the same panel and run."""
        notebook = self._notebook(args)
        for notice in api.panel_notices(self.shell.user_ns):
            print(f"notice: {notice}")
        if notebook not in self.panels:
            self.panels[notebook] = _panel_class()(notebook, shell=self.shell)
        display(self.panels[notebook])


def _step_output(step: api.StepRun) -> dict[str, Any]:
    """The output of a step cell: a compact HTML line, its text for terminals, and the record
    the saved notebook keeps (``application/vnd.kale-magics.step+json``)."""
    return {"text/plain": step_run_text(step), "text/html": rich.step_run_html(step),
            STEP_MIME: step.record()}


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

