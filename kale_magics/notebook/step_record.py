"""The record a ``%%kale step`` cell leaves in its output, and reading it back from the file.

When a step cell runs, the magic displays one output carrying
``application/vnd.kale-magics.step+json``: the step, its inputs with
producers, its outputs, the live type of each, and the KFP artifact class of
each output (``Dataset``, ``Model``, ``Artifact``, from the value's type). The
editor saves that output with the notebook, so whoever compiles the saved file
(the CLI, ``%kale compile``, the panel) reads the same artifact classes from it
and writes the same IR: what the kernel knew is in the file, not in the kernel.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

#: The MIME type of a step cell's record.
STEP_MIME = "application/vnd.kale-magics.step+json"
#: The artifact classes a record may name (anything else is read as ``Artifact``).
ARTIFACT_CLASSES = frozenset({"Artifact", "Dataset", "Model"})


def step_record(name: str, after: Iterable[str], inputs: Mapping[str, str],
                outputs: Iterable[str], types: Mapping[str, str],
                artifacts: Mapping[str, str]) -> dict[str, Any]:
    """The JSON record of a step cell run in the kernel.

    Parameters
    ----------
    name, after:
        The step and its ``--after`` steps.
    inputs:
        Variable -> the step that produced it, for the names the cell read.
    outputs:
        Names the cell bound.
    types:
        Class name of each input and output the kernel holds.
    artifacts:
        KFP artifact class of each output the kernel holds.
    """
    return {"kind": "step", "name": name, "after": list(after), "inputs": dict(inputs),
            "outputs": list(outputs), "types": dict(types), "artifacts": dict(artifacts)}


def recorded_artifacts(cells: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Artifact class per variable, from the step records saved in ``cells`` (notebook JSON).

    A later cell's record wins, as the kernel's later value would. Malformed
    records are ignored (they only label artifacts; nothing depends on them).
    """
    found: dict[str, str] = {}
    for cell in cells:
        for output in cell.get("outputs") or () if isinstance(cell, Mapping) else ():
            data = output.get("data") if isinstance(output, Mapping) else None
            record = data.get(STEP_MIME) if isinstance(data, Mapping) else None
            artifacts = record.get("artifacts") if isinstance(record, Mapping) else None
            if isinstance(artifacts, Mapping):
                found.update({k: v for k, v in artifacts.items()
                              if isinstance(k, str) and v in ARTIFACT_CLASSES})
    return found
