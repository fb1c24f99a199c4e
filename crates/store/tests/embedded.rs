//! The conformance suite against the embedded backend, in every test run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use cairn_store::{Clock, EmbeddedStore, Fsync};
use conformance::Backend;

async fn embedded() -> Backend<EmbeddedStore> {
    let dir = tempfile::tempdir().unwrap();
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let clock = Clock::manual(start);
    let store = EmbeddedStore::open(dir.path(), Fsync::Buffer, 8 << 20, clock.clone()).unwrap();
    Backend {
        store,
        pass: Arc::new(move |duration: Duration| {
            clock.advance(duration);
            Box::pin(async {})
        }),
        prefix: String::new(),
        _keep: Some(Box::new(dir)),
    }
}

conformance_tests!(embedded);
