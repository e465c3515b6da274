"""Steps read from real-shaped KFP answers: Argo node entries in any order, name clashes, retries,
cache hits, false conditions, groups, and the workflow manifest's errors and termination.

The answers come from the KFP test server's model of the Argo workflow KFP 2.17 runs
(``tests/kfp_server/argo.py``), serialised as the strict server does, without a server.
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace
from typing import Any

import kfp_server_api
import pytest

from kale_magics.errors import RunError
from kale_magics.runner import task_map, workflow
from kale_magics.runner.connection import Connection
from kale_magics.runner.status import RunHooks, RunStatus, StepStatus
from kale_magics.runner.watch import Follower
from tests.kfp_server.argo import TaskSpec, Workflow
from tests.kfp_server.resources import RunRecord

T0 = 1_700_000_000.0
MESSAGE = ('Error (exit code 1): kale-magics-step-error: {"step": "train", "error": '
           '"ValueError: bad", "cell": "nb.ipynb, cell 4 (step train)", "line": 3}')


def make_workflow(tasks: dict[str, TaskSpec]) -> Workflow:
    flow = Workflow("demo", tasks, T0, random.Random(7))
    flow.start(T0)
    return flow


def as_run(flow: Workflow, state: str = "RUNNING", seed: int = 0) -> Any:
    """The run as the strict server answers it, parsed by kfp_server_api."""
    record = RunRecord({"run_id": "r1", "experiment_id": "e1", "display_name": "demo",
                        "created_at": "2023-11-14T22:13:20Z"}, flow, strict=True)
    record.rng.seed(seed)
    record.state = state
    body = json.dumps(record.to_json())
    return kfp_server_api.ApiClient().deserialize(SimpleNamespace(data=body), "V2beta1Run")


def views(flow: Workflow, steps: list[str], seed: int = 0) -> dict[str, task_map.StepView]:
    run = as_run(flow, seed=seed)
    return task_map.step_views(steps, task_map.entries(run.run_details.task_details))


def states(flow: Workflow, steps: list[str], seed: int = 0) -> dict[str, str]:
    return {name: view.state for name, view in views(flow, steps, seed).items()}


def test_steps_map_to_their_entries_whatever_the_order() -> None:
    flow = make_workflow({"load": TaskSpec(), "train-model": TaskSpec(["load"]), "report": TaskSpec(["train-model"])})
    flow.start_task("load", T0 + 1)
    flow.end_task("load", True, T0 + 3)
    flow.start_task("train-model", T0 + 4)
    seen = {tuple(sorted(states(flow, ["load", "train_model", "report"], seed).items())) for seed in range(20)}
    assert seen == {(("load", "SUCCEEDED"), ("report", "PENDING"), ("train_model", "RUNNING"))}
    view = views(flow, ["load"])["load"]
    assert (view.start, view.end) == (T0 + 1, T0 + 3)


def test_steps_named_like_argo_nodes_map_to_their_own_entries() -> None:
    """``executor``, ``root`` and ``root_driver`` share display names with Argo's own nodes."""
    flow = make_workflow({"x": TaskSpec(), "root-driver": TaskSpec(), "executor": TaskSpec(["x"]),
                          "root": TaskSpec(["root-driver"])})
    flow.start_task("x", T0 + 1)
    flow.start_task("root-driver", T0 + 1)
    flow.end_task("root-driver", False, T0 + 2, "Error (exit code 1)")
    flow.end_task("x", True, T0 + 3)
    flow.start_task("executor", T0 + 4)
    steps = ["x", "root_driver", "executor", "root"]
    for seed in range(20):
        assert states(flow, steps, seed) == {"x": "SUCCEEDED", "root_driver": "FAILED",
                                             "executor": "RUNNING", "root": "PENDING"}
    flow.end_task("executor", True, T0 + 6)
    assert states(flow, steps)["executor"] == "SUCCEEDED"


