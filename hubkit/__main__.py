"""`python -m hubkit` is the `hubkit` command."""

import sys

from .cli import main

sys.exit(main())
