"""The building blocks of the schema: how a variable's text becomes a value, and `_env`.

The custom marshmallow fields parse what environment variables hold (comma lists, JSON
objects, shell booleans); `_env` declares a field as one variable with its help text and
default, which is all `--help` and the README's table are written from.
"""

from __future__ import annotations

import json
from typing import Any

from marshmallow import ValidationError, fields, validate


class _CommaList(fields.Field):
    """A comma-separated string -> tuple of non-empty, stripped items."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise ValidationError("must be a comma-separated string")
        return tuple(item.strip() for item in value.split(",") if item.strip())


class _JsonObjectOfStrings(fields.Field):
    """A JSON object of string -> string (field-name overrides)."""

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            parsed = json.loads(value)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"must be a JSON object: {exc}") from None
        if not isinstance(parsed, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in parsed.items()
        ):
            raise ValidationError(
                'must be a JSON object of names, e.g. {"customerId": "client_id"}'
            )
        return parsed


class _Boolean(fields.Boolean):
    truthy = {"1", "true", "yes", "on"}
    falsy = {"0", "false", "no", "off", ""}


def _env(field: fields.Field, name: str, help_text: str, default: Any = None) -> fields.Field:
    field.data_key = name
    field.metadata["help"] = help_text
    field.metadata["default_text"] = default
    return field


_positive = validate.Range(min=0, min_inclusive=False)
