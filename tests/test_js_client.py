"""The JS client library's own tests (clients/js/test/, `node --test`), run by pytest so that
`scripts/test` runs them too: each starts real gateway processes with this Python."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.tools import require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join("clients", "js", "test")
NODE_RUN_S = 100  # the Node run takes about 20 s


@pytest.mark.timeout(NODE_RUN_S + 20)
def test_js_client_library() -> None:
    node = require("node")
    env = {**os.environ, "GATEWAY_PYTHON": sys.executable}
    env.pop("GATEWAY_ROOT", None)  # the gateway of this checkout
    run = subprocess.run(
        [node, "--test", TESTS + os.sep],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_RUN_S,
    )
    assert run.returncode == 0, f"node --test {TESTS} failed:\n{run.stdout}\n{run.stderr}"
