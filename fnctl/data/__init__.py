"""The data plane's decisions and service: the filter language (`filters`), caller rights (`rights`), and the
one service every read and write goes through (`documents`: DataPlane, Txn, Caller, Budget, the DataError
family). All SQL is in `fnctl.state.docstore`.
"""
