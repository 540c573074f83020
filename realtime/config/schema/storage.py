"""Storage & scale-out variables: where the data is, what it is called, how long it is kept.

`StorageSchema` declares the store (a MongoDB replica set or the embedded SQLite file), the
collections and field names read from it and what of a booking is published, how long the
event log keeps entries and how much of it a join replays, how instances share the work (Redis
fan-out, the change watcher's lease), how often the embedded store's change log is polled, and
how long a reservation's parties are cached.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from realtime.config.fields import _CommaList, _env, _JsonObjectOfStrings, _positive


class StorageSchema(Schema):
    """The stores, the documents read from them, the event log, and scale-out."""

    mongodb_url = _env(
        fields.String(validate=validate.Regexp(r"^mongodb(\+srv)?://")),
        "MONGODB_URL",
        "use this MongoDB replica set instead of the embedded store",
        "unset",
    )
    mongodb_db = _env(
        fields.String(validate=validate.Length(min=1)),
        "MONGODB_DB",
        "MongoDB database name",
        "booking",
    )
    mongodb_state_db = _env(
        fields.String(validate=validate.Length(min=1, max=63)),
        "MONGODB_STATE_DB",
        "MongoDB database for the gateway's own state (event log, ids, resume tokens, keys)",
        "MONGODB_DB + '_realtime'",
    )
    store_path = _env(
        fields.String(validate=validate.Length(min=1)),
        "STORE_PATH",
        "embedded SQLite store file",
        "./realtime.db",
    )
    redis_url = _env(
        fields.String(validate=validate.Regexp(r"^rediss?://")),
        "REDIS_URL",
        "fan emits out across instances through this Redis",
        "unset",
    )
    bookings_collection = _env(
        fields.String(validate=validate.Length(min=1)),
        "BOOKINGS_COLLECTION",
        "collection holding bookings",
        "bookings",
    )
    payments_collection = _env(
        fields.String(validate=validate.Length(min=1)),
        "PAYMENTS_COLLECTION",
        "collection holding payments",
        "payments",
    )
    booking_fields = _env(
        _JsonObjectOfStrings(),
        "BOOKING_FIELDS",
        'JSON object renaming booking fields (dotted paths), e.g. {"customerId": "customer.id"}',
        "{}",
    )
    payment_fields = _env(
        _JsonObjectOfStrings(),
        "PAYMENT_FIELDS",
        "JSON object renaming payment fields (dotted paths)",
        "{}",
    )
    published_booking_fields = _env(
        _CommaList(),
        "PUBLISHED_BOOKING_FIELDS",
        "booking document fields copied into reservation_update.data",
        "none",
    )
    event_retention_s = _env(
        # refused under a second, not rounded: MongoDB's TTL index counts whole seconds, and
        # 0 would delete every logged event at once (docs/mongodb.md)
        fields.Float(
            validate=validate.Range(min=1, error="must be at least 1 second, not {input}")
        ),
        "EVENT_RETENTION",
        "seconds the event log (and the embedded store's change log) keeps entries",
        "604800 (7 days)",
    )
    replay_max_events = _env(
        fields.Integer(strict=False, validate=validate.Range(min=1)),
        "REPLAY_MAX_EVENTS",
        "most events replayed on one join; past it the answer says gap: true",
        "10000",
    )
    idempotency_ttl_s = _env(
        fields.Float(validate=_positive),
        "IDEMPOTENCY_TTL",
        "seconds an Idempotency-Key is remembered (at most EVENT_RETENTION)",
        "86400",
    )
    watcher_poll_ms = _env(
        fields.Integer(strict=False, validate=validate.Range(1, 10_000)),
        "WATCHER_POLL_MS",
        "how often the embedded store's change log is read while idle",
        "10",
    )
    watcher_lease_ttl_s = _env(
        fields.Float(validate=validate.Range(min=0.5, max=3600)),
        "WATCHER_LEASE_TTL",
        "seconds the change watcher's lease lasts: a dead holder is replaced within this time",
        "10",
    )
    reservation_cache_s = _env(
        fields.Float(validate=validate.Range(min=0)),
        "RESERVATION_CACHE",
        "seconds a reservation's parties, looked up for join_room, are kept (0: not kept); "
        "a change to the booking forgets them at once",
        "2",
    )
