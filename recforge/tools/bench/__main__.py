"""``python -m recforge.tools.bench``: see :mod:`recforge.tools.bench.cli`."""

import sys

from recforge.tools.bench.cli import main

sys.exit(main())
