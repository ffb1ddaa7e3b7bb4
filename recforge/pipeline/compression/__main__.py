"""``python -m recforge.pipeline.compression``: the compression stage's CLI (:mod:`.cli`)."""

import sys

from recforge.pipeline.compression.cli import main

sys.exit(main())
