"""``python -m vimtune`` runs the command-line tool."""

import sys

from vimtune.cli import main

sys.exit(main())
