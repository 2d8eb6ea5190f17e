"""`python -m app.lab`: the `lab` command before it is installed as a script."""

import sys

from app.lab.cli import main

sys.exit(main())
