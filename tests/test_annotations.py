"""The annotation grammar shared by the magic and the notebook reader."""

from __future__ import annotations

import pytest

from kale_magics.errors import AnnotationError
from kale_magics.model import Annotation, PipelineSettings
from kale_magics.notebook.annotations import (
    is_cell_annotation,
    is_pipeline_line,
    parse_cell_line,
    parse_pipeline_line,
    pipeline_name_from,
)


@pytest.mark.parametrize("kind", ["imports", "functions", "parameters", "metrics", "skip"])
def test_simple_kinds(kind: str) -> None:
    assert parse_cell_line(f"%%kale {kind}") == Annotation(kind=kind)
    assert parse_cell_line(kind) == Annotation(kind=kind)


def test_step_with_all_options() -> None:
    got = parse_cell_line("%%kale step train --after load prep --inputs df --outputs model df")
    assert got == Annotation(kind="step", name="train", after=("load", "prep"),
                             inputs=("df",), outputs=("model", "df"))


def test_step_options_repeat_and_dedupe() -> None:
    got = parse_cell_line("step b --after a --after a")
    assert got.after == ("a",)


@pytest.mark.parametrize("line, fragment", [
    ("%%kale", "needs a kind"),
    ("%%kale stepp x", "unknown annotation kind 'stepp'"),
    ("%%kale step", "the following arguments are required: name"),
    ("%%kale step Train", "invalid step name 'Train'"),
    ("%%kale step 1x", "invalid step name '1x'"),
    ("%%kale step class", "invalid step name 'class'"),
    ("%%kale step match", "invalid step name 'match'"),
    ("%%kale step pipeline", "reserved"),
    ("%%kale step kale_x", "reserved"),
    ("%%kale step " + "a" * 64, "1-63"),
    ("%%kale step tr-ain", "invalid step name"),
    ("%%kale step train --after", "expected at least one argument"),
    ("%%kale step train --before x", "unrecognized arguments: --before x"),
    ("%%kale step train --after train", "cannot run --after itself"),
    ("%%kale step train --after Bad", "invalid --after step 'Bad'"),
    ("%%kale step train --inputs 1x", "not a Python variable name"),
    ("%%kale imports now", "takes no arguments"),
    ("%%kale step 'train", "close the quote"),
])
def test_bad_lines_name_the_fix(line: str, fragment: str) -> None:
    with pytest.raises(AnnotationError) as info:
        parse_cell_line(line)
    assert fragment in str(info.value)


def test_invalid_step_name_suggests_a_valid_one() -> None:
    with pytest.raises(AnnotationError, match="for example 'train_model'"):
        parse_cell_line("%%kale step Train-Model")


def test_pipeline_line() -> None:
    got = parse_pipeline_line('%kale pipeline --name titanic --experiment "exp 1" --description "it\'s"')
    assert got == PipelineSettings(name="titanic", experiment="exp 1", description="it's")


def test_pipeline_line_rejects_bad_name_and_unknown_option() -> None:
    with pytest.raises(AnnotationError, match="for example 'my-pipeline'"):
        parse_pipeline_line("%kale pipeline --name My_Pipeline")
    with pytest.raises(AnnotationError, match="unrecognized arguments: --colour"):
        parse_pipeline_line("%kale pipeline --colour red")


def test_settings_merge_later_wins() -> None:
    first = PipelineSettings(name="a", experiment="e")
    assert first.merged(PipelineSettings(name="b")) == PipelineSettings(name="b", experiment="e")


def test_line_detection() -> None:
    assert is_cell_annotation("%%kale step x")
    assert is_cell_annotation("%%kale")
    assert not is_cell_annotation("%%kalex")
    assert not is_cell_annotation("%%time")
    assert is_pipeline_line("  %kale pipeline --name x")
    assert not is_pipeline_line("%kale show")
    assert not is_pipeline_line("# %kale pipeline")


def test_pipeline_name_from_file_stem() -> None:
    assert pipeline_name_from("My Notebook (v2)") == "my-notebook-v2"
    assert pipeline_name_from("___") == "pipeline"
