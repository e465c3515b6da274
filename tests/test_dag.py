"""The DAG drawing and the HTML/text views are pure functions: tested without a kernel."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from kale_magics.views.dag import COLOURS, dag_svg, layers
from kale_magics.views.text import size_text

STEPS = [("load", ()), ("left", ("load",)), ("right", ("load",)), ("join", ("left", "right", "load"))]


def test_layers_by_longest_path() -> None:
    assert layers(STEPS) == [["load"], ["left", "right"], ["join"]]
    assert layers([]) == []


@pytest.mark.parametrize("state", [s for s in COLOURS if s])
def test_every_state_is_drawn_with_its_colour(state) -> None:
    svg = dag_svg(STEPS, {"left": state}, {"left": "1.5 s"})
    root = ET.fromstring(svg)  # well-formed XML
    node = next(g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("data-step") == "left")
    assert node.get("data-state") == state
    rect = node.find("{http://www.w3.org/2000/svg}rect")
    assert (rect.get("fill"), rect.get("stroke")) == COLOURS[state]
    assert "1.5 s" in svg


def test_not_started_edges_and_escaping() -> None:
    svg = dag_svg([("a<b", ()), ("c", ("a<b",))])
    ET.fromstring(svg)
    assert "a&lt;b" in svg and "not started" in svg
    assert len(re.findall("<path ", svg)) == 1


def test_size_text() -> None:
    assert [size_text(n) for n in (None, 5, 2048, 3 * 1024 ** 2)] == ["", "5 B", "2.0 KiB", "3.0 MiB"]
