"""``python -m tasks.bench``: the suite's command line (tasks.benchsuite.main)."""

from tasks.benchsuite import main

raise SystemExit(main())
