//! The store's conformance suite: written once, run against every backend
//! (`tests/embedded.rs` always, `tests/scylla.rs` when CAIRN_SCYLLA_URI is set).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_store::{
    Change, Expect, Outcome, Retention, Store, StoreError, TableSpec, TokenRange, Write, remember,
    token_of,
};

/// A backend under test and a way to let time pass for it.
pub struct Backend<S: Store> {
    pub store: S,
    /// Moves the backend's clock (or waits) past `duration`.
    pub pass: Arc<dyn Fn(Duration) -> futures::future::BoxFuture<'static, ()> + Send + Sync>,
    /// A prefix that keeps this test's keys apart from other tests on a shared backend.
    pub prefix: String,
    /// Whatever must live as long as the backend (a temporary directory).
    pub _keep: Option<Box<dyn std::any::Any + Send>>,
}

impl<S: Store> Backend<S> {
    fn key(&self, name: &str) -> Bytes {
        Bytes::from(format!("{}{name}", self.prefix))
    }

    async fn pass(&self, duration: Duration) {
        (self.pass)(duration).await;
    }
}

pub const TABLE: TableSpec = TableSpec {
    name: "conformance",
    timeline: Retention {
        max_entries: 1000,
        max_age: None,
    },
};

fn table(max_entries: u32, max_age: Option<Duration>) -> TableSpec {
    TableSpec {
        name: "conformance",
        timeline: Retention {
            max_entries,
            max_age,
        },
    }
}

pub async fn records_are_created_updated_and_deleted_by_version<S: Store>(backend: Backend<S>) {
    let store = &backend.store;
    let key = backend.key("record");
    assert_eq!(store.get(&TABLE, &key).await.unwrap(), None);

    let created = store
        .write(&TABLE, Write::new(key.clone()).record(Expect::Absent, "v1"))
        .await
        .unwrap();
    assert_eq!(created, Outcome::Applied { version: Some(1) });
    let again = store
        .write(
            &TABLE,
            Write::new(key.clone()).record(Expect::Absent, "other"),
        )
        .await
        .unwrap();
    let Outcome::Conflict {
        record: Some(current),
        ..
    } = again
    else {
        panic!("create-if-absent on an existing record must conflict: {again:?}");
    };
    assert_eq!(
        (current.value.as_ref(), current.version),
        (b"v1".as_ref(), 1)
    );

    let updated = store
        .write(
            &TABLE,
            Write::new(key.clone()).record(Expect::Version(1), "v2"),
        )
        .await
        .unwrap();
    assert_eq!(updated, Outcome::Applied { version: Some(2) });
    let stale = store
        .write(
            &TABLE,
            Write::new(key.clone()).record(Expect::Version(1), "lost"),
        )
        .await
        .unwrap();
    assert!(
        !stale.is_applied(),
        "update-if-version on a stale version must conflict"
    );
    let overwritten = store
        .write(&TABLE, Write::new(key.clone()).record(Expect::Any, "v3"))
        .await
        .unwrap();
    assert_eq!(overwritten, Outcome::Applied { version: Some(3) });
    let record = store.get(&TABLE, &key).await.unwrap().unwrap();
    assert_eq!((record.value.as_ref(), record.version), (b"v3".as_ref(), 3));

    let wrong = store
        .write(
            &TABLE,
            Write::new(key.clone()).delete_record(Expect::Version(2)),
        )
        .await
        .unwrap();
    assert!(!wrong.is_applied());
    let deleted = store
        .write(
            &TABLE,
            Write::new(key.clone()).delete_record(Expect::Version(3)),
        )
        .await
        .unwrap();
    assert!(deleted.is_applied());
    assert_eq!(store.get(&TABLE, &key).await.unwrap(), None);
    // Versions never go back: a compare-and-set from before the delete stays stale.
    let recreated = store
        .write(&TABLE, Write::new(key.clone()).record(Expect::Absent, "v5"))
        .await
        .unwrap();
    assert_eq!(recreated, Outcome::Applied { version: Some(5) });
    let stale = store
        .write(
            &TABLE,
            Write::new(key.clone()).record(Expect::Version(1), "from before"),
        )
        .await
        .unwrap();
    assert!(!stale.is_applied());
    let gone = store
        .write(&TABLE, Write::new(key.clone()).delete_record(Expect::Any))
        .await
        .unwrap();
    assert!(gone.is_applied());
    let nothing = store
        .write(
            &TABLE,
            Write::new(key.clone()).delete_record(Expect::Absent),
        )
        .await
        .unwrap();
    assert!(
        nothing.is_applied(),
        "deleting what is not there on Absent changes nothing"
    );
    assert_eq!(store.get(&TABLE, &key).await.unwrap(), None);
    let missing = store
        .write(
            &TABLE,
            Write::new(backend.key("never")).record(Expect::Version(1), "x"),
        )
        .await
        .unwrap();
    assert_eq!(
        missing,
        Outcome::Conflict {
            record: None,
            present_marks: vec![]
        }
    );
}

