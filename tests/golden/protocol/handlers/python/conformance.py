"""The conformance handler of the Python runtime: what every runtime's copy does (docs/protocol.md, "A new
runtime"), driven by the golden exchanges in tests/golden/protocol/ through tests/invocation/test_protocol.py."""

import os

from fnctl_runtime import CallbackError


def handler(event, context):
    if "fail" in event:
        raise ValueError(event["fail"])
    if "env" in event:
        return os.environ.get(event["env"])
    if "call" in event:
        try:
            return {"called": context.call(event["call"]["method"], event["call"]["params"])}
        except CallbackError as exc:
            return {"call_failed": {"type": exc.type, "message": exc.message}}
    print("echo")
    return {
        "echo": event.get("echo"),
        "invocation_id": context.invocation_id,
        "deadline": context.deadline,
        "caller": context.caller,
    }
