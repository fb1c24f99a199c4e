//! `cairn send`: post one Segment-spec call to the collector, as an SDK would.

use anyhow::Context as _;
use base64::Engine as _;
use cairn_runtime::host::{DATA_DIR, HTTP_ADDR};
use cairn_runtime::{Credentials, Settings};
use serde_json::{Value, json};

use crate::dev::{DEV_WRITE_KEY_FILE, read_dev_secret};
use crate::modules;
use crate::process::UsageError;

#[derive(clap::Args)]
pub struct SendArgs {
    /// The call: track, identify, page, screen, group or alias.
    #[arg(long = "type", default_value = "track")]
    call: String,
    /// The event name (track).
    #[arg(long, default_value = "Test Event")]
    event: String,
    #[arg(long)]
    user_id: Option<String>,
    /// Defaults to a new random id when neither --user-id nor --anonymous-id is given.
    #[arg(long)]
    anonymous_id: Option<String>,
    /// Properties (track, page, screen) or traits (identify, group) as a JSON object.
    #[arg(long)]
    properties: Option<String>,
    /// Send this JSON object as the whole call instead (`-` reads it from stdin).
    #[arg(long, conflicts_with_all = ["event", "user_id", "anonymous_id", "properties"])]
    json: Option<String>,
}

pub async fn run(args: SendArgs) -> anyhow::Result<()> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let (call, body) = build(&args)?;
    let key = write_key(&settings)?;
    let url = format!("http://{}/v1/{call}", settings.string(&HTTP_ADDR));
    let response = reqwest::Client::new()
        .post(&url)
        .header(
            reqwest::header::AUTHORIZATION,
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
            ),
        )
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the collector at {url}; is `cairn up` running?"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("the collector answered {status}: {text}");
    }
    println!(
        "{status}: stored {call} {}",
        body.get("messageId")
            .and_then(Value::as_str)
            .unwrap_or_default()
    );
    Ok(())
}

fn build(args: &SendArgs) -> anyhow::Result<(String, Value)> {
    if let Some(source) = &args.json {
        let text = if source == "-" {
            std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
        } else {
            source.clone()
        };
        let body: Value =
            serde_json::from_str(&text).map_err(|err| UsageError(format!("--json: {err}")))?;
        let call = body
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| args.call.clone());
        return Ok((call, body));
    }
    let payload: Value = match &args.properties {
        Some(text) => {
            serde_json::from_str(text).map_err(|err| UsageError(format!("--properties: {err}")))?
        }
        None => json!({}),
    };
    if !payload.is_object() {
        return Err(UsageError("--properties: must be a JSON object".into()).into());
    }
    let mut body = json!({
        "type": args.call,
        "messageId": format!("cairn-send-{}", random_id()),
        "timestamp": now_rfc3339(),
        "context": {"library": {"name": "cairn-cli", "version": env!("CARGO_PKG_VERSION")}},
    });
    if let Some(user_id) = &args.user_id {
        body["userId"] = json!(user_id);
    }
    if let Some(anonymous_id) = &args.anonymous_id {
        body["anonymousId"] = json!(anonymous_id);
    }
    if args.user_id.is_none() && args.anonymous_id.is_none() {
        body["anonymousId"] = json!(format!("anon-{}", random_id()));
    }
    match args.call.as_str() {
        "track" => {
            body["event"] = json!(args.event);
            body["properties"] = payload;
        }
        "page" | "screen" => {
            body["name"] = json!(args.event);
            body["properties"] = payload;
        }
        "identify" => body["traits"] = payload,
        "group" => {
            body["groupId"] = json!("cairn-send-group");
            body["traits"] = payload;
        }
        "alias" => {
            let (Some(user_id), Some(previous_id)) = (&args.user_id, &args.anonymous_id) else {
                return Err(UsageError(
                    "alias needs --user-id (the new id) and --anonymous-id (the previous id)"
                        .into(),
                )
                .into());
            };
            body["userId"] = json!(user_id);
            body["previousId"] = json!(previous_id);
            if let Some(object) = body.as_object_mut() {
                object.remove("anonymousId");
            }
        }
        other => {
            return Err(UsageError(format!(
                "--type {other:?}: use track, identify, page, screen, group or alias"
            ))
            .into());
        }
    }
    Ok((args.call.clone(), body))
}

/// The first configured write key, else the development key `cairn up` created.
pub fn write_key(settings: &Settings) -> anyhow::Result<String> {
    if let Some(key) = Credentials::from_settings(settings)?.first_write_key() {
        return Ok(key);
    }
    let data_dir = settings.path(&DATA_DIR);
    read_dev_secret(&data_dir, DEV_WRITE_KEY_FILE).ok_or_else(|| {
        UsageError(format!(
            "no write key: set CAIRN_WRITE_KEYS, or run `cairn up` first (it writes {})",
            data_dir.join(DEV_WRITE_KEY_FILE).display()
        ))
        .into()
    })
}

fn random_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
