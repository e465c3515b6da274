"""The ``kale-magics`` command line: compile, show and run annotated notebooks, locally or on KFP.

A thin front end: it parses arguments, calls :mod:`kale_magics.api`, and turns
a :class:`~kale_magics.errors.KaleError` into one line on stderr and exit code 2.
A pipeline that runs and fails (or is canceled) exits with 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any, Callable, Sequence

from kale_magics import __version__, api
from kale_magics.views.history import comparison_text, history_json, runs_text
from kale_magics.views.text import (models_text, plan_text, run_summary, schedules_text,
                                    status_text, step_line, sweep_heading, sweep_outcome,
                                    sweep_text, trial_line)


def _compile(args: argparse.Namespace) -> int:
    compiled = api.compile_notebook(args.notebook, args.output)
    _warn(compiled.warnings)
    print(f"DSL:  {compiled.dsl_path}\nYAML: {compiled.yaml_path}")
    return 0


def _show(args: argparse.Namespace) -> int:
    plan = api.read_plan(args.notebook)
    _warn(plan.warnings)
    print(plan_text(plan))
    return 0


def _convert(args: argparse.Namespace) -> int:
    written, warnings = api.convert(args.notebook, args.output, args.to)
    _warn(warnings)
    print(f"wrote {written}")
    return 0


def _target(args: argparse.Namespace) -> api.RunTarget:
    """The run target the options name: a KFP server with --host/--remote, containers with
    --docker, else local."""
    containers = api.chosen_docker_options(args.docker, bool(args.host or args.remote),
                                           args.docker_network, args.volume_map,
                                           args.secret_env_file, args.fresh_installs)
    if containers is not None:
        return api.DockerTarget(args.pipeline_root, options=containers,
                                enable_caching=not args.no_cache, from_step=args.from_step)
    if args.host or args.remote:
        return api.KfpTarget(args.host, args.namespace, args.token, args.cookies,
                             connect_timeout_s=args.connect_timeout, experiment=args.experiment,
                             run_name=args.run_name, pipeline_root=args.pipeline_root,
                             enable_caching=False if args.no_cache else None,
                             watch_options=api.watch_options(args.interval, args.timeout,
                                                             args.max_outage),
                             follow=not args.no_watch)
    return api.LocalTarget(args.pipeline_root, enable_caching=not args.no_cache,
                           from_step=args.from_step)


def _hooks(args: argparse.Namespace) -> api.RunHooks:
    """Step lines and the target's messages on stdout; with --json (stdout holds only the
    JSON) the messages go to stderr and step lines are left out."""
    if args.json:
        return api.RunHooks(on_message=lambda text: print(text, file=sys.stderr, flush=True))
    return api.RunHooks(on_step=lambda step: print(step_line(step), flush=True),
                        on_message=lambda text: print(text, flush=True))


def _run(args: argparse.Namespace) -> int:
    arguments = dict(api.parse_param(p) for p in args.param)
    target = _target(args)
    target.prepare()  # a local run's process starts while the notebook compiles
    try:
        compiled = api.compile_notebook(args.notebook, args.output)
        api.coerce_arguments(compiled.plan, arguments)  # bad values: exit 2 before any output
        _warn(compiled.warnings)
        if args.schedule is not None:
            return _scheduled(args, target, compiled, arguments)
        _warn(target.notices(compiled), "notice")
        status = api.run(compiled, target, _hooks(args), arguments=arguments)
    except KeyboardInterrupt:
        submission = getattr(target, "submission", None)
        if submission is None:
            raise
        print(f"kale-magics: stopped watching; run {submission.run_id} goes on on the server "
              f"(cancel it with `kale-magics cancel {submission.run_id}`)", file=sys.stderr)
        return 130
    finally:
        target.close()
    if args.no_watch:
        if args.json:
            print(json.dumps(vars(getattr(target, "submission"))))
        return 0
    return _summary(args, status)


def _sweep(args: argparse.Namespace) -> int:
    """Run the sweep; a line per trial as it starts and ends, then the table (or --json)."""
    out = sys.stderr if args.json else sys.stdout
    compiled = api.compile_notebook(args.notebook, args.output)
    _warn(compiled.warnings)
    session = _session(args) if args.host or args.remote else None
    seen: dict[int, str] = {}

    def changed(sweep: api.Sweep) -> None:
        for trial in sweep.trials:
            if seen.get(trial.number, "PENDING") != trial.state:
                seen[trial.number] = trial.state
                print(trial_line(sweep, trial), file=out, flush=True)

    result = api.sweep(compiled, args.specs, metric=args.metric, goal=args.goal,
                       random=args.random, seed=args.seed, parallel=args.parallel,
                       session=session, experiment=args.experiment,
                       pipeline_root=args.pipeline_root,
                       enable_caching=False if args.no_cache else None,
                       watch=api.watch_options(args.interval, args.timeout, args.max_outage),
                       on_plan=lambda s: print(sweep_heading(s), file=out, flush=True),
                       on_change=changed)
    if args.json:
        for line in sweep_outcome(result):
            print(line, file=sys.stderr)
        print(json.dumps({"best": result.best.number if result.best else None,
                          "seed": result.seed, "trials": result.records()}, default=str))
    else:
        print(sweep_text(result))
    return 0 if any(t.state == "SUCCEEDED" for t in result.trials) else 1


def _add_sweep_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("specs", nargs="+", metavar="NAME=VALUES", help="a parameter's values: "
                     "v1,v2,... (Python literals of its type), or with --random a range lo:hi "
                     "or lo:hi:log")
    cmd.add_argument("--metric", required=True, help="the %%%%kale metrics line ranking the trials")
    goal = cmd.add_mutually_exclusive_group(required=True)
    goal.add_argument("--maximize", dest="goal", action="store_const", const="maximize",
                      help="the best trial has the largest value of the metric")
    goal.add_argument("--minimize", dest="goal", action="store_const", const="minimize",
                      help="the best trial has the smallest value")
    cmd.add_argument("--random", type=int, metavar="N", help="N random picks instead of the grid")
    cmd.add_argument("--seed", type=int, metavar="S", help="seed of the random picks (default: "
                     "a new one, printed)")
    cmd.add_argument("--parallel", type=int, default=1, metavar="K",
                     help="trials running at once (default 1)")
    cmd.add_argument("--pipeline-root", help="folder (local: trial-NNN under it; default "
                     ".kale/sweeps/PIPELINE-TIME) or URI (remote) for the trials' artifacts")
    cmd.add_argument("--no-cache", action="store_true", help="remote: run every step of every trial")
    cmd.add_argument("--remote", action="store_true", help="run on the configured KFP server")
    cmd.add_argument("--experiment", help="KFP experiment (remote)")
    _connection_options(cmd)
    _watch_options(cmd)


def _summary(args: argparse.Namespace, status: api.RunStatus) -> int:
    """Print the run's summary (or its JSON); the exit code by its final state."""
    if args.json:
        print(json.dumps(status.to_json(), default=str))
    else:
        print(run_summary(status))
    return 0 if status.state == "SUCCEEDED" else 1


