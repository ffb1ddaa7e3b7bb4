"""``python -m recforge.serving.rollout``: see recforge.serving.rollout.cli."""

from recforge.serving.rollout.cli import main

raise SystemExit(main())
