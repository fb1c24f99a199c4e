//! The identity rules, one test each, on the embedded store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use cairn_identity::extract;
use cairn_identity::graph::{Graph, LogKind};
use cairn_identity::{Identifier, IdentityError, Rules};
use cairn_store::{Clock, EmbeddedStore, Fsync};
use serde_json::{Value, json};

struct World {
    graph: Graph<EmbeddedStore>,
    _dir: tempfile::TempDir,
    next_message: std::cell::Cell<u32>,
    clock_ms: std::cell::Cell<i64>,
}

fn world_with(rules: Rules) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), Fsync::Buffer, 8 << 20, Clock::system()).unwrap();
    World {
        graph: Graph::new(
            store,
            Arc::new(rules),
            "test".into(),
            Duration::from_secs(30),
            Duration::from_secs(10),
        ),
        _dir: dir,
        next_message: std::cell::Cell::new(0),
        clock_ms: std::cell::Cell::new(1_700_000_000_000),
    }
}

fn world() -> World {
    world_with(Rules::default())
}

impl World {
    /// Identifies a Segment call and returns its profile id.
    async fn send(&self, event: Value) -> String {
        self.try_send(event).await.unwrap()
    }

    async fn try_send(&self, event: Value) -> Result<String, IdentityError> {
        let n = self.next_message.get() + 1;
        self.next_message.set(n);
        self.clock_ms.set(self.clock_ms.get() + 1000);
        let is_alias = event["type"] == "alias";
        let found = extract::identifiers(self.graph.rules(), &event, is_alias);
        let identifiers = self.graph.event_identifiers(&found).await?;
        let identified = self
            .graph
            .identify(
                &identifiers,
                &format!("m{n}"),
                self.clock_ms.get(),
                self.clock_ms.get(),
            )
            .await?;
        Ok(identified.profile_id)
    }

    async fn profile_of(&self, kind: &str, value: &str) -> Option<String> {
        self.graph
            .lookup(&Identifier::new(kind, value))
            .await
            .unwrap()
            .map(|profile| profile.id)
    }

    async fn identifiers_of(&self, profile: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .graph
            .root(profile)
            .await
            .unwrap()
            .unwrap()
            .identifiers
            .iter()
            .map(ToString::to_string)
            .collect();
        names.sort();
        names
    }
}

#[tokio::test]
async fn an_anonymous_visitor_who_logs_in_keeps_one_profile() {
    let world = world();
    let visitor = world
        .send(json!({"anonymousId": "cookie-1", "event": "Viewed"}))
        .await;
    let logged_in = world
        .send(json!({"anonymousId": "cookie-1", "userId": "u-1"}))
        .await;
    assert_eq!(visitor, logged_in);
    let later = world.send(json!({"userId": "u-1"})).await;
    assert_eq!(later, visitor);
    assert_eq!(
        world.identifiers_of(&visitor).await,
        vec!["anonymous_id:cookie-1", "user_id:u-1"]
    );
}

#[tokio::test]
async fn the_same_email_on_two_devices_merges_them_into_the_older_profile() {
    let world = world();
    let laptop = world.send(json!({"anonymousId": "laptop"})).await;
    let phone = world.send(json!({"anonymousId": "phone"})).await;
    assert_ne!(laptop, phone);
    world
        .send(json!({"anonymousId": "laptop", "traits": {"email": "tom@example.com"}}))
        .await;
    // A linking event: the phone's cookie with the same email, in another case.
    let merged = world
        .send(
            json!({"anonymousId": "phone", "context": {"traits": {"email": " Tom@Example.COM "}}}),
        )
        .await;
    assert_eq!(merged, laptop, "the older profile survives");
    assert_eq!(
        world.profile_of("anonymous_id", "phone").await.as_deref(),
        Some(laptop.as_str())
    );
    assert_eq!(
        world.identifiers_of(&laptop).await,
        vec![
            "anonymous_id:laptop",
            "anonymous_id:phone",
            "email:tom@example.com"
        ]
    );
    let (root, history) = world.graph.history(&phone).await.unwrap();
    assert_eq!(root, laptop, "the merged profile leads to the survivor");
    let merge = history
        .iter()
        .find(|entry| entry.kind == LogKind::Merged)
        .unwrap();
    assert_eq!(
        (merge.from.as_str(), merge.into.as_str()),
        (phone.as_str(), laptop.as_str())
    );
    assert_eq!(merge.reason, "linked by anonymous_id:phone");
    assert_eq!(merge.message_id, "m4");
}