def test_retried_step_runs_until_its_last_attempt() -> None:
    flow = make_workflow({"train": TaskSpec(retries=2)})
    flow.start_task("train", T0 + 1)
    flow.end_task("train", False, T0 + 2, "Error (exit code 1)")
    flow.start_task("train", T0 + 3)
    assert states(flow, ["train"]) == {"train": "RUNNING"}
    names = sorted(e.display_name for e in as_run(flow).run_details.task_details)
    assert names.count("executor") == 1 and {"executor(0)", "executor(1)"} <= set(names)
    flow.end_task("train", True, T0 + 5)
    assert states(flow, ["train"]) == {"train": "SUCCEEDED"}


def test_cache_hit_is_a_cached_success() -> None:
    """KFP marks only the executor entry of a cached step SKIPPED; the step is SUCCEEDED and cached."""
    flow = make_workflow({"make": TaskSpec(), "total": TaskSpec(["make"])})
    flow.cache_task("make", T0 + 1)
    flow.start_task("total", T0 + 3)
    flow.end_task("total", True, T0 + 5)
    found = views(flow, ["make", "total"])
    assert (found["make"].state, found["make"].cached) == ("SUCCEEDED", True)
    assert (found["total"].state, found["total"].cached) == ("SUCCEEDED", False)


def test_condition_groups_loops_and_omitted_tasks_are_not_steps() -> None:
    flow = make_workflow({"check": TaskSpec(), "inner": TaskSpec(group="condition-1"),
                          "after": TaskSpec(["check"])})
    flow.add_group("condition-1", T0 + 1)
    flow.add_group("for-loop-2", T0 + 1, skipped=True)
    flow.start_task("inner", T0 + 2)
    flow.end_task("inner", True, T0 + 3)
    flow.start_task("check", T0 + 2)
    flow.end_task("check", False, T0 + 4, "Error (exit code 1)")
    flow.finish("Failed", T0 + 5)
    assert states(flow, ["check", "inner", "after"]) == {"check": "FAILED", "inner": "SUCCEEDED",
                                                         "after": "PENDING"}
    omitted = [e for e in as_run(flow).run_details.task_details if e.display_name == "after-driver"]
    assert omitted and omitted[0].state is None  # Omitted -> RUNTIME_STATE_UNSPECIFIED, left out


