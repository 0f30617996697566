"""How `fnctl serve` writes its own log lines (not the access log: fnctl.gateway.accesslog): JSON lines on
stderr, one per record, with a record's `fields` merged in."""

from __future__ import annotations

import json
import logging
import sys

__all__ = ["JsonLines", "configure_logging"]


class JsonLines(logging.Formatter):
    """Log records as JSON lines, for journald and log shippers (the access log has its own, on stdout)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging() -> None:
    """The gateway's process logs: fnctl's lifecycle lines and warnings, as JSON lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("fnctl").setLevel(logging.INFO)
