"""Which npm files the package ships for the browser pages, and where: one list, read by
`scripts/refresh-web-assets` (which copies them) and by the test that checks the copies match
the versions pinned in package.json."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
VENDOR_DIR = os.path.join(STATIC_DIR, "vendor")
ADMIN_UI_DIR = os.path.join(STATIC_DIR, "admin-ui")
VERSIONS_FILE = os.path.join(VENDOR_DIR, "versions.json")

# npm package -> files copied (source under node_modules/<package>, target under static/)
SHIPPED = {
    "socket.io-client": {"dist/socket.io.esm.min.js": "vendor/socket.io.esm.min.js"},
    # the Admin UI's own icons, which its page would fetch from a CDN
    "@mdi/font": {
        "css/materialdesignicons.min.css": "admin-ui/mdi/css/materialdesignicons.min.css",
        "fonts/materialdesignicons-webfont.woff2": (
            "admin-ui/mdi/fonts/materialdesignicons-webfont.woff2"
        ),
    },
}
ADMIN_UI_PACKAGE = "@socket.io/admin-ui"
ADMIN_UI_BUILD = "ui/dist"  # the built UI inside the npm package; source maps are left out


def pinned_versions(package_json: str) -> dict[str, str]:
    """The exact versions package.json pins for the shipped packages."""
    with open(package_json, encoding="utf-8") as handle:
        manifest = json.load(handle)
    pins = {**manifest.get("dependencies", {}), **manifest.get("devDependencies", {})}
    return {package: pins[package] for package in [*SHIPPED, ADMIN_UI_PACKAGE]}


def copied_files(node_modules: str) -> Iterator[tuple[str, str]]:
    """(source in node_modules, target in the package) for every shipped file but the Admin
    UI's index.html, which `admin_ui_index` rewrites."""
    for package, files in SHIPPED.items():
        for source, target in files.items():
            yield os.path.join(node_modules, package, source), os.path.join(STATIC_DIR, target)
    build = os.path.join(node_modules, ADMIN_UI_PACKAGE, ADMIN_UI_BUILD)
    for directory, _, names in os.walk(build):
        for name in names:
            relative = os.path.relpath(os.path.join(directory, name), build)
            if name.endswith(".map") or relative == "index.html":
                continue
            yield os.path.join(build, relative), os.path.join(ADMIN_UI_DIR, relative)


def admin_ui_index(page: str) -> str:
    """The Admin UI's page without its CDN links: icons from the shipped copy, text in the
    browser's own sans-serif instead of a web font."""
    page, fonts = re.subn(
        r'<link rel="stylesheet" href="https://fonts\.googleapis\.com[^>]*>', "", page
    )
    page, icons = re.subn(
        r'<link rel="stylesheet" href="https://cdn\.jsdelivr\.net/npm/@mdi/font[^"]*"[^>]*>',
        '<link rel="stylesheet" href="mdi/css/materialdesignicons.min.css">',
        page,
    )
    if (fonts, icons) != (1, 1) or "https://" in page:
        raise ValueError("the Admin UI's index.html changed shape: update admin_ui_index")
    return page
