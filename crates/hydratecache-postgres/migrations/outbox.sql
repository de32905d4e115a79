-- hydratecache-postgres outbox mode (PostgreSQL 13 or later: xid8,
-- pg_current_xact_id, pg_snapshot). Idempotent: PostgresOutboxTransport::migrate
-- runs it, or apply it with your own migration tool.

-- One row per published message, written in the publisher's transaction.
-- `txid` is the writing transaction: readers take what became visible
-- between two snapshots of theirs, so a transaction that took a lower `id`
-- and committed later is still read, in its turn.
CREATE TABLE IF NOT EXISTS hydratecache_outbox (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic      text        NOT NULL,
    txid       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    envelope   bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS hydratecache_outbox_topic_txid
    ON hydratecache_outbox (topic, txid);

CREATE INDEX IF NOT EXISTS hydratecache_outbox_created_at
    ON hydratecache_outbox (created_at);

-- Per topic, the largest transaction id among the rows retention deleted:
-- a reader whose last snapshot did not see every transaction up to it may
-- have missed one of them, and reports a gap.
CREATE TABLE IF NOT EXISTS hydratecache_outbox_trimmed (
    topic       text   PRIMARY KEY,
    max_deleted bigint NOT NULL
);