/// Many tasks race on one key, round after round: exactly one wins each round.
pub async fn concurrent_compare_and_set_has_one_winner_each_round<S: Store>(backend: Backend<S>) {
    const TASKS: usize = 12;
    const ROUNDS: u64 = 30;
    let key = backend.key("contended");
    let store = backend.store.clone();
    // Creation races too.
    let mut creators = Vec::new();
    for task in 0..TASKS {
        let (store, key) = (store.clone(), key.clone());
        creators.push(tokio::spawn(async move {
            store
                .write(
                    &TABLE,
                    Write::new(key).record(Expect::Absent, format!("created by {task}")),
                )
                .await
                .unwrap()
                .is_applied()
        }));
    }
    let mut created = 0;
    for creator in creators {
        created += usize::from(creator.await.unwrap());
    }
    assert_eq!(created, 1, "exactly one create-if-absent wins");

    let read = Arc::new(tokio::sync::Barrier::new(TASKS));
    let wrote = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, key, read, wrote) = (store.clone(), key.clone(), read.clone(), wrote.clone());
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            for round in 0..ROUNDS {
                let current = store.get(&TABLE, &key).await.unwrap().unwrap();
                read.wait().await; // everyone has read the same version
                let outcome = store
                    .write(
                        &TABLE,
                        Write::new(key.clone())
                            .record(Expect::Version(current.version), format!("{task}")),
                    )
                    .await
                    .unwrap();
                if outcome.is_applied() {
                    wins.push(round);
                }
                wrote.wait().await; // the round is over for everyone
            }
            wins
        }));
    }
    let mut winners = vec![0; ROUNDS as usize];
    for task in tasks {
        for round in task.await.unwrap() {
            winners[round as usize] += 1;
        }
    }
    assert!(
        winners.iter().all(|count| *count == 1),
        "winners per round: {winners:?}"
    );
    assert_eq!(
        store.get(&TABLE, &key).await.unwrap().unwrap().version,
        ROUNDS + 1
    );
}

/// Read-modify-write from many tasks loses no increment.
pub async fn read_modify_write_loses_no_update<S: Store>(backend: Backend<S>) {
    let key = backend.key("counter");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, key) = (backend.store.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let outcome = store
                    .update(&TABLE, key.clone(), 1000, |current| {
                        let count: u64 = current.map_or(0, |record| {
                            String::from_utf8_lossy(&record.value).parse().unwrap()
                        });
                        Some(Change::set((count + 1).to_string()))
                    })
                    .await
                    .unwrap();
                assert!(outcome.unwrap().is_applied());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let record = backend.store.get(&TABLE, &key).await.unwrap().unwrap();
    assert_eq!(record.value, Bytes::from("160"));
    assert_eq!(record.version, 160);

    // Declining writes nothing; a change whose mark exists is not applied twice.
    let declined = backend
        .store
        .update(&TABLE, key.clone(), 3, |_| None)
        .await
        .unwrap();
    assert_eq!(declined, None);
    let once = |current: Option<&cairn_store::Versioned>| {
        let mut change = Change::set(format!(
            "{}+event",
            String::from_utf8_lossy(&current.unwrap().value)
        ));
        change.marks.push(cairn_store::Mark {
            id: Bytes::from("event-1"),
            value: Bytes::new(),
            ttl: None,
            if_absent: true,
        });
        Some(change)
    };
    assert!(
        backend
            .store
            .update(&TABLE, key.clone(), 3, once)
            .await
            .unwrap()
            .unwrap()
            .is_applied()
    );
    let again = backend
        .store
        .update(&TABLE, key.clone(), 3, once)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(again, Outcome::Conflict { ref present_marks, .. } if present_marks.len() == 1),
        "{again:?}"
    );
    assert_eq!(
        backend
            .store
            .get(&TABLE, &key)
            .await
            .unwrap()
            .unwrap()
            .value,
        Bytes::from("160+event")
    );
}

