//! `cairn enrich geo|device`: an enricher's logic on addresses or User-Agents given
//! here, one JSON line out per input, with the same code as the services.

use std::io::BufRead as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_enrich_device::Devices;
use cairn_enrich_geo::{Databases, Geo, GeoConfig};
use cairn_runtime::Settings;
use clap::Subcommand;
use serde_json::json;

use crate::modules;

#[derive(Subcommand)]
pub enum EnrichCommand {
    /// Locate IP addresses (`enrich-geo`): one JSON line per address.
    Geo {
        /// A MaxMind-format database; repeat for several (default: CAIRN_GEO_DATABASES).
        #[arg(long = "db")]
        databases: Vec<PathBuf>,
        /// Drop the host part of each address before the lookup.
        #[arg(long)]
        anonymize: bool,
        /// The addresses.
        #[arg(required = true)]
        ips: Vec<String>,
    },
    /// Parse User-Agents read from standard input, one per line (`enrich-device`): one
    /// JSON line per agent.
    Device {
        /// A uap-core regexes.yaml (default: CAIRN_DEVICE_REGEXES, else the bundled one).
        #[arg(long)]
        regexes: Option<PathBuf>,
    },
}

pub fn run(command: EnrichCommand) -> anyhow::Result<()> {
    let settings = Settings::from_env(&modules::all_vars())?;
    match command {
        EnrichCommand::Geo {
            databases,
            anonymize,
            ips,
        } => {
            let config = GeoConfig::from_settings(&settings)?;
            let paths = if databases.is_empty() {
                config.databases
            } else {
                databases
            };
            if paths.is_empty() {
                anyhow::bail!("no geo database: pass --db PATH or set CAIRN_GEO_DATABASES");
            }
            let geo = Geo {
                databases: Arc::new(Databases::open(&paths)?),
                anonymize: anonymize || config.anonymize,
            };
            for ip in ips {
                let line = match ip.trim().parse::<IpAddr>() {
                    Ok(_) => json!({"ip": ip, "geo": geo.locate(&ip).map(|found| found.facts())}),
                    Err(_) => json!({"ip": ip, "error": "ip: not an IPv4 or IPv6 address"}),
                };
                println!("{line}");
            }
        }
        EnrichCommand::Device { regexes } => {
            let config = cairn_enrich_device::DeviceConfig::from_settings(&settings)?;
            let devices = Devices::load(regexes.or(config.regexes).as_deref(), config.cache_size)?;
            for line in std::io::stdin().lock().lines() {
                let agent = line?;
                if agent.trim().is_empty() {
                    continue;
                }
                let info = devices.lookup(agent.trim());
                println!("{}", json!({"user_agent": agent, "device": info.facts()}));
            }
        }
    }
    Ok(())
}
