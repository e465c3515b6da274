"""How ``kfp.local`` walks a local run's tasks: in notebook order, past a failed step.

``kfp.local`` (2.17) runs a pipeline without control flow with
``kfp.local.orchestrator.dag_orchestrator.run_dag``: one task at a time, in a
depth-first order of its task map (the protobuf map's order, not the
notebook's), returning at the first failed task. A cluster runs independent
steps in parallel, so one failing does not stop the others; a local run
stopped there would show a sibling that the cluster runs as skipped.

While :func:`ordered_dag` is active, ``run_dag`` is :func:`_run_dag` instead:
tasks run one at a time in the plan's order (notebook order where no edge
orders them, so a local run is reproducible); a failed task does not stop the
others; a task depending on a failed or skipped one is skipped (it never starts,
and the run's status reports it SKIPPED), as ``kfp.local``'s own orchestrator for
pipelines with control flow does (``enhanced_dag_orchestrator.run_enhanced_dag``)
and as KFP on a cluster does. Each task still runs through
``task_executor.execute_single_task``, so caching, retries and outputs are
``kfp.local``'s own.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
from typing import Any, Iterator, Mapping, Sequence

from kale_magics.model import task_name


def task_order(dependencies: Mapping[str, Sequence[str]], steps: Sequence[str]) -> list[str]:
    """The tasks of ``dependencies`` (``{task: [upstream task, ...]}``) in an order that keeps
    every edge, taking among the tasks ready to run the one whose step comes first in
    ``steps`` (plan order); tasks of no step (the ``kale-runtime`` task) come first, by name.
    Upstream names outside ``dependencies`` are ignored."""
    rank = {task_name(step): index for index, step in enumerate(steps)}
    waiting = {task: {d for d in ups if d in dependencies} for task, ups in dependencies.items()}
    ready = [(rank.get(t, -1), t) for t, ups in waiting.items() if not ups]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, task = heapq.heappop(ready)
        order.append(task)
        for other, ups in waiting.items():
            if task in ups:
                ups.discard(task)
                if not ups:
                    heapq.heappush(ready, (rank.get(other, -1), other))
    return order


@contextlib.contextmanager
def ordered_dag(steps: Sequence[str]) -> Iterator[None]:
    """While active, ``kfp.local`` runs a pipeline's tasks in the order of ``steps`` (the
    plan's step names) and goes on past a failed task (see the module's docstring)."""
    from kfp.local.orchestrator import dag_orchestrator

    original = dag_orchestrator.run_dag

    def run_dag(*args: Any, **kwargs: Any) -> Any:
        return _run_dag(list(steps), original, *args, **kwargs)

    dag_orchestrator.run_dag = run_dag
    try:
        yield
    finally:
        dag_orchestrator.run_dag = original


def _run_dag(steps: list[str], original: Any, pipeline_resource_name: str, dag_component_spec: Any,
             executors: dict[str, Any], components: dict[str, Any], dag_arguments: dict[str, Any],
             pipeline_root: str, runner: Any, unique_pipeline_id: str, fail_stack: list[str],
             parent_io_store: Any = None) -> tuple[dict[str, Any], Any]:
    """``dag_orchestrator.run_dag`` (same arguments and result), in plan order, past failures.

    A nested DAG (never compiled by kale-magics) is left to ``original``. ``fail_stack`` gets
    the first failed task, as kfp.local's message names one task.
    """
    from kfp.local import io, status
    from kfp.local.orchestrator import task_executor
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    tasks = dag_component_spec.dag.tasks
    if any(components[t.component_ref.name].WhichOneof("implementation") == "dag"
           for t in tasks.values()):
        return original(pipeline_resource_name, dag_component_spec, executors, components,
                        dag_arguments, pipeline_root, runner, unique_pipeline_id, fail_stack,
                        parent_io_store)
    io_store = io.IOStore(parent=parent_io_store)
    for key, value in OrchestratorUtils.join_user_inputs_and_defaults(
            dag_arguments=dag_arguments,
            dag_inputs_spec=dag_component_spec.input_definitions).items():
        io_store.put_parent_input(key, value)
    not_done: set[str] = set()
    for name in task_order({n: list(t.dependent_tasks) for n, t in tasks.items()}, steps):
        failed_upstream = sorted(set(tasks[name].dependent_tasks) & not_done)
        if failed_upstream:
            logging.info(f"Skipping task {name}: upstream task(s) {failed_upstream} did not succeed.")
            not_done.add(name)
            continue
        outputs, task_status = task_executor.execute_single_task(
            task_name=name, task_spec=tasks[name], pipeline_resource_name=pipeline_resource_name,
            components=components, executors=executors, io_store=io_store,
            pipeline_root=pipeline_root, runner=runner, unique_pipeline_id=unique_pipeline_id,
            fail_stack=fail_stack)
        if task_status == status.Status.SUCCESS:
            for key, output in outputs.items():
                io_store.put_task_output(name, key, output)
            continue
        if not fail_stack:
            fail_stack.append(name)
        not_done.add(name)
    if not_done:
        return {}, status.Status.FAILURE
    return OrchestratorUtils.get_dag_outputs(dag_outputs_spec=dag_component_spec.dag.outputs,
                                            io_store=io_store), status.Status.SUCCESS
