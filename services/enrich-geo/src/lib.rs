//! enrich-geo: the client IP of each event (`context.ip`, else the address the collector
//! saw) → country, region, city, postal code, latitude/longitude, timezone and ASN.
//!
//! Reads MaxMind-format databases ([`database`]): the GeoIP2/GeoLite2 layout and the
//! flat layout of the ip-location-db project, several at once (a city database and an
//! ASN database, say), each reloaded when its file changes. Private, loopback and
//! unknown addresses give no facts. With anonymisation on, the last octet of an IPv4
//! address (the last 80 bits of an IPv6 one) is dropped before the lookup.

#![forbid(unsafe_code)]

pub mod config;
pub mod database;

use std::net::IpAddr;
use std::sync::Arc;

use cairn_enricher::{Enrich, EnrichError, Learned};
use cairn_event::Event;
use cairn_runtime::{Module, ModuleContext, ModuleTask, Shutdown, Var};

pub use config::GeoConfig;
pub use database::{Databases, Location};

/// Every variable enrich-geo reads.
pub fn vars() -> Vec<Var> {
    cairn_enricher::vars(config::VARS)
}

/// The geo logic: addresses to locations.
pub struct Geo {
    pub databases: Arc<Databases>,
    pub anonymize: bool,
}

impl Geo {
    /// The location of `ip` (text), if the databases know it and it is public.
    pub fn locate(&self, ip: &str) -> Option<Location> {
        let address: IpAddr = ip.trim().parse().ok()?;
        let address = if self.anonymize {
            database::anonymize(address)
        } else {
            address
        };
        self.databases.locate(address)
    }
}

impl Enrich for Geo {
    fn source(&self) -> &'static str {
        "geo"
    }

    async fn enrich(
        &self,
        _profile_id: &str,
        event: &Event,
    ) -> Result<Option<Learned>, EnrichError> {
        Ok(event
            .ip()
            .and_then(|ip| self.locate(&ip))
            .map(|location| Learned::of_event(location.facts(), event)))
    }
}

/// Starts enrich-geo: databases loaded (and watched), the worker running.
pub async fn start(context: &ModuleContext) -> Result<Module, EnrichError> {
    let config = GeoConfig::from_settings(&context.settings)?;
    let databases = Arc::new(Databases::open(&config.databases)?);
    if config.databases.is_empty() {
        tracing::warn!("no geo database configured (CAIRN_GEO_DATABASES): events get no geo facts");
    }
    let mut module = cairn_enricher::start(
        context,
        "enrich-geo",
        Geo {
            databases: databases.clone(),
            anonymize: config.anonymize,
        },
    )
    .await?;
    module
        .tasks
        .push(watch(databases, &config, context.shutdown.clone()));
    Ok(module)
}

/// The task that reloads `databases` when their files change, until `shutdown`.
pub fn watch(databases: Arc<Databases>, config: &GeoConfig, shutdown: Shutdown) -> ModuleTask {
    let check_every = config.reload_check;
    Box::pin(async move {
        loop {
            tokio::select! {
                () = shutdown.requested() => return Ok(()),
                () = tokio::time::sleep(check_every) => {}
            }
            databases.reload_changed();
        }
    })
}
