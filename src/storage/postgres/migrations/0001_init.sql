-- 0001: tasks, per-owner task counts, tokens and idempotency keys.
--
-- Task fields are columns, not a JSON blob: every list filter is a plain
-- predicate on a typed column, the database checks the enumerations, and
-- operators can read the table with psql. Owner columns use the "C" collation:
-- they are compared for equality only, and byte order keeps btree comparisons
-- cheap whatever the database's locale.

CREATE TABLE tasks (
    owner       text COLLATE "C" NOT NULL,
    id          uuid        NOT NULL,
    title       text        NOT NULL,
    -- Rust's `str::to_lowercase` of `title`, written by the application: the
    -- `q` filter is a LIKE on it, so matching is exactly the embedded backend's,
    -- independent of the database's locale and Unicode version.
    title_lower text        NOT NULL,
    description text,
    status      text        NOT NULL CHECK (status IN ('todo', 'in_progress', 'done')),
    priority    text        NOT NULL CHECK (priority IN ('low', 'normal', 'high')),
    due_at      timestamptz,
    tags        text[]      NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    version     bigint      NOT NULL CHECK (version >= 1),
    -- Serves keyset pagination: one owner's tasks are contiguous and in id
    -- (UUIDv7, so creation) order; `asc` scans it forwards, `desc` backwards.
    PRIMARY KEY (owner, id)
);

-- Tasks per owner, kept in the same transactions as `tasks`: the quota check
-- is one row update (which also serialises concurrent creates of one owner),
-- and counting every task never scans `tasks`.
CREATE TABLE task_counts (
    owner text COLLATE "C" PRIMARY KEY,
    n     bigint NOT NULL CHECK (n >= 0)
);

-- SHA-256 digests of bearer tokens; at most one token per principal name.
CREATE TABLE tokens (
    digest     bytea PRIMARY KEY CHECK (octet_length(digest) = 32),
    name       text COLLATE "C" NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);

-- `Idempotency-Key`s per owner: the digest of the request and the task as
-- first returned (a replay answers with that snapshot, hence JSON).
CREATE TABLE idempotency_keys (
    owner          text COLLATE "C" NOT NULL,
    key            text COLLATE "C" NOT NULL,
    request_digest bytea       NOT NULL,
    created_at     timestamptz NOT NULL,
    task           jsonb       NOT NULL,
    PRIMARY KEY (owner, key)
);
