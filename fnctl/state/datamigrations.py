"""The data file's schema (`<state>.data.db`, fnctl.state.docstore), as migrations applied in order, each once,
never edited once released (PRAGMA user_version). Collection tables (`docs_<name>`) are not migrations: they
follow the declared Collections (`DocStore.sync_collections`).
"""

from __future__ import annotations

DATA_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE collections (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE TABLE changes (
        seq INTEGER PRIMARY KEY,
        txn TEXT NOT NULL,
        at TEXT NOT NULL,
        collection TEXT NOT NULL,
        tenant TEXT NOT NULL,
        id TEXT NOT NULL,
        op TEXT NOT NULL,
        before TEXT,
        after TEXT,
        actor TEXT NOT NULL,
        function TEXT,
        revision INTEGER,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX changes_by_tenant ON changes (tenant, seq);
    CREATE TRIGGER changes_no_update BEFORE UPDATE ON changes
    BEGIN SELECT RAISE(ABORT, 'the change log is append-only'); END;
    CREATE TRIGGER changes_next_seq BEFORE INSERT ON changes
    WHEN NEW.seq IS NULL OR NEW.seq <= (SELECT COALESCE(MAX(seq), 0) FROM changes)
    BEGIN SELECT RAISE(ABORT, 'the change log is append-only: records take the next seq and are chained by fnctl'); END;
    CREATE TABLE idempotency (
        tenant TEXT NOT NULL,
        collection TEXT NOT NULL,
        key TEXT NOT NULL,
        response TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (tenant, collection, key)
    );
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: the transactional outbox of onCommit triggers (fnctl.state.outbox): one row per (trigger, change),
    # written in the change's own transaction, delivered by the gateway's dispatcher.
    """
    CREATE TABLE outbox (
        trigger TEXT NOT NULL,
        seq INTEGER NOT NULL,
        collection TEXT NOT NULL,
        tenant TEXT NOT NULL,
        doc_id TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        last_error TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (trigger, seq)
    );
    CREATE INDEX outbox_by_state ON outbox (state, seq);
    CREATE INDEX outbox_by_document ON outbox (trigger, tenant, collection, doc_id, seq);
    """,
)

# PostgreSQL's document store (fnctl.state.docsqlpg), in the schema `fnctl_data` of the deployment state's
# database: the same tables (a change log that refuses updates, the outbox), and the two functions the
# generated columns of indexed fields and the filters share (a JSON value's number — a boolean as 1/0, as
# SQLite's json_extract gives it — or its string; NULL for any other type). Versioned in `schema_version`.
PG_DATA_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE FUNCTION fnctl_num(v jsonb) RETURNS numeric LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
    $$ SELECT CASE jsonb_typeof(v) WHEN 'number' THEN v::numeric
       WHEN 'boolean' THEN CASE WHEN v = 'true'::jsonb THEN 1 ELSE 0 END END $$;
    CREATE FUNCTION fnctl_text(v jsonb) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
    $$ SELECT CASE WHEN jsonb_typeof(v) = 'string' THEN v #>> '{}' END $$;
    CREATE TABLE collections (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE TABLE changes (
        seq BIGINT PRIMARY KEY,
        txn TEXT NOT NULL,
        at TEXT NOT NULL,
        collection TEXT NOT NULL,
        tenant TEXT NOT NULL,
        id TEXT NOT NULL,
        op TEXT NOT NULL,
        before TEXT,
        after TEXT,
        actor TEXT NOT NULL,
        function TEXT,
        revision BIGINT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX changes_by_tenant ON changes (tenant, seq);
    CREATE FUNCTION changes_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'the change log is append-only'; END $$;
    CREATE TRIGGER changes_no_update BEFORE UPDATE ON changes FOR EACH ROW EXECUTE FUNCTION changes_append_only();
    CREATE TABLE idempotency (
        tenant TEXT NOT NULL,
        collection TEXT NOT NULL,
        key TEXT NOT NULL,
        response TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (tenant, collection, key)
    );
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE outbox (
        trigger TEXT NOT NULL,
        seq BIGINT NOT NULL,
        collection TEXT NOT NULL,
        tenant TEXT NOT NULL,
        doc_id TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at DOUBLE PRECISION NOT NULL,
        last_error TEXT,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (trigger, seq)
    );
    CREATE INDEX outbox_by_state ON outbox (state, seq);
    CREATE INDEX outbox_by_document ON outbox (trigger, tenant, collection, doc_id, seq);
    """,
)
