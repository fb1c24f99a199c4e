//! Bus settings.

use std::time::Duration;

use cairn_runtime::config::{ConfigError, Settings, Var};

pub const NATS_URL: Var = Var {
    name: "CAIRN_NATS_URL",
    default: "nats://127.0.0.1:4222",
    doc: "NATS server(s), comma-separated. `cairn up` starts a local nats-server with JetStream under the data directory when none answers here.",
};
pub const NATS_CREDS_FILE: Var = Var {
    name: "CAIRN_NATS_CREDS_FILE",
    default: "",
    doc: "Optional NATS credentials file (JWT + NKey) for secured NATS deployments.",
};
pub const PARTITIONS: Var = Var {
    name: "CAIRN_PARTITIONS",
    default: "16",
    doc: "Number of partitions of the ordered subjects. Fixed for the life of the streams: changing it moves people between partitions.",
};
pub const PUBLISH_TIMEOUT: Var = Var {
    name: "CAIRN_PUBLISH_TIMEOUT",
    default: "5s",
    doc: "Longest wait for a JetStream acknowledgement before the publish counts as failed (the collector answers 503).",
};
pub const MAX_IN_FLIGHT: Var = Var {
    name: "CAIRN_MAX_IN_FLIGHT",
    default: "10000",
    doc: "Most publishes awaiting a JetStream acknowledgement at once per process; further publishes wait.",
};
pub const STREAM_REPLICAS: Var = Var {
    name: "CAIRN_STREAM_REPLICAS",
    default: "1",
    doc: "Replicas of every stream (3 on a NATS cluster in production).",
};
pub const EVENTS_MAX_AGE: Var = Var {
    name: "CAIRN_EVENTS_MAX_AGE",
    default: "0",
    doc: "How long the EVENTS stream keeps raw events (e.g. 90d); 0 keeps them forever.",
};
pub const EVENTS_MAX_BYTES: Var = Var {
    name: "CAIRN_EVENTS_MAX_BYTES",
    default: "-1",
    doc: "Size limit of the EVENTS stream (e.g. 50GB); -1 for none. When full, new events are refused (429), old ones are never dropped.",
};
pub const DERIVED_MAX_AGE: Var = Var {
    name: "CAIRN_DERIVED_MAX_AGE",
    default: "7d",
    doc: "How long the streams of derived data (identified events, profile changes) keep messages; they can be rebuilt from EVENTS.",
};
pub const EVENTS_DUPLICATE_WINDOW: Var = Var {
    name: "CAIRN_EVENTS_DUPLICATE_WINDOW",
    default: "10m",
    doc: "Within this window an event with an already stored messageId is stored only once.",
};

/// Every variable the bus reads.
pub const VARS: &[Var] = &[
    NATS_URL,
    NATS_CREDS_FILE,
    PARTITIONS,
    PUBLISH_TIMEOUT,
    MAX_IN_FLIGHT,
    STREAM_REPLICAS,
    EVENTS_MAX_AGE,
    EVENTS_MAX_BYTES,
    EVENTS_DUPLICATE_WINDOW,
    DERIVED_MAX_AGE,
];

/// `url` with any `user:password@` replaced by `***@`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|server| match (server.find("://"), server.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &server[..scheme + 3], &server[at..])
            }
            (None, Some(at)) => format!("***{}", &server[at..]),
            _ => server.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Settings of the connection and the streams.
#[derive(Clone)]
pub struct BusConfig {
    pub url: String,
    pub creds_file: Option<String>,
    pub partitions: u32,
    pub publish_timeout: Duration,
    pub max_in_flight: usize,
    pub replicas: usize,
    pub events_max_age: Duration,
    pub events_max_bytes: Option<u64>,
    pub events_duplicate_window: Duration,
    pub derived_max_age: Duration,
}

impl std::fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusConfig")
            .field("url", &redact_url(&self.url))
            .field("partitions", &self.partitions)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl BusConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let partitions = settings.number(&PARTITIONS, 1)?;
        let partitions =
            u32::try_from(partitions).map_err(|_| settings.invalid(&PARTITIONS, "too large"))?;
        let window = settings.duration(&EVENTS_DUPLICATE_WINDOW)?;
        if window.is_zero() {
            return Err(settings.invalid(&EVENTS_DUPLICATE_WINDOW, "must be longer than 0"));
        }
        let url = settings.string(&NATS_URL);
        if url.trim().is_empty() {
            return Err(settings.invalid_secret(&NATS_URL, "must name a NATS server"));
        }
        Ok(Self {
            url,
            creds_file: settings.optional(&NATS_CREDS_FILE),
            partitions,
            publish_timeout: settings.duration(&PUBLISH_TIMEOUT)?,
            max_in_flight: settings.number(&MAX_IN_FLIGHT, 1)? as usize,
            replicas: settings.number(&STREAM_REPLICAS, 1)? as usize,
            events_max_age: settings.duration(&EVENTS_MAX_AGE)?,
            events_max_bytes: settings.size(&EVENTS_MAX_BYTES)?,
            events_duplicate_window: window,
            derived_max_age: settings.duration(&DERIVED_MAX_AGE)?,
        })
    }

    /// The defaults, pointed at `url` (tests and benchmarks).
    pub fn for_url(url: &str) -> Self {
        let settings = Settings::from_pairs(VARS, [(NATS_URL.name, url)]);
        // The defaults are valid by construction; a failure here is a bug in them.
        match Self::from_settings(&settings) {
            Ok(config) => config,
            Err(err) => panic!("bus defaults are invalid: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("nats://cairn:s3cret@nats-0:4222"),
            "nats://***@nats-0:4222"
        );
        assert_eq!(
            redact_url("nats://a:b@n1:4222,nats://n2:4222"),
            "nats://***@n1:4222,nats://n2:4222"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
