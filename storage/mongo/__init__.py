"""The MongoDB adapter: thin on purpose. It only translates the `Store` interface into
PyMongo's native async API (`AsyncMongoClient`, Motor's successor); resume, retry, mapping and
replay logic live above it and are shared with the embedded store.

Where things are: `store` is `MongoStore` itself (connection, setup, transactions), made of one
mixin per concern: `documents` (and the id filter), `stream` (change streams and resume
tokens), `leases` (and fences), `eventlog`, `idempotency`, `revocations`. `errors` is the one
place driver errors become `StoreError`s; `state` names the gateway's own collections.

No MongoDB server can run on this project's build machines, so what this package relies on is
cited where it is used: "manual" is the MongoDB manual (server 6.0+), "driver" is PyMongo 4.20's
async API. `tests/test_store_contract.py` runs it against a real replica set when
`MONGODB_URL` is set; `docs/mongodb.md` says what it needs and what it guarantees.
"""

from storage.mongo.documents import id_filter
from storage.mongo.errors import _index_of, store_errors, translate_error
from storage.mongo.state import EVENTS
from storage.mongo.store import MongoStore
from storage.mongo.stream import MongoChangeStream

__all__ = [
    "EVENTS",
    "MongoChangeStream",
    "MongoStore",
    "_index_of",
    "id_filter",
    "store_errors",
    "translate_error",
]
