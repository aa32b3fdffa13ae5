"""``python -m lateral ...`` (and ``torchrun -m lateral train ...``) runs the command line."""

import sys

from lateral.cli import main

sys.exit(main())
