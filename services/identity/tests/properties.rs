//! Property tests of the identity graph: random events with random links, processed by
//! one worker and by many concurrent workers in random interleavings (tasks sharing one
//! embedded store), with redeliveries.
//!
//! - Without limit conflicts, the result is always the partition of identifiers that a
//!   simple single-threaded reference (union-find over the links) computes.
//! - With conflicts (links across people), the rules always hold: no identifier in two
//!   profiles, no profile over a limit, every event's first identifier placed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cairn_identity::graph::Graph;
use cairn_identity::{Identifier, Rules};
use cairn_store::{Clock, EmbeddedStore, Fsync};
use proptest::prelude::*;

type Partition = BTreeSet<BTreeSet<Identifier>>;

/// A pool of people: each has at most one user id, two emails, three cookies and a
/// device, so links within one person never break a limit.
fn person_identifiers(person: usize) -> Vec<Identifier> {
    vec![
        Identifier::new("user_id", format!("u{person}")),
        Identifier::new("email", format!("p{person}@example.com")),
        Identifier::new("email", format!("p{person}@work.example")),
        Identifier::new("anonymous_id", format!("c{person}-0")),
        Identifier::new("anonymous_id", format!("c{person}-1")),
        Identifier::new("anonymous_id", format!("c{person}-2")),
        Identifier::new("device_id", format!("d{person}")),
    ]
}

/// Events that each carry 1-3 identifiers of one person.
fn same_person_events() -> impl Strategy<Value = Vec<Vec<Identifier>>> {
    prop::collection::vec(
        (0..6usize, prop::collection::vec(0..7usize, 1..4)).prop_map(|(person, picks)| {
            let all = person_identifiers(person);
            let mut event: Vec<Identifier> =
                picks.into_iter().map(|pick| all[pick].clone()).collect();
            event.sort();
            event.dedup();
            event
        }),
        1..40,
    )
}

/// Events that carry 1-3 identifiers of anyone: links across people break limits.
fn any_person_events() -> impl Strategy<Value = Vec<Vec<Identifier>>> {
    prop::collection::vec(
        prop::collection::vec((0..5usize, 0..7usize), 1..4).prop_map(|picks| {
            let mut event: Vec<Identifier> = picks
                .into_iter()
                .map(|(person, pick)| person_identifiers(person)[pick].clone())
                .collect();
            event.sort();
            event.dedup();
            event
        }),
        1..40,
    )
}

/// The reference: connected components of the links, one event at a time.
fn reference(events: &[Vec<Identifier>]) -> Partition {
    let mut parent: HashMap<Identifier, Identifier> = HashMap::new();
    fn find(parent: &mut HashMap<Identifier, Identifier>, x: &Identifier) -> Identifier {
        let next = parent.get(x).cloned().unwrap_or_else(|| x.clone());
        if &next == x {
            return next;
        }
        let root = find(parent, &next);
        parent.insert(x.clone(), root.clone());
        root
    }
    for event in events {
        for identifier in event {
            parent
                .entry(identifier.clone())
                .or_insert_with(|| identifier.clone());
        }
        for pair in event.windows(2) {
            let (a, b) = (find(&mut parent, &pair[0]), find(&mut parent, &pair[1]));
            if a != b {
                parent.insert(a, b);
            }
        }
    }
    let mut groups: HashMap<Identifier, BTreeSet<Identifier>> = HashMap::new();
    let keys: Vec<Identifier> = parent.keys().cloned().collect();
    for identifier in keys {
        let root = find(&mut parent, &identifier);
        groups.entry(root).or_default().insert(identifier);
    }
    groups.into_values().collect()
}

fn graph(dir: &std::path::Path) -> Arc<Graph<EmbeddedStore>> {
    let store = EmbeddedStore::open(dir, Fsync::Buffer, 8 << 20, Clock::system()).unwrap();
    Arc::new(Graph::new(
        store,
        Arc::new(Rules::default()),
        "prop".into(),
        Duration::from_secs(30),
        Duration::from_secs(30),
    ))
}

/// Runs `events` (each once, some twice: redeliveries) on `workers` concurrent tasks, in
/// an order shuffled by `seed`.
async fn run(
    graph: Arc<Graph<EmbeddedStore>>,
    events: &[Vec<Identifier>],
    workers: usize,
    seed: u64,
) {
    let mut deliveries: Vec<(usize, Vec<Identifier>)> =
        events.iter().cloned().enumerate().collect();
    // Every third event is delivered twice.
    deliveries.extend(
        events
            .iter()
            .cloned()
            .enumerate()
            .filter(|(n, _)| n % 3 == 0),
    );
    let mut state = seed | 1;
    for i in (1..deliveries.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        deliveries.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let queue = Arc::new(std::sync::Mutex::new(deliveries));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (graph, queue) = (graph.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((n, event)) = queue.lock().unwrap().pop() else {
                    return;
                };
                graph
                    .identify(
                        &event,
                        &format!("m{n}"),
                        1_700_000_000_000 + n as i64,
                        1_700_000_000_000 + n as i64,
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// The partition the graph holds for the identifiers of `events`, checking on the way
/// that no identifier is in two profiles and that every profile lists what leads to it.
async fn partition(graph: &Graph<EmbeddedStore>, events: &[Vec<Identifier>]) -> Partition {
    let mut profiles: HashMap<String, BTreeSet<Identifier>> = HashMap::new();
    for identifier in events.iter().flatten() {
        if let Some(profile) = graph.lookup(identifier).await.unwrap() {
            let listed: BTreeSet<Identifier> = profile.identifiers.iter().cloned().collect();
            assert!(listed.contains(identifier));
            let known = profiles
                .entry(profile.id.clone())
                .or_insert_with(|| listed.clone());
            assert_eq!(known, &listed, "one profile, one list");
        }
    }
    let partition: Partition = profiles.into_values().collect();
    let mut seen = BTreeSet::new();
    for group in &partition {
        for identifier in group {
            assert!(
                seen.insert(identifier.clone()),
                "{identifier} is in two profiles"
            );
            let holder = graph.lookup(identifier).await.unwrap().unwrap();
            assert!(holder.identifiers.contains(identifier));
        }
    }
    partition
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn one_worker_and_many_agree_with_the_reference(events in same_person_events(), seed in any::<u64>()) {
        let expected = reference(&events);
        runtime().block_on(async {
            for workers in [1, 6] {
                let dir = tempfile::tempdir().unwrap();
                let graph = graph(dir.path());
                run(graph.clone(), &events, workers, seed).await;
                let found = partition(&graph, &events).await;
                assert_eq!(found, expected, "{workers} workers");
            }
        });
    }

    #[test]
    fn links_across_people_never_break_the_rules(events in any_person_events(), seed in any::<u64>()) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let graph = graph(dir.path());
            run(graph.clone(), &events, 6, seed).await;
            let found = partition(&graph, &events).await;
            let rules = Rules::default();
            for profile in &found {
                for kind in rules.types() {
                    let count = profile.iter().filter(|identifier| identifier.kind == kind.name).count() as u32;
                    assert!(count <= kind.limit, "{count} {} in {profile:?}", kind.name);
                }
            }
            for event in &events {
                // The highest-priority identifier of every event has a profile.
                let first = event.iter().min_by_key(|identifier| (rules.rank(&identifier.kind), identifier.value.clone())).unwrap();
                assert!(graph.lookup(first).await.unwrap().is_some(), "{first} has no profile");
            }
        });
    }
}
