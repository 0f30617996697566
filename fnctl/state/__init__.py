"""The state store: SQLite (WAL) behind `store.connect`, its versioned migrations, and the records the store reads and writes.
"""
