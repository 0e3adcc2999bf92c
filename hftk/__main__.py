"""`python -m hftk` (and `accelerate launch -m hftk ...`) run the CLI."""

import sys

from hftk.cli import main

sys.exit(main())
