//! Virtual keys as stored: the secret's SHA-256, never the secret.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the secret.
    #[serde(skip_serializing)]
    pub hash: String,
    /// The secret's first characters, to recognise it in listings.
    pub prefix: String,
    pub tenant: Option<String>,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
    /// Model aliases this key may call; empty: all.
    pub models: Vec<String>,
    pub budget_daily_usd: Option<f64>,
    pub budget_monthly_usd: Option<f64>,
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens (input + output) per minute.
    pub tpm: Option<u64>,
}
