"""The JS client library's own tests (clients/js/test/, `node --test`), run by pytest so that
`scripts/test` runs them too: each starts real gateway processes with this Python."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join("clients", "js", "test")
NODE_RUN_S = 100  # the Node run takes about 20 s


@pytest.mark.timeout(NODE_RUN_S + 20)
def test_js_client_library() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (Node 20 runs the JS client's tests)")
    if not os.path.isdir(os.path.join(ROOT, "node_modules", "socket.io-client")):
        pytest.fail("socket.io-client is not installed: run `npm ci` (scripts/test does)")
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
