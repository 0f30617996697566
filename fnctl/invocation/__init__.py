"""Invoking an instance: the wire protocol between the host and the in-container runtime (`protocol`: the one
codec of its length-prefixed JSON frames, see docs/protocol.md), its blocking and asyncio clients (`transport`,
`aiotransport`; the asyncio client's reading and its worker connections: `aioworkers`), the listener and peer
check a runtime connects through (`rendezvous`), and what an invocation came to (`outcome`).
"""
