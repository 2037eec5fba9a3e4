-- Rolling deploys: every distinct set of declarations (hubsync.toml's properties and keys) a
-- worker has run with, numbered in the order each was first seen; the newest wins.
CREATE SEQUENCE hubsync.config_generation;
CREATE TABLE hubsync.configs (
    fingerprint   text        PRIMARY KEY,
    generation    bigint      NOT NULL DEFAULT nextval('hubsync.config_generation'),
    -- The property names declared, as {"contact": [...], "company": [...]}.
    properties    jsonb       NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now()
);

-- The workers running now, each with the declarations it runs with. A worker refreshes
-- seen_at every few seconds; one not seen for 30 s is gone. A worker defers (takes no work)
-- while a worker of a newer generation is alive.
CREATE TABLE hubsync.workers (
    id          uuid        PRIMARY KEY,
    fingerprint text        NOT NULL REFERENCES hubsync.configs,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now()
);
