-- The request log: one row per request, whatever its outcome.
CREATE TABLE requests (
    id              TEXT PRIMARY KEY,
    ts_ms           BIGINT NOT NULL,
    key_id          TEXT,
    tenant          TEXT,
    api             TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    model_requested TEXT,
    model_served    TEXT,
    status          BIGINT NOT NULL,
    outcome         TEXT NOT NULL,
    error_class     TEXT,
    stream          BIGINT NOT NULL,
    attempts        TEXT NOT NULL,
    ttft_ms         DOUBLE PRECISION,
    latency_ms      DOUBLE PRECISION NOT NULL,
    tokens_in       BIGINT,
    tokens_out      BIGINT,
    tokens_cached   BIGINT,
    cost_usd        DOUBLE PRECISION,
    cache           TEXT,
    request_body    TEXT,
    response_body   TEXT,
    metadata        TEXT NOT NULL
);
CREATE INDEX requests_ts ON requests (ts_ms);
CREATE INDEX requests_key_ts ON requests (key_id, ts_ms);
CREATE INDEX requests_model_ts ON requests (model_requested, ts_ms);
