"""Embed the step runtime in the generated DSL module.

A compiled pipeline must run on a stock ``python:3.x`` image without
kale-magics installed. The runtime modules (``marshal``, ``shell``, ``step``)
therefore travel inside every component: the DSL module defines a function
``_kale_runtime()`` holding their source text, passed to KFP with
``dsl.component(additional_funcs=[...])`` (KFP embeds the source of additional
functions in the component's command). Called in the step, it executes the
sources as the modules ``kale_magics.runtime.*`` and returns the ``step`` module.
The embedding is plain text, so it is deterministic (KFP's own
``embedded_artifact_path`` tars with timestamps and is not).
"""

from __future__ import annotations

from importlib import resources

from kale_magics.codegen.literals import text_literal

#: Runtime modules in dependency order.
RUNTIME_MODULES = ("marshal", "shell", "step")

_LOADER = '''\
def _kale_runtime():
    """Load the kale-magics step runtime embedded below and return its `step` module."""
    import sys
    import types

    sources = {sources}
    for name in ("kale_magics", "kale_magics.runtime"):
        package = types.ModuleType(name)
        package.__path__ = []
        sys.modules[name] = package
    for name, source in sources.items():
        module = types.ModuleType(name)
        sys.modules[name] = module
        setattr(sys.modules["kale_magics.runtime"], name.rsplit(".", 1)[1], module)
        exec(compile(source, name.replace(".", "/") + ".py", "exec"), module.__dict__)
    return sys.modules["kale_magics.runtime.step"]
'''


def runtime_sources() -> dict[str, str]:
    """Return ``{"kale_magics.runtime.marshal": source, ...}`` of the installed runtime."""
    package = resources.files("kale_magics.runtime")
    return {f"kale_magics.runtime.{name}": package.joinpath(f"{name}.py").read_text("utf-8")
            for name in RUNTIME_MODULES}


def runtime_function() -> str:
    """Source of the ``_kale_runtime`` function embedded in every component."""
    items = "".join(f"        {name!r}: {text_literal(source, ' ' * 12)},\n"
                    for name, source in runtime_sources().items())
    return _LOADER.format(sources="{\n" + items + "    }")