def _scheduled(args: argparse.Namespace, target: Any, compiled: api.CompiledPipeline,
               arguments: dict[str, str]) -> int:
    schedule = api.Schedule(cron=args.schedule, max_concurrency=args.max_concurrency,
                            start_time=_when(args.start_time, "--start-time"),
                            end_time=_when(args.end_time, "--end-time"))
    if not isinstance(target, api.KfpTarget):
        raise api.KaleError("--schedule creates a recurring run on a KFP server; add --host URL "
                        "or --remote")
    session = target.connect(compiled.plan.settings, _hooks(args))
    submission = api.submit(compiled, session, arguments, experiment=args.experiment,
                            run_name=args.run_name, schedule=schedule,
                            enable_caching=False if args.no_cache else None,
                            pipeline_root=args.pipeline_root)
    if args.json:
        print(json.dumps(vars(submission)))
    else:
        print(f"recurring run {submission.recurring_run_id} created (cron '{schedule.kfp_cron()}', "
              f"max concurrency {schedule.max_concurrency}): {submission.url}")
    return 0


def _session(args: argparse.Namespace) -> api.KfpSession:
    session = api.connect(args.host, args.namespace, args.token, args.cookies,
                          connect_timeout_s=args.connect_timeout)
    _warn([session.connection.withheld] if session.connection.withheld else [], "notice")
    return session


