"""The programs the tests run beside Python (nginx, redis-server, Chromium, Node): a test that
needs one this machine lacks skips, naming the Debian package to install. `scripts/test`
installs them when it runs as root with apt-get (as in CI), so there they never skip."""

from __future__ import annotations

import os
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {
    "nginx": "nginx-light",
    "redis-server": "redis-server",
    "chromium": "chromium",
    "node": "nodejs npm",
}


def require(tool: str) -> str:
    """The program's path, or skip the test naming what to install."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(
            f"{tool} is not installed: apt-get install {PACKAGES[tool]} "
            "(scripts/test installs it when run as root)"
        )
    if tool == "node" and not os.path.isdir(os.path.join(ROOT, "node_modules", "socket.io-client")):
        pytest.skip("the JS client is not installed: npm ci (scripts/test runs it)")
    return path
