"""The quick reading of client payloads (`events._PlainStrings`) never answers otherwise than
marshmallow: for each payload it either declines or returns what the schema returns."""

from __future__ import annotations

import pytest
from marshmallow import EXCLUDE, RAISE, ValidationError

from realtime import events

SCHEMAS = [
    events.HandshakeAuthSchema(),
    events.AuthenticateSchema(),
    events.JoinRoomSchema(),
    events.LeaveRoomSchema(),
]
PAYLOADS = [
    {},
    {"roomId": "availability-s1"},
    {"roomId": "availability-s1", "lastEventId": "0000000000000042"},
    {"roomId": "availability-s1", "lastEventId": None},
    {"roomId": "availability-s1", "userId": "u1"},  # extra fields, as the seeds send them
    {"roomId": ""},
    {"roomId": "x" * 160},
    {"roomId": "x" * 161},
    {"roomId": None},
    {"roomId": 42},
    {"roomId": ["availability-s1"]},
    {"roomId": {"$gt": ""}},
    {"roomId": "r", "lastEventId": "9" * 64},
    {"roomId": "r", "lastEventId": "9" * 65},
    {"roomId": "r", "lastEventId": 7},
    {"token": "a.b.c"},
    {"token": None},
    {"token": ""},
    {"token": 12},
    {"token": "a.b.c", "lastEventId": "1"},
    {"token": "\u00e9\u2603\U0001f600"},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("refuse_unknown", [False, True])
def test_the_quick_reading_agrees_with_marshmallow(schema, refuse_unknown):
    quick = events._plain_strings(schema)
    assert quick.rules is not None  # the client schemas are all plain strings
    declined = 0
    for payload in PAYLOADS:
        got = quick.accept(payload, refuse_unknown)
        if got is None:
            declined += 1
            continue
        assert got == schema.load(payload, unknown=RAISE if refuse_unknown else EXCLUDE), payload
    assert 0 < declined < len(PAYLOADS)  # it both accepts and declines


def test_whatever_it_declines_marshmallow_answers_with_field_errors():
    with pytest.raises(ValidationError):
        events.JoinRoomSchema().load({"roomId": 42})
    with pytest.raises(events.GatewayError) as refused:
        events.load(events.JoinRoomSchema(), {"roomId": 42})
    assert refused.value.code == "invalid_payload" and "roomId" in refused.value.details


def test_a_schema_with_other_fields_is_left_to_marshmallow():
    assert events._plain_strings(events.BroadcastSchema()).rules is None
