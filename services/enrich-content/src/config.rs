//! enrich-content settings.

use std::path::PathBuf;
use std::time::Duration;

use cairn_runtime::config::{ConfigError, Settings, Var};

pub const HALF_LIFE: Var = Var {
    name: "CAIRN_CONTENT_HALF_LIFE",
    default: "14d",
    doc: "How fast topic affinities fade in enrich-content: reading this long ago counts half as much as reading now.",
};
pub const TAXONOMY: Var = Var {
    name: "CAIRN_CONTENT_TAXONOMY",
    default: "",
    doc: "A TOML file mapping topics to the words that signal them (`shoes = [\"shoe\", \"sneaker\", \"boot\"]`); when set, pages get these topics instead of TF-IDF terms.",
};

pub const VARS: &[Var] = &[HALF_LIFE, TAXONOMY];

#[derive(Debug, Clone)]
pub struct ContentConfig {
    pub half_life: Duration,
    pub taxonomy: Option<PathBuf>,
}

impl ContentConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            half_life: cairn_enricher::decay::half_life(settings, &HALF_LIFE)?,
            taxonomy: settings.optional(&TAXONOMY).map(PathBuf::from),
        })
    }
}
