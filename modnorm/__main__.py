"""``python -m modnorm …`` runs the ``modnorm`` command (see ``modnorm.cli``)."""

import sys

from .cli import main

sys.exit(main())
