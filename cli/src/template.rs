//! `cairn template ...`: the dispatcher's email templates.

use std::path::PathBuf;

use cairn_proto::dispatch::v1 as pb;
use cairn_proto::dispatch::v1::templates_client::TemplatesClient;
use cairn_runtime::Settings;
use clap::Subcommand;

use crate::admin::{AdminConnection, explain};
use crate::modules;
use crate::process::UsageError;

#[derive(Subcommand)]
pub enum TemplateCommand {
    /// Save a template (write token): a new version, once it checks out. The bodies are
    /// minijinja over profile, params, campaign and email.
    Put {
        name: String,
        /// The subject line.
        #[arg(long)]
        subject: String,
        /// The file holding the text body.
        #[arg(long)]
        text: Option<PathBuf>,
        /// The file holding the HTML body (HTML, or MJML starting with <mjml>).
        #[arg(long)]
        html: Option<PathBuf>,
        /// The list its emails belong to (e.g. promotions): its unsubscribe link stops
        /// that list only.
        #[arg(long)]
        list: Option<String>,
    },
    /// The saved templates: name, version, when saved.
    List,
    /// One template as saved.
    Get { name: String },
    /// A template rendered for a profile as it is now, as it would be sent.
    Preview {
        name: String,
        #[arg(long)]
        profile_id: String,
        /// Campaign parameters, a JSON object.
        #[arg(long, default_value = "{}")]
        params: String,
    },
}

fn read(path: Option<&PathBuf>) -> anyhow::Result<String> {
    match path {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|err| UsageError(format!("cannot read {}: {err}", path.display())).into()),
        None => Ok(String::new()),
    }
}

pub async fn run(command: TemplateCommand) -> anyhow::Result<()> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let connection = AdminConnection::open(&settings).await?;
    let mut client = TemplatesClient::new(connection.channel.clone());
    match command {
        TemplateCommand::Put {
            name,
            subject,
            text,
            html,
            list,
        } => {
            let template = pb::Template {
                name,
                subject,
                text: read(text.as_ref())?,
                html: read(html.as_ref())?,
                list: list.unwrap_or_default(),
                ..Default::default()
            };
            let saved = client
                .put(connection.request(pb::PutRequest {
                    template: Some(template),
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            if let Some(template) = saved.template {
                println!("{}\tversion {}", template.name, template.version);
            }
        }
        TemplateCommand::List => {
            let listed = client
                .list(connection.request(pb::ListRequest {})?)
                .await
                .map_err(explain)?
                .into_inner();
            for template in listed.templates {
                println!("{}\tversion {}", template.name, template.version);
            }
        }
        TemplateCommand::Get { name } => {
            let found = client
                .get(connection.request(pb::GetRequest { name })?)
                .await
                .map_err(explain)?
                .into_inner();
            if let Some(template) = found.template {
                println!("subject: {}", template.subject);
                println!("version: {}", template.version);
                if !template.list.is_empty() {
                    println!("list: {}", template.list);
                }
                println!("--- text\n{}", template.text);
                if !template.html.is_empty() {
                    println!("--- html\n{}", template.html);
                }
            }
        }
        TemplateCommand::Preview {
            name,
            profile_id,
            params,
        } => {
            let preview = client
                .preview(connection.request(pb::PreviewRequest {
                    name,
                    profile_id,
                    params_json: params,
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            println!("To: {}", preview.to);
            println!("Subject: {}", preview.subject);
            println!("--- text\n{}", preview.text);
            if !preview.html.is_empty() {
                println!("--- html\n{}", preview.html);
            }
        }
    }
    Ok(())
}