def _follow(args: argparse.Namespace, session: api.KfpSession, run_id: str) -> int:
    """Stream a remote run's step states to its end; print the summary; exit code by state."""
    try:
        status = api.watch_remote(session, run_id, _hooks(args), interval_s=args.interval,
                                  timeout_s=args.timeout, max_outage_s=args.max_outage)
    except KeyboardInterrupt:
        print(f"kale-magics: stopped watching; run {run_id} goes on on the server "
              f"(cancel it with `kale-magics cancel {run_id}`)", file=sys.stderr)
        return 130
    return _summary(args, status)


def _status(args: argparse.Namespace) -> int:
    session = _session(args)
    if args.watch:
        return _follow(args, session, args.run_id)
    status = api.remote_status(session, args.run_id)
    print(json.dumps(status.to_json(), default=str) if args.json else status_text(status))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    session = _session(args)
    status = api.cancel_remote(session, args.run_id, wait_s=args.wait)
    print(status_text(status))
    if status.state in ("CANCELED", "CANCELING"):
        return 0
    print(f"kale-magics: run {args.run_id} ended {status.state} before it could be canceled",
          file=sys.stderr)
    return 1


def _schedules(args: argparse.Namespace) -> int:
    session = _session(args)
    for recurring_run_id in args.delete:
        api.delete_schedule(session, recurring_run_id)
        print(f"deleted recurring run {recurring_run_id}")
    if not args.delete:
        print(schedules_text(api.list_schedules(session, args.experiment)))
    return 0


def _runs(args: argparse.Namespace) -> int:
    remote = args.host or args.remote
    found = api.run_history(args.notebook, pipeline_roots=args.pipeline_root,
                            server=_session(args) if remote else None)
    if args.compare:
        first, second = (found.find(run_id, "listed") for run_id in args.compare)
        print(comparison_text(first, second, api.compare_runs(first, second)))
    elif args.json:
        print(json.dumps(history_json(found)))
    else:
        print(runs_text(found))
    return 0


def _models(args: argparse.Namespace) -> int:
    print(models_text(*api.model_versions(args.notebook, args.model_registry)))
    return 0


def _image(args: argparse.Namespace) -> int:
    context = api.notebook_image(args.output, args.base, args.from_pypi)
    what = f"wheels/{context.wheel}" if context.wheel else "kale-magics from PyPI"
    print(f"wrote {context.folder}/Dockerfile (FROM {context.base}, with {what})\n"
          f"build it: {context.build_command}")
    return 0


def _warn(messages: Sequence[str], kind: str = "warning") -> None:
    """Print each message on stderr (stdout stays clean for --json)."""
    for message in messages:
        print(f"{kind}: {message}", file=sys.stderr)


def _when(text: str | None, option: str) -> datetime.datetime | None:
    """An ISO 8601 time; a time without a zone is local time."""
    if text is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise api.KaleError(f"{option} {text!r} is not an ISO 8601 time; for example "
                        f"{option} 2030-01-31T06:00 or {option} 2030-01-31T06:00+00:00") from None
    return moment.astimezone(datetime.timezone.utc)


def _connection_options(cmd: argparse.ArgumentParser) -> None:
    group = cmd.add_argument_group("KFP server (see README: Running on a KFP server)")
    group.add_argument("--host", help="KFP API endpoint, e.g. http://localhost:8080 (default: "
                       "%%kale pipeline --host, $KF_PIPELINES_ENDPOINT, the config file)")
    group.add_argument("--namespace", help="namespace of a multi-user KFP "
                       "(default: $KF_PIPELINES_NAMESPACE, the config file)")
    group.add_argument("--token", help="bearer token (prefer $KF_PIPELINES_TOKEN: options are "
                       "visible to other users of the machine)")
    group.add_argument("--cookies", help="session cookies, e.g. 'authservice_session=...' "
                       "(or $KF_PIPELINES_COOKIES)")
    group.add_argument("--connect-timeout", type=float, metavar="S",
                       help="seconds to wait for the server to answer the health check (default 5)")


