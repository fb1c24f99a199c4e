//! enrich-activity: when each person is active and how to reach them. Per profile it
//! keeps an hour-of-week histogram in the person's local time (the event's
//! `context.timezone`, else the zone of its IP address when geo databases are
//! configured, else the last one known, else UTC), decayed with a half-life so
//! that habits can change, and the addresses they gave ([`habits`]). Facts: the most
//! active hours, the best hour to send email, weekday/weekend pattern, working hours
//! and whether activity falls in office hours, and whether each address is business
//! (B2B) or private (B2C) by its domain against a list of free mail providers. Those
//! facts are published when an event changes them, not with every event.

#![forbid(unsafe_code)]

pub mod config;
pub mod habits;

use std::sync::Arc;

use cairn_enrich_geo::{Databases, Geo, GeoConfig};
use cairn_enricher::{Enrich, EnrichError, Learned, state};
use cairn_event::Event;
use cairn_runtime::{Module, ModuleContext, Var};
use cairn_store::{Retention, Store, TableSpec};

pub use config::ActivityConfig;
pub use habits::{FreeMail, Habits};

/// Each profile's habits.
pub const ACTIVITY: TableSpec = TableSpec {
    name: "enrich_activity",
    timeline: Retention {
        max_entries: 1,
        max_age: None,
    },
};

/// The free mail providers Cairn knows.
const BUNDLED_FREE_MAIL: &str = include_str!("../data/free_mail_domains.txt");

/// Every variable enrich-activity reads (besides the store's).
pub fn vars() -> Vec<Var> {
    [
        cairn_enricher::vars(config::VARS),
        cairn_store::config::VARS.to_vec(),
    ]
    .concat()
}

pub struct Activity<S> {
    pub store: S,
    pub half_life_ms: f64,
    pub free_mail: FreeMail,
    /// Where addresses are, for events that do not say their time zone.
    pub geo: Option<Geo>,
}

impl<S: Store> Activity<S> {
    pub fn new(store: S, config: &ActivityConfig, geo: Option<Geo>) -> Result<Self, EnrichError> {
        let free_mail = match &config.free_mail {
            Some(path) => FreeMail::parse(&std::fs::read_to_string(path).map_err(|err| {
                EnrichError::Data(format!("free mail list {}: {err}", path.display()))
            })?),
            None => FreeMail::parse(BUNDLED_FREE_MAIL),
        };
        Ok(Self {
            store,
            half_life_ms: config.half_life.as_millis() as f64,
            free_mail,
            geo,
        })
    }
}

impl<S: Store> Enrich for Activity<S> {
    fn source(&self) -> &'static str {
        "activity"
    }

    async fn enrich(
        &self,
        profile_id: &str,
        event: &Event,
    ) -> Result<Option<Learned>, EnrichError> {
        let timezone = event.text(&["context", "timezone"]).or_else(|| {
            let geo = self.geo.as_ref()?;
            geo.locate(&event.ip()?)?.timezone
        });
        let email = event
            .traits()
            .and_then(|traits| traits.get("email"))
            .and_then(|email| email.as_str())
            .map(str::to_string);
        state::facts_once(
            &self.store,
            &ACTIVITY,
            profile_id,
            &event.message_id,
            |habits: &mut Habits| {
                habits.add(event.at_ms, timezone.as_deref(), self.half_life_ms);
                if let Some(email) = &email {
                    habits.add_email(email, &self.free_mail);
                }
            },
        )
        .await
    }

    fn keeps_person_state(&self) -> bool {
        true
    }

    async fn merge(&self, from: &str, into: &str) -> Result<Option<Learned>, EnrichError> {
        state::merge_facts_once(
            &self.store,
            &ACTIVITY,
            from,
            into,
            |habits: &mut Habits, merged: &Habits| habits.absorb(merged, self.half_life_ms),
        )
        .await
    }

    async fn split(&self, into: &str) -> Result<(), EnrichError> {
        state::revive::<_, Habits>(&self.store, &ACTIVITY, into).await
    }

    async fn forget(&self, profile_id: &str) -> Result<(), EnrichError> {
        Ok(self.store.delete(&ACTIVITY, profile_id.as_bytes()).await?)
    }
}

/// Starts enrich-activity on `store`.
pub async fn start<S: Store>(context: &ModuleContext, store: S) -> Result<Module, EnrichError> {
    let config = ActivityConfig::from_settings(&context.settings)?;
    let geo_config = GeoConfig::from_settings(&context.settings)?;
    let databases = (!geo_config.databases.is_empty())
        .then(|| Databases::open(&geo_config.databases).map(Arc::new))
        .transpose()?;
    let geo = databases.as_ref().map(|databases| Geo {
        databases: databases.clone(),
        anonymize: geo_config.anonymize,
    });
    let activity = Activity::new(store, &config, geo)?;
    let mut module = cairn_enricher::start(context, "enrich-activity", activity).await?;
    if let Some(databases) = databases {
        module.tasks.push(cairn_enrich_geo::watch(
            databases,
            &geo_config,
            context.shutdown.clone(),
        ));
    }
    Ok(module)
}
