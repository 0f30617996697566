"""Invoking an instance: the wire protocol between the host and the in-container runtime (`protocol`:
length-prefixed JSON frames, described there), who may connect to a runtime (`rendezvous`), and the protocol's
blocking (`transport`) and asyncio (`aiotransport`) clients.
"""