pub async fn timelines_keep_the_newest_entries_in_order<S: Store>(backend: Backend<S>) {
    let table = table(5, None);
    let key = backend.key("timeline");
    // Out of order by time, and one entry appended twice (a redelivery).
    for at in [
        300, 100, 200, 500, 400, 700, 600, 800, 900, 1000, 1100, 1200,
    ] {
        let write = Write::new(key.clone()).append(at, format!("m{at}"), format!("event at {at}"));
        assert!(
            backend
                .store
                .write(&table, write)
                .await
                .unwrap()
                .is_applied()
        );
    }
    let again = Write::new(key.clone()).append(1200, "m1200", "event at 1200");
    backend.store.write(&table, again).await.unwrap();

    let page = backend
        .store
        .timeline(&table, &key, None, 100)
        .await
        .unwrap();
    let times: Vec<i64> = page.entries.iter().map(|entry| entry.at_ms).collect();
    assert_eq!(
        times,
        vec![1200, 1100, 1000, 900, 800],
        "the newest 5, newest first, once each"
    );
    assert_eq!(page.entries[0].value, Bytes::from("event at 1200"));
    assert!(page.next.is_none());

    // Paged two at a time: 2 + 2 + 1, and the count limit holds across pages.
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = backend
            .store
            .timeline(&table, &key, cursor, 2)
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.entries.iter().map(|entry| entry.at_ms));
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen, vec![1200, 1100, 1000, 900, 800]);
    assert_eq!(pages, 3);
}

pub async fn timelines_drop_entries_past_their_age<S: Store>(backend: Backend<S>) {
    let table = table(100, Some(Duration::from_secs(3)));
    let key = backend.key("aging");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let old = Write::new(key.clone()).append(now - 10_000, "too-old", "x");
    backend.store.write(&table, old).await.unwrap();
    let fresh = Write::new(key.clone()).append(now, "fresh", "y");
    backend.store.write(&table, fresh).await.unwrap();
    let page = backend
        .store
        .timeline(&table, &key, None, 10)
        .await
        .unwrap();
    let ids: Vec<&[u8]> = page.entries.iter().map(|entry| entry.id.as_ref()).collect();
    assert_eq!(
        ids,
        vec![b"fresh".as_ref()],
        "an entry older than max_age is not kept"
    );

    backend.pass(Duration::from_secs(5)).await;
    let page = backend
        .store
        .timeline(&table, &key, None, 10)
        .await
        .unwrap();
    assert!(
        page.entries.is_empty(),
        "entries expire once older than max_age: {page:?}"
    );
}

