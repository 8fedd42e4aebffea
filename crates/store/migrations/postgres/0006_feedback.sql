-- Production quality (issue 15): feedback on logged requests, from users (POST /v1/feedback) and from keel's
-- own online evaluators (a deterministic check or a judge on a sample of live requests). Scores are in [0, 1];
-- a score of 0.5 or more is positive. One row per request, source and name: feedback given again replaces the
-- earlier (a user changed their mind).
CREATE TABLE feedback (
    id          TEXT PRIMARY KEY,
    request_id  TEXT NOT NULL,
    ts_ms       BIGINT NOT NULL,
    key_id      TEXT,
    source      TEXT NOT NULL,
    name        TEXT NOT NULL,
    score       DOUBLE PRECISION NOT NULL,
    comment     TEXT,
    correction  TEXT,
    meta        TEXT NOT NULL
);
CREATE UNIQUE INDEX feedback_request ON feedback (request_id, source, name);
CREATE INDEX feedback_ts ON feedback (ts_ms);
