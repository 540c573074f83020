"""Documents in the watched database: read, insert, update, delete by id, with `id_filter`
finding an id in whichever BSON type MongoDB holds it (ids travel as strings)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from storage.base import StoreError
from storage.mongo.errors import store_errors

_OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_UUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
INT64 = range(-(2**63), 2**63)


def id_filter(doc_id: str) -> dict[str, Any]:
    """Ids travel as strings; a document's `_id` may be an ObjectId (its hex in either case),
    a number, a UUID (subtype 4, the client's `uuidRepresentation="standard"`) or a string."""
    forms: list[Any] = [doc_id]
    if _OBJECT_ID.fullmatch(doc_id):
        forms.append(ObjectId(doc_id))
    elif _INTEGER.fullmatch(doc_id) and int(doc_id) in INT64:
        forms.append(int(doc_id))  # also matches a double of that value: numbers compare by value
    elif _UUID.fullmatch(doc_id):
        forms.append(uuid.UUID(doc_id))
    return {"_id": forms[0]} if len(forms) == 1 else {"_id": {"$in": forms}}


class DocumentsMixin:
    """MongoStore's document methods (it provides `db`)."""

    @store_errors
    async def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        return await self.db[collection].find_one(id_filter(str(doc_id)))

    @store_errors
    async def insert_document(self, collection: str, document: dict[str, Any]) -> str:
        document = dict(document)
        if document.get("_id") is None:
            document["_id"] = ObjectId()
        try:
            await self.db[collection].insert_one(document)
        except DuplicateKeyError:
            raise StoreError(f"{collection} already holds a document {document['_id']!r}") from None
        return str(document["_id"])

    @store_errors
    async def update_document(self, collection: str, doc_id: str, fields: dict[str, Any]) -> bool:
        fields = {k: v for k, v in fields.items() if k != "_id"}
        if not fields:
            return await self.get_document(collection, doc_id) is not None
        result = await self.db[collection].update_one(id_filter(str(doc_id)), {"$set": fields})
        return result.matched_count > 0

    @store_errors
    async def delete_document(self, collection: str, doc_id: str) -> bool:
        result = await self.db[collection].delete_one(id_filter(str(doc_id)))
        return result.deleted_count > 0
