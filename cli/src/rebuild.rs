//! `cairn rebuild`: profiles made again from the raw events, after identity rules (or
//! the profile fold) changed. With every Cairn process stopped, it deletes what is
//! derived from the EVENTS stream: identity's graph and its consumer, every profile and
//! its segment memberships (the saved segments stay), and the IDENTIFIED and PROFILES
//! streams. The next start replays EVENTS from its
//! first event. Deleted people stay deleted (identity keeps hashes of their
//! identifiers). Uses the same configuration as `cairn up` and `cairn serve`, and
//! starts a local nats-server like `cairn up` when none answers.

use anyhow::Context as _;
use cairn_bus::{Bus, BusConfig, streams};
use cairn_runtime::Settings;
use cairn_runtime::host::DATA_DIR;
use cairn_store::StoreConfig;

use crate::process::UsageError;
use crate::{dev, modules};

#[derive(clap::Args)]
pub struct RebuildArgs {
    /// Delete the derived state (without it, only say what would happen).
    #[arg(long)]
    yes: bool,
}

pub async fn run(args: RebuildArgs) -> anyhow::Result<()> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let data_dir = settings.path(&DATA_DIR);
    let nats = dev::ensure_nats(&settings, &data_dir).await?;
    let result = rebuild(&settings, args.yes).await;
    if let Some(mut nats) = nats {
        nats.stop().await;
    }
    result
}

async fn rebuild(settings: &Settings, yes: bool) -> anyhow::Result<()> {
    let bus = Bus::connect(&BusConfig::from_settings(settings)?, "cairn-rebuild").await?;
    cairn_identity::rebuild::check_stopped(&bus).await?;
    cairn_profile_store::rebuild::check_stopped(&bus).await?;
    let store_config = StoreConfig::from_settings(settings)?;
    let store = cairn_store::open(&store_config)
        .await
        .context("cannot open the store (is a Cairn process still using it? stop it first)")?;
    let events = match bus.jetstream().get_stream(streams::EVENTS).await {
        Ok(mut stream) => stream.info().await?.state.messages,
        Err(_) => 0,
    };
    if !yes {
        return Err(UsageError(format!(
            "this deletes every profile (and its segment memberships) and the identity graph, then the next start rebuilds them from the {events} raw events in {}; run `cairn rebuild --yes` to go ahead",
            streams::EVENTS
        ))
        .into());
    }
    let profiles = cairn_profile_store::rebuild::reset(&store).await?;
    let memberships = cairn_segmenter::live::forget_all(&store).await?;
    let graph = cairn_identity::rebuild::reset(&bus, &store).await?;
    for stream in [streams::IDENTIFIED, streams::PROFILES] {
        bus.delete_stream(stream).await?;
    }
    println!(
        "Deleted {profiles} profile keys, {memberships} profiles' segment memberships, {graph} identity graph keys, and the {} and {} streams.",
        streams::IDENTIFIED,
        streams::PROFILES
    );
    println!(
        "Start Cairn (`cairn up`, or the identity and profile-store services) to rebuild them from the {events} raw events."
    );
    Ok(())
}
