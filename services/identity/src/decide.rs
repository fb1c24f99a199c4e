//! The linking decision for one event, as a pure function of what the graph holds.
//!
//! Identifiers are considered highest priority first: the link starts with the first
//! one, and each next identifier joins it, alone or bringing its whole profile along (a
//! merge), as long as no identifier type goes over its limit. An identifier that would
//! break a limit is dropped from the link and its profile is left alone, so the event
//! goes with the highest-priority identifiers, and a shared device, or a cookie that saw
//! two user ids, never merges two customers.

use crate::rules::{Identifier, Rules};

/// A profile as the decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileView {
    pub id: String,
    pub identifiers: Vec<Identifier>,
}

/// One of the event's identifiers and the profile it belongs to, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub identifier: Identifier,
    pub profile: Option<ProfileView>,
}

/// An identifier left out of the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub identifier: Identifier,
    /// The profile it belongs to, when it belongs to one (a refused merge).
    pub profile: Option<String>,
    pub reason: String,
}

/// What to do with an event's identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// The existing profile the link keeps (the first to join); `None` means a new one.
    pub target: Option<ProfileView>,
    /// Identifiers without a profile that join the target.
    pub attach: Vec<Identifier>,
    /// Other profiles that become one with the target.
    pub merge: Vec<ProfileView>,
    pub dropped: Vec<Dropped>,
}

impl Decision {
    /// Whether the graph stays as it is (the event only needs its profile id).
    pub fn changes_nothing(&self) -> bool {
        self.target.is_some() && self.attach.is_empty() && self.merge.is_empty()
    }

    /// The profile ids and unassigned identifiers the decision touches: what must not
    /// change while it is applied.
    pub fn touches(&self) -> (Vec<String>, Vec<Identifier>) {
        let mut profiles: Vec<String> = self
            .target
            .iter()
            .chain(&self.merge)
            .map(|profile| profile.id.clone())
            .collect();
        profiles.sort();
        let mut identifiers = self.attach.clone();
        identifiers.sort();
        (profiles, identifiers)
    }
}

/// The first type over its limit in `identifiers`, if any, with its count.
fn over_limit<'a>(
    rules: &Rules,
    identifiers: impl Iterator<Item = &'a Identifier> + Clone,
) -> Option<(String, u32)> {
    for kind in rules.types() {
        let count = identifiers
            .clone()
            .filter(|identifier| identifier.kind == kind.name)
            .count() as u32;
        if count > kind.limit {
            return Some((kind.name.clone(), count));
        }
    }
    None
}

