"""The data plane's decisions and service: the filter language (`filters`), caller rights (`rights`), and the
one service every read and write goes through (`plane`: DataPlane; its transactions, `txn`, and their commit,
`commit`), with the values it hands out (`documents`: documents, pages, changes, writes, the Budget), each
collection's compiled definition (`collections`), a find's order and cursors (`ordering`) and the DataError
family (`errors`). All SQL is in `fnctl.state` (`docstore` and its `doc*` siblings).
"""
