//! `cairn campaign ...`: campaigns in YAML or JSON.

use std::path::{Path, PathBuf};

use cairn_proto::campaign::v1 as pb;
use cairn_proto::campaign::v1::campaigns_client::CampaignsClient;
use cairn_runtime::Settings;
use cairn_segmenter::campaigns::Campaign;
use clap::Subcommand;

use crate::admin::{AdminConnection, explain};
use crate::modules;
use crate::process::UsageError;
use crate::segment::read_source;

#[derive(Subcommand)]
pub enum CampaignCommand {
    /// Save a campaign in the running Cairn (write token), from FILE or standard input;
    /// running replicas pick it up within a second.
    Create {
        /// The file holding the campaign (default: standard input).
        file: Option<PathBuf>,
    },
    /// The saved campaigns, each with whether it runs.
    List,
    /// One saved campaign, as it was written.
    Get { name: String },
    /// Stop a campaign moving anyone (write token); its journeys stay as they are.
    Pause { name: String },
    /// Let a paused campaign run again (write token).
    Resume { name: String },
    /// How a campaign is doing: profiles in it, entries, profiles per state, actions
    /// sent and held back by the frequency cap.
    Stats { name: String },
    /// Read and check a campaign (from FILE, or standard input) here, without saving it;
    /// on a problem, say where it is and exit 2.
    Check {
        /// The file holding the campaign (default: standard input).
        file: Option<PathBuf>,
    },
}

pub async fn run(command: CampaignCommand) -> anyhow::Result<()> {
    match command {
        CampaignCommand::Check { file } => check(file.as_deref()),
        remote => run_remote(remote).await,
    }
}

/// `cairn campaign check`: read and check here.
fn check(file: Option<&Path>) -> anyhow::Result<()> {
    let (source, name) = read_source(file)?;
    let campaign = Campaign::parse(&source).map_err(|err| UsageError(format!("{name}: {err}")))?;
    println!(
        "{}: {} states, {} transitions",
        campaign.name,
        campaign.states().len(),
        campaign.transitions.len()
    );
    Ok(())
}

fn show_line(campaign: &pb::Campaign) {
    println!(
        "{}\t{}",
        campaign.name,
        if campaign.paused { "paused" } else { "running" }
    );
}

/// The commands that talk to the running Cairn.
async fn run_remote(command: CampaignCommand) -> anyhow::Result<()> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let connection = AdminConnection::open(&settings).await?;
    let mut client = CampaignsClient::new(connection.channel.clone());
    match command {
        CampaignCommand::Create { file } => {
            let (source, _) = read_source(file.as_deref())?;
            let saved = client
                .put(connection.request(pb::PutRequest { source })?)
                .await
                .map_err(explain)?
                .into_inner();
            if let Some(campaign) = saved.campaign {
                show_line(&campaign);
            }
        }
        CampaignCommand::List => {
            let listed = client
                .list(connection.request(pb::ListRequest {})?)
                .await
                .map_err(explain)?
                .into_inner();
            for campaign in &listed.campaigns {
                show_line(campaign);
            }
        }
        CampaignCommand::Get { name } => {
            let found = client
                .get(connection.request(pb::GetRequest { name })?)
                .await
                .map_err(explain)?
                .into_inner();
            if let Some(campaign) = found.campaign {
                print!("{}", campaign.source);
                if !campaign.source.ends_with('\n') {
                    println!();
                }
            }
        }
        CampaignCommand::Pause { name } => {
            let paused = client
                .pause(connection.request(pb::PauseRequest { name })?)
                .await
                .map_err(explain)?
                .into_inner();
            if let Some(campaign) = paused.campaign {
                show_line(&campaign);
            }
        }
        CampaignCommand::Resume { name } => {
            let resumed = client
                .resume(connection.request(pb::ResumeRequest { name })?)
                .await
                .map_err(explain)?
                .into_inner();
            if let Some(campaign) = resumed.campaign {
                show_line(&campaign);
            }
        }
        CampaignCommand::Stats { name } => {
            let stats = client
                .stats(connection.request(pb::StatsRequest { name })?)
                .await
                .map_err(explain)?
                .into_inner();
            println!("profiles: {}", stats.profiles);
            println!("entered: {}", stats.entered);
            let mut states: Vec<_> = stats.in_state.into_iter().collect();
            states.sort();
            for (state, count) in states {
                println!("in {state}: {count}");
            }
            println!("actions sent: {}", stats.actions_sent);
            println!("suppressed: {}", stats.suppressed);
        }
        CampaignCommand::Check { .. } => unreachable!("checked locally"),
    }
    Ok(())
}
