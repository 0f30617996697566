"""Invoking an instance: the wire protocol between the host and the in-container runtime (`protocol`: the one
codec of its length-prefixed JSON frames, see docs/protocol.md), its blocking and asyncio clients (`transport`,
`aiotransport`), and what an invocation came to (`outcome`).
"""
