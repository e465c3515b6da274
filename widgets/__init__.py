"""kale_widgets: the deploy panel of kale-magics (``%kale panel``, or ``DeployPanel()``).

Installed from the repository's top-level ``widgets/`` folder under the import
name ``kale_widgets`` (a top-level ``widgets`` package would be shadowed by any
``widgets.py`` next to a user's notebook).
"""

from kale_widgets.panel import DeployPanel

__all__ = ["DeployPanel"]
