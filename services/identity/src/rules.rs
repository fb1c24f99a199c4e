//! Identifier types and their rules, as in Segment Unify: where each type is found in an
//! event, how its values are normalised, which values are blocked, how many of it one
//! profile may hold, and its priority when a link would break a limit.
//!
//! The rules come from a TOML file (`CAIRN_IDENTITY_RULES`) over the defaults:
//!
//! ```toml
//! blocked = ["test@example.com"]        # values no identifier may take
//! blocked_patterns = ["^guest-"]        # nor values matching these
//!
//! [types.user_id]
//! limit = 1                             # at most one user id per profile
//! priority = 1                          # 1 is the highest
//!
//! [types.crm_id]                        # a type of your own
//! paths = ["traits.crm_id", "context.traits.crm_id"]
//! limit = 1
//! priority = 2
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use regex::Regex;
use serde::Deserialize;

/// How values of a type are normalised before they are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// Trimmed.
    Trim,
    /// Trimmed and lower-cased; must look like an address (`x@y`).
    Email,
    /// Digits only (a leading `+` and any punctuation dropped); at least 5 digits.
    Phone,
}

/// One identifier type and its rules.
#[derive(Debug, Clone)]
pub struct IdentifierType {
    pub name: String,
    /// Dotted JSON paths in the event where values of this type are found.
    pub paths: Vec<Vec<String>>,
    pub normalize: Normalize,
    /// Most identifiers of this type one profile may hold.
    pub limit: u32,
    /// 1 is the highest. A link that would break a limit drops its lowest-priority
    /// identifiers first.
    pub priority: u32,
    blocked: HashSet<String>,
    blocked_patterns: Vec<Regex>,
}

/// An identifier of a person: a type and a normalised value.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Identifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

impl Identifier {
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Why the rules file was refused.
#[derive(Debug, thiserror::Error)]
#[error("identity rules{}: {reason}", .path.as_ref().map(|path| format!(" ({path})")).unwrap_or_default())]
pub struct RulesError {
    pub path: Option<String>,
    pub reason: String,
}

/// The rules for every identifier type, highest priority first.
#[derive(Debug, Clone)]
pub struct Rules {
    types: Vec<IdentifierType>,
    blocked: HashSet<String>,
    blocked_patterns: Vec<Regex>,
}

/// Values no identifier may take, whatever its type (compared lower-cased).
const BUILT_IN_BLOCKED: &[&str] = &[
    "",
    "null",
    "undefined",
    "anonymous",
    "none",
    "nil",
    "nan",
    "0",
    "-1",
    "unknown",
];
/// Patterns no identifier may match: only zeros and dashes.
const BUILT_IN_BLOCKED_PATTERNS: &[&str] = &["^[0-]*$"];

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    /// Values no identifier of any type may take.
    #[serde(default)]
    blocked: Vec<String>,
    /// Regular expressions no identifier of any type may match.
    #[serde(default)]
    blocked_patterns: Vec<String>,
    #[serde(default)]
    types: BTreeMap<String, TypeFile>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TypeFile {
    /// Where values are found (required for a type of your own).
    paths: Option<Vec<String>>,
    /// `trim`, `email` or `phone`.
    normalize: Option<String>,
    limit: Option<u32>,
    priority: Option<u32>,
    #[serde(default)]
    blocked: Vec<String>,
    #[serde(default)]
    blocked_patterns: Vec<String>,
}

fn built_in(
    name: &str,
    paths: &[&str],
    normalize: Normalize,
    limit: u32,
    priority: u32,
) -> IdentifierType {
    IdentifierType {
        name: name.to_string(),
        paths: paths.iter().map(|path| split_path(path)).collect(),
        normalize,
        limit,
        priority,
        blocked: HashSet::new(),
        blocked_patterns: Vec::new(),
    }
}

fn split_path(path: &str) -> Vec<String> {
    path.split('.').map(str::to_string).collect()
}

pub const USER_ID: &str = "user_id";
pub const ANONYMOUS_ID: &str = "anonymous_id";

impl Default for Rules {
    fn default() -> Self {
        Self::build(RulesFile::default(), None)
            .unwrap_or_else(|err| panic!("built-in rules are invalid: {err}"))
    }
}

impl Rules {
    /// The defaults with the file's settings over them.
    pub fn from_toml(text: &str, path: Option<&str>) -> Result<Self, RulesError> {
        let file: RulesFile = toml::from_str(text).map_err(|err| RulesError {
            path: path.map(str::to_string),
            reason: err.to_string(),
        })?;
        Self::build(file, path)
    }

