"""``python -m recforge.serving.fleet``: see recforge.serving.fleet.cli."""

from recforge.serving.fleet.cli import main

raise SystemExit(main())