#[tokio::test]
async fn two_user_ids_on_one_cookie_stay_two_customers() {
    let world = world();
    let alice = world
        .send(json!({"anonymousId": "family-pc", "userId": "alice"}))
        .await;
    // Bob logs in on the same browser: the cookie cannot bring Alice along.
    let bob = world
        .send(json!({"anonymousId": "family-pc", "userId": "bob"}))
        .await;
    assert_ne!(alice, bob);
    assert_eq!(
        world.identifiers_of(&alice).await,
        vec!["anonymous_id:family-pc", "user_id:alice"]
    );
    assert_eq!(world.identifiers_of(&bob).await, vec!["user_id:bob"]);
    let (_, history) = world.graph.history(&bob).await.unwrap();
    let refused = history
        .iter()
        .find(|entry| entry.kind == LogKind::Rejected)
        .unwrap();
    assert_eq!(
        refused.identifiers,
        vec![Identifier::new("anonymous_id", "family-pc")]
    );
    assert!(
        refused
            .reason
            .contains("2 user_id identifiers; the limit is 1"),
        "{}",
        refused.reason
    );
    // Refused again later: logged once.
    world
        .send(json!({"anonymousId": "family-pc", "userId": "bob"}))
        .await;
    let (_, history) = world.graph.history(&bob).await.unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|entry| entry.kind == LogKind::Rejected)
            .count(),
        1
    );
}

#[tokio::test]
async fn a_shared_in_store_tablet_does_not_merge_customers() {
    // Blocked by configuration: the tablet's device id is no identifier at all.
    let world = world_with(
        Rules::from_toml("[types.device_id]\nblocked = [\"store-tablet-1\"]\n", None).unwrap(),
    );
    let carol = world
        .send(json!({"userId": "carol", "context": {"device": {"id": "store-tablet-1"}}}))
        .await;
    let dave = world
        .send(json!({"userId": "dave", "context": {"device": {"id": "store-tablet-1"}}}))
        .await;
    assert_ne!(carol, dave);
    assert_eq!(world.profile_of("device_id", "store-tablet-1").await, None);

    // Not blocked: the user-id limit still keeps them apart; the tablet stays with the first.
    let world = self::world();
    let carol = world
        .send(json!({"userId": "carol", "context": {"device": {"id": "tablet-2"}}}))
        .await;
    let dave = world
        .send(json!({"userId": "dave", "context": {"device": {"id": "tablet-2"}}}))
        .await;
    let erin = world
        .send(json!({"userId": "erin", "context": {"device": {"id": "tablet-2"}}}))
        .await;
    assert_ne!(carol, dave);
    assert_ne!(dave, erin);
    assert_eq!(world.identifiers_of(&dave).await, vec!["user_id:dave"]);
    assert_eq!(world.profile_of("device_id", "tablet-2").await, Some(carol));
}

#[tokio::test]
async fn limits_hold_per_identifier_type() {
    let world = world_with(Rules::from_toml("[types.device_id]\nlimit = 2\n", None).unwrap());
    let profile = world
        .send(json!({"userId": "u", "context": {"device": {"id": "d1"}}}))
        .await;
    world
        .send(json!({"userId": "u", "context": {"device": {"id": "d2"}}}))
        .await;
    let third = world
        .send(json!({"userId": "u", "context": {"device": {"id": "d3"}}}))
        .await;
    assert_eq!(third, profile, "the event still goes to the user");
    assert_eq!(
        world.identifiers_of(&profile).await,
        vec!["device_id:d1", "device_id:d2", "user_id:u"]
    );
    assert_eq!(
        world.profile_of("device_id", "d3").await,
        None,
        "d3 joins no one"
    );
}

#[tokio::test]
async fn alias_links_the_previous_id_under_the_same_rules() {
    let world = world();
    let visitor = world.send(json!({"anonymousId": "anon-7"})).await;
    let aliased = world
        .send(json!({"type": "alias", "previousId": "anon-7", "userId": "u-7"}))
        .await;
    assert_eq!(aliased, visitor);
    assert_eq!(
        world.identifiers_of(&visitor).await,
        vec!["anonymous_id:anon-7", "user_id:u-7"]
    );

    // A previousId that is a known user id is taken as one: and two user ids do not merge.
    let old = world.send(json!({"userId": "old-id"})).await;
    let new = world
        .send(json!({"type": "alias", "previousId": "old-id", "userId": "new-id"}))
        .await;
    assert_ne!(old, new);
    assert_eq!(world.profile_of("anonymous_id", "old-id").await, None);
}

#[tokio::test]
async fn events_without_a_usable_identifier_are_refused() {
    let world = world();
    let err = world
        .try_send(json!({"anonymousId": "undefined", "userId": "null", "traits": {"email": "0"}}))
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::NoIdentifiers), "{err}");
}

