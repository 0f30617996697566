"""The state store's schema, as the migrations that build it: applied in order (`upgrade`, called by `store.connect`), each once,
and never edited once released (a store records how many it has: PRAGMA user_version).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Sequence

from fnctl.state import auditchain

# A migration is SQL, or a function of the connection for steps SQL cannot express (hashing); both run inside
# the migration's transaction.
Migration = str | Callable[[sqlite3.Connection], None]


def _chain_audit_logs(connection: sqlite3.Connection) -> None:
    """6: the audit logs become hash chains (issue: an `INSERT OR REPLACE` or a `DROP TRIGGER` rewrote them
    unseen). Existing records are chained here, from GENESIS, so `fnctl audit verify` covers history too (it
    attests them from now on: what was done to them before the upgrade cannot be known). New records must
    take the next id: an `INSERT OR REPLACE` over an existing one is refused (by a trigger, which only stops
    honest mistakes; the chain is what shows a dishonest one)."""
    for table, fields in auditchain.CHAINS.items():
        connection.execute(f"ALTER TABLE {table} ADD COLUMN prev_hash TEXT")
        connection.execute(f"ALTER TABLE {table} ADD COLUMN hash TEXT")
        names = ", ".join(name for name, _ in fields)
        prev, last = auditchain.GENESIS, 0
        # The update triggers stay in place: dropped for the one-time fill, then created again as they were.
        connection.execute(f"DROP TRIGGER {table}_no_update")
        rows = connection.execute(f"SELECT {names} FROM {table} ORDER BY id").fetchall()
        for row in rows:
            values = auditchain.normalise(table, row)
            digest = auditchain.record_hash(table, values, prev)
            connection.execute(f"UPDATE {table} SET prev_hash = ?, hash = ? WHERE id = ?", (prev, digest, values[0]))
            prev, last = digest, int(values[0])
        what = "the audit log" if table == "audit" else "the invocation audit"
        connection.execute(
            f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{what} is append-only'); END"
        )
        connection.execute(
            f"CREATE TRIGGER {table}_next_id BEFORE INSERT ON {table} "
            f"WHEN NEW.id IS NULL OR NEW.id <= (SELECT COALESCE(MAX(id), 0) FROM {table}) "
            f"OR NEW.hash IS NULL BEGIN SELECT RAISE(ABORT, '{what} is append-only: records "
            f"take the next id and are chained by fnctl'); END"
        )
        if last:
            connection.execute("INSERT INTO settings VALUES (?, ?)", (auditchain.head_setting(table), f"{last} {prev}"))


def _drop_secret_salt(connection: sqlite3.Connection) -> None:
    """7: the store no longer holds the salt of secret fingerprints (issue: a copy of the store let anyone test
    guesses of a secret against a revision's 64-bit salted fingerprint). New fingerprints are HMACs keyed by a
    host-local key that is never stored (fnctl.deploy.secrets). Old revisions keep their salted fingerprints
    (revisions are immutable, and their spec hashes are their identity): without the salt, 128 random bits,
    they cannot be tested against guesses. A function without secrets hashed the salt alone into its spec;
    that value (which does not give the salt back) is kept so that its spec hash, and its revision, stay the
    same. `secure_delete` overwrites the salt's bytes in the page instead of leaving them in free space."""
    row = connection.execute("SELECT value FROM settings WHERE key = 'secret-salt'").fetchone()
    if row is None:
        return
    none_hash = hashlib.sha256(str(row[0]).encode()).hexdigest()[:16]
    connection.execute(
        "INSERT INTO settings VALUES ('secrets-none-hash', ?) ON CONFLICT (key) DO NOTHING", (none_hash,)
    )
    connection.execute("PRAGMA secure_delete = ON")
    connection.execute("DELETE FROM settings WHERE key = 'secret-salt'")


MIGRATIONS: tuple[Migration, ...] = (
    # 1: the first schema
    """
    CREATE TABLE revisions (
        function TEXT NOT NULL, number INTEGER NOT NULL, spec_hash TEXT NOT NULL, spec TEXT NOT NULL,
        image TEXT NOT NULL, git_commit TEXT, git_author TEXT, created_at REAL NOT NULL,
        created_by TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
        PRIMARY KEY (function, number)
    );
    CREATE TABLE routes (
        function TEXT PRIMARY KEY, weights TEXT NOT NULL, updated_at REAL NOT NULL
    );
    CREATE TABLE instances (
        id TEXT PRIMARY KEY, function TEXT NOT NULL, revision INTEGER NOT NULL, container_id TEXT,
        socket_dir TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL
    );
    CREATE INDEX instances_by_function ON instances (function, revision);
    CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY, function TEXT NOT NULL, from_revision INTEGER, to_revision INTEGER NOT NULL,
        strategy TEXT NOT NULL, step INTEGER NOT NULL, state TEXT NOT NULL, detail TEXT NOT NULL,
        started_at REAL NOT NULL, updated_at REAL NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, actor TEXT NOT NULL, command TEXT NOT NULL,
        action TEXT NOT NULL, target TEXT NOT NULL, git_commit TEXT, outcome TEXT NOT NULL, detail TEXT
    );
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    """,
    # 2: revisions are immutable: only their status and reason change, their image is set once, and none
    # is ever deleted (the history and quarantines rely on them)
    """
    CREATE TRIGGER revisions_immutable BEFORE UPDATE OF function, number, spec_hash, spec, git_commit, git_author,
        created_at, created_by ON revisions
        BEGIN SELECT RAISE(ABORT, 'revisions are immutable'); END;
    CREATE TRIGGER revisions_image_once BEFORE UPDATE OF image ON revisions WHEN OLD.image <> ''
        BEGIN SELECT RAISE(ABORT, 'a revision''s image is set once'); END;
    CREATE TRIGGER revisions_no_delete BEFORE DELETE ON revisions
        BEGIN SELECT RAISE(ABORT, 'revisions are never deleted'); END;
    """,
    # 3: the gateway's data: API keys (hashed), the invocation audit, metric windows, cron ticks
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL, roles TEXT NOT NULL, tenant TEXT,
        created_at REAL NOT NULL, created_by TEXT NOT NULL, revoked_at REAL
    );
    CREATE TABLE invocations (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, request_id TEXT NOT NULL, principal TEXT, function TEXT NOT NULL,
        revision INTEGER, trigger TEXT, outcome TEXT NOT NULL, status INTEGER NOT NULL, duration_ms REAL NOT NULL,
        source TEXT
    );
    CREATE INDEX invocations_by_function ON invocations (function, at);
    CREATE TRIGGER invocations_no_update BEFORE UPDATE ON invocations
        BEGIN SELECT RAISE(ABORT, 'the invocation audit is append-only'); END;
    CREATE TRIGGER invocations_no_delete BEFORE DELETE ON invocations
        BEGIN SELECT RAISE(ABORT, 'the invocation audit is append-only'); END;
    CREATE TABLE metrics (
        function TEXT NOT NULL, revision INTEGER NOT NULL, second INTEGER NOT NULL, requests INTEGER NOT NULL,
        errors INTEGER NOT NULL, latency_ms_sum REAL NOT NULL, histogram TEXT NOT NULL,
        PRIMARY KEY (function, revision, second)
    );
    CREATE TABLE cron_state (
        trigger TEXT PRIMARY KEY, last_tick REAL NOT NULL, updated_at REAL NOT NULL
    );
    CREATE TABLE resources (
        kind TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (kind, name)
    );
    """,
    # 4: progressive rollouts: one row per rollout (its progress in `detail`), and its events, append-only.
    # Requests from other processes (promote, abort, retry) are events too: appending never races with the
    # driver's updates of the rollout row.
    """
    CREATE INDEX rollouts_by_function ON rollouts (function, id);
    CREATE TABLE rollout_events (
        id INTEGER PRIMARY KEY, rollout INTEGER NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL,
        step INTEGER NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL
    );
    CREATE INDEX rollout_events_by_rollout ON rollout_events (rollout, id);
    CREATE TRIGGER rollout_events_no_update BEFORE UPDATE ON rollout_events
        BEGIN SELECT RAISE(ABORT, 'rollout events are append-only'); END;
    CREATE TRIGGER rollout_events_no_delete BEFORE DELETE ON rollout_events
        BEGIN SELECT RAISE(ABORT, 'rollout events are append-only'); END;
    """,
    # 5: GitOps: every revision and audit record names its commit's author and subject, and `deploys` records
    # which commit each apply or sync made live (append-only): what a sync compares a new commit with
    """
    ALTER TABLE revisions ADD COLUMN git_subject TEXT;
    ALTER TABLE audit ADD COLUMN git_author TEXT;
    ALTER TABLE audit ADD COLUMN git_subject TEXT;
    DROP TRIGGER revisions_immutable;
    CREATE TRIGGER revisions_immutable BEFORE UPDATE OF function, number, spec_hash, spec, git_commit, git_author,
        git_subject, created_at, created_by ON revisions
        BEGIN SELECT RAISE(ABORT, 'revisions are immutable'); END;
    CREATE TABLE deploys (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, actor TEXT NOT NULL, command TEXT NOT NULL, source TEXT NOT NULL,
        ref TEXT, git_commit TEXT NOT NULL, git_author TEXT, git_subject TEXT, dirty INTEGER NOT NULL,
        preview INTEGER NOT NULL, outcome TEXT NOT NULL, audit_mark INTEGER NOT NULL
    );
    CREATE TRIGGER deploys_no_update BEFORE UPDATE ON deploys
        BEGIN SELECT RAISE(ABORT, 'the deploy record is append-only'); END;
    CREATE TRIGGER deploys_no_delete BEFORE DELETE ON deploys
        BEGIN SELECT RAISE(ABORT, 'the deploy record is append-only'); END;
    """,
    _chain_audit_logs,
    _drop_secret_salt,
    # 8: data-hook and manual triggers' health: consecutive faults, and when (and why) one disabled itself
    """
    CREATE TABLE trigger_state (
        trigger TEXT PRIMARY KEY, faults INTEGER NOT NULL, last_error TEXT, disabled_at REAL, updated_at REAL NOT NULL
    );
    """,
    # 9: nothing on SQLite (its data_version is the file's). On PostgreSQL the change counter stops watching
    # the tables the gateways' own traffic writes (fnctl.state.pgschema, step 9).
    "",
    # 10: the gateways of a Swarm's nodes (engine = "swarm"): where each listens, the revisions it has
    # instances of, its last heartbeat; what a gateway with no instance forwards a request by. public_key: the
    # gateway's Ed25519 public key, which its peers verify its signed requests with (fnctl.gateway.peerauth)
    """
    CREATE TABLE gateways (
        id TEXT PRIMARY KEY, node TEXT NOT NULL, address TEXT NOT NULL, held TEXT NOT NULL, heartbeat REAL NOT NULL,
        public_key TEXT NOT NULL
    );
    """,
)


def use_wal(connection: sqlite3.Connection, wait: float = 30.0) -> None:
    """Put the file in WAL mode, waiting up to `wait` seconds for another connection that holds it.

    SQLite's busy timeout does not cover this switch: two processes opening a new file at once (a test and the
    gateway it starts, `serve --workers`) get "database is locked" at once from the one that loses. The mode
    is kept in the file, so once either has switched it the other's retry is a no-op.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def upgrade(connection: sqlite3.Connection, version: int) -> None:
    """Apply the migrations after `version` (the store's PRAGMA user_version, checked by the caller not to be
    newer than this fnctl), each in its own transaction."""
    apply_migrations(connection, version, MIGRATIONS)
    if version < len(MIGRATIONS):
        # A migration may have deleted a secret (the salt of secret fingerprints, 7): copy the WAL into the
        # database and empty it, so its old pages do not keep the bytes. Best effort: a reader holding a
        # snapshot delays it to the next checkpoint.
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def apply_migrations(connection: sqlite3.Connection, version: int, migrations: Sequence[Migration]) -> None:
    """Apply `migrations` after `version`, each in its own transaction (the state store's and the data
    file's alike)."""
    for number in range(version, len(migrations)):
        connection.execute("BEGIN IMMEDIATE")
        try:
            if int(connection.execute("PRAGMA user_version").fetchone()[0]) != number:
                connection.execute("ROLLBACK")  # another process migrated meanwhile
                continue
            migration = migrations[number]
            if callable(migration):
                migration(connection)
            else:
                for statement in statements(migration):
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {number + 1}")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")


def statements(script: str) -> list[str]:
    """Split a migration into statements (triggers contain `;` inside BEGIN … END)."""
    found, current = [], ""
    for line in script.strip().splitlines():
        current += line + "\n"
        if sqlite3.complete_statement(current):
            found.append(current.strip())
            current = ""
    return found
