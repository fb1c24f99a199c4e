//! Synthetic shop traffic, as a website's tag would send it: shoppers with cookies
//! browsing sections from a few places and devices, signing in (free-mail or work
//! addresses), filling carts and ordering, and a crawler. One shopper in four also
//! browses on a phone, with a cookie of its own there: once they have signed in on both,
//! their two profiles are one. `cairn up --demo` and `cairn loadgen` send it.

use serde_json::{Value, json};

const SECTIONS: &[&str] = &["shoes", "bags", "jackets", "sale"];
const FIRST_NAMES: &[&str] = &["Ann", "Ben", "Cleo", "Dev", "Eva", "Finn", "Gus", "Hana"];
/// Where shoppers browse from: IP (in the bundled test geo database), time zone, locale.
const PLACES: &[(&str, &str, &str)] = &[
    ("81.2.69.142", "Europe/London", "en-GB"),
    ("89.160.20.112", "Europe/Stockholm", "sv-SE"),
    ("216.160.83.56", "America/Los_Angeles", "en-US"),
];
const BROWSERS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
];
const CRAWLER: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
/// Shoppers whose number is a multiple of this also browse on a phone, half the time.
const TWO_DEVICES_EVERY: usize = 4;
/// The phone they browse on.
const PHONE: &str = BROWSERS[1];

/// The next thing someone on the shop does (one of `shoppers`, or the crawler): mostly
/// page views; shoppers now and then sign in, fill a cart and (some of them) order.
pub fn next_event(rng: &mut impl rand::Rng, shoppers: usize) -> Value {
    let mut event = shop_event(rng, shoppers);
    // As every Segment SDK does: its own id and time, so that two alike events (a
    // crawler's page views) are two events, not one stored once.
    event["messageId"] = json!(uuid::Uuid::new_v4().to_string());
    event["timestamp"] =
        json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    event
}

fn shop_event(rng: &mut impl rand::Rng, shoppers: usize) -> Value {
    if rng.random_ratio(1, 12) {
        let section = SECTIONS[rng.random_range(0..SECTIONS.len())];
        return json!({
            "type": "page",
            "anonymousId": "demo-crawler",
            "properties": {"path": format!("/{section}"), "section": section},
            "context": {"userAgent": CRAWLER, "ip": "66.249.66.1"},
        });
    }
    let shopper = rng.random_range(0..shoppers.max(1));
    let (ip, timezone, locale) = PLACES[shopper % PLACES.len()];
    let favourite = SECTIONS[shopper % SECTIONS.len()];
    let on_phone = shopper % TWO_DEVICES_EVERY == 0 && rng.random_bool(0.5);
    let (anonymous_id, user_agent) = if on_phone {
        (format!("demo-visitor-{shopper}-phone"), PHONE)
    } else {
        (
            format!("demo-visitor-{shopper}"),
            BROWSERS[shopper % BROWSERS.len()],
        )
    };
    let context = json!({
        "userAgent": user_agent,
        "ip": ip,
        "timezone": timezone,
        "locale": locale,
    });
    let user_id = format!("demo-user-{shopper}");
    match rng.random_range(0..20) {
        0..=11 => {
            let (path, section) = if rng.random_ratio(1, 4) {
                ("/".to_string(), Value::Null)
            } else {
                (format!("/{favourite}"), json!(favourite))
            };
            json!({
                "type": "page",
                "anonymousId": anonymous_id,
                "properties": {"path": path, "section": section,
                               "url": format!("https://shop.example.com{path}")},
                "context": context,
            })
        }
        12..=14 => {
            // Some shoppers sign in with a work address (B2B), most with a free-mail one.
            let domain = if shopper % 5 == 0 {
                "acme.example"
            } else {
                "gmail.com"
            };
            json!({
                "type": "identify",
                "anonymousId": anonymous_id,
                "userId": user_id,
                "traits": {
                    "email": format!("shopper{shopper}@{domain}"),
                    "name": format!("{} {shopper}", FIRST_NAMES[shopper % FIRST_NAMES.len()]),
                    "favourite_section": favourite,
                },
                "context": context,
            })
        }
        15..=17 => json!({
            "type": "track",
            "event": "add_to_cart",
            "anonymousId": anonymous_id,
            "properties": {"section": favourite, "cart_items": rng.random_range(1..4)},
            "context": context,
        }),
        _ => json!({
            "type": "track",
            "event": "order_completed",
            "anonymousId": anonymous_id,
            "properties": {"section": favourite, "total": 79.0},
            "context": context,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_is_a_valid_segment_call() {
        let mut rng = rand::rng();
        for _ in 0..500 {
            let event = next_event(&mut rng, 1000);
            let body = bytes::Bytes::from(json!({ "batch": [event] }).to_string());
            cairn_collector::event::parse_batch(&body)
                .unwrap_or_else(|err| panic!("{err:?}: {event}"));
        }
    }

    #[test]
    fn some_shoppers_sign_in_on_two_devices_as_one_user() {
        let mut rng = rand::rng();
        let mut cookies_of_user: std::collections::HashMap<
            String,
            std::collections::BTreeSet<String>,
        > = Default::default();
        for _ in 0..20_000 {
            let event = next_event(&mut rng, 40);
            if let Some(user) = event["userId"].as_str() {
                cookies_of_user
                    .entry(user.to_string())
                    .or_default()
                    .insert(event["anonymousId"].as_str().unwrap().to_string());
            }
        }
        let two_devices: Vec<&String> = cookies_of_user
            .iter()
            .filter(|(_, cookies)| cookies.len() == 2)
            .map(|(user, _)| user)
            .collect();
        assert_eq!(two_devices.len(), 10, "{cookies_of_user:?}");
        assert!(cookies_of_user.values().all(|cookies| cookies.len() <= 2));
    }
}
