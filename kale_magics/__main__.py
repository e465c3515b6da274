"""``python -m kale_magics``: the same as the ``kale-magics`` command."""

import sys

from kale_magics.cli import main

sys.exit(main())
