//! Fault runs: events through the separate-process mesh while each process in turn is
//! killed with SIGKILL and started again, and nats-server is restarted once; and on a
//! 3-node NATS cluster (streams with 3 replicas) while the node leading the EVENTS stream
//! is killed, stays down a third of the run, and comes back. At the end, against a
//! reference computed from the events the collector accepted:
//!
//! - every accepted event is in the EVENTS stream, once;
//! - every person's profile counts exactly their events (none lost, none twice);
//! - no identifier belongs to two profiles, and each person's identifiers to one;
//! - every due cart reminder (a durable timer after the last add_to_cart) was sent
//!   once, counted at the SMTP server; none to anyone else.
//!
//! `CAIRN_FAULT_EVENTS` sets the number of events (20,000 by default, so the suite
//! stays short; `CAIRN_FAULT_EVENTS=200000` for the full run by hand).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::mesh::{ADMIN_TOKEN, CART, Mesh, WRITE_KEY, header};
use serde_json::{Value, json};

/// Events per person: this many page views, and for some an identify and carts.
const PAGES_PER_PERSON: usize = 16;

/// What one person does, and what they should end up with.
#[derive(Debug, Default, Clone)]
struct Person {
    anonymous_ids: Vec<String>,
    email: Option<String>,
    pages: u64,
    carts: u64,
}

impl Person {
    /// A cart reminder is due: known by email and carting, never buying.
    fn reminder_due(&self) -> bool {
        self.email.is_some() && self.carts > 0
    }
}

