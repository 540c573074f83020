"""Dotted paths (`app_metadata.role`, `customer.id`): how MongoDB names a field inside nested
documents, and how identity providers nest claims. One reader, one writer, for both."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any


def value_at(data: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path in a document or a token's claims, or None."""
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def set_at(data: MutableMapping[str, Any], path: str, value: Any) -> None:
    """Set the value at a dotted path, making the objects along it where they are missing
    (as MongoDB's `$set` does) and replacing a value that is not an object (where MongoDB
    would refuse the update)."""
    *parents, leaf = path.split(".")
    target = data
    for part in parents:
        child = target.get(part)
        if not isinstance(child, MutableMapping):
            child = target[part] = {}
        target = child
    target[leaf] = value
