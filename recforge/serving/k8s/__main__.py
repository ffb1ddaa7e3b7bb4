"""``python -m recforge.serving.k8s``: see recforge.serving.k8s.cli."""

from recforge.serving.k8s.cli import main

raise SystemExit(main())
