-- The semantic cache's entries, so that its index survives restarts: the user turns (JSON), their embeddings
-- (little-endian f32, turn after turn) and the answer (JSON).
CREATE TABLE semantic_cache (
    id          INTEGER PRIMARY KEY,
    scope       TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    turns       TEXT NOT NULL,
    vectors     BLOB NOT NULL,
    answer      TEXT NOT NULL
);
CREATE INDEX semantic_cache_expires ON semantic_cache (expires_ms);
