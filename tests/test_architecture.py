"""The house keeps its rooms: modules small enough to read, the engine smaller still.

(The layers, the engine's monopoly on python-socketio and python-engineio, and the absence
of import circles are import-linter's contracts in setup.cfg, run with the suite's lint.)
"""

from __future__ import annotations

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("realtime", "storage", "handlers", "server")
MODULE_MAX_LINES = 400
ENGINE_MODULE_MAX_LINES = 300


def _lines(path: pathlib.Path) -> int:
    return len(path.read_text().splitlines())


def _modules(package: str) -> list[pathlib.Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_over_400_lines(package):
    long = {str(p.relative_to(ROOT)): _lines(p) for p in _modules(package)}
    assert long  # the package is where it is expected
    assert {p: n for p, n in long.items() if n > MODULE_MAX_LINES} == {}


def test_no_engine_module_is_over_300_lines():
    engine = {str(p.relative_to(ROOT)): _lines(p) for p in _modules("realtime/engine")}
    assert len(engine) >= 10
    assert {p: n for p, n in engine.items() if n > ENGINE_MODULE_MAX_LINES} == {}


def test_each_engine_module_says_what_it_replaces_and_touches():
    for path in _modules("realtime/engine"):
        if path.name == "__init__.py":
            continue
        text = path.read_text()
        assert text.startswith('"""'), path.name
        docstring = text.split('"""')[1]
        assert "Library internals touched:" in docstring, path.name
