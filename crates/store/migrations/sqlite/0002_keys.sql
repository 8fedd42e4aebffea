-- Virtual keys: stored hashed (SHA-256 of the secret), shown once at creation.
CREATE TABLE keys (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    hash               TEXT NOT NULL UNIQUE,
    prefix             TEXT NOT NULL,
    tenant             TEXT,
    created_ms         INTEGER NOT NULL,
    revoked_ms         INTEGER,
    models             TEXT NOT NULL,
    budget_daily_usd   REAL,
    budget_monthly_usd REAL,
    rpm                INTEGER,
    tpm                INTEGER
);
