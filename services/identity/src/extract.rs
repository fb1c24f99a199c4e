//! The identifiers an event carries, per the rules.

use serde_json::Value;

use crate::rules::{ANONYMOUS_ID, Identifier, Rules, USER_ID};

/// What an event says about who sent it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Found {
    /// Usable identifiers, highest priority first, each once.
    pub identifiers: Vec<Identifier>,
    /// An alias call's `previousId`: a user id or an anonymous id, which only the graph
    /// can tell apart.
    pub previous_id: Option<String>,
    /// How many values were found but refused (blocked or malformed).
    pub refused: usize,
}

fn at_path<'a>(event: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(event, |value, key| value.get(key))
}

fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// The identifiers in `event` (a Segment-spec call) under `rules`.
pub fn identifiers(rules: &Rules, event: &Value, is_alias: bool) -> Found {
    let mut found = Found::default();
    for kind in rules.types() {
        for path in &kind.paths {
            let Some(raw) = at_path(event, path).and_then(as_text) else {
                continue;
            };
            match rules.identifier(&kind.name, &raw) {
                Some(identifier) if !found.identifiers.contains(&identifier) => {
                    found.identifiers.push(identifier)
                }
                Some(_) => {}
                None => found.refused += 1,
            }
        }
    }
    if is_alias && let Some(raw) = event.get("previousId").and_then(as_text) {
        // Normalised and checked as an anonymous id; the graph decides which it is.
        match rules.identifier(ANONYMOUS_ID, &raw) {
            Some(identifier) if rules.identifier(USER_ID, &raw).is_some() => {
                found.previous_id = Some(identifier.value)
            }
            _ => found.refused += 1,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn identifiers_come_from_the_configured_paths_in_priority_order() {
        let event = json!({
            "anonymousId": "a-1",
            "userId": 42,
            "traits": {"email": "Tom@Example.com", "phone": "+1 555 010 0199"},
            "context": {"traits": {"email": "tom@example.com"}, "device": {"id": "dev-9", "advertisingId": "ad-3"}}
        });
        let found = identifiers(&Rules::default(), &event, false);
        let names: Vec<String> = found.identifiers.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            vec![
                "user_id:42",
                "email:tom@example.com",
                "phone:15550100199",
                "device_id:dev-9",
                "advertising_id:ad-3",
                "anonymous_id:a-1"
            ]
        );
    }

    #[test]
    fn blocked_values_are_left_out() {
        let event = json!({"anonymousId": "undefined", "userId": "null", "traits": {"email": ""}});
        let found = identifiers(&Rules::default(), &event, false);
        assert!(found.identifiers.is_empty());
        assert_eq!(found.refused, 3);
    }

    #[test]
    fn alias_keeps_its_previous_id_apart() {
        let event = json!({"type": "alias", "userId": "u-7", "previousId": " a-3 "});
        let found = identifiers(&Rules::default(), &event, true);
        assert_eq!(found.identifiers, vec![Identifier::new("user_id", "u-7")]);
        assert_eq!(found.previous_id.as_deref(), Some("a-3"));
    }
}
