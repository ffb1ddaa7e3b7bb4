"""``python -m recforge.inference.loadgen``: see :mod:`recforge.inference.loadgen.cli`."""

import sys

from recforge.inference.loadgen.cli import main

sys.exit(main())