class FakeApi:
    """The generated API client's ``call_api`` answering a v1beta1 run detail, and counting."""

    def __init__(self, flow: Workflow | None) -> None:
        self.flow, self.calls = flow, 0

    def call_api(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if self.flow is None:
            raise kfp_server_api.ApiException(status=404, reason="Not Found")
        return {"pipeline_runtime": {"workflow_manifest": json.dumps(self.flow.manifest("r1", ""))}}


def follower(flow: Workflow | None, steps: list[str], events: list) -> tuple[Follower, FakeApi]:
    api = FakeApi(flow)
    session = SimpleNamespace(connection=Connection(host="http://kfp.test"), terminated=set(),
                              client=SimpleNamespace(runs=SimpleNamespace(api_client=api)))
    status = RunStatus(pipeline="demo", run_id="r1", url="http://kfp.test/#/runs/details/r1",
                       steps={s: StepStatus(name=s) for s in steps},
                       hooks=RunHooks(on_step=lambda s: events.append((s.name, s.state, s.cached))))
    return Follower(session, status), api


def test_false_condition_is_streamed_straight_to_skipped_and_cache_hits_as_cached() -> None:
    flow = make_workflow({"gate": TaskSpec(), "make": TaskSpec(), "total": TaskSpec(["make"])})
    events: list = []
    watch, _ = follower(flow, ["gate", "make", "total"], events)
    flow.skip_task("gate", T0 + 1)
    flow.cache_task("make", T0 + 1)
    flow.start_task("total", T0 + 3)
    watch.apply(as_run(flow))
    flow.end_task("total", True, T0 + 4)
    flow.finish("Succeeded", T0 + 5)
    watch.apply(as_run(flow, "SUCCEEDED"))
    assert events == [("gate", "SKIPPED", False), ("make", "SUCCEEDED", True),
                      ("total", "RUNNING", False), ("total", "SUCCEEDED", False)]
    assert watch.status.state == "SUCCEEDED"


def test_a_failed_driver_fails_its_step_before_it_ran() -> None:
    flow = make_workflow({"load": TaskSpec()})
    events: list = []
    watch, _ = follower(flow, ["load"], events)
    flow.fail_driver("load", T0 + 1)
    flow.finish("Failed", T0 + 2)
    watch.apply(as_run(flow, "FAILED"))
    assert events == [("load", "FAILED", False)]
    assert watch.status.steps["load"].error == (
        "KFP's driver failed before the step ran; its log is in the KFP UI: "
        "http://kfp.test/#/runs/details/r1 (node 'load-driver')")


def test_failed_step_gets_its_error_cell_line_and_where_its_log_is() -> None:
    flow = make_workflow({"train": TaskSpec(retries=1)})
    events: list = []
    watch, api = follower(flow, ["train"], events)
    flow.start_task("train", T0 + 1)
    flow.end_task("train", False, T0 + 2, "Error (exit code 1)")
    flow.start_task("train", T0 + 3)
    flow.end_task("train", False, T0 + 4, MESSAGE)
    flow.finish("Failed", T0 + 5)
    watch.apply(as_run(flow, "FAILED"))
    step = watch.status.steps["train"]
    assert (step.state, step.cell, step.line) == ("FAILED", "nb.ipynb, cell 4 (step train)", 3)
    assert step.error.startswith("ValueError: bad; its log is in the KFP UI: http://kfp.test/#/runs/"
                                 "details/r1 (node 'train > executor(1)', pod demo-")
    assert watch.status.state == "FAILED" and api.calls == 1


def test_without_the_workflow_a_failure_still_says_where_to_look() -> None:
    flow = make_workflow({"train": TaskSpec()})
    watch, api = follower(None, ["train"], [])
    flow.start_task("train", T0 + 1)
    flow.end_task("train", False, T0 + 2)
    watch.apply(as_run(flow))
    flow.finish("Failed", T0 + 3)
    watch.apply(as_run(flow, "FAILED"))
    assert watch.status.steps["train"].error == (
        "KFP reports no error text for it; its log is in the KFP UI: http://kfp.test/#/runs/details/r1 "
        "(node 'train > executor')")
    assert api.calls == 1  # not asked again once it answered 404


def test_terminated_run_ending_failed_is_canceled() -> None:
    """KFP ends a terminated run FAILED; its workflow says it was terminated."""
    flow = make_workflow({"wait": TaskSpec(), "after": TaskSpec(["wait"])})
    events: list = []
    watch, _ = follower(flow, ["wait", "after"], events)
    flow.start_task("wait", T0 + 1)
    watch.apply(as_run(flow))
    flow.terminated = True
    flow.finish("Failed", T0 + 4)
    watch.apply(as_run(flow, "FAILED"))
    assert watch.status.state == "CANCELED"
    assert {n: s.state for n, s in watch.status.steps.items()} == {"wait": "CANCELED", "after": "SKIPPED"}
    assert ("wait", "FAILED", False) not in events


def test_run_the_server_cannot_convert_stops_with_its_error() -> None:
    run = kfp_server_api.ApiClient().deserialize(SimpleNamespace(data=json.dumps(
        {"run_id": "r1", "experiment_id": "e1", "error": {"code": 13, "message": "bad spec"}})), "V2beta1Run")
    watch, _ = follower(None, ["train"], [])
    with pytest.raises(RunError, match=r"cannot report run r1: bad spec; its state is unknown here"):
        watch.apply(run)


def test_workflow_facts_read_errors_cache_hits_and_termination() -> None:
    flow = make_workflow({"make": TaskSpec(), "train": TaskSpec(["make"]), "executor": TaskSpec()})
    flow.cache_task("make", T0 + 1)
    flow.start_task("train", T0 + 2)
    flow.end_task("train", False, T0 + 3, MESSAGE)
    flow.start_task("executor", T0 + 2)
    flow.terminated = True
    flow.finish("Failed", T0 + 4)
    facts = workflow.facts(flow.manifest("r1", ""), ["make", "train", "executor"])
    assert facts.terminated and facts.steps["make"].cached and not facts.steps["train"].cached
    train = facts.steps["train"]
    assert (train.error, train.cell, train.line, train.node) == (
        "ValueError: bad", "nb.ipynb, cell 4 (step train)", 3, "train > executor")
    assert train.pod.startswith(f"{flow.name}-system-container-impl-")
    killed = facts.steps["executor"]
    assert killed.failed and killed.error == "" and "deadline" in killed.message


def test_cache_hits_of_every_step_are_seen_whatever_the_times() -> None:
    """All at one second: the windows tell nothing, the count of SKIPPED executors does."""
    flow = make_workflow({"make": TaskSpec(), "total": TaskSpec(["make"])})
    flow.cache_task("make", T0)
    flow.cache_task("total", T0)
    assert {n: (v.state, v.cached) for n, v in views(flow, ["make", "total"]).items()} == {
        "make": ("SUCCEEDED", True), "total": ("SUCCEEDED", True)}


def test_loop_iterations_roll_up_and_a_skipped_condition_skips_its_step() -> None:
    """KFP's nodes for ``dsl.ParallelFor`` (``for-loop-2(i).sweep``) and a false ``dsl.If`` (the
    group's node Skipped, no node for the task inside), in any order; helper tasks are nodes too."""
    tasks = {"exit-handler-1": TaskSpec(kind="group"), "kale-items": TaskSpec(group="exit-handler-1"),
             "for-loop-2": TaskSpec(["kale-items"], group="exit-handler-1", kind="loop"),
             "sweep": TaskSpec(group="exit-handler-1.for-loop-2"),
             "best": TaskSpec(["for-loop-2"], group="exit-handler-1"),
             "condition-3": TaskSpec(["best"], group="exit-handler-1", kind="group"),
             "never": TaskSpec(group="exit-handler-1.condition-3"),
             "summary": TaskSpec(["exit-handler-1"])}
    flow = make_workflow(tasks)
    flow.start_task("kale-items", T0 + 1)
    flow.end_task("kale-items", True, T0 + 1)
    for i in range(3):
        flow.start_task("sweep", T0 + 2, i)
    flow.end_task("sweep", True, T0 + 3, iteration=0)
    steps, groups = ["sweep", "best", "never", "summary"], {"never": ["exit-handler-1", "condition-3"]}

    def seen() -> list[dict[str, task_map.StepView]]:
        runs = [as_run(flow, seed=seed) for seed in range(10)]
        return [task_map.step_views(steps, task_map.entries(r.run_details.task_details), groups)
                for r in runs]

    for found in seen():
        assert found["sweep"].state == "RUNNING"
        assert found["sweep"].items == (("#0", "SUCCEEDED"), ("#1", "RUNNING"), ("#2", "RUNNING"))
    flow.end_task("sweep", True, T0 + 4, iteration=1)
    flow.end_task("sweep", True, T0 + 4, iteration=2)
    assert {f["sweep"].state for f in seen()} == {"RUNNING"}  # its group has not ended yet
    flow.start_task("best", T0 + 5)  # the loop's group ended before its dependent started
    flow.end_task("best", True, T0 + 6)
    flow.skip_group("condition-3", T0 + 7)
    for found in seen():
        assert {n: v.state for n, v in found.items()} == {
            "sweep": "SUCCEEDED", "best": "SUCCEEDED", "never": "SKIPPED", "summary": "PENDING"}
        assert (found["sweep"].start, found["sweep"].end) == (T0 + 2, T0 + 4)
