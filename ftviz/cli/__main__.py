"""``python -m ftviz.cli`` (as torchrun launches it): the ``ftviz`` command."""

import sys

from ftviz.cli import main

sys.exit(main())