pub async fn marks_remember_once_and_expire<S: Store>(backend: Backend<S>) {
    let key = backend.key("marks");
    let first = remember(
        &backend.store,
        &TABLE,
        &key,
        b"send-1",
        Bytes::from("sent"),
        Some(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    assert_eq!(first, None);
    let second = remember(
        &backend.store,
        &TABLE,
        &key,
        b"send-1",
        Bytes::from("again"),
        Some(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    assert_eq!(second, Some(Bytes::from("sent")), "the first value stays");
    let forever = remember(
        &backend.store,
        &TABLE,
        &key,
        b"send-2",
        Bytes::from("kept"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(forever, None);

    backend.pass(Duration::from_secs(4)).await;
    assert_eq!(
        backend.store.mark(&TABLE, &key, b"send-1").await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        backend.store.mark(&TABLE, &key, b"send-2").await.unwrap(),
        Some(Bytes::from("kept"))
    );
    let after = remember(
        &backend.store,
        &TABLE,
        &key,
        b"send-1",
        Bytes::from("new"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(after, None, "an expired mark can be set again");
}

/// Scanning every range of a split, page by page, sees every key exactly once.
pub async fn scans_see_every_key_once<S: Store>(backend: Backend<S>) {
    let mut expected = HashSet::new();
    for n in 0..250 {
        let key = backend.key(&format!("scan-{n}"));
        let write = Write::new(key.clone())
            .record(Expect::Absent, format!("{n}"))
            .append(1, "e", "timeline rows are not records");
        backend.store.write(&TABLE, write).await.unwrap();
        expected.insert(key);
    }
    // A key with only marks has no record and is not scanned.
    remember(
        &backend.store,
        &TABLE,
        &backend.key("scan-marks-only"),
        b"m",
        Bytes::new(),
        None,
    )
    .await
    .unwrap();

    let mut seen = Vec::new();
    for range in TokenRange::FULL.split(4) {
        let mut cursor = None;
        let mut last_token = i64::MIN;
        loop {
            let page = backend.store.scan(&TABLE, range, cursor, 7).await.unwrap();
            for (key, record) in &page.records {
                let token = token_of(key);
                assert!(range.contains(token), "a key outside its range");
                assert!(token >= last_token, "token order");
                last_token = token;
                assert_eq!(record.version, 1);
                if key.starts_with(backend.prefix.as_bytes()) {
                    seen.push(key.clone());
                }
            }
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
    }
    let unique: HashSet<Bytes> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no key twice");
    assert_eq!(unique, expected, "every key once");
}

pub async fn oversized_values_are_rejected_clearly<S: Store>(backend: Backend<S>) {
    let key = backend.key("big");
    let err = backend
        .store
        .write(
            &TABLE,
            Write::new(key.clone()).record(Expect::Any, vec![7u8; 1024 * 1024 + 1]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }));
    assert_eq!(
        err.to_string(),
        "record value is 1048577 bytes; the limit is 1048576"
    );
    let err = backend
        .store
        .write(
            &TABLE,
            Write::new(key.clone()).append(1, "e", vec![0u8; 64 * 1024 + 1]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "timeline entry value is 65537 bytes; the limit is 65536"
    );
    let err = backend
        .store
        .get(&TABLE, &vec![b'k'; 1025])
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "key is 1025 bytes; the limit is 1024");
    assert_eq!(
        backend.store.get(&TABLE, &key).await.unwrap(),
        None,
        "nothing was written"
    );
}

/// One write changes record, timeline and marks together; a redelivered write whose
/// mark exists changes nothing.
pub async fn writes_are_atomic_and_redelivery_changes_nothing<S: Store>(backend: Backend<S>) {
    let key = backend.key("profile");
    let first = Write::new(key.clone())
        .record(Expect::Absent, "visits=1")
        .append(1000, "msg-1", "page view")
        .mark_once("msg-1", "done", Some(Duration::from_secs(3600)));
    assert_eq!(
        backend.store.write(&TABLE, first).await.unwrap(),
        Outcome::Applied { version: Some(1) }
    );

    // The same event again (redelivered), applied on the current version.
    let redelivered = Write::new(key.clone())
        .record(Expect::Version(1), "visits=2")
        .append(1000, "msg-1-again", "page view")
        .mark_once("msg-1", "done", Some(Duration::from_secs(3600)));
    let outcome = backend.store.write(&TABLE, redelivered).await.unwrap();
    let Outcome::Conflict {
        record,
        present_marks,
    } = outcome
    else {
        panic!("a write whose mark exists must not apply: {outcome:?}");
    };
    assert_eq!(present_marks, vec![Bytes::from("msg-1")]);
    assert_eq!(record.unwrap().version, 1);

    // A failed record condition leaves timeline and marks alone too.
    let stale = Write::new(key.clone())
        .record(Expect::Version(7), "visits=9")
        .append(2000, "msg-2", "purchase")
        .mark_once("msg-2", "done", None);
    assert!(
        !backend
            .store
            .write(&TABLE, stale)
            .await
            .unwrap()
            .is_applied()
    );

    let timeline = backend
        .store
        .timeline(&TABLE, &key, None, 10)
        .await
        .unwrap();
    let ids: Vec<&[u8]> = timeline
        .entries
        .iter()
        .map(|entry| entry.id.as_ref())
        .collect();
    assert_eq!(ids, vec![b"msg-1".as_ref()]);
    assert_eq!(
        backend.store.mark(&TABLE, &key, b"msg-2").await.unwrap(),
        None
    );
    assert_eq!(
        backend
            .store
            .get(&TABLE, &key)
            .await
            .unwrap()
            .unwrap()
            .value,
        Bytes::from("visits=1")
    );
}

pub async fn delete_forgets_everything_under_a_key<S: Store>(backend: Backend<S>) {
    let (gone, kept) = (backend.key("forget-me"), backend.key("keep-me"));
    for key in [&gone, &kept] {
        let write = Write::new(key.clone())
            .record(Expect::Absent, "traits")
            .append(1, "e1", "event")
            .mark_once("m1", "x", None);
        backend.store.write(&TABLE, write).await.unwrap();
    }
    backend.store.delete(&TABLE, &gone).await.unwrap();
    assert_eq!(backend.store.get(&TABLE, &gone).await.unwrap(), None);
    assert!(
        backend
            .store
            .timeline(&TABLE, &gone, None, 10)
            .await
            .unwrap()
            .entries
            .is_empty()
    );
    assert_eq!(
        backend.store.mark(&TABLE, &gone, b"m1").await.unwrap(),
        None
    );
    assert!(backend.store.get(&TABLE, &kept).await.unwrap().is_some());
    assert_eq!(
        backend
            .store
            .timeline(&TABLE, &kept, None, 10)
            .await
            .unwrap()
            .entries
            .len(),
        1
    );
    // The key can be used again from scratch.
    let again = backend
        .store
        .write(
            &TABLE,
            Write::new(gone.clone()).record(Expect::Absent, "new"),
        )
        .await
        .unwrap();
    assert_eq!(again, Outcome::Applied { version: Some(1) });
}

pub async fn delete_all_clears_a_table_but_what_it_keeps<S: Store>(backend: Backend<S>) {
    for n in 0..1200 {
        let key = backend.key(&format!("clear-{n:04}"));
        let write = Write::new(key)
            .record(Expect::Absent, "doc")
            .append(1, "e1", "event");
        backend.store.write(&TABLE, write).await.unwrap();
    }
    let prefix = backend.prefix.clone();
    // Other tests' keys share the table on a shared backend: keep them, and the 7s.
    let kept = |key: &[u8]| !key.starts_with(prefix.as_bytes()) || key.ends_with(b"7");
    let deleted = cairn_store::delete_all(&backend.store, &TABLE, kept)
        .await
        .unwrap();
    assert_eq!(deleted, 1080);
    assert!(
        backend
            .store
            .get(&TABLE, &backend.key("clear-0007"))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        backend
            .store
            .get(&TABLE, &backend.key("clear-0008"))
            .await
            .unwrap(),
        None
    );
    let timeline = backend
        .store
        .timeline(&TABLE, &backend.key("clear-0008"), None, 10)
        .await
        .unwrap();
    assert!(timeline.entries.is_empty());
}

/// Expands to one `#[tokio::test]` per check, each with a fresh backend from `$make`
/// (an async fn returning `Backend<_>`), with any extra attributes given.
#[macro_export]
macro_rules! conformance_tests {
    ($make:path $(, #[$attr:meta])*) => {
        $crate::conformance_tests!(@each $make, [$(#[$attr])*],
            records_are_created_updated_and_deleted_by_version,
            concurrent_compare_and_set_has_one_winner_each_round,
            read_modify_write_loses_no_update,
            timelines_keep_the_newest_entries_in_order,
            timelines_drop_entries_past_their_age,
            marks_remember_once_and_expire,
            scans_see_every_key_once,
            oversized_values_are_rejected_clearly,
            writes_are_atomic_and_redelivery_changes_nothing,
                        delete_forgets_everything_under_a_key,
            delete_all_clears_a_table_but_what_it_keeps
        );
    };
    (@each $make:path, $attrs:tt, $($check:ident),*) => {
        $( $crate::conformance_tests!(@one $make, $attrs, $check); )*
    };
    (@one $make:path, [$(#[$attr:meta])*], $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn $check() {
            conformance::$check($make().await).await;
        }
    };
}
