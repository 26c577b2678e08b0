"""``python -m modelpull``."""

import sys

from modelpull.cli import main

sys.exit(main())
