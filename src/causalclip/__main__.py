"""``python -m causalclip``: the same as the ``causalclip`` command."""

import sys

from .cli.main import main

sys.exit(main())
