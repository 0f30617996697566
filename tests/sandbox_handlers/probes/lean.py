"""A synchronous handler that imports nothing of its own: what its process holds in sys.modules is the runtime's
doing (tests/engine/test_sandbox.py)."""

import sys

# What a synchronous handler's runtime must not import for itself: asyncio and what it pulls in (most of the
# runtime's start-up to its `ready` frame), and the rest of what only some paths need.
ON_DEMAND = ("asyncio", "concurrent.futures", "logging", "inspect", "dataclasses", "typing", "traceback")


def modules(event, context):
    loaded = sorted(name for name in ON_DEMAND if name in sys.modules)
    if event.get("log"):
        context.logger.info("logged")
    return {"loaded": loaded}
