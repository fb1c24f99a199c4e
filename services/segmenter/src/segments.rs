//! The segments, indexed by the changes that can affect them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cairn_filterql::{Context, Filter, check, check_includes, matches, next_change};
use cairn_profile_store::profile::ProfileSchema;
use serde_json::Value;

use crate::error::SegmentError;

/// A saved segment.
#[derive(Debug, Clone)]
pub struct Segment {
    pub name: String,
    pub filter: Filter,
    /// The `profiles.changed` names of the fields it reads.
    reads: BTreeSet<String>,
    /// The segments it includes.
    includes: Vec<String>,
    /// The windowed event counts it reads: (event name, window), as in
    /// `event_count.<name>.<window>`.
    windows: Vec<(String, String)>,
}

/// A profile entering or leaving a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub segment: String,
    pub entered: bool,
}

/// Every segment, and the order to evaluate them in (a segment after those it includes).
#[derive(Debug, Clone, Default)]
pub struct SegmentSet {
    segments: BTreeMap<String, Arc<Segment>>,
    order: Vec<String>,
}

impl SegmentSet {
    /// Adds or replaces segment `name`: its fields must exist, its values fit, its
    /// INCLUDEs exist and not lead back to it.
    pub fn insert(&mut self, name: &str, filter: Filter) -> Result<(), SegmentError> {
        let invalid = |reason: String| SegmentError::Invalid {
            name: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("a segment needs a name".to_string()));
        }
        let problems = check(&filter, &ProfileSchema);
        if !problems.is_empty() {
            return Err(invalid(problems.join("; ")));
        }
        let (mut fields, mut includes) = (Vec::new(), Vec::new());
        filter.expr.fields(&mut fields, &mut includes);
        // Memberships are read with INCLUDE, which keeps the order of evaluation and
        // refuses cycles; a segment reading `segments.x` could flip itself forever.
        if let Some(field) = fields
            .iter()
            .find(|field| field.split('.').next() == Some("segments"))
        {
            return Err(invalid(format!(
                "{field}: read memberships with INCLUDE <segment>, not the segments field"
            )));
        }
        check_includes(name, &includes, &|other| {
            self.segments
                .get(other)
                .map(|segment| segment.includes.clone())
        })
        .map_err(invalid)?;
        let reads = fields
            .iter()
            .map(|field| ProfileSchema::change_of(field))
            .collect();
        let windows = fields
            .iter()
            .filter_map(|field| field.strip_prefix("event_count.")?.rsplit_once('.'))
            .filter(|(_, window)| *window != "all")
            .map(|(name, window)| (name.to_string(), window.to_string()))
            .collect();
        self.segments.insert(
            name.to_string(),
            Arc::new(Segment {
                name: name.to_string(),
                filter,
                reads,
                includes,
                windows,
            }),
        );
        self.reorder();
        Ok(())
    }

    /// Removes segment `name`, unless another includes it.
    pub fn remove(&mut self, name: &str) -> Result<(), SegmentError> {
        if !self.segments.contains_key(name) {
            return Err(SegmentError::Missing(name.to_string()));
        }
        if let Some(user) = self
            .segments
            .values()
            .find(|segment| segment.includes.iter().any(|included| included == name))
        {
            return Err(SegmentError::Included(name.to_string(), user.name.clone()));
        }
        self.segments.remove(name);
        self.reorder();
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Segment> {
        self.segments.get(name).map(Arc::as_ref)
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Included segments before those that include them (a depth-first order; the
    /// checks on insert keep the graph free of cycles).
    fn reorder(&mut self) {
        fn visit(
            name: &str,
            segments: &BTreeMap<String, Arc<Segment>>,
            done: &mut BTreeSet<String>,
            order: &mut Vec<String>,
        ) {
            if !done.insert(name.to_string()) {
                return;
            }
            if let Some(segment) = segments.get(name) {
                for included in &segment.includes {
                    visit(included, segments, done, order);
                }
                order.push(name.to_string());
            }
        }
        let mut done = BTreeSet::new();
        let mut order = Vec::new();
        for name in self.segments.keys() {
            visit(name, &self.segments, &mut done, &mut order);
        }
        self.order = order;
    }

    /// The segments a change of `changed` (names as `profiles.changed` gives them) can
    /// affect, in evaluation order: those reading a changed field, and those including
    /// an affected segment.
    pub fn affected(&self, changed: &[String]) -> Vec<&Segment> {
        let touches = |read: &String| {
            changed
                .iter()
                .any(|change| within(change, read) || within(read, change))
        };
        let mut hit: BTreeSet<&str> = BTreeSet::new();
        let mut affected = Vec::new();
        for name in &self.order {
            let Some(segment) = self.segments.get(name) else {
                continue;
            };
            if segment.reads.iter().any(touches)
                || segment
                    .includes
                    .iter()
                    .any(|included| hit.contains(included.as_str()))
            {
                hit.insert(name);
                affected.push(segment.as_ref());
            }
        }
        affected
    }

    /// Re-evaluates what `changed` can affect (everything when `None`) for `profile`,
    /// whose memberships are `members` (segment → since, ms): updates them and returns
    /// the transitions, in evaluation order.
    pub fn evaluate(
        &self,
        profile: &Value,
        changed: Option<&[String]>,
        members: &mut BTreeMap<String, i64>,
        now_ms: i64,
    ) -> Vec<Transition> {
        let segments: Vec<&Segment> = match changed {
            Some(changed) => self.affected(changed),
            None => self
                .order
                .iter()
                .filter_map(|name| self.segments.get(name).map(Arc::as_ref))
                .collect(),
        };
        let mut transitions = Vec::new();
        for segment in segments {
            let member = {
                let current = &*members;
                let includes = |name: &str| Some(current.contains_key(name));
                matches(
                    &segment.filter.expr,
                    profile,
                    &Context {
                        now_ms,
                        includes: &includes,
                    },
                )
            };
            let was = members.contains_key(&segment.name);
            if member && !was {
                members.insert(segment.name.clone(), now_ms);
            } else if !member && was {
                members.remove(&segment.name);
            } else {
                continue;
            }
            transitions.push(Transition {
                segment: segment.name.clone(),
                entered: member,
            });
        }
        transitions
    }

    /// Ends the memberships (in `members`) of segments deleted since: the exits.
    pub fn forget_deleted(&self, members: &mut BTreeMap<String, i64>) -> Vec<Transition> {
        let gone: Vec<String> = members
            .keys()
            .filter(|name| !self.segments.contains_key(*name))
            .cloned()
            .collect();
        gone.into_iter()
            .map(|segment| {
                members.remove(&segment);
                Transition {
                    segment,
                    entered: false,
                }
            })
            .collect()
    }

    /// When, with no change to `profile`, a segment may next flip for it: its date math
    /// crossing a boundary, or an event count it reads dropping as an event leaves its
    /// window (`event_count_drops` in the profile says when).
    pub fn next_change(&self, profile: &Value, now_ms: i64) -> Option<i64> {
        let drops = |segment: &Segment| {
            segment
                .windows
                .iter()
                .filter_map(|(name, window)| {
                    let text = profile["event_count_drops"][name][window].as_str()?;
                    let at = chrono::DateTime::parse_from_rfc3339(text).ok()?;
                    Some(at.timestamp_millis())
                })
                .filter(|at| *at > now_ms)
                .min()
        };
        self.segments
            .values()
            .flat_map(|segment| {
                [
                    next_change(&segment.filter.expr, profile, now_ms),
                    drops(segment),
                ]
            })
            .flatten()
            .min()
    }
}

/// Whether `path` is `whole` or a path inside it (`traits.plan` is inside `traits`).
fn within(path: &str, whole: &str) -> bool {
    path.strip_prefix(whole)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_filterql::parse;
    use serde_json::json;

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 1_795_000_000_000;

    fn set(segments: &[(&str, &str)]) -> SegmentSet {
        let mut set = SegmentSet::default();
        for (name, source) in segments {
            set.insert(name, parse(source).unwrap()).unwrap();
        }
        set
    }

    fn names(segments: Vec<&Segment>) -> Vec<&str> {
        segments
            .iter()
            .map(|segment| segment.name.as_str())
            .collect()
    }

    fn changes(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn a_change_reaches_the_segments_that_read_it_and_those_that_include_them() {
        let set = set(&[
            ("buyers", "FILTER event_count.purchase.30d >= 2"),
            ("engaged", "FILTER AND (visit_count > 3, INCLUDE buyers)"),
            ("vip", "FILTER AND (INCLUDE engaged, plan == \"pro\")"),
            ("londoners", "FILTER facts.geo.city == \"London\""),
        ]);
        assert_eq!(
            names(set.affected(&changes(&["events.purchase"]))),
            vec!["buyers", "engaged", "vip"]
        );
        assert_eq!(names(set.affected(&changes(&["traits.plan"]))), vec!["vip"]);
        assert_eq!(
            names(set.affected(&changes(&["facts.geo"]))),
            vec!["londoners"]
        );
        assert!(set.affected(&changes(&["urls", "devices"])).is_empty());
    }

    #[test]
    fn crossing_a_threshold_enters_once_and_leaving_exits_once() {
        let set = set(&[
            ("frequent", "FILTER visit_count > 3"),
            (
                "frequent_pros",
                "FILTER AND (INCLUDE frequent, plan == \"pro\")",
            ),
        ]);
        let mut members = BTreeMap::new();
        let profile = |visits: i64| json!({"visit_count": visits, "traits": {"plan": "pro"}});
        let visits = changes(&["visit_count"]);
        assert!(
            set.evaluate(&profile(3), Some(&visits), &mut members, NOW)
                .is_empty()
        );
        assert_eq!(
            set.evaluate(&profile(4), Some(&visits), &mut members, NOW),
            vec![
                Transition {
                    segment: "frequent".into(),
                    entered: true
                },
                Transition {
                    segment: "frequent_pros".into(),
                    entered: true
                },
            ]
        );
        // The same state again (a redelivered change): nothing new.
        assert!(
            set.evaluate(&profile(4), Some(&visits), &mut members, NOW)
                .is_empty()
        );
        assert_eq!(members["frequent"], NOW);
        let plan = changes(&["traits.plan"]);
        let free = json!({"visit_count": 4, "traits": {"plan": "free"}});
        assert_eq!(
            set.evaluate(&free, Some(&plan), &mut members, NOW + 1),
            vec![Transition {
                segment: "frequent_pros".into(),
                entered: false
            }]
        );
        assert!(members.contains_key("frequent") && !members.contains_key("frequent_pros"));
        // A segment deleted since: its membership ends.
        members.insert("deleted_since".into(), NOW);
        assert_eq!(
            set.forget_deleted(&mut members),
            vec![Transition {
                segment: "deleted_since".into(),
                entered: false
            }]
        );
        assert!(!members.contains_key("deleted_since"));
    }

    #[test]
    fn a_date_math_segment_says_when_to_look_again() {
        let set = set(&[("recent", "FILTER last_seen > \"now-7d\"")]);
        let seen = chrono_text(NOW - 2 * DAY);
        let profile = json!({"last_seen": seen});
        let mut members = BTreeMap::new();
        assert_eq!(set.evaluate(&profile, None, &mut members, NOW).len(), 1);
        let flip = set.next_change(&profile, NOW).unwrap();
        assert_eq!(flip, NOW + 5 * DAY + 1);
        // At that instant, with no new event, the profile leaves.
        assert_eq!(
            set.evaluate(&profile, None, &mut members, flip),
            vec![Transition {
                segment: "recent".into(),
                entered: false
            }]
        );
    }

    #[test]
    fn an_event_count_segment_looks_again_when_an_event_leaves_its_window() {
        let windowed = set(&[
            ("buyers", "FILTER event_count.purchase.7d >= 2"),
            ("ever", "FILTER event_count.purchase.all >= 2"),
        ]);
        let drops = chrono_text(NOW + 3 * DAY);
        let profile = json!({
            "event_count": {"purchase": {"7d": 2, "all": 2}},
            "event_count_drops": {"purchase": {"7d": drops, "30d": chrono_text(NOW + 26 * DAY)}},
        });
        assert_eq!(windowed.next_change(&profile, NOW), Some(NOW + 3 * DAY));
        // Only the windows a segment reads count.
        let only_all = set(&[("ever", "FILTER event_count.purchase.all >= 2")]);
        assert_eq!(only_all.next_change(&profile, NOW), None);
    }

    fn chrono_text(ms: i64) -> String {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    }

    #[test]
    fn bad_segments_are_refused_with_the_reason() {
        let mut set = set(&[("a", "FILTER visit_count > 1"), ("b", "FILTER INCLUDE a")]);
        let err = set
            .insert("c", parse("FILTER event_count.purchase.2d > 1").unwrap())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("no field \"event_count.purchase.2d\""),
            "{err}"
        );
        let err = set
            .insert("a", parse("FILTER INCLUDE b").unwrap())
            .unwrap_err();
        assert!(
            err.to_string().contains("INCLUDE goes round: a -> b -> a"),
            "{err}"
        );
        let err = set
            .insert("s", parse("FILTER NOT EXISTS segments.s").unwrap())
            .unwrap_err();
        assert!(
            err.to_string().contains("read memberships with INCLUDE"),
            "{err}"
        );
        let err = set
            .insert("d", parse("FILTER INCLUDE nobody").unwrap())
            .unwrap_err();
        assert!(
            err.to_string().contains("there is no segment nobody"),
            "{err}"
        );
        let err = set.remove("a").unwrap_err();
        assert_eq!(
            err.to_string(),
            "segment a is included by b; change that segment first"
        );
        set.remove("b").unwrap();
        set.remove("a").unwrap();
        assert!(set.is_empty());
    }
}
