"""`python -m realtime`, the documented command (README, Procfile).

The program itself, its command line and the wiring of every layer, is the `server` package,
which sits above `handlers`, `realtime` and `storage`. This file starts it rather than importing
it, so that nothing in `realtime` depends on the layer above it.
"""

import importlib.util
import runpy
import sys

# run by an interpreter without the project's dependencies (a system python in the project's
# directory): one line saying which environment to use, not a traceback
_missing = [
    name
    for name in ("aiohttp", "socketio", "marshmallow", "jwt")
    if importlib.util.find_spec(name) is None
]
if _missing:
    sys.exit(
        f"python -m realtime: {', '.join(_missing)} not installed for {sys.executable}; "
        "run it in the project's environment: scripts/serve, scripts/token, or "
        ".venv/bin/python -m realtime (after scripts/serve or scripts/test has made .venv)"
    )
runpy.run_module("server", run_name="__main__", alter_sys=True)
