-- Prompt templates (issue 15): the template a request used, and its version (a content hash).
ALTER TABLE requests ADD COLUMN template TEXT;
ALTER TABLE requests ADD COLUMN template_version TEXT;
CREATE INDEX requests_template_ts ON requests (template, ts_ms);

-- Evaluation runs: one row per run of a suite, one row per case result. A run without finished_ms was
-- interrupted and can be resumed (its suite_hash says which suite and dataset it ran).
CREATE TABLE eval_runs (
    id          TEXT PRIMARY KEY,
    suite       TEXT NOT NULL,
    suite_hash  TEXT NOT NULL,
    started_ms  INTEGER NOT NULL,
    finished_ms INTEGER,
    cases       INTEGER NOT NULL,
    meta        TEXT NOT NULL,
    summary     TEXT
);
CREATE INDEX eval_runs_suite ON eval_runs (suite, started_ms);

CREATE TABLE eval_results (
    run_id      TEXT NOT NULL REFERENCES eval_runs (id) ON DELETE CASCADE,
    case_id     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    passed      INTEGER NOT NULL,
    latency_ms  REAL,
    cost_usd    REAL,
    detail      TEXT NOT NULL,
    PRIMARY KEY (run_id, case_id)
);