    /// Reads the rules file at `path`.
    pub fn load(path: &str) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|err| RulesError {
            path: Some(path.to_string()),
            reason: err.to_string(),
        })?;
        Self::from_toml(&text, Some(path))
    }

    fn build(file: RulesFile, path: Option<&str>) -> Result<Self, RulesError> {
        let error = |reason: String| RulesError {
            path: path.map(str::to_string),
            reason,
        };
        let compile = |field: &str, patterns: &[String]| -> Result<Vec<Regex>, RulesError> {
            patterns
                .iter()
                .map(|pattern| {
                    Regex::new(pattern).map_err(|err| {
                        error(format!(
                            "{field}: {pattern:?} is not a regular expression: {err}"
                        ))
                    })
                })
                .collect()
        };
        let mut types = vec![
            built_in(USER_ID, &["userId"], Normalize::Trim, 1, 1),
            built_in(
                "email",
                &["traits.email", "context.traits.email"],
                Normalize::Email,
                5,
                2,
            ),
            built_in(
                "phone",
                &["traits.phone", "context.traits.phone"],
                Normalize::Phone,
                5,
                3,
            ),
            built_in("device_id", &["context.device.id"], Normalize::Trim, 5, 4),
            built_in(
                "advertising_id",
                &["context.device.advertisingId"],
                Normalize::Trim,
                5,
                5,
            ),
            built_in(ANONYMOUS_ID, &["anonymousId"], Normalize::Trim, 5, 6),
        ];
        for (name, settings) in file.types {
            if !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                || name.is_empty()
            {
                return Err(error(format!(
                    "types.{name}: names are lower-case letters, digits and _"
                )));
            }
            let index = match types.iter().position(|kind| kind.name == name) {
                Some(index) => index,
                None => {
                    let Some(paths) = &settings.paths else {
                        return Err(error(format!(
                            "types.{name}: a type of your own needs `paths`"
                        )));
                    };
                    if paths.is_empty() {
                        return Err(error(format!("types.{name}.paths: list at least one path")));
                    }
                    types.push(built_in(&name, &[], Normalize::Trim, 5, 100));
                    types.len() - 1
                }
            };
            let kind = &mut types[index];
            if let Some(paths) = settings.paths {
                if paths.iter().any(|path| path.split('.').any(str::is_empty)) {
                    return Err(error(format!(
                        "types.{name}.paths: a path is dotted keys, e.g. traits.crm_id"
                    )));
                }
                kind.paths = paths.iter().map(|path| split_path(path)).collect();
            }
            if let Some(normalize) = settings.normalize {
                kind.normalize = match normalize.as_str() {
                    "trim" => Normalize::Trim,
                    "email" => Normalize::Email,
                    "phone" => Normalize::Phone,
                    other => {
                        return Err(error(format!(
                            "types.{name}.normalize: {other:?} is not trim, email or phone"
                        )));
                    }
                };
            }
            if let Some(limit) = settings.limit {
                if limit == 0 {
                    return Err(error(format!("types.{name}.limit: must be at least 1")));
                }
                kind.limit = limit;
            }
            if let Some(priority) = settings.priority {
                if priority == 0 {
                    return Err(error(format!(
                        "types.{name}.priority: 1 is the highest; 0 is not allowed"
                    )));
                }
                kind.priority = priority;
            }
            kind.blocked = settings
                .blocked
                .iter()
                .map(|value| value.trim().to_lowercase())
                .collect();
            kind.blocked_patterns = compile(
                &format!("types.{name}.blocked_patterns"),
                &settings.blocked_patterns,
            )?;
        }
        // Highest priority first; equal priorities keep a fixed order by name.
        types.sort_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        let mut blocked: HashSet<String> = BUILT_IN_BLOCKED
            .iter()
            .map(|value| value.to_string())
            .collect();
        blocked.extend(file.blocked.iter().map(|value| value.trim().to_lowercase()));
        let mut patterns: Vec<String> = BUILT_IN_BLOCKED_PATTERNS
            .iter()
            .map(|pattern| pattern.to_string())
            .collect();
        patterns.extend(file.blocked_patterns);
        Ok(Self {
            types,
            blocked,
            blocked_patterns: compile("blocked_patterns", &patterns)?,
        })
    }

    /// Every type, highest priority first.
    pub fn types(&self) -> &[IdentifierType] {
        &self.types
    }

    pub fn get(&self, kind: &str) -> Option<&IdentifierType> {
        self.types.iter().find(|candidate| candidate.name == kind)
    }

    /// The rank of a type: 0 for the highest priority. Unknown types rank last.
    pub fn rank(&self, kind: &str) -> usize {
        self.types
            .iter()
            .position(|candidate| candidate.name == kind)
            .unwrap_or(self.types.len())
    }

    /// How many identifiers of `kind` one profile may hold.
    pub fn limit(&self, kind: &str) -> u32 {
        self.get(kind).map_or(1, |kind| kind.limit)
    }

    /// The normalised identifier for a raw value, or `None` when the value is blocked or
    /// not a valid value of its type.
    pub fn identifier(&self, kind: &str, raw: &str) -> Option<Identifier> {
        let rules = self.get(kind)?;
        let value = normalize(rules.normalize, raw)?;
        let lowered = value.to_lowercase();
        let blocked = self.blocked.contains(&lowered)
            || rules.blocked.contains(&lowered)
            || self
                .blocked_patterns
                .iter()
                .any(|pattern| pattern.is_match(&value))
            || rules
                .blocked_patterns
                .iter()
                .any(|pattern| pattern.is_match(&value));
        (!blocked).then(|| Identifier::new(kind, value))
    }
}

