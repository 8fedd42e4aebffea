-- The request log: one row per request, whatever its outcome.
CREATE TABLE requests (
    id              TEXT PRIMARY KEY,
    ts_ms           INTEGER NOT NULL,
    key_id          TEXT,
    tenant          TEXT,
    api             TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    model_requested TEXT,
    model_served    TEXT,
    status          INTEGER NOT NULL,
    outcome         TEXT NOT NULL,
    error_class     TEXT,
    stream          INTEGER NOT NULL,
    attempts        TEXT NOT NULL,
    ttft_ms         REAL,
    latency_ms      REAL NOT NULL,
    tokens_in       INTEGER,
    tokens_out      INTEGER,
    tokens_cached   INTEGER,
    cost_usd        REAL,
    cache           TEXT,
    request_body    TEXT,
    response_body   TEXT,
    metadata        TEXT NOT NULL
);
CREATE INDEX requests_ts ON requests (ts_ms);
CREATE INDEX requests_key_ts ON requests (key_id, ts_ms);
CREATE INDEX requests_model_ts ON requests (model_requested, ts_ms);
