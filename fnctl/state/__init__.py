"""The state store: SQLite (WAL) behind `store.connect`, its versioned migrations, and the records the store reads and writes.

All of fnctl's SQL is in this package (tests/state/test_sql_boundary.py): `Store` methods for the tables it owns
(revisions, routes, instances, rollouts, resources, settings, audit), and one module per other table
(metricstore, keystore, cronstate, deploylog). The rest of fnctl calls them by name, never SQL.
"""
