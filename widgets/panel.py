"""The deploy panel: an ipywidgets view over :class:`~kale_widgets.run_control.RunControl`.

What it shows is rendered by the pure views of :mod:`kale_magics.views.rich`.

Only standard ipywidgets 8 widgets (``HTML``, ``Button``, ``Dropdown``, ...), so
it renders in Notebook 7, JupyterLab 4 and VS Code without a front-end build.
Widget values are set from the run's background thread; ipykernel sends comm
messages through its thread-safe IOPub socket; ``tests/test_panel_kernel.py`` checks
in a real ipykernel 7 kernel that they reach the client, and the browser test that
they reach the page. One panel is one set of widget models: displaying it again
(or in a second output) shows the same, current state.
"""

from __future__ import annotations

import contextlib
import html
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import ipywidgets as w
from kale_widgets.form import SettingsForm
from kale_widgets.history import RunHistoryView
from kale_widgets.run_control import RunControl, RunRequest
from kale_widgets.sweep_section import SweepSection

from kale_magics import api
from kale_magics.views import rich

_NO_STEP = "(choose a step)"
_BUSY = "a run is already active: wait for it, or Cancel it"


def _shell(shell: Any) -> Any:
    if shell is not None:
        return shell
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    return get_ipython()


class DeployPanel(w.VBox):
    """Compile, check and run a notebook's pipeline, and watch its steps live.

    Parameters
    ----------
    notebook:
        The .ipynb path; None finds it as the magics do (``%kale pipeline --notebook``,
        VS Code, the Jupyter server, ``JPY_SESSION_NAME``).
    shell:
        The IPython shell whose session (live values, executed cells, ``%kale pipeline``
        settings) the panel shares with the magics; default the running one.
    interval_s:
        Seconds between polls of a remote run.
    warm_worker:
        Start the process of the next local run ahead of time (saves ~2 s per run).
    """

    def __init__(self, notebook: str | None = None, *, shell: Any = None,
                 interval_s: float = 1.0, warm_worker: bool = True) -> None:
        super().__init__()
        self.add_class("kale-panel")
        self._lock = threading.RLock()
        self._ticker: threading.Thread | None = None
        self._shown_failure: Any = None  # the run whose failed step the chooser was set to
        shell = _shell(shell)
        session = api.NotebookSession.of(shell) if shell is not None else api.NotebookSession()
        self.control: RunControl | None = None
        self.plan: api.Plan | None = None
        error = ""
        try:
            self.control = RunControl(session, session.notebook(notebook), self.refresh,
                                      interval_s=interval_s, warm_worker=warm_worker)
            self.plan = self.control.plan()
        except api.KaleError as exc:
            error = str(exc)
        self.form = SettingsForm(self.plan)
        self.sweep = SweepSection(self.control.notebook if self.control else "", self.form,
                                  getattr(shell, "user_ns", None), self.refresh)
        if self.plan is not None:
            self.sweep.sync(self.plan)
        self._build(path=self.control.notebook if self.control else "")
        self.message.value = rich.error_html(error) if error else ""
        self.refresh()

    # -- layout -----------------------------------------------------------------------------

    def _build(self, path: str) -> None:
        def button(text: str, css: str, style: str, tip: str, handler: Callable[[], None]) -> w.Button:
            b = w.Button(description=text, button_style=style, tooltip=tip)
            b.add_class(css)
            b.on_click(lambda _: self._safely(handler))
            return b

        self.check_button = button("Check", "kale-check-button", "", "pre-flight check", self.check)
        self.compile_button = button("Compile", "kale-compile-button", "",
                                     "write the KFP DSL and YAML", self.compile)
        self.run_button = button("Run", "kale-run-button", "success",
                                 "compile and run on the chosen target", self.run)
        self.cancel_button = button("Cancel", "kale-cancel-button", "",
                                    "stop the active run", self.cancel)
        self.status_html, self.dag_html, self.metrics_html = w.HTML(), w.HTML(), w.HTML()
        self.message, self.detail_html = w.HTML(), w.HTML()
        self.step_choice = w.Dropdown(options=[_NO_STEP], value=_NO_STEP, description="step")
        self.step_choice.add_class("kale-step-choice")
        self.step_choice.observe(lambda _: self._safely(self.refresh), names="value")
        title = w.HTML(f"<b>Kale deploy panel</b> <code>{html.escape(path)}</code>")
        sweep = w.Accordion(children=[self.sweep.widget], titles=("parameter sweep",),
                            selected_index=None)
        sweep.add_class("kale-sweep-section")
        view = w.VBox([self.status_html, self.dag_html, self.metrics_html, self.step_choice,
                       self.detail_html, sweep],
                      layout=w.Layout(flex="1 1 auto", min_width="22em", overflow="auto"))
        settings = w.VBox([w.HTML("<b>settings</b>"), self.form.widget],
                          layout=w.Layout(flex="0 0 auto", width="29em"))
        self.children = [title, w.HBox([self.check_button, self.compile_button, self.run_button,
                                        self.cancel_button]),
                         self.message, w.HBox([settings, view])]
        if self.control is not None:
            self.history = RunHistoryView(path, self.control.server, self.control.pipeline_roots)
            self.children = [*self.children, self.history]

    # -- buttons ----------------------------------------------------------------------------

    def _safely(self, handler: Callable[[], None]) -> None:
        """Run a handler; a failure becomes the panel's red message, never a traceback."""
        try:
            handler()
        except api.KaleError as error:
            self.message.value = rich.error_html(str(error))
        except Exception as error:
            self.message.value = rich.error_html(f"unexpected {type(error).__name__}: {error}")
        self.refresh()

    def _reload(self) -> api.Plan:
        """Re-read the saved notebook (the user may have changed it) with the form's settings."""
        assert self.control is not None
        self.plan = self.control.plan(self.form.options())
        self.form.sync_parameters(self.plan)
        self.sweep.sync(self.plan)
        return self.plan

    def check(self) -> None:
        """Pre-flight check: serialise every passed variable now; warn about unsaved cells."""
        if self._ready():
            self.message.value = rich.check_html(self.control.check())

    def compile(self) -> None:
        """Compile; show where the DSL and the YAML went (a compile error: the last run stays
        shown, labelled as the previous run)."""
        if self._ready():
            with self._previous_on_error():
                self._reload()
                compiled = self.control.compile(self.form.options())
            self.message.value = rich.compile_html(compiled)

    def run(self) -> None:
        """Compile and run on the chosen target; refused while a run is active."""
        if not self._ready():
            return
        if self.control.active:
            self.message.value = rich.info_html([_BUSY])
            return
        self.message.value = ""
        with self._previous_on_error():
            self._reload()
        request = RunRequest(self.form.options(), self.form.arguments(), self.form.chosen_target(),
                             self.form.caching.value)
        if self.control.start_run(request):
            self._start_ticker()

    @contextlib.contextmanager
    def _previous_on_error(self) -> Iterator[None]:
        """A failure inside (the notebook does not compile) leaves the last run shown as the
        previous run, beside the new error."""
        try:
            yield
        except Exception:
            if self.control is not None:
                self.control.nothing_started()
            raise

    def cancel(self) -> None:
        """Stop the active run."""
        if self.control is not None and self.control.can_cancel:
            self.control.cancel()
            self.message.value = rich.info_html(["canceling ..."])

    def _ready(self) -> bool:
        return self.control is not None

    # -- view -------------------------------------------------------------------------------

    def _start_ticker(self) -> None:
        """Refresh once a second while the run is active, for the running steps' elapsed time."""
        def tick() -> None:
            while self.control is not None and self.control.active:
                time.sleep(1.0)
                self.refresh()
            self.refresh()
            if self.control is not None:
                self.history.reload()

        self._ticker = threading.Thread(target=tick, name="kale-panel-ticker", daemon=True)
        self._ticker.start()

    def refresh(self) -> None:
        """Render the current state into the widgets (safe to call from any thread)."""
        with self._lock:
            control, now = self.control, time.time()
            status = control.status if control else None
            sweeping = self.sweep.active
            active = bool(control and control.active) or sweeping
            previous = bool(control and control.previous)
            self.status_html.value = rich.status_line_html(
                status, now, control.activity if control else "",
                control.started if control else None, previous=previous)
            if self.plan is not None:
                chosen = self.step_choice.value if self.step_choice.value != _NO_STEP else ""
                self.dag_html.value = rich.dag_html(self._shown_plan(), status, now, previous,
                                                    choose=True, chosen=chosen or "")
                self._refresh_steps(status)
            self.metrics_html.value = rich.metrics_html(status)
            if not active and self.message.value == rich.info_html([_BUSY]):
                self.message.value = ""
            if control is not None and control.error and not active:
                self.message.value = rich.error_html(control.error)
                control.error = ""
            self.run_button.disabled = active or control is None
            self.check_button.disabled = self.compile_button.disabled = active or control is None
            can_cancel = bool(control and control.can_cancel)
            self.cancel_button.disabled = not can_cancel
            self.cancel_button.button_style = "danger" if can_cancel else ""  # grey when off
            self.form.set_enabled(not active)
            self.sweep.set_enabled(not active and control is not None)

    def _shown_plan(self) -> api.Plan:
        compiled = self.control.compiled if self.control else None
        return compiled.plan if compiled is not None and self.control.status is not None else self.plan

    def _refresh_steps(self, status: Any) -> None:
        plan = self._shown_plan()
        names = [_NO_STEP, *(s.name for s in plan.steps)]
        if list(self.step_choice.options) != names:
            self.step_choice.options = names
        failed = status.failed_steps if status is not None else []
        if failed and self._shown_failure is not status:  # once per run: then the user chooses
            self._shown_failure = status
            self.step_choice.value = failed[0].name
        chosen = self.step_choice.value
        if chosen == _NO_STEP or chosen is None:
            self.detail_html.value = ""
            return
        step_status = status.steps.get(chosen) if status is not None else None
        self.detail_html.value = rich.step_detail_html(plan.step(chosen), step_status, time.time())

    def close(self) -> None:
        """Close the widgets and stop the panel's waiting run process."""
        if self.control is not None:
            self.control.close()
        super().close()
