//! `cairn bench store`: read-modify-write of a 2 KB profile plus a timeline append per
//! event on the embedded store.

use std::time::Instant;

use bytes::Bytes;

use super::StoreArgs;

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    use cairn_store::{
        Change, Clock, EmbeddedStore, Fsync, Retention, Store as _, TableSpec, TimelineEntry,
    };
    const PROFILES: TableSpec = TableSpec {
        name: "profiles",
        timeline: Retention {
            max_entries: 200,
            max_age: None,
        },
    };
    let dir = tempfile::tempdir()?;
    let fsync = if args.fsync_always {
        Fsync::Always
    } else {
        Fsync::Buffer
    };
    let store = EmbeddedStore::open(dir.path(), fsync, 64 << 20, Clock::system())?;
    let writers = args.writers.max(1);
    println!(
        "cairn bench store: {} events on {} profiles of 2 KB, {writers} writers, fsync {:?}, in {}",
        args.events,
        args.profiles,
        fsync,
        dir.path().display()
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = store.clone();
        let (events, profiles) = (args.events / writers, args.profiles.max(writers));
        tasks.push(tokio::spawn(async move {
            let mut state = writer.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let entry = Bytes::from(vec![b'e'; 300]);
            for n in 0..events {
                // xorshift: a profile among this writer's share.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let profile = (state % (profiles / writers)) * writers + writer;
                let key = Bytes::from(format!("profile-{profile:08}"));
                let outcome = store
                    .update(&PROFILES, key, 1, |current| {
                        let mut document = current
                            .map_or_else(|| vec![b' '; 2048], |record| record.value.to_vec());
                        // The change an event makes: counters and a last-seen stamp.
                        document[..8].copy_from_slice(&n.to_be_bytes());
                        let mut change = Change::set(document);
                        change.appends.push(TimelineEntry {
                            at_ms: n as i64,
                            id: Bytes::from(format!("m-{writer}-{n}")),
                            value: entry.clone(),
                        });
                        Some(change)
                    })
                    .await?;
                if !outcome.is_some_and(|outcome| outcome.is_applied()) {
                    anyhow::bail!("unexpected conflict: each writer owns its profiles");
                }
            }
            Ok::<u64, anyhow::Error>(events)
        }));
    }
    let mut applied = 0;
    for task in tasks {
        applied += task.await??;
    }
    let eps = applied as f64 / started.elapsed().as_secs_f64();
    println!("  read-modify-write + timeline append: {eps:>10.0} events/s");
    println!("{}", serde_json::json!({"store_rmw_eps": eps.round()}));
    Ok(())
}
