//! The module table: every service the binary can run, in start order. `cairn serve X`
//! runs one entry; `cairn up` runs them all; both wire a module the same way.

use cairn_runtime::{BoxError, Module, ModuleContext, Var};
use cairn_store::{AnyStore, StoreConfig};
use futures::future::BoxFuture;
use tokio::sync::OnceCell;

/// What modules of one process share: opened on first use, once.
#[derive(Default)]
pub struct Resources {
    /// The store: one per process (the embedded one allows one process per directory).
    store: OnceCell<AnyStore>,
}

impl Resources {
    pub async fn store(&self, context: &ModuleContext) -> Result<AnyStore, BoxError> {
        let store = self
            .store
            .get_or_try_init(|| async {
                let config = StoreConfig::from_settings(&context.settings)?;
                tracing::info!(store = ?config, "opening the store");
                cairn_store::open(&config).await
            })
            .await?;
        Ok(store.clone())
    }
}

type Start =
    for<'a> fn(&'a ModuleContext, &'a Resources) -> BoxFuture<'a, Result<Module, BoxError>>;

/// One service the binary can run.
pub struct ModuleSpec {
    pub name: &'static str,
    /// What it serves, for `cairn modules` and the README.
    pub summary: &'static str,
    /// Whether it answers on the HTTP listener.
    pub http: bool,
    /// Its own configuration variables.
    pub vars: fn() -> Vec<Var>,
    pub start: Start,
}

pub const MODULES: &[ModuleSpec] = &[
    ModuleSpec {
        name: "collector",
        summary: "Segment-spec ingest: HTTP /v1/* and gRPC cairn.collector.v1.Collector -> EVENTS stream",
        http: true,
        vars: cairn_collector::vars,
        start: |context, _| {
            Box::pin(async move {
                cairn_collector::start(context)
                    .await
                    .map_err(|err| Box::new(err) as BoxError)
            })
        },
    },
    ModuleSpec {
        name: "identity",
        summary: "identity resolution: events.raw -> events.identified + profiles.merged; gRPC cairn.identity.v1.Identity",
        http: false,
        vars: cairn_identity::vars,
        start: |context, resources| {
            Box::pin(async move {
                let store = resources.store(context).await?;
                cairn_identity::start(context, store)
                    .await
                    .map_err(|err| Box::new(err) as BoxError)
            })
        },
    },
    ModuleSpec {
        name: "profile-store",
        summary: "profiles: events.identified + facts + merges -> profiles.changed; gRPC cairn.profile.v1.Profiles",
        http: false,
        vars: cairn_profile_store::vars,
        start: |context, resources| {
            Box::pin(async move {
                let store = resources.store(context).await?;
                cairn_profile_store::start(context, store)
                    .await
                    .map_err(|err| Box::new(err) as BoxError)
            })
        },
    },
    ModuleSpec {
        name: "enrich-geo",
        summary: "geo facts: client IP -> country, region, city, timezone, ASN (events.identified -> profile.facts)",
        http: false,
        vars: cairn_enrich_geo::vars,
        start: |context, _| {
            Box::pin(async move {
                cairn_enrich_geo::start(context)
                    .await
                    .map_err(|err| Box::new(err) as BoxError)
            })
        },
    },
    ModuleSpec {
        name: "enrich-device",
        summary: "device facts: User-Agent -> browser, OS, device, type, bot (events.identified -> profile.facts)",
        http: false,
        vars: cairn_enrich_device::vars,
        start: |context, _| {
            Box::pin(async move {
                cairn_enrich_device::start(context)
                    .await
                    .map_err(|err| Box::new(err) as BoxError)
            })
        },
    },
    ModuleSpec {
        name: "enrich-activity",
        summary: "activity facts: active hours, best send hour, working hours, B2B/B2C (events.identified -> profile.facts)",
        http: false,
        vars: cairn_enrich_activity::vars,
        start: |context, resources| {
            Box::pin(async move {
                let store = resources.store(context).await?;
                cairn_enrich_activity::start(context, store)
                    .await
                    .map_err(|err| Box::new(err) as BoxError)
            })
        },
    },
    ModuleSpec {
        name: "enrich-content",
        summary: "content facts: page topics (TF-IDF or a taxonomy) -> topic affinities (events.identified -> profile.facts)",
        http: false,
        vars: cairn_enrich_content::vars,
        start: |context, resources| {
            Box::pin(async move {
                let store = resources.store(context).await?;
                cairn_enrich_content::start(context, store)
                    .await
                    .map_err(|err| Box::new(err) as BoxError)
            })
        },
    },
    ModuleSpec {
        name: "segmenter",
        summary: "segments in FilterQL: profiles.changed -> segments.changed (entered/exited); gRPC cairn.segment.v1.Segments",
        http: false,
        vars: cairn_segmenter::vars,
        start: |context, resources| {
            Box::pin(async move {
                let store = resources.store(context).await?;
                cairn_segmenter::start(context, store)
                    .await
                    .map_err(|err| Box::new(err) as BoxError)
            })
        },
    },
    ModuleSpec {
        name: "dispatcher",
        summary: "campaign emails: campaign.sends -> rendered templates sent once over SMTP or to .eml files -> delivery.events",
        http: false,
        vars: cairn_dispatcher::vars,
        start: |context, resources| {
            Box::pin(async move {
                let store = resources.store(context).await?;
                cairn_dispatcher::start(context, store)
                    .await
                    .map_err(|err| Box::new(err) as BoxError)
            })
        },
    },
    ModuleSpec {
        name: "console",
        summary: "web console at /console: segment builder, profile explorer, campaigns, live view (calls the services' gRPC APIs)",
        http: true,
        vars: cairn_console::vars,
        start: |context, _| {
            Box::pin(async move {
                cairn_console::start(context)
                    .await
                    .map_err(|err| Box::new(err) as BoxError)
            })
        },
    },
];

pub fn find(name: &str) -> Option<&'static ModuleSpec> {
    MODULES.iter().find(|module| module.name == name)
}

pub fn names() -> Vec<&'static str> {
    MODULES.iter().map(|module| module.name).collect()
}

/// Every variable any part of the binary reads, each once.
pub fn all_vars() -> Vec<Var> {
    let mut vars: Vec<Var> = cairn_runtime::VARS.to_vec();
    vars.extend(crate::process::CLI_VARS);
    for module in MODULES {
        for var in (module.vars)() {
            if !vars.iter().any(|known| known.name == var.name) {
                vars.push(var);
            }
        }
    }
    vars
}

pub fn print() -> anyhow::Result<()> {
    for module in MODULES {
        println!("{:<14} {}", module.name, module.summary);
    }
    Ok(())
}
