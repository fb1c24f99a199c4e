//! `cairn suppression ...`: addresses kept from campaign emails, by hand (a complaint
//! from a feedback loop, a request by phone).

use cairn_proto::dispatch::v1 as pb;
use cairn_proto::dispatch::v1::suppressions_client::SuppressionsClient;
use cairn_runtime::Settings;
use clap::Subcommand;

use crate::admin::{AdminConnection, explain};
use crate::modules;

#[derive(Subcommand)]
pub enum SuppressionCommand {
    /// Keep an address from every campaign email, or from one list's (write token).
    Add {
        email: String,
        /// Why: complained, unsubscribed, bounced, or your own words.
        #[arg(long)]
        reason: String,
        /// Only this list's emails.
        #[arg(long)]
        list: Option<String>,
    },
    /// Let an address have campaign emails again (write token).
    Remove {
        email: String,
        #[arg(long)]
        list: Option<String>,
    },
    /// Whether an address gets campaign emails (of a list), and why not.
    Get {
        email: String,
        #[arg(long)]
        list: Option<String>,
    },
}

pub async fn run(command: SuppressionCommand) -> anyhow::Result<()> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let connection = AdminConnection::open(&settings).await?;
    let mut client = SuppressionsClient::new(connection.channel.clone());
    match command {
        SuppressionCommand::Add {
            email,
            reason,
            list,
        } => {
            client
                .add(connection.request(pb::SuppressionsAddRequest {
                    email: email.clone(),
                    list: list.unwrap_or_default(),
                    reason,
                })?)
                .await
                .map_err(explain)?;
            println!("{email}\tsuppressed");
        }
        SuppressionCommand::Remove { email, list } => {
            let removed = client
                .remove(connection.request(pb::SuppressionsRemoveRequest {
                    email: email.clone(),
                    list: list.unwrap_or_default(),
                })?)
                .await
                .map_err(explain)?
                .into_inner()
                .removed;
            println!(
                "{email}\t{}",
                if removed {
                    "removed"
                } else {
                    "was not suppressed"
                }
            );
        }
        SuppressionCommand::Get { email, list } => {
            let found = client
                .get(connection.request(pb::SuppressionsGetRequest {
                    email: email.clone(),
                    list: list.unwrap_or_default(),
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            if found.suppressed {
                println!("{email}\tsuppressed: {}", found.reason);
            } else {
                println!("{email}\tgets emails");
            }
        }
    }
    Ok(())
}
