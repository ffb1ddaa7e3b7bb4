"""``python -m recforge.inference.triton``: see :mod:`recforge.inference.triton.cli`."""

from recforge.inference.triton.cli import main

raise SystemExit(main())
