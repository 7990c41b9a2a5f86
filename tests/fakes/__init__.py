"""FAKE packages for what cannot run here (README.md), and how a test imports one."""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

FAKES = Path(__file__).parent


@contextlib.contextmanager
def imported(name: str, monkeypatch):
    """The FAKE module `name`, first on sys.path and imported afresh (nothing left from an
    earlier test: a fake's state lives in its module); gone from sys.modules afterwards."""
    monkeypatch.syspath_prepend(str(FAKES))
    sys.modules.pop(name, None)
    try:
        yield importlib.import_module(name)
    finally:
        sys.modules.pop(name, None)
