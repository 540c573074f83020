"""The MongoDB adapter: thin on purpose. It only translates the `Store` interface into
PyMongo's native async API (`AsyncMongoClient`, Motor's successor); resume, retry, mapping and
replay logic live above it and are shared with the embedded store."""

from __future__ import annotations

import logging
import re
from typing import Any

from bson import ObjectId
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from storage.base import Store, StoreError

logger = logging.getLogger(__name__)

SERVER_SELECTION_TIMEOUT_MS = 5_000
_OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")


def id_filter(doc_id: str) -> dict[str, Any]:
    """Ids travel as strings; ObjectId hex is looked up as either form."""
    if _OBJECT_ID.match(doc_id):
        return {"_id": {"$in": [ObjectId(doc_id), doc_id]}}
    return {"_id": doc_id}


class MongoStore(Store):
    name = "mongodb"

    def __init__(self, url: str, database: str):
        self._url = url
        self._database_name = database
        self._client: AsyncMongoClient | None = None

    def describe(self) -> str:
        host = self._url.split("@")[-1].split("/")[0]  # never the credentials
        return f"mongodb://{host}/{self._database_name}"

    async def open(self) -> None:
        self._client = AsyncMongoClient(self._url, tz_aware=True,
                                        serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS)
        await self.ping()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def db(self):
        if self._client is None:
            raise StoreError("the store is not open")
        return self._client[self._database_name]

    async def ping(self) -> None:
        try:
            await self.db.command("ping")
        except PyMongoError as exc:
            raise StoreError(f"mongodb does not answer: {exc}") from exc

    # -- documents ---------------------------------------------------------------------------
    async def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        return await self.db[collection].find_one(id_filter(str(doc_id)))

    async def insert_document(self, collection: str, document: dict[str, Any]) -> str:
        document = dict(document)
        if document.get("_id") is None:
            document["_id"] = ObjectId()
        try:
            await self.db[collection].insert_one(document)
        except DuplicateKeyError:
            raise StoreError(f"{collection} already holds a document {document['_id']!r}") from None
        return str(document["_id"])

    async def update_document(self, collection: str, doc_id: str, fields: dict[str, Any]) -> bool:
        fields = {k: v for k, v in fields.items() if k != "_id"}
        if not fields:
            return await self.get_document(collection, doc_id) is not None
        result = await self.db[collection].update_one(id_filter(str(doc_id)), {"$set": fields})
        return result.matched_count > 0

    async def delete_document(self, collection: str, doc_id: str) -> bool:
        result = await self.db[collection].delete_one(id_filter(str(doc_id)))
        return result.deleted_count > 0
