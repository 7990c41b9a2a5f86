"""Logging: journald with structured fields under systemd, plain text elsewhere."""

from __future__ import annotations

import logging
import os
import sys

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "info", fmt: str = "auto") -> str:
    """Returns the format chosen. 'auto' picks journald when stderr is the journal
    (systemd sets JOURNAL_STREAM) and systemd-python is installed."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for h in list(root.handlers):
        root.removeHandler(h)
    chosen = fmt
    if fmt in ("auto", "journal"):
        handler = _journal_handler() if (fmt == "journal" or os.environ.get("JOURNAL_STREAM")) else None
        chosen = "journal" if handler else "text"
    if chosen == "journal":
        root.addHandler(handler)
    else:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(TEXT_FORMAT))
        root.addHandler(h)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" notices
    return chosen


def _journal_handler():
    try:
        from systemd.journal import JournalHandler  # systemd-python
    except ImportError:
        return None
    # extra={"REQUEST_ID": ...} on a log call becomes a journal field
    return JournalHandler(SYSLOG_IDENTIFIER="edge-llm")
