//! The set of configured providers, built once from the configuration.

use std::collections::HashMap;
use std::sync::Arc;

use keel_config::{ProviderConfig, ProviderId, ProviderKind};

use crate::anthropic::AnthropicProvider;
use crate::openai::OpenAiProvider;
use crate::{Provider, ProviderError};

/// Providers by id. Cheap to clone.
#[derive(Clone, Default)]
pub struct Providers {
    map: Arc<HashMap<ProviderId, Arc<dyn Provider>>>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.map.keys()).finish()
    }
}

impl Providers {
    /// Builds the HTTP provider of each configured upstream (kind `local` excepted).
    pub fn from_config<'a>(configs: impl IntoIterator<Item = &'a ProviderConfig>) -> Result<Self, ProviderError> {
        let mut map: HashMap<ProviderId, Arc<dyn Provider>> = HashMap::new();
        for cfg in configs {
            let provider: Arc<dyn Provider> = match cfg.kind {
                ProviderKind::Anthropic => Arc::new(AnthropicProvider::new(cfg.clone())?),
                // In-process models are built by `keel-local` and added with `with`.
                ProviderKind::Local => continue,
                _ => Arc::new(OpenAiProvider::new(cfg.clone())?),
            };
            map.insert(cfg.id.clone(), provider);
        }
        Ok(Self { map: Arc::new(map) })
    }

    /// Adds a provider built elsewhere (the in-process local model, a test double of a vendor).
    pub fn with(mut self, provider: Arc<dyn Provider>) -> Self {
        let mut map = (*self.map).clone();
        map.insert(provider.id().clone(), provider);
        self.map = Arc::new(map);
        self
    }

    pub fn get(&self, id: &ProviderId) -> Option<&Arc<dyn Provider>> {
        self.map.get(id)
    }
}
