"""A handler that cannot load: the runtime reports `startup_failed` and exits 3."""

raise RuntimeError("boom at import")
