//! What the fold reads from an identified event.

use cairn_event::{Event, domain_of};
use cairn_proto::event::v1::IdentifiedEvent;

use crate::profile::{EventInput, Identifier};

/// Reads an identified event. Errors say what is unreadable.
pub fn event_input(identified: &IdentifiedEvent) -> Result<EventInput, String> {
    let envelope = identified.envelope.as_ref().ok_or("no envelope")?;
    let event = Event::read(envelope)?;
    let url = event.page_url();
    let own_domain = url.as_deref().and_then(domain_of);
    Ok(EventInput {
        message_id: event.message_id.clone(),
        call: event.call.to_string(),
        name: event.name(),
        at: event.at_ms,
        identifiers: identified
            .identifiers
            .iter()
            .map(|identifier| Identifier {
                kind: identifier.r#type.clone(),
                value: identifier.value.clone(),
            })
            .collect(),
        // A referrer from the site itself is navigation, not a referral.
        referrer_domain: event
            .referrer()
            .as_deref()
            .and_then(domain_of)
            .filter(|domain| Some(domain) != own_domain.as_ref()),
        url,
        user_agent: event.user_agent(),
        device_id: event.text(&["context", "device", "id"]),
        timezone: event.text(&["context", "timezone"]),
        city: event.text(&["context", "location", "city"]),
        country: event.text(&["context", "location", "country"]),
        traits: event
            .traits()
            .map(|traits| {
                traits
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    })
}
