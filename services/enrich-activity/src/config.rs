//! enrich-activity settings.

use std::path::PathBuf;
use std::time::Duration;

use cairn_runtime::config::{ConfigError, Settings, Var};

pub const HALF_LIFE: Var = Var {
    name: "CAIRN_ACTIVITY_HALF_LIFE",
    default: "30d",
    doc: "How fast enrich-activity forgets: an event this old weighs half as much as one now.",
};
pub const FREE_MAIL: Var = Var {
    name: "CAIRN_ACTIVITY_FREE_MAIL",
    default: "",
    doc: "A file of free-mail domains (one per line, # comments) replacing the bundled list: addresses there are private (B2C), others business (B2B).",
};

pub const VARS: &[Var] = &[HALF_LIFE, FREE_MAIL];

#[derive(Debug, Clone)]
pub struct ActivityConfig {
    pub half_life: Duration,
    pub free_mail: Option<PathBuf>,
}

impl ActivityConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            half_life: cairn_enricher::decay::half_life(settings, &HALF_LIFE)?,
            free_mail: settings.optional(&FREE_MAIL).map(PathBuf::from),
        })
    }
}
