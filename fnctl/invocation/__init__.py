"""Invoking an instance: the wire protocol between the host and the in-container runtime (length-prefixed JSON frames, see docs/protocol.md) and its blocking and asyncio clients.
"""
