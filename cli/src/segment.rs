//! `cairn segment ...`: segments in FilterQL.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use cairn_proto::segment::v1 as pb;
use cairn_proto::segment::v1::segments_client::SegmentsClient;
use cairn_runtime::Settings;
use clap::Subcommand;

use crate::admin::{AdminConnection, explain};
use crate::modules;
use crate::process::UsageError;

#[derive(Subcommand)]
pub enum SegmentCommand {
    /// Save a segment in the running Cairn (write token): FilterQL from FILE, or
    /// standard input; NAME may be left out when the filter has an ALIAS.
    Create {
        /// The segment's name.
        #[arg(long)]
        name: Option<String>,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// The file holding the filter (default: standard input).
        file: Option<PathBuf>,
    },
    /// The saved segments, each with its filter.
    List,
    /// One saved segment's filter.
    Get { name: String },
    /// Why a profile is in a segment or not: each condition, whether it held, and the
    /// value the profile had (JSON).
    Explain {
        /// The segment.
        name: String,
        /// The profile's id (`cairn profile get` prints it).
        #[arg(long)]
        profile: String,
    },
    /// Delete a saved segment (write token); refused while another includes it.
    Delete { name: String },
    /// Parse a FilterQL statement (from FILE, or standard input), check its fields
    /// against the profile, and print its canonical form; on an error, print its line
    /// and column (or the conditions that cannot work) and exit 2.
    Check {
        /// The file holding the statement (default: standard input).
        file: Option<PathBuf>,
    },
}

/// The text of `file`, or of standard input, and what to call it in messages.
fn read_source(file: Option<&Path>) -> anyhow::Result<(String, String)> {
    Ok(match file {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|err| UsageError(format!("cannot read {}: {err}", path.display())))?,
            path.display().to_string(),
        ),
        None => {
            let mut source = String::new();
            std::io::stdin().read_to_string(&mut source)?;
            (source, "<stdin>".to_string())
        }
    })
}

fn show(segment: &pb::Segment) {
    println!(
        "-- {}{}",
        segment.name,
        if segment.description.is_empty() {
            String::new()
        } else {
            format!(": {}", segment.description)
        }
    );
    println!("{}\n", segment.filter);
}

pub async fn run(command: SegmentCommand) -> anyhow::Result<()> {
    match command {
        SegmentCommand::Check { file } => check(file.as_deref()),
        remote => run_remote(remote).await,
    }
}

/// `cairn segment check`: parse and check here, print the canonical form.
fn check(file: Option<&Path>) -> anyhow::Result<()> {
    let (source, name) = read_source(file)?;
    let filter = cairn_filterql::parse(&source).map_err(|err| {
        UsageError(format!(
            "{name}:{}:{}: {}",
            err.line, err.column, err.message
        ))
    })?;
    let problems = cairn_filterql::check(&filter, &cairn_profile_store::profile::ProfileSchema);
    if !problems.is_empty() {
        return Err(UsageError(format!("{name}: {}", problems.join("; "))).into());
    }
    println!("{}", cairn_filterql::print(&filter));
    Ok(())
}

/// The commands that talk to the running Cairn.
async fn run_remote(command: SegmentCommand) -> anyhow::Result<()> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let connection = AdminConnection::open(&settings).await?;
    let mut client = SegmentsClient::new(connection.channel.clone());
    match command {
        SegmentCommand::Create {
            name,
            description,
            file,
        } => {
            let (filter, _) = read_source(file.as_deref())?;
            let saved = client
                .put(connection.request(pb::PutRequest {
                    name: name.unwrap_or_default(),
                    filter,
                    description,
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            if let Some(segment) = saved.segment {
                show(&segment);
            }
        }
        SegmentCommand::List => {
            let listed = client
                .list(connection.request(pb::ListRequest {})?)
                .await
                .map_err(explain)?
                .into_inner();
            for segment in &listed.segments {
                show(segment);
            }
        }
        SegmentCommand::Get { name } => {
            let found = client
                .get(connection.request(pb::GetRequest { name })?)
                .await
                .map_err(explain)?
                .into_inner();
            if let Some(segment) = found.segment {
                show(&segment);
            }
        }
        SegmentCommand::Explain { name, profile } => {
            let explained = client
                .explain(connection.request(pb::ExplainRequest {
                    segment: name,
                    profile_id: profile,
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            let explanation: serde_json::Value = serde_json::from_str(&explained.explanation_json)?;
            println!("{}", serde_json::to_string_pretty(&explanation)?);
        }
        SegmentCommand::Delete { name } => {
            client
                .delete(connection.request(pb::DeleteRequest { name: name.clone() })?)
                .await
                .map_err(explain)?;
            println!("deleted segment {name}");
        }
        SegmentCommand::Check { file } => check(file.as_deref())?,
    }
    Ok(())
}
