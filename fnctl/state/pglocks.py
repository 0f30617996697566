"""Every advisory lock key fnctl takes on a PostgreSQL database, in one place.

Advisory locks are keyed by a bare number per database: two uses that share a key exclude each other, however
unrelated they are. Each use therefore has its own key, and a key that ever meant something keeps meaning
it: processes of another fnctl version may run on the same database (a rolling upgrade), and they take the
keys their version knows. So a key is never reused for something else, even after its use is gone.

- 0x666E63746D (b"fnctm") was both the leader's lock and the schema migration's until the migration got a
  key of its own: a process that had to migrate the state then waited for as long as any gateway led
  (`fnctl serve` of a newer version beside older gateways waited for ever). It stays the leader's, so
  gateways of the old and the new version still elect one leader between them (docs/scale-out.md).
"""

from __future__ import annotations

# The state store (fnctl.state.pgbackend, pgschema, pgsession).
STATE_DEPLOY_LOCK = 0x666E63746B  # b"fnctk": the mutating commands' session lock (fnctl.deploy.lock), across hosts
STATE_WRITE_LOCK = 0x666E63746C  # b"fnctl": every write transaction's, so writers run one at a time as on SQLite
LEADER_LOCK = 0x666E63746D  # b"fnctm": the controller's session lock (rollouts, cron, onCommit), one holder per state
STATE_MIGRATE_LOCK = 0x666E63746E  # b"fnctn": held while the state's schema is migrated, one migrator at a time

# The document store (fnctl.state.docsqlpg).
DOCS_WRITE_LOCK = 0x666E6374_6C646174  # b"fnctldat": every write transaction's (a gap-free change log)
DOCS_MIGRATE_LOCK = DOCS_WRITE_LOCK + 1  # held while the document store's schema is migrated

KEYS = (STATE_DEPLOY_LOCK, STATE_WRITE_LOCK, LEADER_LOCK, STATE_MIGRATE_LOCK, DOCS_WRITE_LOCK, DOCS_MIGRATE_LOCK)
