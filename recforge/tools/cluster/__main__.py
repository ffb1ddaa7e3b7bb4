"""``python -m recforge.tools.cluster``: see recforge.tools.cluster.cli."""

from recforge.tools.cluster.cli import main

raise SystemExit(main())