fn normalize(how: Normalize, raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    match how {
        Normalize::Trim => Some(trimmed.to_string()),
        Normalize::Email => {
            let lowered = trimmed.to_lowercase();
            let (local, domain) = lowered.split_once('@')?;
            (!local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !lowered.contains(char::is_whitespace))
            .then_some(lowered)
        }
        Normalize::Phone => {
            let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
            (digits.len() >= 5).then_some(digits)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_segment_unify() {
        let rules = Rules::default();
        let order: Vec<&str> = rules
            .types()
            .iter()
            .map(|kind| kind.name.as_str())
            .collect();
        assert_eq!(
            order,
            vec![
                "user_id",
                "email",
                "phone",
                "device_id",
                "advertising_id",
                "anonymous_id"
            ]
        );
        assert_eq!(rules.limit("user_id"), 1);
        assert_eq!(rules.limit("email"), 5);
    }

    #[test]
    fn values_are_normalised() {
        let rules = Rules::default();
        assert_eq!(
            rules
                .identifier("email", "  Tom@Example.COM ")
                .unwrap()
                .value,
            "tom@example.com"
        );
        assert_eq!(
            rules
                .identifier("phone", "+44 (20) 7946-0018")
                .unwrap()
                .value,
            "442079460018"
        );
        assert_eq!(rules.identifier("user_id", " u-1 ").unwrap().value, "u-1");
        assert!(rules.identifier("email", "not-an-email").is_none());
        assert!(rules.identifier("phone", "12").is_none());
    }

    #[test]
    fn blocked_values_are_refused() {
        let rules = Rules::default();
        for value in [
            "",
            "  ",
            "null",
            "NULL",
            "undefined",
            "anonymous",
            "0",
            "-1",
            "000-000",
            "----",
        ] {
            assert!(
                rules.identifier("anonymous_id", value).is_none(),
                "{value:?} must be blocked"
            );
        }
        assert!(rules.identifier("anonymous_id", "a-0").is_some());
    }

    #[test]
    fn the_file_adds_types_blocked_values_and_overrides() {
        let rules = Rules::from_toml(
            r#"
            blocked = ["test@example.com"]
            blocked_patterns = ["^guest-"]
            [types.device_id]
            limit = 2
            blocked = ["shared-tablet-1"]
            [types.crm_id]
            paths = ["traits.crm_id"]
            limit = 1
            priority = 2
            "#,
            None,
        )
        .unwrap();
        assert!(rules.identifier("email", "TEST@example.com").is_none());
        assert!(rules.identifier("user_id", "guest-17").is_none());
        assert!(rules.identifier("device_id", "shared-tablet-1").is_none());
        assert_eq!(rules.limit("device_id"), 2);
        assert_eq!(
            rules.rank("crm_id"),
            1,
            "priority 2 sorts before email's 2 by name"
        );
        assert_eq!(
            rules.identifier("crm_id", "C-9").unwrap().to_string(),
            "crm_id:C-9"
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let err = Rules::from_toml("[types.crm_id]\nlimit = 1\n", Some("rules.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "identity rules (rules.toml): types.crm_id: a type of your own needs `paths`"
        );
        let err = Rules::from_toml("blocked_patterns = [\"[\"]\n", None).unwrap_err();
        assert!(
            err.to_string()
                .contains("blocked_patterns: \"[\" is not a regular expression"),
            "{err}"
        );
        let err = Rules::from_toml("[types.email]\nlimt = 2\n", None).unwrap_err();
        assert!(err.to_string().contains("unknown field `limt`"), "{err}");
        let err = Rules::from_toml("[types.email]\nlimit = 0\n", None).unwrap_err();
        assert!(
            err.to_string()
                .contains("types.email.limit: must be at least 1"),
            "{err}"
        );
    }
}
