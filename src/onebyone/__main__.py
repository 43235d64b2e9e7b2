"""``python -m onebyone`` is the ``onebyone`` command."""

import sys

from onebyone.cli import main

sys.exit(main())
