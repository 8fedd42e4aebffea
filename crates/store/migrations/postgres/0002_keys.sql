-- Virtual keys: stored hashed (SHA-256 of the secret), shown once at creation.
CREATE TABLE keys (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    hash               TEXT NOT NULL UNIQUE,
    prefix             TEXT NOT NULL,
    tenant             TEXT,
    created_ms         BIGINT NOT NULL,
    revoked_ms         BIGINT,
    models             TEXT NOT NULL,
    budget_daily_usd   DOUBLE PRECISION,
    budget_monthly_usd DOUBLE PRECISION,
    rpm                BIGINT,
    tpm                BIGINT
);
