"""`python -m scanside` runs the `scanside` command."""

import sys

from scanside.cli import main

sys.exit(main())
