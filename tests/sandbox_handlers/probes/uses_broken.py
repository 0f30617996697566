"""Imports a module with a syntax error: the failure is only visible when the code is run."""

import broken_syntax  # noqa: F401


def handler(event):
    return "unreachable"
