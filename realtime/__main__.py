"""`python -m realtime`, the documented command (README, Procfile).

The program itself, its command line and the wiring of every layer, is the `server` package,
which sits above `handlers`, `realtime` and `storage`. This file starts it rather than importing
it, so that nothing in `realtime` depends on the layer above it.
"""

import runpy

runpy.run_module("server", run_name="__main__", alter_sys=True)
