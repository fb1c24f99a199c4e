//! enrich-device: the User-Agent of each event (`context.userAgent`, else the request's
//! header) → browser and version, OS and version, device family, brand and model, and a
//! device type (desktop, mobile, tablet, tv, bot, other), by the uap-core rules
//! ([`parse`]), with a bounded cache ([`cache`]). Bots are flagged (`bot: true`) so that
//! segments can leave them out.

#![forbid(unsafe_code)]

pub mod cache;
pub mod config;
pub mod parse;

use std::sync::Arc;

use cairn_enricher::{Enrich, EnrichError, Learned};
use cairn_event::Event;
use cairn_runtime::{Module, ModuleContext, Var};

pub use config::DeviceConfig;
pub use parse::{DeviceInfo, Devices};

/// Every variable enrich-device reads.
pub fn vars() -> Vec<Var> {
    cairn_enricher::vars(config::VARS)
}

impl Enrich for Devices {
    fn source(&self) -> &'static str {
        "device"
    }

    async fn enrich(
        &self,
        _profile_id: &str,
        event: &Event,
    ) -> Result<Option<Learned>, EnrichError> {
        Ok(event
            .user_agent()
            .map(|agent| Learned::of_event(self.lookup(&agent).facts(), event)))
    }
}

/// Starts enrich-device with its rules loaded.
pub async fn start(context: &ModuleContext) -> Result<Module, EnrichError> {
    let config = DeviceConfig::from_settings(&context.settings)?;
    let devices = Devices::load(config.regexes.as_deref(), config.cache_size)?;
    cairn_enricher::start(context, "enrich-device", devices).await
}

/// For callers holding the logic elsewhere (the CLI).
pub type SharedDevices = Arc<Devices>;
