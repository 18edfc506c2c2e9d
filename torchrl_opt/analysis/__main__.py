"""``python -m torchrl_opt.analysis --help``."""

from torchrl_opt.analysis.cli import main

raise SystemExit(main())