#[tokio::test]
async fn the_same_event_twice_changes_nothing() {
    let world = world();
    world
        .send(json!({"anonymousId": "a", "traits": {"email": "x@y.z"}}))
        .await;
    world.send(json!({"anonymousId": "b"})).await;
    let event = json!({"anonymousId": "b", "traits": {"email": "x@y.z"}});
    let found = extract::identifiers(world.graph.rules(), &event, false);
    let first = world
        .graph
        .identify(&found.identifiers, "linking", 5, 5)
        .await
        .unwrap();
    let again = world
        .graph
        .identify(&found.identifiers, "linking", 6, 6)
        .await
        .unwrap();
    assert_eq!(first.profile_id, again.profile_id);
    assert_eq!(first.merges.len(), 1);
    assert!(again.merges.is_empty(), "a redelivery merges nothing more");
}

#[tokio::test]
async fn split_restores_the_identifiers_of_a_merge_to_their_own_profile() {
    let world = world();
    let tom = world
        .send(json!({"userId": "tom", "anonymousId": "tom-laptop"}))
        .await;
    let stranger = world
        .send(json!({"anonymousId": "hotel-pc", "context": {"device": {"id": "hotel-dev"}}}))
        .await;
    // A wrong link: the hotel PC's cookie shows up with Tom's email... and Tom's profile.
    world
        .send(json!({"userId": "tom", "anonymousId": "hotel-pc"}))
        .await;
    assert_eq!(
        world
            .profile_of("anonymous_id", "hotel-pc")
            .await
            .as_deref(),
        Some(tom.as_str())
    );

    let merged = vec![
        Identifier::new("device_id", "hotel-dev"),
        Identifier::new("anonymous_id", "hotel-pc"),
    ];
    let split = world.graph.split(&tom, &merged, 99).await.unwrap();
    assert_eq!(split.entry.into, stranger, "the merged profile comes back");
    assert_eq!(
        world.identifiers_of(&tom).await,
        vec!["anonymous_id:tom-laptop", "user_id:tom"]
    );
    assert_eq!(
        world.identifiers_of(&stranger).await,
        vec!["anonymous_id:hotel-pc", "device_id:hotel-dev"]
    );
    assert_eq!(
        world.profile_of("anonymous_id", "hotel-pc").await,
        Some(stranger.clone())
    );
    let (_, history) = world.graph.history(&tom).await.unwrap();
    assert!(history.iter().any(|entry| entry.kind == LogKind::Split));

    // Identifiers that no merge brought get a profile of their own.
    let split = world
        .graph
        .split(&tom, &[Identifier::new("anonymous_id", "tom-laptop")], 100)
        .await
        .unwrap();
    assert_ne!(split.entry.into, tom);
    assert_eq!(
        world.profile_of("anonymous_id", "tom-laptop").await,
        Some(split.entry.into)
    );
    let err = world
        .graph
        .split(&tom, &[Identifier::new("user_id", "tom")], 101)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("every identifier of the profile"),
        "{err}"
    );
}

#[tokio::test]
async fn forgetting_a_person_leaves_no_identifier_behind() {
    let world = world();
    let kept = world.send(json!({"userId": "stays"})).await;
    world.send(json!({"anonymousId": "c1"})).await;
    let gone = world
        .send(json!({"anonymousId": "c2", "userId": "gone", "traits": {"email": "g@example.com"}}))
        .await;
    world
        .send(json!({"anonymousId": "c1", "traits": {"email": "g@example.com"}}))
        .await;
    let identifiers = vec![
        Identifier::new("user_id", "gone"),
        Identifier::new("email", "g@example.com"),
        Identifier::new("anonymous_id", "c1"),
        Identifier::new("anonymous_id", "c2"),
    ];
    let deleted_at = world.clock_ms.get();
    world.graph.forget(&identifiers, deleted_at).await.unwrap();
    // A repeat of the deletion changes nothing.
    world.graph.forget(&identifiers, deleted_at).await.unwrap();
    for identifier in &identifiers {
        assert_eq!(
            world.graph.lookup(identifier).await.unwrap(),
            None,
            "{identifier}"
        );
    }
    assert!(world.graph.root(&gone).await.unwrap().is_none());
    assert_eq!(world.profile_of("user_id", "stays").await, Some(kept));

    // An event received before the deletion (a late redelivery, a rebuild) is dropped,
    // even beside a known identifier; one received after it starts afresh.
    let email = Identifier::new("email", "g@example.com");
    let stays = Identifier::new("user_id", "stays");
    let err = world
        .graph
        .identify(
            &[stays.clone(), email.clone()],
            "late",
            deleted_at - 1,
            deleted_at + 5,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, IdentityError::Forgotten { ref kind } if kind == "email"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("g@example.com"),
        "the value is not repeated: {err}"
    );
    let back = world
        .graph
        .identify(
            std::slice::from_ref(&email),
            "back",
            deleted_at + 10,
            deleted_at + 10,
        )
        .await
        .unwrap();
    assert_ne!(back.profile_id, gone);
    assert_eq!(
        world.graph.lookup(&email).await.unwrap().unwrap().id,
        back.profile_id
    );
}