def _watch_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--interval", type=float, default=5.0, metavar="S",
                     help="seconds between status polls (default 5)")
    cmd.add_argument("--timeout", type=float, metavar="S",
                     help="stop watching after S seconds (the run goes on)")
    cmd.add_argument("--max-outage", type=float, default=120.0, metavar="S",
                     help="give up when the server does not answer for S seconds (default 120)")
    cmd.add_argument("--json", action="store_true", help="print one JSON object with the result")


def _add_run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="override a pipeline parameter (repeatable)")
    run.add_argument("--pipeline-root", help="folder (local) or URI (remote) for the run's artifacts "
                     "(default: .kale/local_runs, with --docker .kale/container_runs, next to "
                     "the notebook; the server's default)")
    run.add_argument("--no-cache", action="store_true",
                     help="run every step; do not reuse cached results of unchanged steps")
    run.add_argument("--from", dest="from_step", metavar="STEP",
                     help="run STEP and everything downstream, reusing cached upstream results "
                     "(local runs, also with --docker)")
    containers = run.add_argument_group("runs in containers (see README: Running in containers)")
    containers.add_argument("--docker", action="store_true", help="run every step in a container "
                            "of its image, installing only its packages, as a cluster does")
    containers.add_argument("--docker-network", metavar="MODE", help="the containers' Docker network "
                            "(default Docker's own; 'host' where the daemon has no bridge)")
    containers.add_argument("--volume-map", action="append", default=[], metavar="PVC=DIR",
                            help="mount local folder DIR where a step mounts PVC (repeatable)")
    containers.add_argument("--secret-env-file", metavar="FILE", help="ENV=VALUE lines giving each "
                            "--secret SECRET:KEY:ENV its value")
    containers.add_argument("--fresh-installs", action="store_true", help="install the packages in "
                            "every step's container, as pods do (default: once per set of packages)")
    remote = run.add_argument_group("remote runs (with --host or --remote)")
    remote.add_argument("--remote", action="store_true", help="run on the KFP server configured by "
                        "%%kale pipeline --host, $KF_PIPELINES_ENDPOINT or the config file")
    remote.add_argument("--experiment", help="KFP experiment (default: the notebook's, else Default)")
    remote.add_argument("--run-name", help="display name of the run (default: pipeline and time)")
    remote.add_argument("--no-watch", action="store_true", help="print the run's link and exit")
    remote.add_argument("--schedule", metavar="CRON", help="create a recurring run instead, e.g. "
                        "'0 6 * * *' (5 fields) or KFP's 6 fields with seconds first")
    remote.add_argument("--max-concurrency", type=int, default=1, metavar="N",
                        help="runs of the schedule that may run at once (1-10, default 1)")
    remote.add_argument("--start-time", metavar="ISO", help="schedule start, e.g. 2030-01-31T06:00")
    remote.add_argument("--end-time", metavar="ISO", help="schedule end")
    _connection_options(run)
    _watch_options(run)


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
        "run": (_run, "compile and run the pipeline locally with kfp.local, in containers with "
                "--docker, or on a KFP server with --host"),
        "sweep": (_sweep, "run the pipeline once per combination of parameter values (or random "
                  "picks), locally or on a KFP server, and show the best run by a metric"),
    }
    for name, (handler, help_text) in commands.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("notebook", help="the annotated .ipynb file (only read)")
        cmd.set_defaults(handler=handler)
        if name != "show":
            cmd.add_argument("-o", "--output", help="folder for generated files (default: .kale/ "
                             "next to the notebook)")
    _add_run_options(sub.choices["run"])
    _add_sweep_options(sub.choices["sweep"])
    _add_remote_commands(sub)
    convert = sub.add_parser("convert", help="rewrite Kale's cell tags as %%kale lines, or back",
                             description="write a copy of NOTEBOOK annotated the other way: "
                             "--to magics (%%kale lines) or --to kale-tags (Kale 2.3's tags)")
    convert.add_argument("notebook", help="the notebook to convert (never written)")
    convert.add_argument("--to", required=True, choices=["magics", "kale-tags"])
    convert.add_argument("-o", "--output", required=True, metavar="OUT.ipynb",
                         help="where to write the converted copy")
    convert.set_defaults(handler=_convert)
    models = sub.add_parser("models", help="list the registered versions of the notebook's models",
                            description="list the versions of the models the notebook's steps "
                            "--register, as the Kubeflow Model Registry holds them")
    models.add_argument("notebook", help="the annotated .ipynb file (only read)")
    models.add_argument("--model-registry", metavar="URL", help="registry address; default: the "
                        "notebook's --model-registry, then $MODEL_REGISTRY_URL, then the config file")
    models.set_defaults(handler=_models)
    image = sub.add_parser("image", help="write a Kubeflow notebook image's Dockerfile with "
                           "kale-magics", description="write the Dockerfile and build context of a "
                           "Kubeflow notebook-server image with kale-magics and its widgets")
    image.add_argument("--base", metavar="IMAGE", help="image to extend: a Kubeflow name "
                       "(jupyter-scipy, the default; codeserver-python for VS Code; jupyter-pytorch, "
                       "...) or any image reference")
    image.add_argument("-o", "--output", default="kale-notebook-image", metavar="DIR",
                       help="folder for the Dockerfile and context (default kale-notebook-image)")
    image.add_argument("--from-pypi", action="store_true",
                       help="install kale-magics from PyPI instead of a wheel of this source")
    image.set_defaults(handler=_image)
    return parser


