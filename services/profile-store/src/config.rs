//! Profile store settings.

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_runtime::config::{ConfigError, Settings, Var};

use crate::profile::{FoldSettings, TraitPolicy};

pub const SESSION_TIMEOUT: Var = Var {
    name: "CAIRN_SESSION_TIMEOUT",
    default: "30m",
    doc: "A gap longer than this between a person's events starts a new session.",
};
pub const TRAIT_POLICIES: Var = Var {
    name: "CAIRN_TRAIT_POLICIES",
    default: "",
    doc: "How traits combine when they differ, by trait: `first:created_at,signup_source;append:tags`. Unlisted traits keep the value with the latest event time.",
};
pub const PARTITION_LEASE: Var = Var {
    name: "CAIRN_PARTITION_LEASE",
    default: "10s",
    doc: "How long a profile-store replica owns its partitions without renewing; a dead replica's partitions move after this.",
};
pub const BATCH: Var = Var {
    name: "CAIRN_PROFILE_BATCH",
    default: "500",
    doc: "Most messages a partition's worker handles per round.",
};

/// Every variable the profile store reads (besides the bus's and the store's).
pub const VARS: &[Var] = &[SESSION_TIMEOUT, TRAIT_POLICIES, PARTITION_LEASE, BATCH];

#[derive(Debug, Clone)]
pub struct ProfileConfig {
    pub fold: FoldSettings,
    pub lease: Duration,
    pub batch: usize,
}

impl ProfileConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let timeout = settings.duration(&SESSION_TIMEOUT)?;
        if timeout < Duration::from_secs(1) {
            return Err(settings.invalid(&SESSION_TIMEOUT, "must be at least 1s"));
        }
        let lease = settings.duration(&PARTITION_LEASE)?;
        if lease < Duration::from_secs(1) {
            return Err(settings.invalid(&PARTITION_LEASE, "must be at least 1s"));
        }
        let mut trait_policies = BTreeMap::new();
        for group in settings
            .string(&TRAIT_POLICIES)
            .split(';')
            .map(str::trim)
            .filter(|group| !group.is_empty())
        {
            let (policy, names) = group.split_once(':').ok_or_else(|| {
                settings.invalid(
                    &TRAIT_POLICIES,
                    format!("{group:?} is not policy:trait,trait"),
                )
            })?;
            let policy = match policy.trim() {
                "latest" => TraitPolicy::Latest,
                "first" => TraitPolicy::First,
                "append" => TraitPolicy::Append,
                other => {
                    return Err(settings.invalid(
                        &TRAIT_POLICIES,
                        format!("unknown policy {other:?} (use latest, first or append)"),
                    ));
                }
            };
            for name in names
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
            {
                trait_policies.insert(name.to_string(), policy);
            }
        }
        Ok(Self {
            fold: FoldSettings {
                session_timeout_ms: timeout.as_millis() as i64,
                trait_policies,
            },
            lease,
            batch: settings.number(&BATCH, 1)? as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trait_policies_are_read_and_checked() {
        let settings = Settings::from_pairs(
            VARS,
            [(
                "CAIRN_TRAIT_POLICIES",
                "first:created_at, source ; append:tags",
            )],
        );
        let config = ProfileConfig::from_settings(&settings).unwrap();
        assert_eq!(config.fold.policy("source"), TraitPolicy::First);
        assert_eq!(config.fold.policy("tags"), TraitPolicy::Append);
        assert_eq!(config.fold.policy("plan"), TraitPolicy::Latest);
        let settings = Settings::from_pairs(VARS, [("CAIRN_TRAIT_POLICIES", "oldest:x")]);
        let err = ProfileConfig::from_settings(&settings)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown policy \"oldest\""), "{err}");
    }
}