/// Decides the link for identifiers `seen` (in any order).
pub fn decide(rules: &Rules, seen: &[Seen]) -> Decision {
    let mut ordered: Vec<&Seen> = seen.iter().collect();
    ordered.sort_by(|a, b| {
        rules
            .rank(&a.identifier.kind)
            .cmp(&rules.rank(&b.identifier.kind))
            .then_with(|| a.identifier.value.cmp(&b.identifier.value))
    });
    // The link grows from the highest-priority identifier down; whatever would push a
    // type over its limit stays out. The first profile that joins is the target.
    let mut decision = Decision::default();
    let mut holding: Vec<Identifier> = Vec::new();
    for seen in ordered {
        let joined = |id: &str| {
            decision
                .target
                .iter()
                .chain(&decision.merge)
                .any(|profile| profile.id == id)
        };
        match &seen.profile {
            Some(profile) if joined(&profile.id) => {}
            None if holding.contains(&seen.identifier) => {}
            None => match over_limit(
                rules,
                holding.iter().chain(std::iter::once(&seen.identifier)),
            ) {
                None => {
                    holding.push(seen.identifier.clone());
                    decision.attach.push(seen.identifier.clone());
                }
                Some((kind, count)) => decision.dropped.push(Dropped {
                    identifier: seen.identifier.clone(),
                    profile: None,
                    reason: format!(
                        "the profile would hold {count} {kind} identifiers; the limit is {}",
                        rules.limit(&kind)
                    ),
                }),
            },
            Some(profile) => {
                let newcomers: Vec<&Identifier> = profile
                    .identifiers
                    .iter()
                    .filter(|identifier| !holding.contains(identifier))
                    .collect();
                match over_limit(rules, holding.iter().chain(newcomers.iter().copied())) {
                    None => {
                        holding.extend(newcomers.into_iter().cloned());
                        if decision.target.is_none() {
                            decision.target = Some(profile.clone());
                        } else {
                            decision.merge.push(profile.clone());
                        }
                    }
                    Some((kind, count)) => decision.dropped.push(Dropped {
                        identifier: seen.identifier.clone(),
                        profile: Some(profile.id.clone()),
                        reason: format!(
                            "merging profile {} would give {count} {kind} identifiers; the limit is {}",
                            profile.id,
                            rules.limit(&kind)
                        ),
                    }),
                }
            }
        }
    }
    // Identifiers already held by the target need no attaching.
    if let Some(target) = &decision.target {
        decision
            .attach
            .retain(|identifier| !target.identifiers.contains(identifier));
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: &str, value: &str) -> Identifier {
        Identifier::new(kind, value)
    }

    fn profile(name: &str, identifiers: &[Identifier]) -> Option<ProfileView> {
        Some(ProfileView {
            id: name.to_string(),
            identifiers: identifiers.to_vec(),
        })
    }

    fn seen(identifier: Identifier, profile: Option<ProfileView>) -> Seen {
        Seen {
            identifier,
            profile,
        }
    }

    #[test]
    fn new_identifiers_make_a_new_profile() {
        let decision = decide(
            &Rules::default(),
            &[
                seen(id("anonymous_id", "a1"), None),
                seen(id("user_id", "u1"), None),
            ],
        );
        assert_eq!(decision.target, None);
        assert_eq!(
            decision.attach,
            vec![id("user_id", "u1"), id("anonymous_id", "a1")]
        );
    }

    #[test]
    fn logging_in_attaches_the_user_id_to_the_visitors_profile() {
        let cookie = id("anonymous_id", "a1");
        let visitor = profile("p-visitor", std::slice::from_ref(&cookie));
        let decision = decide(
            &Rules::default(),
            &[
                seen(cookie, visitor.clone()),
                seen(id("user_id", "u1"), None),
            ],
        );
        assert_eq!(decision.target, visitor);
        assert_eq!(decision.attach, vec![id("user_id", "u1")]);
        assert!(decision.merge.is_empty());
    }

    #[test]
    fn a_second_user_id_on_one_cookie_does_not_merge_two_customers() {
        let cookie = id("anonymous_id", "a1");
        let alice = profile("p-alice", &[id("user_id", "alice"), cookie.clone()]);
        // Bob logs in on Alice's browser: the cookie is the lowest priority, so it is
        // dropped from the link and the event goes to Bob.
        let bob = profile("p-bob", &[id("user_id", "bob")]);
        let decision = decide(
            &Rules::default(),
            &[
                seen(cookie.clone(), alice),
                seen(id("user_id", "bob"), bob.clone()),
            ],
        );
        assert_eq!(decision.target, bob);
        assert!(decision.merge.is_empty());
        assert_eq!(decision.dropped.len(), 1);
        assert_eq!(decision.dropped[0].identifier, cookie);
        assert_eq!(
            decision.dropped[0].reason,
            "merging profile p-alice would give 2 user_id identifiers; the limit is 1"
        );
    }

    #[test]
    fn a_linking_event_merges_two_profiles() {
        let email = id("email", "tom@example.com");
        let phone_profile = profile("p-2", &[id("anonymous_id", "a2")]);
        let email_profile = profile("p-1", &[email.clone(), id("anonymous_id", "a1")]);
        let decision = decide(
            &Rules::default(),
            &[
                seen(id("anonymous_id", "a2"), phone_profile.clone()),
                seen(email, email_profile.clone()),
            ],
        );
        assert_eq!(
            decision.target, email_profile,
            "the email outranks the cookie"
        );
        assert_eq!(decision.merge, vec![phone_profile.unwrap()]);
        assert!(decision.dropped.is_empty());
    }

    #[test]
    fn limits_hold_for_unassigned_identifiers_too() {
        let rules = Rules::from_toml("[types.device_id]\nlimit = 1\n", None).unwrap();
        let decision = decide(
            &rules,
            &[
                seen(id("device_id", "d1"), None),
                seen(id("device_id", "d2"), None),
                seen(id("user_id", "u1"), None),
            ],
        );
        assert_eq!(
            decision.attach,
            vec![id("user_id", "u1"), id("device_id", "d1")]
        );
        assert_eq!(decision.dropped[0].identifier, id("device_id", "d2"));
    }

    #[test]
    fn known_visitors_change_nothing() {
        let cookie = id("anonymous_id", "a1");
        let known = profile("p-1", &[cookie.clone(), id("user_id", "u1")]);
        let decision = decide(
            &Rules::default(),
            &[
                seen(cookie, known.clone()),
                seen(id("user_id", "u1"), known),
            ],
        );
        assert!(decision.changes_nothing());
    }
}
