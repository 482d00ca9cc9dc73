"""`python -m scanside.cli`, as before the command became a package."""

import sys

from scanside.cli import main

sys.exit(main())
