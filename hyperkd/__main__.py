"""``python -m hyperkd`` is the ``hyperkd`` console script."""

from hyperkd.cli import main

raise SystemExit(main())
