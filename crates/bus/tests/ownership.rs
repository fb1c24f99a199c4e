//! Partition ownership between replicas, against a real nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_bus::ownership::Ownership;
use cairn_testkit::TestNats;

const LEASE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn replicas_share_partitions_fairly_and_hand_them_over() {
    let nats = TestNats::start().await;
    let bus = nats.bus().await;
    let mut first = Ownership::join(&bus, "test", 4, LEASE).await.unwrap();
    let plan = first.balance().await.unwrap();
    assert!(plan.renewed);
    assert_eq!(plan.start.len(), 4, "alone, it takes everything: {plan:?}");

    let mut second = Ownership::join(&bus, "test", 4, LEASE).await.unwrap();
    let plan = second.balance().await.unwrap();
    assert!(plan.start.is_empty(), "nothing is free yet: {plan:?}");
    let plan = first.balance().await.unwrap();
    assert_eq!(plan.give_back.len(), 2, "{plan:?}");
    for partition in &plan.give_back {
        first.release(*partition).await;
    }
    let plan = second.balance().await.unwrap();
    assert_eq!(
        plan.start.len(),
        2,
        "it claims what was given back: {plan:?}"
    );
    let mut taken = plan.start.clone();
    let steady = first.balance().await.unwrap();
    assert!(
        steady.give_back.is_empty() && steady.start.is_empty(),
        "{steady:?}"
    );

    // The second leaves: the first takes its partitions again.
    second.leave().await;
    let mut plan = first.balance().await.unwrap();
    plan.start.sort_unstable();
    taken.sort_unstable();
    assert_eq!(plan.start, taken);
}

#[tokio::test]
async fn a_partition_taken_over_is_reported_lost_and_an_outage_is_not() {
    let mut nats = TestNats::start().await;
    let bus = nats.bus().await;
    let mut owner = Ownership::join(&bus, "test", 2, LEASE).await.unwrap();
    let plan = owner.balance().await.unwrap();
    assert_eq!(plan.start.len(), 2);

    // Another replica took partition 0 (as after this one's lease ran out).
    let bucket = bus.jetstream().get_key_value("owners_test").await.unwrap();
    bucket.put("o.0", "intruder".into()).await.unwrap();
    let plan = owner.balance().await.unwrap();
    assert_eq!(plan.lost, vec![0]);
    assert!(plan.renewed, "partition 1 was renewed");

    // NATS away: nothing is reported lost; the caller decides when to give up.
    nats.stop().await;
    let outcome = owner.balance().await;
    assert!(
        outcome.as_ref().is_err() || !outcome.as_ref().unwrap().renewed,
        "{outcome:?}"
    );
    if let Ok(plan) = &outcome {
        assert!(plan.lost.is_empty());
    }
    assert_eq!(owner.abandon(), vec![1]);
    nats.restart().await;
}
