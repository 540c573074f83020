"""The gateway's own database (`MongoStore.state`): its collections' names, the counter
documents, the write concern of what a failover must not take back, and how its dates read as
the milliseconds of the `Store` interface. Shared by the mixins, so it names no behaviour."""

from __future__ import annotations

import datetime as dt

from pymongo import WriteConcern

EVENTS = "realtime_events"
COUNTERS = "realtime_counters"
RESUME_TOKENS = "realtime_resume_tokens"
IDEMPOTENCY_KEYS = "realtime_idempotency_keys"
LEASES = "realtime_leases"
REVOCATIONS = "realtime_revocations"
STATE_COLLECTIONS = (EVENTS, COUNTERS, RESUME_TOKENS, IDEMPOTENCY_KEYS, LEASES, REVOCATIONS)
EVENT_SEQUENCE = "events"  # the counter document that hands out event ids
LOG_IDENTITY = "log_identity"  # beside it: the log's name, made once
# an append is acknowledged (and its events delivered) only once a majority holds it, so a
# failover cannot take back an event clients were sent
LOG_WRITE_CONCERN = WriteConcern("majority")


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)
