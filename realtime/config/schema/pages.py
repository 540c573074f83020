"""Browser pages' variables: the live test page and the Socket.IO Admin UI.

`PagesSchema` declares whether the test page is served, and the Admin UI's credentials (it is
on only when they are set) and whether it may act or only watch.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from realtime.config.fields import _Boolean, _env


class PagesSchema(Schema):
    """The test page and the Admin UI."""

    test_page = _env(
        _Boolean(allow_none=True),
        "TEST_PAGE",
        "serve the live test page at GET /websocket-test",
        "true with the embedded store, false with MONGODB_URL",
    )
    admin_ui_username = _env(
        fields.String(validate=validate.Length(min=1)),
        "ADMIN_UI_USERNAME",
        "turns on the Socket.IO Admin UI (namespace /admin, page /admin-ui/) with this user",
        "unset: no Admin UI",
    )
    admin_ui_password = _env(
        fields.String(validate=validate.Length(min=12)),
        "ADMIN_UI_PASSWORD",
        "the Admin UI's password (12+ characters; required with ADMIN_UI_USERNAME)",
        "unset",
    )
    admin_ui_read_only = _env(
        _Boolean(),
        "ADMIN_UI_READ_ONLY",
        "false gives the Admin UI its full powers: disconnect, join, leave and emit, around the "
        "room policy and the event log (development only)",
        "true",
    )
