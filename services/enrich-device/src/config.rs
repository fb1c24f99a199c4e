//! enrich-device settings.

use std::path::PathBuf;

use cairn_runtime::config::{ConfigError, Settings, Var};

pub const REGEXES: Var = Var {
    name: "CAIRN_DEVICE_REGEXES",
    default: "",
    doc: "A uap-core `regexes.yaml` for enrich-device; unset uses the bundled copy (uap-core 0.18).",
};
pub const CACHE_SIZE: Var = Var {
    name: "CAIRN_DEVICE_CACHE_SIZE",
    default: "100000",
    doc: "Most distinct User-Agents enrich-device keeps parsed.",
};

pub const VARS: &[Var] = &[REGEXES, CACHE_SIZE];

#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub regexes: Option<PathBuf>,
    pub cache_size: usize,
}

impl DeviceConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            regexes: settings.optional(&REGEXES).map(PathBuf::from),
            cache_size: settings.number(&CACHE_SIZE, 0)? as usize,
        })
    }
}
