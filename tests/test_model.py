"""The plain data's few rules: one merge convention (later wins), canonical pip names, task names."""

from __future__ import annotations

from kale_magics.codegen.packages import with_overrides
from kale_magics.model import PipelineSettings, StepSettings, requirement_name, task_name


def test_later_settings_win_for_steps_and_pipelines_alike() -> None:
    defaults = StepSettings(memory="1Gi", cpu="1", env=(("A", "1"), ("B", "2")),
                            volumes=(("data", "/data"),), packages=("numpy==1.0",))
    own = StepSettings(memory="4Gi", env=(("B", "3"),), volumes=(("other", "/data"),),
                       packages=("NumPy==2.0",))
    merged = defaults.merged(own)
    assert (merged.memory, merged.cpu) == ("4Gi", "1")
    assert merged.env == (("A", "1"), ("B", "3"))  # the same variable: the later value
    assert merged.volumes == (("other", "/data"),)  # the same mount path
    assert merged.packages == ("NumPy==2.0",)  # the same distribution
    earlier = PipelineSettings(name="a", experiment="e", pip_index_urls=("http://one",),
                               step_defaults=defaults)
    later = PipelineSettings(name="b", pip_index_urls=("http://two",), step_defaults=own)
    pipeline = earlier.merged(later)
    assert (pipeline.name, pipeline.experiment) == ("b", "e")
    assert pipeline.pip_index_urls == ("http://two",)  # a list given later replaces the earlier
    assert pipeline.step_defaults == merged
    assert earlier.merged(PipelineSettings()) == earlier  # nothing set: nothing changes


def test_requirement_names_are_canonical() -> None:
    assert requirement_name("Scikit_Learn>=1") == "scikit-learn"
    assert requirement_name("zope.interface==6.0") == "zope-interface"
    assert requirement_name("torch[cuda] ; python_version>'3'") == "torch"
    assert with_overrides(["zope.interface==5.0", "numpy==1.0"], ["zope-interface==6.0"]) == [
        "numpy==1.0", "zope-interface==6.0"]


def test_task_name_is_the_step_written_as_kfp_names_it() -> None:
    assert task_name("train_forest") == "train-forest"
