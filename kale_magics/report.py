"""Plain-text views of a plan and a run, shared by the CLI and the magics."""

from __future__ import annotations

from kale_magics.model import Plan
from kale_magics.runner.status import FAILED, RunStatus, StepStatus


def plan_text(plan: Plan) -> str:
    """The pipeline as the analysis sees it: steps, edges, inputs with producers, outputs.

    Example::

        pipeline wine (4 steps, 2 parameters)
        parameters: N_ESTIMATORS: int = 100, TEST_SIZE: float = 0.3
        step load      cells 4
          -> df
        step train     cells 6, 7   after: load
          <- df (load)   params: N_ESTIMATORS
          -> model
    """
    params = ", ".join(f"{p.name}: {p.type} = {p.value!r}" for p in plan.parameters)
    lines = [f"pipeline {plan.name} ({len(plan.steps)} steps, {len(plan.parameters)} parameters)"]
    if params:
        lines.append(f"parameters: {params}")
    width = max(len(s.name) for s in plan.steps)
    for step in plan.steps:
        cells = ", ".join(str(c.index) for c in step.cells)
        head = f"step {step.name:<{width}}  cells {cells}"
        if step.upstream:
            head += f"   after: {', '.join(step.upstream)}"
        lines.append(head)
        reads = [f"{i.name} ({i.producer})" for i in step.inputs]
        if reads or step.parameters:
            params_read = f"   params: {', '.join(step.parameters)}" if step.parameters else ""
            lines.append(f"  <- {', '.join(reads) or '-'}{params_read}")
        if step.outputs:
            lines.append(f"  -> {', '.join(step.outputs)}")
        if step.metrics:
            lines.append(f"  metrics: {', '.join(m.key for m in step.metrics)}")
    return "\n".join(lines)


def step_line(step: StepStatus) -> str:
    """One line for a step's state change: ``train  SUCCEEDED  1.23 s``."""
    line = f"{step.name}  {step.state}"
    if step.duration_s is not None:
        line += f"  {step.duration_s:.2f} s"
    if step.state == FAILED and step.error:
        line += f"  {step.error}"
    return line


def run_summary(status: RunStatus) -> str:
    """The final summary: state, duration, metrics, failure details and pipeline root."""
    lines = [f"pipeline {status.pipeline} {status.state} in {status.duration_s:.1f} s"]
    for key, value in status.metrics.items():
        lines.append(f"  {key} = {value:.6g}")
    for step in status.failed_steps:
        where = f" ({step.cell}, line {step.line})" if step.cell else ""
        lines.append(f"step {step.name} failed{where}: {step.error}")
        tail = [line for line in step.log_tail(15) if line.strip()]
        lines.extend(f"  | {line}" for line in tail)
    if status.error and not status.failed_steps:
        lines.append(status.error)
    lines.append(f"artifacts under {status.pipeline_root}")
    return "\n".join(lines)