def _add_remote_commands(sub: Any) -> None:
    status = sub.add_parser("status", help="state of a KFP run and of each step",
                            description="state of a KFP run and of each step")
    status.add_argument("run_id", metavar="RUN_ID")
    status.add_argument("--watch", action="store_true", help="follow the run to its end")
    status.set_defaults(handler=_status)
    cancel = sub.add_parser("cancel", help="terminate a KFP run", description=(
        "terminate a KFP run. Exit code 0: it is CANCELED (or still CANCELING after --wait); "
        "1: it had ended otherwise (SUCCEEDED, FAILED, ...) before it could be canceled; "
        "2: unknown run, bad input, connection or authentication error"))
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--wait", type=float, default=60.0, metavar="S",
                        help="seconds to wait for CANCELED (default 60; 0: do not wait)")
    cancel.set_defaults(handler=_cancel)
    schedules = sub.add_parser("schedules", help="list (or --delete) recurring runs",
                               description="list recurring runs on the KFP server, or delete them")
    schedules.add_argument("--experiment", help="only this experiment's recurring runs")
    schedules.add_argument("--delete", action="append", default=[], metavar="ID",
                           help="delete this recurring run (repeatable)")
    schedules.set_defaults(handler=_schedules)
    runs = sub.add_parser("runs", help="list a notebook's runs, or compare two",
                          description="list NOTEBOOK's runs, newest first: local runs (recorded "
                          "under the pipeline root) and, with --remote or --host, the KFP "
                          "server's runs of its pipeline; state, start, duration, parameters, "
                          "metrics")
    runs.add_argument("notebook", help="the annotated .ipynb file (only read)")
    runs.add_argument("--compare", nargs=2, metavar="RUN_ID", help="two runs side by side; "
                      "* marks the values that differ")
    runs.add_argument("--pipeline-root", action="append", default=[], metavar="DIR",
                      help="also look for local runs here (repeatable; default .kale/local_runs "
                      "and .kale/container_runs next to the notebook)")
    runs.add_argument("--remote", action="store_true", help="also list the configured KFP "
                      "server's runs")
    runs.add_argument("--json", action="store_true", help="print the runs as a JSON list")
    runs.set_defaults(handler=_runs)
    for cmd in (status, cancel, schedules, runs):
        _connection_options(cmd)
    _watch_options(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kale-magics`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except api.KaleError as error:
        print(f"kale-magics: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kale-magics: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
