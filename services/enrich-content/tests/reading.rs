//! enrich-content on the embedded store, through the same entry point the service
//! uses: scripted reading histories whose answer a person can check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_enrich_content::{Content, ContentConfig};
use cairn_enricher::Enrich as _;
use cairn_event::Event;
use cairn_proto::event::v1::{Envelope, EventType};
use cairn_store::{Clock, EmbeddedStore, Fsync};
use serde_json::{Value, json};

fn view(message_id: &str, url: &str, title: &str, at_second: i64) -> Event {
    let raw = json!({
        "type": "page",
        "messageId": message_id,
        "timestamp": format!("2026-11-20T10:{:02}:{:02}Z", at_second / 60, at_second % 60),
        "context": {"page": {"url": url, "title": title}},
    });
    Event::read(&Envelope {
        raw: serde_json::to_vec(&raw).unwrap().into(),
        message_id: message_id.into(),
        r#type: EventType::Page.into(),
        ..Default::default()
    })
    .unwrap()
}

fn content(dir: &std::path::Path, taxonomy: Option<std::path::PathBuf>) -> Content<EmbeddedStore> {
    let store = EmbeddedStore::open(dir, Fsync::Buffer, 1 << 20, Clock::system()).unwrap();
    let config = ContentConfig {
        half_life: std::time::Duration::from_secs(14 * 86_400),
        taxonomy,
    };
    Content::new(store, &config).unwrap()
}

/// A shop's pages: every title says "Acme", each section has its own words.
const SITE: [(&str, &str); 8] = [
    (
        "https://acme.example/shoes/running-shoes",
        "Running shoes | Acme",
    ),
    (
        "https://acme.example/shoes/leather-boots",
        "Leather boots and shoes | Acme",
    ),
    (
        "https://acme.example/shoes/sandals",
        "Summer sandals and shoes | Acme",
    ),
    ("https://acme.example/bags/backpacks", "Backpacks | Acme"),
    (
        "https://acme.example/bags/handbags",
        "Leather handbags | Acme",
    ),
    (
        "https://acme.example/hats/winter-hats",
        "Winter hats | Acme",
    ),
    (
        "https://acme.example/news/acme-opens-in-paris",
        "Acme opens in Paris | Acme",
    ),
    ("https://acme.example/about", "About Acme"),
];

#[tokio::test]
async fn a_reader_of_shoe_pages_gets_shoes_on_top() {
    let dir = tempfile::tempdir().unwrap();
    let content = content(dir.path(), None);
    // Other visitors make the corpus: every page once.
    for (n, (url, title)) in SITE.iter().enumerate() {
        content
            .enrich(
                "someone-else",
                &view(&format!("c{n}"), url, title, n as i64),
            )
            .await
            .unwrap();
    }
    // Tom reads three shoe pages and one bag page.
    let mut facts = None;
    for (n, page) in [0, 1, 2, 4].into_iter().enumerate() {
        let (url, title) = SITE[page];
        facts = content
            .enrich("tom", &view(&format!("t{n}"), url, title, 20 + n as i64))
            .await
            .unwrap();
    }
    let facts = Value::Object(facts.unwrap().facts);
    assert_eq!(facts["top_topic"], "shoes", "{facts}");
    assert!(
        facts["topics"].get("acme").is_none(),
        "the site's name is no topic: {facts}"
    );
    let shoes = facts["topics"]["shoes"].as_f64().unwrap();
    assert!(shoes > 0.0 && shoes <= 1.0, "{facts}");
    for (topic, share) in facts["topics"].as_object().unwrap() {
        assert!(
            topic == "shoes" || share.as_f64().unwrap() < shoes,
            "{facts}"
        );
    }

    // The same view again changes nothing.
    let again = content
        .enrich("tom", &view("t3", SITE[4].0, SITE[4].1, 23))
        .await
        .unwrap();
    assert_eq!(Value::Object(again.unwrap().facts), facts);
}

#[tokio::test]
async fn a_taxonomy_gives_its_own_topics() {
    let dir = tempfile::tempdir().unwrap();
    let taxonomy = dir.path().join("taxonomy.toml");
    std::fs::write(
        &taxonomy,
        "footwear = [\"shoe\", \"boot\", \"sandal\"]\naccessories = [\"bag\", \"backpack\", \"handbag\", \"hat\"]\n",
    )
    .unwrap();
    let content = content(&dir.path().join("store"), Some(taxonomy));
    let mut facts = None;
    for (n, page) in [0, 1, 2, 5].into_iter().enumerate() {
        let (url, title) = SITE[page];
        facts = content
            .enrich("tom", &view(&format!("t{n}"), url, title, n as i64))
            .await
            .unwrap();
    }
    let facts = Value::Object(facts.unwrap().facts);
    assert_eq!(facts["top_topic"], "footwear", "{facts}");
    assert!(
        facts["topics"]["accessories"].as_f64().unwrap() > 0.0,
        "{facts}"
    );
}

#[tokio::test]
async fn a_page_counts_once_in_the_corpus_however_often_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let content = content(dir.path(), None);
    let long_url = format!("https://acme.example/shoes/{}", "x".repeat(2_000));
    for n in 0..5 {
        content
            .enrich(
                "tom",
                &view(&format!("r{n}"), &long_url, "Shoes and boots", n),
            )
            .await
            .unwrap();
    }
    content
        .enrich("ann", &view("a1", "https://acme.example/bags", "Bags", 9))
        .await
        .unwrap();
    let count = |key: &str| {
        let store = content.store.clone();
        let key = key.to_string();
        async move {
            cairn_store::Store::get(&store, &cairn_enrich_content::CONTENT, key.as_bytes())
                .await
                .unwrap()
                .map(|record| String::from_utf8(record.value.to_vec()).unwrap())
        }
    };
    assert_eq!(count("docs").await.as_deref(), Some("2"));
    assert_eq!(count("df:shoe").await.as_deref(), Some("1"));
    assert_eq!(count("df:bag").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn only_page_and_screen_views_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let content = content(dir.path(), None);
    let raw = json!({"type": "track", "event": "Order Completed", "messageId": "o1",
                     "context": {"page": {"url": "https://acme.example/shoes", "title": "Shoes"}}});
    let track = Event::read(&Envelope {
        raw: serde_json::to_vec(&raw).unwrap().into(),
        message_id: "o1".into(),
        r#type: EventType::Track.into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(content.enrich("tom", &track).await.unwrap(), None);
}
