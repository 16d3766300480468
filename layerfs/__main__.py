"""``python -m layerfs``: the same as the ``layerfs`` command."""

import sys

from ._cli.main import main

sys.exit(main())
