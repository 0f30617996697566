"""`fnctl serve`: the gateway's command line (the gateway itself lives in `gateway`)."""

from __future__ import annotations

from fnctl.cli import app  # noqa: F401  (commands register on it)
