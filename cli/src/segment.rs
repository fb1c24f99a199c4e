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
        /// Return once saved, without following the evaluation over everyone.
        #[arg(long)]
        no_wait: bool,
        /// Sync the segment to this webhook: entered/exited batches, signed with the
        /// secret (HMAC-SHA256 in `X-Cairn-Signature`).
        #[arg(long, requires = "webhook_secret")]
        webhook: Option<String>,
        /// The webhook's signing secret (at least 16 characters).
        #[arg(long)]
        webhook_secret: Option<String>,
    },
    /// Evaluate a segment over every profile now (write token), setting right any
    /// membership that differs; shows the progress, then the size and a sample.
    Evaluate { name: String },
    /// How many profiles are in a segment.
    Size { name: String },
    /// The profiles in a segment: their ids, or an export with their identifiers (CSV)
    /// or whole profiles (JSON lines).
    Members {
        name: String,
        #[arg(long, value_enum, default_value = "ids")]
        format: MembersFormat,
        /// At most this many (default: all).
        #[arg(long)]
        limit: Option<u64>,
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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MembersFormat {
    /// One profile id per line.
    Ids,
    /// profile_id,since,user_id,email,anonymous_id with a header line.
    Csv,
    /// One JSON object per line: profile_id, since and the whole profile.
    Jsonl,
}

/// The identifier kinds the CSV export has a column for.
const CSV_IDENTIFIERS: [&str; 3] = ["user_id", "email", "anonymous_id"];

/// `field` as a CSV field: quoted when it holds a comma, a quote or a line break.
fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// One member as a line of `format`.
fn member_line(member: &pb::MembersResponse, format: MembersFormat) -> anyhow::Result<String> {
    let since = member
        .since
        .as_ref()
        .map(|at| cairn_runtime::clock::text(cairn_runtime::clock::timestamp_ms(at)))
        .unwrap_or_default();
    let profile: serde_json::Value = if member.profile_json.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&member.profile_json)?
    };
    Ok(match format {
        MembersFormat::Ids => member.profile_id.clone(),
        MembersFormat::Csv => {
            let first_of = |kind: &str| {
                profile["identifiers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|identifier| identifier["type"] == kind)
                    .and_then(|identifier| identifier["value"].as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let mut fields = vec![member.profile_id.clone(), since];
            fields.extend(CSV_IDENTIFIERS.iter().map(|kind| first_of(kind)));
            fields
                .iter()
                .map(|field| csv_field(field))
                .collect::<Vec<_>>()
                .join(",")
        }
        MembersFormat::Jsonl => serde_json::json!({
            "profile_id": member.profile_id,
            "since": since,
            "profile": profile,
        })
        .to_string(),
    })
}

/// Follows a batch run to its end, its progress on standard error; prints the size and
/// the sample.
async fn follow(
    client: &mut SegmentsClient<tonic::transport::Channel>,
    connection: &AdminConnection,
    name: &str,
) -> anyhow::Result<()> {
    use std::io::{IsTerminal as _, Write as _};
    let mut progress = client
        .evaluate(connection.request(pb::EvaluateRequest {
            name: name.to_string(),
        })?)
        .await
        .map_err(explain)?
        .into_inner();
    let terminal = std::io::stderr().is_terminal();
    let mut last = None;
    while let Some(update) = progress.message().await.map_err(explain)? {
        let line = format!(
            "evaluating {}: {:>3.0}% · {} profiles · {} in the segment · {} set right",
            update.name,
            update.fraction * 100.0,
            update.evaluated,
            update.size,
            update.corrected
        );
        if terminal {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
        std::io::stderr().flush()?;
        last = Some(update);
    }
    if terminal {
        eprintln!();
    }
    let done = last
        .filter(|update| update.done)
        .ok_or_else(|| anyhow::anyhow!("the evaluation of {name} ended before it was done"))?;
    println!("size: {}", done.size);
    if !done.sample.is_empty() {
        println!("sample: {}", done.sample.join(" "));
    }
    Ok(())
}

/// The text of `file`, or of standard input, and what to call it in messages.
pub(crate) fn read_source(file: Option<&Path>) -> anyhow::Result<(String, String)> {
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
    if !segment.webhook_url.is_empty() {
        println!("-- synced to {}", segment.webhook_url);
    }
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
            no_wait,
            webhook,
            webhook_secret,
        } => {
            let (filter, _) = read_source(file.as_deref())?;
            let saved = client
                .put(connection.request(pb::PutRequest {
                    name: name.unwrap_or_default(),
                    filter,
                    description,
                    webhook_url: webhook.unwrap_or_default(),
                    webhook_secret: webhook_secret.unwrap_or_default(),
                    // `create` saves the segment as given: no --webhook, no webhook.
                    keep_webhook: false,
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            if let Some(segment) = saved.segment {
                show(&segment);
                if !no_wait {
                    follow(&mut client, &connection, &segment.name).await?;
                }
            }
        }
        SegmentCommand::Evaluate { name } => follow(&mut client, &connection, &name).await?,
        SegmentCommand::Size { name } => {
            let size = client
                .size(connection.request(pb::SizeRequest { name })?)
                .await
                .map_err(explain)?
                .into_inner();
            println!("{}", size.size);
        }
        SegmentCommand::Members {
            name,
            format,
            limit,
        } => {
            use std::io::Write as _;
            let mut members = client
                .members(connection.request(pb::MembersRequest {
                    name,
                    with_profiles: format != MembersFormat::Ids,
                    limit: limit.unwrap_or(0),
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if format == MembersFormat::Csv {
                writeln!(out, "profile_id,since,{}", CSV_IDENTIFIERS.join(","))?;
            }
            while let Some(member) = members.message().await.map_err(explain)? {
                writeln!(out, "{}", member_line(&member, format)?)?;
            }
            out.flush()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> pb::MembersResponse {
        pb::MembersResponse {
            profile_id: "p1".to_string(),
            since: Some(cairn_runtime::clock::timestamp(1_795_000_000_123)),
            profile_json: serde_json::json!({
                "id": "p1",
                "identifiers": [
                    {"type": "anonymous_id", "value": "a1"},
                    {"type": "email", "value": "ann, \"the\" buyer@example.com"},
                    {"type": "user_id", "value": "u1"},
                ],
                "traits": {"plan": "pro"},
            })
            .to_string(),
        }
    }

    #[test]
    fn members_export_as_ids_csv_and_json_lines() {
        let member = member();
        assert_eq!(member_line(&member, MembersFormat::Ids).unwrap(), "p1");
        assert_eq!(
            member_line(&member, MembersFormat::Csv).unwrap(),
            "p1,2026-11-18T11:06:40.123Z,u1,\"ann, \"\"the\"\" buyer@example.com\",a1"
        );
        let line: serde_json::Value =
            serde_json::from_str(&member_line(&member, MembersFormat::Jsonl).unwrap()).unwrap();
        assert_eq!(line["profile_id"], "p1");
        assert_eq!(line["since"], "2026-11-18T11:06:40.123Z");
        assert_eq!(line["profile"]["traits"]["plan"], "pro");
    }

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
