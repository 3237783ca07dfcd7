"""`python -m utils ...`: the course's command line, in utils/apps/cli.py."""

import sys

from utils.apps.cli import main

sys.exit(main())
