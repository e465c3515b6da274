"""The panel's parameter sweep section: what to sweep, Sweep and Stop, and the trials' table.

The same sweep as ``%kale sweep`` (:func:`kale_magics.api.sweep`), on the panel's target (local,
or the KFP server of its settings; not containers), with the panel's pipeline settings. The
sweep runs in a background thread and the table (:func:`kale_magics.views.rich.sweep_html`) is
redrawn as trials change; Stop cancels the running trials. The result is also left in the
kernel's user namespace as ``_kale_sweep``, as the magic does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as w
from kale_widgets.form import SettingsForm

from kale_magics import api
from kale_magics.views import rich

_STYLE = {"description_width": "9em"}
_WIDE = w.Layout(width="28em")


class SweepSection:
    """The sweep controls of one panel.

    Parameters
    ----------
    notebook:
        The .ipynb path (read, never written).
    form:
        The panel's settings (pipeline options and target).
    namespace:
        The kernel's user namespace, where the result goes as ``_kale_sweep`` (None: nowhere).
    on_change:
        Called (from any thread) when the section's state changed (the panel locks its form).
    """

    def __init__(self, notebook: str, form: SettingsForm, namespace: dict[str, Any] | None,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.notebook, self.form, self.namespace, self.on_change = notebook, form, namespace, on_change
        self.specs = w.Text(description="values", placeholder="N=10,50 LR=0.001:0.1:log",
                            style=_STYLE, layout=_WIDE)
        self.metric = w.Dropdown(options=[], description="metric", style=_STYLE, layout=_WIDE)
        self.goal = w.ToggleButtons(options=[api.MAXIMIZE, api.MINIMIZE], value=api.MAXIMIZE,
                                    style={"button_width": "7em"})
        self.random = w.IntText(value=0, description="random picks", style=_STYLE,
                                tooltip="0: every combination of the values")
        self.seed = w.Text(description="seed", placeholder="(a new one)", style=_STYLE)
        self.parallel = w.BoundedIntText(value=1, min=1, max=64, description="at once",
                                         style=_STYLE)
        self.start_button = w.Button(description="Sweep", button_style="info",
                                     tooltip="one run per trial on the chosen target")
        self.stop_button = w.Button(description="Stop", button_style="danger", disabled=True)
        self.table = w.HTML()
        for css, field in (("kale-sweep-values", self.specs), ("kale-sweep-metric", self.metric),
                           ("kale-sweep-start", self.start_button),
                           ("kale-sweep-stop", self.stop_button), ("kale-sweep-table", self.table)):
            field.add_class(css)
        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.widget = w.VBox([self.specs, self.metric, self.goal, self.random, self.seed,
                              self.parallel, w.HBox([self.start_button, self.stop_button]),
                              self.table])
        self.result: api.Sweep | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False

    @property
    def active(self) -> bool:
        """True from Sweep until the sweep has ended."""
        return self._running

    def sync(self, plan: api.Plan) -> None:
        """Offer the metrics of ``plan`` (keeping the chosen one when it is still there)."""
        metrics = [m.key for step in plan.steps for m in step.metrics]
        if list(self.metric.options) != metrics:
            chosen = self.metric.value
            self.metric.options = metrics
            self.metric.value = chosen if chosen in metrics else (metrics[0] if metrics else None)

    def start(self) -> None:
        """Check the sweep and start it in the background; a bad value is one red line."""
        if self.active:
            return
        try:
            run = self._prepared()
        except api.KaleError as error:
            self.table.value = rich.error_html(str(error))
            return
        self._halt = threading.Event()
        self._thread = threading.Thread(target=run, name="kale-panel-sweep", daemon=True)
        self._set_running(True)
        self._thread.start()

    def stop(self) -> None:
        """Cancel the running trials; the sweep ends with them CANCELED."""
        self._halt.set()

    def wait(self, timeout: float | None = None) -> api.Sweep | None:
        """Wait for the sweep's thread to end (tests, scripts); the result."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.result

    def _prepared(self) -> Callable[[], None]:
        """Compile and plan now (errors before anything runs); the sweep to run in the background."""
        choice = self.form.chosen_target()
        if choice.containers:
            raise api.KaleError("a sweep runs locally (kfp.local) or on a KFP server; choose one "
                                "of those targets")
        if not self.metric.value:
            raise api.KaleError("the pipeline logs no metric to rank trials by; add a "
                                "%%kale metrics cell")
        seed_text = self.seed.value.strip()
        if seed_text and not seed_text.lstrip("-").isdigit():
            raise api.KaleError(f"seed {seed_text!r} is not an integer; for example 1")
        compiled = api.compile_notebook(self.notebook, None,
                                        api.parse_pipeline_settings(self.form.options()))
        options = dict(specs=api.split_args(self.specs.value), metric=self.metric.value,
                       goal=self.goal.value, random=self.random.value or None,
                       seed=int(seed_text) if seed_text else None)
        api.plan_sweep(compiled, **options)  # a bad value: the red line now, not in the thread
        session = (api.connect(choice.host, choice.namespace, choice.token, choice.cookies)
                   if choice.remote else None)

        def run() -> None:
            try:
                self.result = api.sweep(compiled, parallel=self.parallel.value, session=session,
                                        on_plan=self._show, on_change=self._show,
                                        halt=self._halt, **options)
                if self.namespace is not None:
                    self.namespace["_kale_sweep"] = self.result.table()[0]
            except api.KaleError as error:  # shown in the panel, never as a traceback
                self.table.value = rich.error_html(str(error))
            except Exception as error:
                self.table.value = rich.error_html(f"unexpected {type(error).__name__}: {error}")
            finally:
                self._set_running(False)
        return run

    def _show(self, sweep: api.Sweep) -> None:
        self.result = sweep
        self.table.value = rich.sweep_html(sweep)

    def _set_running(self, running: bool) -> None:
        self._running = running
        self.on_change()

    def set_enabled(self, can_start: bool) -> None:
        """Sweep only when nothing runs (``can_start``); Stop only while the sweep runs."""
        self.start_button.disabled = not can_start or self.active
        self.stop_button.disabled = not self.active
