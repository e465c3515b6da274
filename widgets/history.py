"""The panel's run history: this notebook's runs, and two of them side by side.

What it shows is :func:`kale_magics.api.run_history` rendered by
:mod:`kale_magics.views.history` (the table ``%kale runs`` and ``kale-magics runs`` print).
The deploy panel reloads it when one of its runs ends; Refresh reloads it after runs made
elsewhere (``%kale run``, the command line).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as w

from kale_magics import api
from kale_magics.views import history as views
from kale_magics.views import rich


class RunHistoryView(w.VBox):
    """A notebook's runs (local, and the KFP server's when one is connected) and a comparison.

    Parameters
    ----------
    notebook:
        The .ipynb path.
    server:
        Called on each reload: the KFP session whose runs to list too, or None.
    pipeline_roots:
        Called on each reload: folders to look in for local runs besides the defaults.
    """

    def __init__(self, notebook: str, server: Callable[[], Any] = lambda: None,
                 pipeline_roots: Callable[[], list[str]] = lambda: []) -> None:
        super().__init__()
        self.add_class("kale-history")
        self.notebook, self._server, self._roots = notebook, server, pipeline_roots
        self.history = api.RunHistory(())
        self.table = w.HTML()
        self.table.add_class("kale-runs-html")
        self.comparison = w.HTML()
        self.comparison.add_class("kale-compare-html")
        self.first = w.Dropdown(options=[], description="compare", layout=w.Layout(width="30em"))
        self.second = w.Dropdown(options=[], description="with", layout=w.Layout(width="30em"))
        self.first.add_class("kale-compare-first")
        self.second.add_class("kale-compare-second")
        self.refresh_button = w.Button(description="Refresh", tooltip="list the runs again")
        self.refresh_button.add_class("kale-runs-refresh")
        self.refresh_button.on_click(lambda _: self.reload())
        for choice in (self.first, self.second):
            choice.observe(lambda _: self.compare(), names="value")
        self.children = [w.HBox([w.HTML("<b>runs</b>"), self.refresh_button]), self.table,
                         w.HBox([self.first, self.second]), self.comparison]
        self.reload()

    def reload(self) -> None:
        """List the runs again (a failure becomes a red line in place of the table)."""
        try:
            self.history = api.run_history(self.notebook, pipeline_roots=self._roots(),
                                           server=self._server())
        except api.KaleError as error:
            self.table.value = rich.error_html(f"runs not listed: {error}")
            return
        ids = [r.run_id for r in self.history.runs]
        chosen = (self.first.value, self.second.value)
        with self.hold_trait_notifications():
            self.first.options = self.second.options = ids
            if len(ids) >= 2:
                self.first.value = chosen[0] if chosen[0] in ids else ids[1]
                self.second.value = chosen[1] if chosen[1] in ids else ids[0]
        self.compare()

    def compare(self) -> None:
        """Show the two chosen runs side by side (nothing until two different runs are chosen)."""
        runs = {r.run_id: r for r in self.history.runs}
        picked = [runs.get(v) for v in (self.first.value, self.second.value)]
        self.table.value = views.runs_html(self.history, [r.run_id for r in picked if r])
        first, second = picked
        if first is None or second is None or first is second:
            self.comparison.value = ""
            return
        self.comparison.value = views.comparison_html(first, second,
                                                      api.compare_runs(first, second))
