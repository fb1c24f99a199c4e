//! The conformance suite against ScyllaDB. The tests are ignored by default (there is
//! no ScyllaDB on a developer machine or in CI here); `./dev test` runs them when
//! CAIRN_SCYLLA_URI names a cluster, e.g.
//! `CAIRN_SCYLLA_URI=scylla://127.0.0.1:9042/cairn_conformance ./dev test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use cairn_store::ScyllaStore;
use cairn_store::scylla::cql::Replication;
use cairn_store::scylla::{ScyllaConfig, parse_consistency};
use conformance::Backend;

async fn scylla() -> Backend<ScyllaStore> {
    let uri = std::env::var("CAIRN_SCYLLA_URI")
        .expect("CAIRN_SCYLLA_URI names the ScyllaDB to test against");
    let parsed = ScyllaConfig::parse_uri(&uri).expect("CAIRN_SCYLLA_URI");
    let replication =
        std::env::var("CAIRN_SCYLLA_REPLICATION").unwrap_or_else(|_| "simple:1".to_string());
    let config = ScyllaConfig {
        nodes: parsed.nodes,
        credentials: parsed.credentials,
        keyspace: parsed
            .keyspace
            .unwrap_or_else(|| "cairn_conformance".to_string()),
        replication: Replication::parse(&replication).expect("CAIRN_SCYLLA_REPLICATION"),
        consistency: parse_consistency(
            &std::env::var("CAIRN_SCYLLA_CONSISTENCY").unwrap_or_else(|_| "local_quorum".into()),
        )
        .expect("CAIRN_SCYLLA_CONSISTENCY"),
        request_timeout: Duration::from_secs(20),
        datacenter: std::env::var("CAIRN_SCYLLA_DATACENTER").ok(),
        tls_ca: std::env::var("CAIRN_SCYLLA_TLS_CA").ok().map(Into::into),
    };
    let store = ScyllaStore::connect(config)
        .await
        .expect("connect to ScyllaDB");
    Backend {
        store,
        pass: Arc::new(|duration: Duration| Box::pin(tokio::time::sleep(duration))),
        // Tests share the cluster: each gets its own keys.
        prefix: format!("{}-", unique_prefix()),
        _keep: None,
    }
}

fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos:x}-{}", std::process::id())
}

conformance_tests!(scylla, #[ignore = "needs CAIRN_SCYLLA_URI: a ScyllaDB to test against"]);
