//! Choosing and configuring the store from `CAIRN_*` variables.

use std::time::Duration;

use cairn_runtime::config::{Settings, Var};
use cairn_runtime::host::DATA_DIR;

use crate::embedded::{Clock, EmbeddedStore, Fsync};
use crate::scylla::cql::Replication;
use crate::scylla::{ScyllaConfig, ScyllaStore, parse_consistency};
use crate::{AnyStore, Result};

pub const STORE: Var = Var {
    name: "CAIRN_STORE",
    default: "embedded",
    doc: "Where state lives: `embedded` (fjall, under CAIRN_DATA_DIR/store; one process per directory) or `scylla` (CAIRN_SCYLLA_URI).",
};
pub const STORE_FSYNC: Var = Var {
    name: "CAIRN_STORE_FSYNC",
    default: "buffer",
    doc: "Embedded store durability: `buffer` (each write reaches the OS before it is acknowledged: survives a crash of the process) or `always` (each write is fsynced: survives power loss, slower).",
};
pub const STORE_CACHE: Var = Var {
    name: "CAIRN_STORE_CACHE",
    default: "64MB",
    doc: "Embedded store block cache size.",
};
pub const SCYLLA_URI: Var = Var {
    name: "CAIRN_SCYLLA_URI",
    default: "",
    doc: "ScyllaDB nodes: `scylla://[user:password@]host[:port][,host[:port]...][/keyspace]` (keyspace `cairn` by default).",
};
pub const SCYLLA_REPLICATION: Var = Var {
    name: "CAIRN_SCYLLA_REPLICATION",
    default: "network:3",
    doc: "Keyspace replication when the migrations create it: `network:3`, `network:dc1=3,dc2=3` or `simple:1` (tests).",
};
pub const SCYLLA_CONSISTENCY: Var = Var {
    name: "CAIRN_SCYLLA_CONSISTENCY",
    default: "local_quorum",
    doc: "Consistency of reads and writes (lightweight transactions use the matching serial consistency).",
};
pub const SCYLLA_TIMEOUT: Var = Var {
    name: "CAIRN_SCYLLA_TIMEOUT",
    default: "10s",
    doc: "ScyllaDB connection and request timeout.",
};
pub const SCYLLA_DATACENTER: Var = Var {
    name: "CAIRN_SCYLLA_DATACENTER",
    default: "",
    doc: "The local datacenter: requests go only to its nodes.",
};
pub const SCYLLA_TLS_CA: Var = Var {
    name: "CAIRN_SCYLLA_TLS_CA",
    default: "",
    doc: "PEM file of the CA that signed the nodes' certificates: set it to talk to ScyllaDB over TLS.",
};

/// Every variable the store reads.
pub const VARS: &[Var] = &[
    STORE,
    STORE_FSYNC,
    STORE_CACHE,
    SCYLLA_URI,
    SCYLLA_REPLICATION,
    SCYLLA_CONSISTENCY,
    SCYLLA_TIMEOUT,
    SCYLLA_DATACENTER,
    SCYLLA_TLS_CA,
];

/// The chosen backend and its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    Embedded {
        dir: std::path::PathBuf,
        fsync: Fsync,
        cache_bytes: u64,
    },
    Scylla(ScyllaConfig),
}

impl StoreConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        match settings.string(&STORE).trim() {
            "embedded" | "" => Ok(StoreConfig::Embedded {
                dir: settings.path(&DATA_DIR).join("store"),
                fsync: match settings.string(&STORE_FSYNC).trim() {
                    "buffer" | "" => Fsync::Buffer,
                    "always" => Fsync::Always,
                    _ => {
                        return Err(settings
                            .invalid(&STORE_FSYNC, "use buffer or always")
                            .into());
                    }
                },
                cache_bytes: settings.size(&STORE_CACHE)?.unwrap_or(64 << 20),
            }),
            "scylla" => {
                let uri = settings.optional(&SCYLLA_URI).ok_or_else(|| {
                    settings.invalid(&SCYLLA_URI, "required when CAIRN_STORE=scylla")
                })?;
                let parsed = ScyllaConfig::parse_uri(&uri)
                    .map_err(|reason| settings.invalid_secret(&SCYLLA_URI, reason))?;
                Ok(StoreConfig::Scylla(ScyllaConfig {
                    nodes: parsed.nodes,
                    credentials: parsed.credentials,
                    keyspace: parsed.keyspace.unwrap_or_else(|| "cairn".to_string()),
                    replication: Replication::parse(&settings.string(&SCYLLA_REPLICATION))
                        .map_err(|reason| settings.invalid(&SCYLLA_REPLICATION, reason))?,
                    consistency: parse_consistency(&settings.string(&SCYLLA_CONSISTENCY))
                        .map_err(|reason| settings.invalid(&SCYLLA_CONSISTENCY, reason))?,
                    request_timeout: settings
                        .duration(&SCYLLA_TIMEOUT)?
                        .max(Duration::from_millis(100)),
                    datacenter: settings.optional(&SCYLLA_DATACENTER),
                    tls_ca: settings.optional(&SCYLLA_TLS_CA).map(Into::into),
                }))
            }
            _ => Err(settings.invalid(&STORE, "use embedded or scylla").into()),
        }
    }
}

/// Opens the configured backend.
pub async fn open(config: &StoreConfig) -> Result<AnyStore> {
    match config {
        StoreConfig::Embedded {
            dir,
            fsync,
            cache_bytes,
        } => Ok(AnyStore::Embedded(EmbeddedStore::open(
            dir,
            *fsync,
            *cache_bytes,
            Clock::system(),
        )?)),
        StoreConfig::Scylla(config) => Ok(AnyStore::Scylla(
            ScyllaStore::connect(config.clone()).await?,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let vars: Vec<Var> = [VARS, &[DATA_DIR]].concat();
        Settings::from_pairs(&vars, pairs.iter().copied())
    }

    #[test]
    fn embedded_is_the_default() {
        let config =
            StoreConfig::from_settings(&settings(&[("CAIRN_DATA_DIR", "/tmp/x")])).unwrap();
        assert_eq!(
            config,
            StoreConfig::Embedded {
                dir: "/tmp/x/store".into(),
                fsync: Fsync::Buffer,
                cache_bytes: 64 << 20
            }
        );
    }

    #[test]
    fn scylla_needs_a_uri_and_keeps_the_password_out_of_errors() {
        let err = StoreConfig::from_settings(&settings(&[("CAIRN_STORE", "scylla")])).unwrap_err();
        assert!(err.to_string().contains("CAIRN_SCYLLA_URI"), "{err}");
        let err = StoreConfig::from_settings(&settings(&[
            ("CAIRN_STORE", "scylla"),
            ("CAIRN_SCYLLA_URI", "cql://u:hunter2@x"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let StoreConfig::Scylla(config) = StoreConfig::from_settings(&settings(&[
            ("CAIRN_STORE", "scylla"),
            ("CAIRN_SCYLLA_URI", "scylla://db1,db2/cairn_eu"),
            ("CAIRN_SCYLLA_CONSISTENCY", "quorum"),
        ]))
        .unwrap() else {
            panic!("expected scylla");
        };
        assert_eq!(config.keyspace, "cairn_eu");
        assert_eq!(config.nodes, vec!["db1:9042", "db2:9042"]);
        assert_eq!(config.replication, Replication::Network(3));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = StoreConfig::from_settings(&settings(&[("CAIRN_STORE_FSYNC", "sometimes")]))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CAIRN_STORE_FSYNC=\"sometimes\""),
            "{err}"
        );
    }
}
