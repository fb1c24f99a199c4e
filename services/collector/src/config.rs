//! Collector settings.

use cairn_runtime::config::{ConfigError, Settings, Var};

pub const TRUST_FORWARDED_FOR: Var = Var {
    name: "CAIRN_TRUST_FORWARDED_FOR",
    default: "false",
    doc: "Take the client IP from the last X-Forwarded-For entry, the one added by the proxy or ingress in front of the collector (set it only when there is one you control).",
};
pub const CORS_ORIGINS: Var = Var {
    name: "CAIRN_CORS_ORIGINS",
    default: "*",
    doc: "Origins allowed to call the HTTP API from a browser: `*` or comma-separated origins (https://shop.example.com).",
};

pub const WEB_CONTENT_TTL: Var = Var {
    name: "CAIRN_WEB_CONTENT_TTL",
    default: "1d",
    doc: "How long GET /v1/personalize keeps showing a campaign's web content after the profile entered its state (newer content of the same campaign replaces it sooner).",
};

/// Every variable the collector reads.
pub const VARS: &[Var] = &[
    TRUST_FORWARDED_FOR,
    CORS_ORIGINS,
    WEB_CONTENT_TTL,
    crate::rate_limit::INGEST_RATE_LIMIT,
];

#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub trust_forwarded_for: bool,
    /// `None` allows any origin.
    pub cors_origins: Option<Vec<http::HeaderValue>>,
    pub web_content_ttl: std::time::Duration,
}

impl CollectorConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let origins = settings.string(&CORS_ORIGINS);
        let cors_origins = if origins.trim() == "*" || origins.trim().is_empty() {
            None
        } else {
            let mut parsed = Vec::new();
            for origin in origins
                .split(',')
                .map(str::trim)
                .filter(|origin| !origin.is_empty())
            {
                if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                    return Err(settings.invalid(
                        &CORS_ORIGINS,
                        format!("{origin:?} is not an origin (scheme://host[:port])"),
                    ));
                }
                parsed.push(origin.parse().map_err(|_| {
                    settings.invalid(
                        &CORS_ORIGINS,
                        format!("{origin:?} is not a valid header value"),
                    )
                })?);
            }
            Some(parsed)
        };
        Ok(Self {
            trust_forwarded_for: settings.flag(&TRUST_FORWARDED_FOR)?,
            cors_origins,
            web_content_ttl: settings.duration(&WEB_CONTENT_TTL)?,
        })
    }
}
