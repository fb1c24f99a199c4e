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
        let half_life = settings.duration(&HALF_LIFE)?;
        if half_life < Duration::from_secs(3_600) {
            return Err(settings.invalid(&HALF_LIFE, "must be at least 1h"));
        }
        Ok(Self {
            half_life,
            free_mail: settings.optional(&FREE_MAIL).map(PathBuf::from),
        })
    }
}
