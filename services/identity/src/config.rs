//! Identity settings.

use std::time::Duration;

use cairn_runtime::config::{ConfigError, Settings, Var};

pub const RULES: Var = Var {
    name: "CAIRN_IDENTITY_RULES",
    default: "",
    doc: "TOML file of identity rules (limits, priorities, blocked values, extra identifier paths); the built-in rules when empty. See services/identity/src/rules.rs.",
};
pub const BATCH: Var = Var {
    name: "CAIRN_IDENTITY_BATCH",
    default: "500",
    doc: "Most raw events identity handles per round.",
};
pub const LEASE: Var = Var {
    name: "CAIRN_IDENTITY_LEASE",
    default: "30s",
    doc: "How long a worker may hold a profile while changing it; a dead worker's profiles are free again after this.",
};
pub const PATIENCE: Var = Var {
    name: "CAIRN_IDENTITY_PATIENCE",
    default: "2s",
    doc: "How long a worker waits for profiles other workers are changing before retrying the event later.",
};

/// Every variable identity reads (besides the bus's and the store's).
pub const VARS: &[Var] = &[RULES, BATCH, LEASE, PATIENCE];

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub rules_path: Option<String>,
    pub batch: usize,
    pub lease: Duration,
    pub patience: Duration,
}

impl IdentityConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let lease = settings.duration(&LEASE)?;
        if lease < Duration::from_secs(1) {
            return Err(settings.invalid(&LEASE, "must be at least 1s"));
        }
        Ok(Self {
            rules_path: settings.optional(&RULES),
            batch: settings.number(&BATCH, 1)? as usize,
            lease,
            patience: settings.duration(&PATIENCE)?,
        })
    }
}
