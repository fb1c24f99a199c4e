//! enrich-geo settings.

use std::path::PathBuf;
use std::time::Duration;

use cairn_runtime::config::{ConfigError, Settings, Var};

pub const DATABASES: Var = Var {
    name: "CAIRN_GEO_DATABASES",
    default: "",
    doc: "MaxMind-format (.mmdb) databases for enrich-geo, comma-separated: GeoIP2/GeoLite2 City, Country or ASN, or ip-location-db files. Each is reloaded when its file changes; none means no geo facts.",
};
pub const ANONYMIZE_IP: Var = Var {
    name: "CAIRN_GEO_ANONYMIZE_IP",
    default: "false",
    doc: "Drop the last octet of IPv4 addresses (the last 80 bits of IPv6 ones) before the geo lookup.",
};
pub const RELOAD_CHECK: Var = Var {
    name: "CAIRN_GEO_RELOAD_CHECK",
    default: "10s",
    doc: "How often enrich-geo looks for changed database files.",
};

pub const VARS: &[Var] = &[DATABASES, ANONYMIZE_IP, RELOAD_CHECK];

#[derive(Debug, Clone)]
pub struct GeoConfig {
    pub databases: Vec<PathBuf>,
    pub anonymize: bool,
    pub reload_check: Duration,
}

impl GeoConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let reload_check = settings.duration(&RELOAD_CHECK)?;
        if reload_check < Duration::from_millis(100) {
            return Err(settings.invalid(&RELOAD_CHECK, "must be at least 100ms"));
        }
        Ok(Self {
            databases: settings
                .string(&DATABASES)
                .split(',')
                .map(str::trim)
                .filter(|path| !path.is_empty())
                .map(PathBuf::from)
                .collect(),
            anonymize: settings.flag(&ANONYMIZE_IP)?,
            reload_check,
        })
    }
}
