//! The webhook channel: each action on `campaign.webhooks.<partition>` is `POST`ed to
//! its URL as JSON, signed like segment webhooks (`X-Cairn-Timestamp`,
//! `X-Cairn-Signature: sha256=<hex>` under `CAIRN_CAMPAIGN_WEBHOOK_SECRET`), with the
//! action's idempotency key as `Idempotency-Key`. A timeout, a connection failure, 408,
//! 429 or 5xx is tried again in place with a doubling backoff, up to
//! `CAIRN_WEBHOOK_ATTEMPTS`; any other answer, or the last failure, sends the action to
//! `deadletter.segmenter_campaign_webhooks` with the reason.

use async_nats::jetstream::consumer;
use cairn_bus::worker::{Delivered, Handled, Handler};
use cairn_proto::campaign::v1::Action;
use prost::Message as _;

use crate::activation::{Attempt, Poster, WebhookConfig};

/// The service name of the consumer and of its dead letters.
pub const SERVICE: &str = "segmenter_campaign_webhooks";

/// The durable consumer of webhook actions, shared by the replicas: an action is kept
/// from redelivery while one request may take.
pub fn consumer_config(config: &WebhookConfig) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(SERVICE.to_string()),
        description: Some("Segmenter: campaign actions to webhooks".to_string()),
        filter_subject: "campaign.webhooks.>".to_string(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: config.timeout * 2 + cairn_bus::worker::ACK_WAIT,
        ..Default::default()
    }
}

#[derive(Clone)]
pub struct CampaignWebhooks {
    pub poster: Poster,
    pub config: WebhookConfig,
}

impl Handler for CampaignWebhooks {
    async fn handle(&self, message: &Delivered) -> Handled {
        let action = match Action::decode(message.payload.clone()) {
            Ok(action) => action,
            Err(err) => {
                return Handled::DeadLetter {
                    reason: format!("not a campaign action: {err}"),
                };
            }
        };
        let Some(secret) = &self.config.campaign_secret else {
            return Handled::DeadLetter {
                reason: "CAIRN_CAMPAIGN_WEBHOOK_SECRET is not set: nothing to sign with"
                    .to_string(),
            };
        };
        let params: serde_json::Value =
            serde_json::from_str(&action.params_json).unwrap_or(serde_json::Value::Null);
        let body = serde_json::json!({
            "campaign": action.campaign,
            "profile_id": action.profile_id,
            "state": action.state,
            "entry": action.entry,
            "at": action.at.as_ref().map(|at| cairn_runtime::clock::text(cairn_runtime::clock::timestamp_ms(at))),
            "params": params,
            "idempotency_key": action.idempotency_key,
        })
        .to_string();
        match self
            .poster
            .post(
                &action.target,
                secret,
                &action.idempotency_key,
                body.as_bytes(),
            )
            .await
        {
            Attempt::Delivered => {
                tracing::info!(campaign = %action.campaign, key = %action.idempotency_key, "campaign webhook delivered");
                Handled::Publish(Vec::new())
            }
            Attempt::Refused(reason) => Handled::DeadLetter { reason },
            Attempt::Failed(reason) => Handled::Retry {
                reason,
                delay: self.config.wait_after(message.attempt),
            },
        }
    }
}
