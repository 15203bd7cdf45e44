"""``python -m mesh.cli``: the same as the ``meshserve`` command."""

import sys

from mesh.cli import main

sys.exit(main())
