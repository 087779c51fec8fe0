"""``python -m eessi_pipeline.cli``: the same as the ``eessi-pipeline`` command."""

from . import main

raise SystemExit(main())
