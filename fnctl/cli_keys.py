"""`fnctl keys create|list|revoke`: API keys of the gateway (stored hashed, shown once)."""

from __future__ import annotations

from fnctl.cli import app  # noqa: F401  (commands register on it)
