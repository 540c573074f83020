"""docs/openapi.yaml is valid OpenAPI 3.0.3 (a real validator says so), true to the running
server, and no input makes it fail: the server's answers to ordinary calls match the
documented schemas and headers, and schemathesis generates requests from the document against
a real gateway process and checks every answer (status codes, content types and bodies as
documented, and never a 5xx)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import uuid

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from realtime.errors import CATALOGUE
from realtime.wire import event_id, event_sequence
from tests.clients import ROOT

SERVICE_TOKEN = "fuzz-service-token-0123456789"
OPENAPI_PATH = os.path.join(ROOT, "docs", "openapi.yaml")
PROTOCOL_PATH = os.path.join(ROOT, "docs", "protocol.md")
schema = schemathesis.openapi.from_path(OPENAPI_PATH)
with open(OPENAPI_PATH) as document:
    SPEC = yaml.safe_load(document)


def test_the_document_is_valid_openapi_3_0_3():
    assert SPEC["openapi"] == "3.0.3"
    validate_spec(SPEC)


def test_the_validator_refuses_what_3_0_3_does_not_allow():
    # OpenAPI 3.1's way of saying nullable, which a 3.0 document may not use: the validator
    # above is a real one, and would have refused the document as it was
    broken = copy.deepcopy(SPEC)
    watcher = broken["components"]["schemas"]["Status"]["properties"]["watcher"]
    watcher["properties"]["holder"] = {"type": ["string", "null"]}
    with pytest.raises(OpenAPIValidationError):
        validate_spec(broken)


def documented(reference: str, value) -> list[str]:
    """What in `value` the document's schema at `reference` refuses (nothing: it matches)."""
    validator = OAS30Validator({"$ref": reference, **SPEC})
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)
    ]


def test_the_error_codes_are_the_catalogue_and_the_protocol_names_each():
    codes = SPEC["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
    assert set(codes["enum"]) == set(CATALOGUE)
    with open(PROTOCOL_PATH) as protocol:
        text = protocol.read()
    assert [code for code in CATALOGUE if f"`{code}`" not in text] == []


def test_event_ids_are_documented_as_the_gateway_writes_and_reads_them():
    event_ids = SPEC["components"]["schemas"]["EventId"]
    assert documented("#/components/schemas/EventId", event_id(1)) == []
    assert documented("#/components/schemas/EventId", event_id(10**16 - 1)) == []
    assert documented("#/components/schemas/EventId", "42") != []  # a cursor, not an eventId
    assert re.fullmatch(event_ids["pattern"], event_id(123456))
    # what clients hand back as lastEventId: 1 to 16 digits, as the description says
    assert event_sequence("7") == 7 and event_sequence(event_id(7)) == 7
    for refused in ("", "1" * 17, "12a", "-1", " 1"):
        with pytest.raises(ValueError):
            event_sequence(refused)
    assert "1 to 16 ASCII digits" in event_ids["description"]


SERVICE = {"Authorization": "Bearer answers-service-token-0123456789"}
answers = pytest.mark.env(BROADCAST_TOKEN=SERVICE["Authorization"].split()[1])


def header_schema(path: str, method: str, status: str, header: str) -> dict:
    return SPEC["paths"][path][method]["responses"][status]["headers"][header]


@answers
async def test_the_answers_match_the_documented_schemas(http, connect):
    customer = await connect(sub="c1")
    assert (await customer.call("join_room", {"roomId": "availability-s1"}))["ok"]

    health = await http.get("/health")
    assert health.status == 200
    assert (
        documented(
            "#/paths/~1health/get/responses/200/content/application~1json/schema",
            await health.json(),
        )
        == []
    )
    ready = await http.get("/ready")
    assert ready.status == 200
    assert (
        documented(
            "#/paths/~1ready/get/responses/200/content/application~1json/schema", await ready.json()
        )
        == []
    )
    status = await http.get("/status", headers=SERVICE)
    assert status.status == 200
    assert documented("#/components/schemas/Status", await status.json()) == []

    body = {"event": "notification", "data": {"title": "hi"}, "users": ["c1"]}
    first = await http.post("/broadcast", json=body, headers={**SERVICE, "Idempotency-Key": "k1"})
    assert first.status == 202
    assert documented("#/components/schemas/BroadcastAccepted", await first.json()) == []
    assert "Idempotent-Replayed" not in first.headers
    again = await http.post("/broadcast", json=body, headers={**SERVICE, "Idempotency-Key": "k1"})
    assert again.status == 202 and await again.json() == await first.json()
    replayed = header_schema("/broadcast", "post", "202", "Idempotent-Replayed")
    assert again.headers["Idempotent-Replayed"] in replayed["schema"]["enum"]

    cut = await http.post("/disconnect", json={"users": ["nobody"]}, headers=SERVICE)
    assert cut.status == 202
    assert documented("#/components/schemas/DisconnectAccepted", await cut.json()) == []
    revoked = await http.post(
        "/revoke", json={"sub": "nobody", "until": 4102444800}, headers=SERVICE
    )
    assert revoked.status == 202
    assert documented("#/components/schemas/RevokeAccepted", await revoked.json()) == []

    refused = await http.post("/broadcast", json=body)
    assert refused.status == 401
    assert documented("#/components/schemas/Error", await refused.json()) == []


@answers
async def test_a_method_a_route_does_not_take_is_405_as_documented(http):
    allow = SPEC["components"]["responses"]["MethodNotAllowed"]["headers"]["Allow"]
    for path, operations in SPEC["paths"].items():
        taken = {method.upper() for method in operations}
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            if method in taken:
                continue
            response = await http.request(method, path, headers=SERVICE)
            body = await response.json()
            assert response.status == 405, (method, path)
            assert documented("#/components/schemas/Error", body) == []
            assert body["error"]["code"] == "method_not_allowed"
            assert (
                allow["required"] and set(response.headers["Allow"].split(",")) - {"HEAD"} == taken
            ), (method, path)


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
