"""docs/openapi.yaml is true to the running server, and no input makes it fail: schemathesis
generates requests from the document against a real gateway process and checks every answer
(status codes, content types and bodies as documented, and never a 5xx)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.clients import ROOT

SERVICE_TOKEN = "fuzz-service-token-0123456789"
schema = schemathesis.openapi.from_path(os.path.join(ROOT, "docs", "openapi.yaml"))


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory):
    store = tmp_path_factory.mktemp("openapi") / "fuzz.db"
    env = {
        **os.environ,
        "STORE_PATH": str(store),
        "JWT_SECRET": "f" * 40,
        "BROADCAST_TOKEN": SERVICE_TOKEN,
        "LOG_LEVEL": "error",
        "PYTHONPATH": ROOT,
        "MAX_PAYLOAD_BYTES": "65536",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "realtime", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    assert line.startswith("realtime gateway listening on "), line
    yield line.split(" on ")[1].split(" ")[0]
    process.terminate()
    assert process.wait(timeout=30) == 0


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_the_api_answers_every_input_as_documented(case, gateway_url):
    headers = (
        {"Authorization": f"Bearer {SERVICE_TOKEN}"}
        if case.path in ("/broadcast", "/status", "/disconnect", "/revoke")
        else {}
    )
    key = (case.headers or {}).get("Idempotency-Key")
    if key and len(key) <= 200:
        # a generated key reused with another body is a 422 conflict (tested in test_http);
        # schemathesis would count that as a valid request refused
        headers["Idempotency-Key"] = uuid.uuid4().hex
    case.call_and_validate(base_url=gateway_url, headers=headers)


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_the_api_refuses_unauthenticated_input_as_documented(case, gateway_url):
    case.call_and_validate(base_url=gateway_url)
