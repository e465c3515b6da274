"""Embed the step runtime in the generated DSL module.

A compiled pipeline must run on a stock ``python:3.x`` image without
kale-magics installed. The runtime modules (``backends``, ``channel``, ``marshal``,
``pickling``, ``shell``, ``step``) therefore travel inside every component: the DSL module defines a function
``_kale_runtime()`` holding their source text, passed to KFP with
``dsl.component(additional_funcs=[...])`` (KFP embeds the source of additional
functions in the component's command). Called in the step, it executes the
sources as the modules ``kale_magics.runtime.*`` and returns the ``step`` module.
The embedding is deterministic (KFP's own ``embedded_artifact_path`` tars with
timestamps and is not).
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from importlib import resources

from kale_magics import __version__

#: Runtime modules in dependency order.
RUNTIME_MODULES = ("backends", "channel", "marshal", "pickling", "shell", "step")
#: Characters of base64 per line of the embedded blob.
BLOB_LINE = 1024

_LOADER = '''\
def _kale_runtime():
    """Load the embedded kale-magics step runtime and return its `step` module.

    The blob holds kale_magics/runtime/{{backends,channel,marshal,pickling,shell,step}}.py of kale-magics {version}
    as zlib-compressed JSON in base64 (sha256 of the JSON: {digest}).
    """
    import base64
    import builtins  # a step may be named exec, compile or setattr: it shadows the builtins here
    import json
    import sys
    import types
    import zlib

    blob = {blob}
    sources = json.loads(zlib.decompress(base64.b64decode(blob)))
    for name in ("kale_magics", "kale_magics.runtime"):
        package = types.ModuleType(name)
        package.__path__ = []
        sys.modules[name] = package
    for name, source in sources.items():
        module = types.ModuleType(name)
        sys.modules[name] = module
        builtins.setattr(sys.modules["kale_magics.runtime"], name.rsplit(".", 1)[1], module)
        builtins.exec(builtins.compile(source, name.replace(".", "/") + ".py", "exec"), module.__dict__)
    return sys.modules["kale_magics.runtime.step"]
'''


def runtime_sources() -> dict[str, str]:
    """Return ``{"kale_magics.runtime.marshal": source, ...}`` of the installed runtime."""
    package = resources.files("kale_magics.runtime")
    return {f"kale_magics.runtime.{name}": package.joinpath(f"{name}.py").read_text("utf-8")
            for name in RUNTIME_MODULES}


def runtime_function() -> str:
    """Source of the ``_kale_runtime`` function embedded in every component.

    The sources are compressed: the runtime is repeated in every component of
    the IR, and KFP servers limit the size of a pipeline spec. The blob is cut
    into lines of :data:`BLOB_LINE` characters: KFP tokenizes the function's
    source once per component (``inspect.getsource``), and 88-character lines
    made that a quarter of a warm compile.
    """
    data = json.dumps(runtime_sources(), sort_keys=True).encode("utf-8")
    encoded = base64.b64encode(zlib.compress(data, 9)).decode("ascii")
    chunks = [encoded[i:i + BLOB_LINE] for i in range(0, len(encoded), BLOB_LINE)]
    blob = "(\n" + "".join(f"        {c!r}\n" for c in chunks) + "    )"
    return _LOADER.format(version=__version__, digest=hashlib.sha256(data).hexdigest(), blob=blob)
