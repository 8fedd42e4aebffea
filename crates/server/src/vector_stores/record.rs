//! A vector store's record: its name and metadata, the files added to it with their outcome and attributes,
//! and its recent batches; one JSON document per store (`vector_stores/<id>.json` in the files directory),
//! replaced atomically. The chunks themselves are in the keel collection named after the store's id. The
//! objects of the API are rendered from here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::filter::Attributes;
use crate::ApiError;
use crate::files::{FileArea, json_names, read_json, valid_id, write_json};

/// Vector stores kept at once.
pub(crate) const MAX_STORES: usize = 1_000;
/// Files one vector store holds.
pub(crate) const MAX_FILES_PER_STORE: usize = 10_000;
/// Batches a store remembers (the oldest is forgotten first; its files stay).
const MAX_BATCHES_KEPT: usize = 32;

/// A vector store as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Store {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at: u64,
    pub last_active_at: u64,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub files: Vec<StoreFile>,
    #[serde(default)]
    pub batches: Vec<Batch>,
}

/// A file added to a store. Files are added synchronously, so a recorded file is done: completed or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoreFile {
    pub id: String,
    pub filename: String,
    pub created_at: u64,
    pub status: Status,
    pub usage_bytes: u64,
    #[serde(default)]
    pub attributes: Attributes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
    #[serde(default)]
    pub chunks: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    Completed,
    Failed,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }
}

/// Why a file failed, in the API's terms (`code`: `server_error`, `unsupported_file` or `invalid_file`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LastError {
    pub code: String,
    pub message: String,
}

/// A batch of files added at once, with its outcome when it was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Batch {
    pub id: String,
    pub created_at: u64,
    pub file_ids: Vec<String>,
    pub completed: usize,
    pub failed: usize,
}

impl Store {
    /// The keel collection holding the store's chunks: named after the store.
    pub(crate) fn collection(&self) -> &str {
        &self.id
    }

    pub(crate) fn file(&self, id: &str) -> Option<&StoreFile> {
        self.files.iter().find(|f| f.id == id)
    }

    /// Adds or replaces files (by id).
    pub(crate) fn upsert(&mut self, files: &[StoreFile]) {
        for f in files {
            match self.files.iter_mut().find(|old| old.id == f.id) {
                Some(old) => *old = f.clone(),
                None => self.files.push(f.clone()),
            }
        }
    }

    pub(crate) fn remember(&mut self, batch: Batch) {
        self.batches.push(batch);
        let excess = self.batches.len().saturating_sub(MAX_BATCHES_KEPT);
        self.batches = self.batches.split_off(excess);
    }

    pub(crate) fn object(&self) -> Value {
        let count = |s: Status| self.files.iter().filter(|f| f.status == s).count();
        let mut object = json!({
            "id": self.id,
            "object": "vector_store",
            "created_at": self.created_at,
            "name": self.name,
            "usage_bytes": self.files.iter().filter(|f| f.status == Status::Completed).map(|f| f.usage_bytes).sum::<u64>(),
            "file_counts": {
                "in_progress": 0, "completed": count(Status::Completed), "failed": count(Status::Failed),
                "cancelled": 0, "total": self.files.len(),
            },
            "status": "completed",
            "last_active_at": self.last_active_at,
            "metadata": self.metadata,
            "expires_after": null,
            "expires_at": null,
        });
        if let (Some(d), Some(o)) = (&self.description, object.as_object_mut()) {
            o.insert("description".into(), Value::String(d.clone()));
        }
        object
    }

    pub(crate) fn file_object(&self, f: &StoreFile) -> Value {
        json!({
            "id": f.id,
            "object": "vector_store.file",
            "created_at": f.created_at,
            "vector_store_id": self.id,
            "status": f.status.as_str(),
            "usage_bytes": f.usage_bytes,
            "last_error": f.last_error,
            "attributes": f.attributes,
            "chunking_strategy": null,
        })
    }

    pub(crate) fn batch_object(&self, b: &Batch) -> Value {
        let status = if b.failed > 0 && b.completed == 0 { "failed" } else { "completed" };
        json!({
            "id": b.id,
            "object": "vector_store.files_batch",
            "created_at": b.created_at,
            "vector_store_id": self.id,
            "status": status,
            "file_counts": {
                "in_progress": 0, "completed": b.completed, "failed": b.failed, "cancelled": 0,
                "total": b.file_ids.len(),
            },
        })
    }
}

fn path(area: &FileArea, id: &str) -> std::path::PathBuf {
    area.stores().join(format!("{id}.json"))
}

/// The store's record; `None` when there is no such store. Changes hold `area.records` from load to save.
pub(crate) async fn load(area: &FileArea, id: &str) -> Result<Option<Store>, ApiError> {
    if !valid_id(id, "vs_") {
        return Ok(None);
    }
    read_json(&path(area, id)).await
}

pub(crate) async fn save(area: &FileArea, store: &Store) -> Result<(), ApiError> {
    write_json(&path(area, &store.id), store).await
}

pub(crate) async fn remove(area: &FileArea, id: &str) -> Result<(), ApiError> {
    let p = path(area, id);
    match tokio::fs::remove_file(&p).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(crate::files::io_error(&p, e)),
    }
}

/// The ids of every store (at most one more than [`MAX_STORES`], so that a full directory shows).
pub(crate) async fn ids(area: &FileArea) -> Result<Vec<String>, ApiError> {
    let mut ids = json_names(&area.stores(), MAX_STORES).await?;
    ids.retain(|id| valid_id(id, "vs_"));
    Ok(ids)
}