/// The traffic: every person's events in the order a site would send them, interleaved;
/// as many people as make `events` events (the last one may add a few more).
fn traffic(events: usize) -> (Vec<Person>, Vec<Value>) {
    let mut persons = Vec::new();
    let mut streams: Vec<Vec<Value>> = Vec::new();
    let mut total = 0;
    for p in 0.. {
        if total >= events {
            break;
        }
        let mut person = Person::default();
        let mut calls = Vec::new();
        let first = format!("a{p}");
        person.anonymous_ids.push(first.clone());
        // One in four signs in; of those, every other one on a second device too.
        let email = (p % 4 == 0).then(|| format!("p{p}@example.com"));
        let second = (p % 8 == 0).then(|| format!("b{p}"));
        if let Some(second) = &second {
            person.anonymous_ids.push(second.clone());
        }
        for n in 0..PAGES_PER_PERSON {
            let device = match &second {
                Some(second) if n % 2 == 1 => second,
                _ => &first,
            };
            calls.push(json!({"type": "page", "messageId": format!("{p}-page-{n}"), "anonymousId": device,
                              "properties": {"url": format!("https://shop.example.com/item-{}", n % 5)}}));
            person.pages += 1;
            if n == 2
                && let Some(email) = &email
            {
                for anonymous_id in &person.anonymous_ids {
                    calls.push(json!({"type": "identify", "messageId": format!("{p}-identify-{anonymous_id}"),
                                      "anonymousId": anonymous_id, "traits": {"email": email}}));
                }
            }
            if n >= 4 && n % 6 == 4 && p % 2 == 0 {
                calls.push(json!({"type": "track", "messageId": format!("{p}-cart-{n}"), "anonymousId": device,
                                  "event": "add_to_cart", "properties": {"sku": format!("sku-{n}")}}));
                person.carts += 1;
            }
        }
        person.email = email;
        persons.push(person);
        total += calls.len();
        streams.push(calls);
    }
    // Round-robin over people, so everyone's events spread over the whole run.
    let mut interleaved = Vec::with_capacity(total);
    let mut cursors = vec![0; streams.len()];
    loop {
        let mut any = false;
        for (p, calls) in streams.iter().enumerate() {
            if let Some(call) = calls.get(cursors[p]) {
                interleaved.push(call.clone());
                cursors[p] += 1;
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    (persons, interleaved)
}

/// Posts `batch` until the collector answers 200: a client retrying with the same
/// message ids through kills and NATS restarts. Returns how many attempts were refused.
async fn send_until_accepted(client: &reqwest::Client, url: &str, batch: &[Value]) -> u64 {
    let body = json!({ "batch": batch });
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = client
            .post(url)
            .basic_auth(WRITE_KEY, Some(""))
            .timeout(Duration::from_secs(10))
            .json(&body)
            .send()
            .await;
        match answer {
            Ok(response) if response.status() == 200 => return refused,
            Ok(response) => {
                let status = response.status();
                assert!(
                    status == 503 || status == 429,
                    "{status}: {}",
                    response.text().await.unwrap_or_default()
                );
            }
            Err(_) => {} // the collector is down: killed, or starting again
        }
        refused += 1;
        assert!(Instant::now() < deadline, "a batch refused for 2 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every profile, from the profile store's Export.
async fn export(mesh: &Mesh) -> Vec<Value> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", mesh.core_grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = cairn_proto::profile::v1::profiles_client::ProfilesClient::new(channel);
    let request = cairn_testkit::bearer(cairn_proto::profile::v1::ExportRequest {}, ADMIN_TOKEN);
    let mut stream = client.export(request).await.unwrap().into_inner();
    let mut profiles = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        profiles.push(serde_json::from_str(&item.profile_json).unwrap());
    }
    profiles
}

/// The index of the cluster node leading the EVENTS stream (nodes are named `n<index>`).
async fn events_leader(mesh: &Mesh) -> usize {
    let bus = mesh.nats.bus().await;
    let mut stream = bus
        .jetstream()
        .get_stream(cairn_bus::streams::EVENTS)
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    let leader = info
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.leader.clone())
        .expect("EVENTS has a leader");
    leader
        .strip_prefix('n')
        .and_then(|index| index.parse().ok())
        .unwrap_or_else(|| panic!("leader {leader} is not a test node"))
}

/// What the PROFILES and CAMPAIGNS streams hold about the profiles `ids`, in order: for
/// a reminder that never came, where its way ended.
async fn trail(bus: &cairn_bus::Bus, ids: &BTreeSet<String>) -> String {
    use cairn_proto::campaign::v1::{Action, TimerDue};
    use cairn_proto::profile::v1::ProfileChanged;
    use prost::Message as _;
    let mut lines = Vec::new();
    for stream in [cairn_bus::streams::PROFILES, cairn_bus::streams::CAMPAIGNS] {
        for message in cairn_testkit::stream_messages(bus, stream).await {
            let subject = message.subject.as_str();
            let line = if subject.starts_with("profiles.changed.") {
                let Ok(changed) = ProfileChanged::decode(message.payload) else {
                    continue;
                };
                if !ids.contains(&changed.profile_id) {
                    continue;
                }
                let profile: Value =
                    serde_json::from_str(&changed.profile_json).unwrap_or(Value::Null);
                let event = changed
                    .event
                    .and_then(|identified| identified.envelope)
                    .map(|envelope| String::from_utf8_lossy(&envelope.raw).into_owned());
                format!(
                    "{subject} {} v{} {:?} email={} merged_into={} event={event:?}",
                    changed.profile_id,
                    changed.version,
                    changed.changed_fields,
                    profile["traits"]["email"],
                    profile["merged_into"]
                )
            } else if subject.starts_with("campaign.sends.") {
                let Ok(action) = Action::decode(message.payload) else {
                    continue;
                };
                if !ids.contains(&action.profile_id) {
                    continue;
                }
                format!("{subject} {} {}", action.profile_id, action.idempotency_key)
            } else if subject.starts_with("campaign.") {
                let Ok(due) = TimerDue::decode(message.payload) else {
                    continue;
                };
                if !ids.contains(&due.profile_id) {
                    continue;
                }
                format!(
                    "{subject} {} transition {} due {}",
                    due.profile_id, due.transition, due.due_ms
                )
            } else {
                continue;
            };
            lines.push(format!("  {line}"));
        }
    }
    lines.join("\n")
}

fn count(profile: &Value, event: &str) -> u64 {
    profile["event_count"][event]["all"].as_u64().unwrap_or(0)
}

/// What the run does to the mesh while the site sends.
#[derive(Debug, Clone, PartialEq)]
enum Fault {
    /// SIGKILL one process of the mesh and start it again.
    Process(String),
    /// Stop the (single) nats-server and start it again.
    NatsRestart,
    /// SIGKILL the cluster node that leads the EVENTS stream; it stays down...
    EventsLeaderDown,
    /// ...until this starts it again and it rejoins.
    NodeBack,
}

impl Fault {
    fn name(&self) -> &str {
        match self {
            Fault::Process(name) => name,
            Fault::NatsRestart => "nats-server",
            Fault::EventsLeaderDown => "events-leader-down",
            Fault::NodeBack => "node-back",
        }
    }
}

/// How many events a run sends: `CAIRN_FAULT_EVENTS`, else 20,000.
fn events_to_send() -> usize {
    std::env::var("CAIRN_FAULT_EVENTS")
        .ok()
        .map(|value| value.parse().expect("CAIRN_FAULT_EVENTS: a number"))
        .unwrap_or(20_000)
}

const SETTINGS: &[(&str, &str)] = &[
    ("CAIRN_PARTITION_LEASE", "1s"),
    ("CAIRN_LOG", "info,fjall=warn,lsm_tree=warn"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_each_process_and_restarting_nats_loses_nothing_and_doubles_nothing() {
    let Some(mesh) = Mesh::start(SETTINGS).await else {
        return;
    };
    let mut faults: Vec<Fault> = mesh
        .process_names()
        .into_iter()
        .map(Fault::Process)
        .collect();
    faults.insert(faults.len() / 2, Fault::NatsRestart);
    run(mesh, faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_cluster_losing_the_events_leader_keeps_accepting_and_loses_nothing() {
    let nats = cairn_testkit::TestNats::start_cluster(3).await;
    let settings = [SETTINGS, &[("CAIRN_STREAM_REPLICAS", "3")]].concat();
    let Some(mesh) = Mesh::start_on(nats, &settings).await else {
        return;
    };
    run(mesh, vec![Fault::EventsLeaderDown, Fault::NodeBack]).await;
}

/// Sends the traffic through `mesh` while `faults` happen one after another, spread over
/// the run, then checks everything against the reference.
async fn run(mut mesh: Mesh, mut faults: Vec<Fault>) {
    let events = events_to_send();
    mesh.put_cart_reminder_template().await;
    mesh.cli(&["campaign", "create"], Some(CART)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let (people, calls) = traffic(events);
    let sent = calls.len();
    let batches: Vec<Vec<Value>> = calls.chunks(100).map(<[Value]>::to_vec).collect();
    let started = Instant::now();

    // The site sends in the background, retrying what is refused...
    let url = format!("http://{}/v1/batch", mesh.http);
    let (progress, mut batches_done) = tokio::sync::watch::channel(0usize);
    let sender = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut refused = 0;
        for (index, batch) in batches.iter().enumerate() {
            refused += send_until_accepted(&client, &url, batch).await;
            let _ = progress.send(index + 1);
        }
        refused
    });

    // ...while the faults happen, one after another.
    let total_batches = sent.div_ceil(100);
    // CAIRN_FAULTS=identity,nats-server runs only those (by hand, to look at one).
    if let Ok(only) = std::env::var("CAIRN_FAULTS") {
        faults.retain(|fault| only.split(',').any(|name| name == fault.name()));
    }
    let mut node_down = None;
    for (index, fault) in faults.iter().enumerate() {
        let at = total_batches * (index + 1) / (faults.len() + 1);
        batches_done.wait_for(|done| *done >= at).await.unwrap();
        let began = Instant::now();
        match fault {
            Fault::Process(name) => mesh.kill_and_restart(name).await,
            Fault::NatsRestart => {
                mesh.nats.stop().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                mesh.nats.restart().await;
            }
            Fault::EventsLeaderDown => {
                let node = events_leader(&mesh).await;
                mesh.nats.kill_node(node).await;
                node_down = Some(node);
            }
            Fault::NodeBack => {
                let node = node_down.take().expect("a node is down");
                mesh.nats.restart_node(node).await;
            }
        }
        eprintln!(
            "faults: {} after batch {at} of {total_batches}, done in {:.1} s",
            fault.name(),
            began.elapsed().as_secs_f64()
        );
    }
    let refused = sender.await.unwrap();
    let sending = started.elapsed();
    eprintln!(
        "faults: {sent} events accepted in {:.1} s ({refused} attempts refused meanwhile)",
        sending.as_secs_f64()
    );

    // Every accepted event is in the stream, once.
    let bus = mesh.nats.bus().await;
    let stored = cairn_testkit::stored_events(&bus).await;
    let ids: BTreeSet<&str> = stored
        .iter()
        .map(|event| event.envelope.message_id.as_str())
        .collect();
    assert_eq!(stored.len(), sent, "events stored");
    assert_eq!(ids.len(), sent, "distinct events stored");
    for call in &calls {
        assert!(ids.contains(call["messageId"].as_str().unwrap()));
    }

    // Every person's profile counts exactly their events; no identifier in two profiles.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_report = Instant::now();
    let (profiles, owners) = loop {
        let profiles: Vec<Value> = export(&mesh)
            .await
            .into_iter()
            .filter(|profile| profile["merged_into"].is_null())
            .collect();
        // While merges are still on their way an identifier may show in the profile it
        // leaves and the one it joins; at the end, never.
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut shared = Vec::new();
        for profile in &profiles {
            let id = profile["id"].as_str().unwrap().to_string();
            for identifier in profile["identifiers"].as_array().unwrap() {
                let key = format!("{}:{}", identifier["type"], identifier["value"]);
                if let Some(other) = owners.insert(key.clone(), id.clone()) {
                    shared.push(format!("{key} in {other} and {id}"));
                }
            }
        }
        let by_id: HashMap<&str, &Value> = profiles
            .iter()
            .map(|profile| (profile["id"].as_str().unwrap(), profile))
            .collect();
        let mut behind = 0;
        for (p, person) in people.iter().enumerate() {
            let holders: BTreeSet<Option<&String>> = person
                .anonymous_ids
                .iter()
                .map(|anonymous_id| owners.get(&format!("\"anonymous_id\":\"{anonymous_id}\"")))
                .collect();
            let profile = match holders.iter().next() {
                Some(Some(id)) if holders.len() == 1 => by_id[id.as_str()],
                _ => {
                    behind += 1;
                    continue;
                }
            };
            let (pages, carts) = (count(profile, "page"), count(profile, "add_to_cart"));
            assert!(
                pages <= person.pages && carts <= person.carts,
                "person {p}: {pages} pages and {carts} carts counted, {} and {} sent",
                person.pages,
                person.carts
            );
            if pages < person.pages || carts < person.carts {
                behind += 1;
            }
        }
        if behind == 0 && shared.is_empty() {
            break (profiles, owners);
        }
        assert!(
            Instant::now() < deadline,
            "after 5 minutes, {behind} of {} people not counted in full, and identifiers \
             in two profiles: {shared:?}",
            people.len()
        );
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "faults: {behind} people behind, {} identifiers in two profiles",
                shared.len()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let caught_up = started.elapsed();
    for person in &people {
        if let Some(email) = &person.email {
            let holder = &owners[&format!("\"email\":\"{email}\"")];
            let first = &owners[&format!("\"anonymous_id\":\"{}\"", person.anonymous_ids[0])];
            assert_eq!(holder, first, "{email} and its devices in one profile");
        }
    }

    // Every due reminder went out once; the timers fire 3 s after the last cart. Given
    // five minutes: on a machine also busy with a release build, one of 288 was still
    // missing after one, and under a loaded CI run 3 or 4 after two (whether late or
    // lost is what the progress lines below tell).
    let due: BTreeSet<&str> = people
        .iter()
        .filter(|person| person.reminder_due())
        .filter_map(|person| person.email.as_deref())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_report = Instant::now();
    let received = loop {
        let mut received: BTreeMap<String, usize> = BTreeMap::new();
        for email in mesh.smtp.received() {
            *received.entry(header(&email, "To").unwrap()).or_default() += 1;
        }
        let uncertain = mesh.emails_counted("uncertain").await as usize;
        if received.len() + uncertain >= due.len() || Instant::now() > deadline {
            break received;
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "faults: {} of {} reminders received, {uncertain} uncertain",
                received.len(),
                due.len()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // An email in flight when its dispatcher was SIGKILLed is in an uncertain state: the
    // dispatcher never sends it again (at most once), and counts it.
    let uncertain = mesh.emails_counted("uncertain").await as usize;
    for (to, times) in &received {
        assert!(
            due.contains(to.as_str()),
            "{to} got a reminder it was not due"
        );
        assert_eq!(*times, 1, "{to} got {times} reminders");
    }
    assert!(uncertain <= 1, "{uncertain} emails in an uncertain state");
    let missing: Vec<&&str> = due
        .iter()
        .filter(|email| !received.contains_key(**email))
        .collect();
    if !missing.is_empty() {
        let by_id: HashMap<&str, &Value> = profiles
            .iter()
            .map(|profile| (profile["id"].as_str().unwrap(), profile))
            .collect();
        for email in &missing {
            let profile = by_id[owners[&format!("\"email\":\"{email}\"")].as_str()];
            let mut ids: BTreeSet<String> = profile["merged_from"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|id| id.as_str().map(str::to_string))
                .collect();
            ids.insert(profile["id"].as_str().unwrap().to_string());
            eprintln!(
                "faults: no reminder for {email}; its profile {}, trail:\n{}",
                profile["id"],
                trail(&bus, &ids).await
            );
        }
    }
    assert_eq!(
        received.len() + uncertain,
        due.len(),
        "reminders sent (+ uncertain) vs due; none for {missing:?}"
    );
    eprintln!(
        "faults: {} profiles for {} people, all caught up {:.1} s after the first event; \
         {} reminders due, {} received, {uncertain} uncertain",
        profiles.len(),
        people.len(),
        caught_up.as_secs_f64(),
        due.len(),
        received.len()
    );
    let logs = mesh.stop().await;
    // CAIRN_FAULT_LOGS=dir keeps every process's log there (by hand, to look into a run).
    if let Some(dir) = std::env::var_os("CAIRN_FAULT_LOGS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, log) in logs {
            std::fs::write(dir.join(format!("{name}.log")), log).unwrap();
        }
    }
}
