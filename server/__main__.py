"""`python -m server`: the same command line as `python -m realtime`."""

import sys

from server.cli import main

sys.exit(main())
