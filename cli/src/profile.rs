//! `cairn profile get|timeline|delete`: profiles from the running Cairn, as JSON.

use cairn_proto::identity::v1::Identifier;
use cairn_proto::profile::v1::profiles_client::ProfilesClient;
use cairn_proto::profile::v1::{DeleteRequest, GetRequest, TimelineRequest, get_request};
use cairn_runtime::Settings;

use crate::admin::{AdminConnection, explain};
use crate::modules;
use crate::process::UsageError;

#[derive(clap::Subcommand)]
pub enum ProfileCommand {
    /// Print a profile as JSON, found by its id or any identifier.
    Get(Which),
    /// Print a profile's events, newest first, one JSON line each.
    Timeline {
        #[command(flatten)]
        which: Which,
        /// How many events.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Forget a person: the profile, its timeline and its identifiers (admin token).
    Delete(Which),
}

/// Which profile: exactly one of these.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct Which {
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    email: Option<String>,
    #[arg(long)]
    user_id: Option<String>,
    #[arg(long)]
    anonymous_id: Option<String>,
    #[arg(long)]
    phone: Option<String>,
}

impl Which {
    fn key(&self) -> get_request::Key {
        let identifier = |kind: &str, value: &String| {
            get_request::Key::Identifier(Identifier {
                r#type: kind.to_string(),
                value: value.clone(),
            })
        };
        match (
            &self.id,
            &self.email,
            &self.user_id,
            &self.anonymous_id,
            &self.phone,
        ) {
            (Some(id), ..) => get_request::Key::ProfileId(id.clone()),
            (_, Some(email), ..) => identifier("email", email),
            (_, _, Some(user), ..) => identifier("user_id", user),
            (_, _, _, Some(anonymous), _) => identifier("anonymous_id", anonymous),
            (_, _, _, _, Some(phone)) => identifier("phone", phone),
            _ => get_request::Key::ProfileId(String::new()),
        }
    }
}

pub async fn run(command: ProfileCommand) -> anyhow::Result<()> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let connection = AdminConnection::open(&settings).await?;
    let mut client = ProfilesClient::new(connection.channel.clone());
    let (which, timeline_limit, delete) = match &command {
        ProfileCommand::Get(which) => (which, None, false),
        ProfileCommand::Timeline { which, limit } => (which, Some(*limit), false),
        ProfileCommand::Delete(which) => (which, None, true),
    };
    let found = client
        .get(connection.request(GetRequest {
            key: Some(which.key()),
        })?)
        .await
        .map_err(explain)?
        .into_inner();
    if delete {
        let deleted = client
            .delete(connection.request(DeleteRequest {
                profile_id: found.profile_id.clone(),
            })?)
            .await
            .map_err(explain)?
            .into_inner();
        println!(
            "deleted profile {} and {} identifiers",
            found.profile_id,
            deleted.identifiers.len()
        );
        return Ok(());
    }
    let Some(limit) = timeline_limit else {
        let profile: serde_json::Value = serde_json::from_str(&found.profile_json)?;
        println!("{}", serde_json::to_string_pretty(&profile)?);
        return Ok(());
    };
    if limit == 0 {
        return Err(UsageError("--limit: at least 1".into()).into());
    }
    let mut printed = 0;
    let mut page_token = String::new();
    while printed < limit {
        let page = client
            .timeline(connection.request(TimelineRequest {
                profile_id: found.profile_id.clone(),
                page_token: page_token.clone(),
                page_size: (limit - printed).min(500),
            })?)
            .await
            .map_err(explain)?
            .into_inner();
        for entry in &page.entries {
            println!("{}", entry.event_json);
            printed += 1;
        }
        if page.next_page_token.is_empty() || page.entries.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(())
}
