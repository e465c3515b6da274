"""A step's execution settings as KFP task calls in the generated pipeline function.

Resources, retries, caching and environment variables use ``kfp.dsl.PipelineTask``
methods; timeouts, secrets, volumes, node selectors and tolerations use
``kfp-kubernetes`` (``kfp.kubernetes``), which writes them into the IR's
platform spec (the second YAML document). Every value enters the code through
``repr()``.
"""

from __future__ import annotations

from kale_magics.codegen.naming import task_variable
from kale_magics.model import Step, StepSettings


def _resource_lines(task: str, s: StepSettings) -> list[str]:
    calls = [("set_cpu_request", s.cpu), ("set_cpu_limit", s.cpu_limit),
             ("set_memory_request", s.memory), ("set_memory_limit", s.memory_limit),
             ("set_accelerator_type", s.accelerator if s.gpu else None),
             ("set_accelerator_limit", s.gpu)]
    return [f"{task}.{method}({value!r})" for method, value in calls if value is not None]


def _task_lines(task: str, s: StepSettings) -> list[str]:
    lines = _resource_lines(task, s)
    if s.retries is not None:
        backoff = f", backoff_duration={f'{s.backoff_s:g}s'!r}" if s.backoff_s is not None else ""
        lines.append(f"{task}.set_retry(num_retries={s.retries!r}{backoff})")
    if s.cache is not None:
        lines.append(f"{task}.set_caching_options(enable_caching={s.cache!r})")
    lines += [f"{task}.set_env_variable({name!r}, {value!r})" for name, value in s.env]
    return lines


def _kubernetes_lines(task: str, s: StepSettings) -> list[str]:
    lines = [f"kubernetes.set_timeout({task}, {s.timeout_s!r})"] if s.timeout_s is not None else []
    lines += [f"kubernetes.use_secret_as_env({task}, secret_name={name!r}, "
              f"secret_key_to_env={ {key: env}!r})" for name, key, env in s.secrets]
    lines += [f"kubernetes.mount_pvc({task}, pvc_name={pvc!r}, mount_path={path!r})"
              for pvc, path in s.volumes]
    lines += [f"kubernetes.add_node_selector({task}, label_key={key!r}, label_value={value!r})"
              for key, value in s.node_selector]
    lines += [f"kubernetes.add_pod_label({task}, label_key={key!r}, label_value={value!r})"
              for key, value in s.labels]
    lines += [f"kubernetes.add_pod_annotation({task}, annotation_key={key!r}, "
              f"annotation_value={value!r})" for key, value in s.annotations]
    lines += [f"kubernetes.add_toleration({task}, key={key!r}, "
              f"operator={'Equal' if value else 'Exists'!r}, value={value or None!r}, "
              f"effect={effect!r})" for key, value, effect in s.tolerations]
    return lines


def settings_lines(step: Step) -> list[str]:
    """Statements (unindented) that apply ``step.settings`` to ``<step>_task``."""
    task = task_variable(step.name)
    return _task_lines(task, step.settings) + _kubernetes_lines(task, step.settings)


def uses_kubernetes(steps: tuple[Step, ...]) -> bool:
    """True when some step needs ``from kfp import kubernetes``."""
    return any(_kubernetes_lines("t", step.settings) for step in steps)


def local_noops(step: Step) -> list[str]:
    """The step's settings that ``kfp.local`` ignores, as the options the user wrote."""
    s = step.settings
    found = [f"--{name.replace('_', '-')} {value}" for name, value in
             (("cpu", s.cpu), ("cpu_limit", s.cpu_limit), ("memory", s.memory),
              ("memory_limit", s.memory_limit), ("gpu", s.gpu), ("image", s.image))
             if value is not None]
    found += [f"--timeout {s.timeout_s}s"] if s.timeout_s is not None else []
    found += [f"--secret {n}:{k}:{e}" for n, k, e in s.secrets]
    found += [f"--volume {pvc}:{path}" for pvc, path in s.volumes]
    found += [f"--node-selector {k}={v}" for k, v in s.node_selector]
    found += [f"--toleration {k}{'=' + v if v else ''}:{e}" for k, v, e in s.tolerations]
    found += [f"--label {k}={v}" for k, v in s.labels]
    found += [f"--annotation {k}={v}" for k, v in s.annotations]
    return found
